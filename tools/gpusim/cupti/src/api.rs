//! The exported `cupti*` entry points (signatures from `cupti_activity.h`, `cupti_callbacks.h`,
//! `cupti_result.h`, CUDA 12.9). The callback API serves one subscriber (like CUPTI before
//! 13.3); driver-domain callbacks fire through libcuda's API hook (see [`crate::callbacks`]).

use std::ffi::{c_char, c_void};

use gpusim_core::clock::now_ns;
use gpusim_core::ffi::guard;

use crate::activity::{self, CompleteFn, RequestFn};
use crate::callbacks::{self, CallbackFn};

/// `CUptiResult`.
pub type CuptiResult = i32;
pub(crate) const CUPTI_SUCCESS: CuptiResult = 0;
pub(crate) const CUPTI_ERROR_INVALID_PARAMETER: CuptiResult = 1;
const CUPTI_ERROR_MAX_LIMIT_REACHED: CuptiResult = 12;
const CUPTI_ERROR_NOT_INITIALIZED: CuptiResult = 15;
const CUPTI_ERROR_INVALID_KIND: CuptiResult = 21;
pub(crate) const CUPTI_ERROR_NOT_SUPPORTED: CuptiResult = 27;
pub(crate) const CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED: CuptiResult = 39;
pub(crate) const CUPTI_ERROR_UNKNOWN: CuptiResult = 999;

/// `CUptiResult cuptiGetVersion(uint32_t *version)`: `GPUSIM_CUPTI_VERSION`, default
/// CUPTI_API_VERSION 28 (CUDA 12.9); 130300 (CUDA 13.3) and later share CUPTI among
/// subscribers ([`crate::subscribers`]).
#[no_mangle]
pub extern "C" fn cuptiGetVersion(version: *mut u32) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if version.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *version = crate::subscribers::version() };
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiGetTimestamp(uint64_t *timestamp)`: CLOCK_MONOTONIC ns, the records' clock.
#[no_mangle]
pub extern "C" fn cuptiGetTimestamp(timestamp: *mut u64) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if timestamp.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *timestamp = now_ns() };
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiSetThreadIdType(CUpti_ActivityThreadIdType type)`: 0 DEFAULT
/// (`pthread_self()` truncated to 32 bits, CUPTI's default), 1 SYSTEM (`gettid()`).
#[no_mangle]
pub extern "C" fn cuptiSetThreadIdType(kind: u32) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if kind > 1 {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        if crate::subscribers::multi() {
            // CUPTI 13.3: an attribute of each subscriber then (cuptiActivitySetAttribute_v2).
            return CUPTI_ERROR_NOT_SUPPORTED;
        }
        activity::THREAD_ID_TYPE.store(kind, std::sync::atomic::Ordering::Relaxed);
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiGetThreadIdType(CUpti_ActivityThreadIdType *type)`.
#[no_mangle]
pub extern "C" fn cuptiGetThreadIdType(kind: *mut u32) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if kind.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *kind = activity::THREAD_ID_TYPE.load(std::sync::atomic::Ordering::Relaxed) };
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiActivityRegisterCallbacks(CUpti_BuffersCallbackRequestFunc,
/// CUpti_BuffersCallbackCompleteFunc)`.
#[no_mangle]
pub extern "C" fn cuptiActivityRegisterCallbacks(
    request: Option<RequestFn>,
    complete: Option<CompleteFn>,
) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if request.is_none() || complete.is_none() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        if crate::subscribers::multi() {
            return CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED;
        }
        let mut st = activity::state();
        st.request = request;
        st.complete = complete;
        drop(st);
        callbacks::attach();
        CUPTI_SUCCESS
    })
}

fn set_kind(kind: u32, on: bool) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if crate::subscribers::multi() {
            // CUPTI 13.3: the unversioned API cannot be mixed with the subscribers' V2 API.
            return CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED;
        }
        if crate::layout::record_size(kind).is_none() {
            return CUPTI_ERROR_INVALID_KIND;
        }
        let was_collecting = activity::state().enabled.iter().any(|&e| e);
        if on && !was_collecting {
            // CUPTI records activity from the moment collection is enabled, not before.
            activity::skip_to_now();
        }
        activity::state().enabled[kind as usize] = on;
        if on {
            activity::ensure_worker();
            callbacks::attach();
        }
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiActivityEnable(CUpti_ActivityKind kind)`: KERNEL, CONCURRENT_KERNEL,
/// MEMCPY, MEMSET, DRIVER, SYNCHRONIZATION and MARKER are supported.
#[no_mangle]
pub extern "C" fn cuptiActivityEnable(kind: u32) -> CuptiResult {
    set_kind(kind, true)
}

/// `CUptiResult cuptiActivityDisable(CUpti_ActivityKind kind)`.
#[no_mangle]
pub extern "C" fn cuptiActivityDisable(kind: u32) -> CuptiResult {
    set_kind(kind, false)
}

/// `CUptiResult cuptiActivityFlushAll(uint32_t flag)`: with `CUPTI_ACTIVITY_FLAG_FLUSH_FORCED`
/// (1) part-filled buffers are completed too; without it only full ones.
#[no_mangle]
pub extern "C" fn cuptiActivityFlushAll(flag: u32) -> CuptiResult {
    guard(
        CUPTI_ERROR_UNKNOWN,
        || if activity::flush(flag & 1 != 0) { CUPTI_SUCCESS } else { CUPTI_ERROR_NOT_INITIALIZED },
    )
}

/// `CUptiResult cuptiActivityFlushPeriod(uint32_t time)`: ms between periodic flushes.
#[no_mangle]
pub extern "C" fn cuptiActivityFlushPeriod(time_ms: u32) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        activity::state().flush_period_ms = time_ms;
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiActivityGetNextRecord(uint8_t *buffer, size_t validBufferSizeBytes,
/// CUpti_Activity **record)`: CUPTI_ERROR_MAX_LIMIT_REACHED after the last record.
#[no_mangle]
pub extern "C" fn cuptiActivityGetNextRecord(buffer: *mut u8, valid_bytes: usize, record: *mut *mut u8) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if buffer.is_null() || record.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        // SAFETY: the client passes back a buffer we filled and its valid size, and `*record`
        // is null or the record we returned last.
        match unsafe { activity::next_record(buffer, valid_bytes, *record) } {
            Some(next) => {
                // SAFETY: non-null out-pointer.
                unsafe { *record = next };
                CUPTI_SUCCESS
            }
            None => CUPTI_ERROR_MAX_LIMIT_REACHED,
        }
    })
}

/// `CUptiResult cuptiActivityGetNumDroppedRecords(CUcontext, uint32_t streamId, size_t *dropped)`.
#[no_mangle]
pub extern "C" fn cuptiActivityGetNumDroppedRecords(
    _context: *mut c_void,
    _stream_id: u32,
    dropped: *mut usize,
) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if dropped.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *dropped = activity::state().dropped as usize };
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiSubscribe(CUpti_SubscriberHandle *subscriber, CUpti_CallbackFunc callback,
/// void *userdata)`: the unversioned API takes CUPTI alone: refused while anyone subscribes
/// (before 13.3, and in 13.3 too, where it cannot be mixed with `cuptiSubscribe_v2`).
#[no_mangle]
pub extern "C" fn cuptiSubscribe(
    subscriber: *mut *mut c_void,
    callback: Option<CallbackFn>,
    userdata: *mut c_void,
) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        let Some(callback) = callback else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        if subscriber.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        match crate::subscribers::add(callback, userdata as usize, None) {
            Ok((handle, _)) => {
                // SAFETY: non-null out-pointer; the handle is an opaque token.
                unsafe { *subscriber = handle as *mut c_void };
                CUPTI_SUCCESS
            }
            Err(_) => CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED,
        }
    })
}

/// `CUptiResult cuptiUnsubscribe(CUpti_SubscriberHandle subscriber)`.
#[no_mangle]
pub extern "C" fn cuptiUnsubscribe(subscriber: *mut c_void) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if !crate::subscribers::remove(subscriber as usize) {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        // CUPTI stays in the driver's call path until cuptiFinalize, subscriber or not.
        CUPTI_SUCCESS
    })
}

/// Apply `change` to the subscriber and (un)install libcuda's hook as needed.
fn update(subscriber: *mut c_void, domain: u32, change: impl FnOnce(&mut callbacks::Subscriber)) -> CuptiResult {
    let wanted = {
        let mut subs = callbacks::subscribers();
        let Some((_, sub)) = subs.iter_mut().find(|(h, _)| *h == subscriber as usize) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        if domain != callbacks::DOMAIN_DRIVER_API {
            // Other domains (runtime, resource, NVTX) are accepted and never fire.
            return CUPTI_SUCCESS;
        }
        change(sub);
        subs.iter().any(|(_, s)| s.all_driver || !s.enabled.is_empty())
    };
    if callbacks::attach() || !wanted {
        CUPTI_SUCCESS
    } else {
        CUPTI_ERROR_NOT_INITIALIZED
    }
}

/// `CUptiResult cuptiEnableCallback(uint32_t enable, CUpti_SubscriberHandle,
/// CUpti_CallbackDomain, CUpti_CallbackId)`: driver-domain callbacks fire at API enter and exit.
#[no_mangle]
pub extern "C" fn cuptiEnableCallback(enable: u32, subscriber: *mut c_void, domain: u32, cbid: u32) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        update(subscriber, domain, |sub| {
            if enable != 0 {
                sub.enabled.insert(cbid);
            } else {
                sub.enabled.remove(&cbid);
            }
        })
    })
}

/// `CUptiResult cuptiEnableDomain(uint32_t enable, CUpti_SubscriberHandle, CUpti_CallbackDomain)`.
#[no_mangle]
pub extern "C" fn cuptiEnableDomain(enable: u32, subscriber: *mut c_void, domain: u32) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || update(subscriber, domain, |sub| sub.all_driver = enable != 0))
}

/// `CUptiResult cuptiFinalize(void)`: detaches CUPTI from the process: flushes, disables every
/// kind, drops every subscriber and leaves the driver's call path (until a later CUPTI call
/// attaches it again). Called outside an API exit callback while callbacks run on other
/// threads, the real CUPTI crashes the process: so does gpusim, with the reason.
#[no_mangle]
pub extern "C" fn cuptiFinalize() -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if let Err(why) = callbacks::finalize_is_safe() {
            eprintln!("gpusim: {why}");
            std::process::abort();
        }
        activity::flush(true);
        crate::subscribers::flush_all(true);
        activity::state().enabled = [false; 64];
        crate::subscribers::clear();
        callbacks::install_hook(false);
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiGetResultString(CUptiResult result, const char **str)`.
#[no_mangle]
pub extern "C" fn cuptiGetResultString(result: CuptiResult, text: *mut *const c_char) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if text.is_null() {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let s = match result {
            CUPTI_SUCCESS => c"CUPTI_SUCCESS",
            CUPTI_ERROR_INVALID_PARAMETER => c"CUPTI_ERROR_INVALID_PARAMETER",
            CUPTI_ERROR_MAX_LIMIT_REACHED => c"CUPTI_ERROR_MAX_LIMIT_REACHED",
            CUPTI_ERROR_NOT_INITIALIZED => c"CUPTI_ERROR_NOT_INITIALIZED",
            CUPTI_ERROR_INVALID_KIND => c"CUPTI_ERROR_INVALID_KIND",
            CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED => c"CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED",
            _ => c"CUPTI_ERROR_UNKNOWN",
        };
        // SAFETY: non-null out-pointer; 'static string.
        unsafe { *text = s.as_ptr() };
        CUPTI_SUCCESS
    })
}
