//! CUPTI's subscribers, by the version gpusim reports (`GPUSIM_CUPTI_VERSION`).
//!
//! Before CUPTI 13.3 a process has one subscriber: a second `cuptiSubscribe` gets
//! `CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED`. CUPTI 13.3 (CUPTI_API_VERSION 130300;
//! `cupti_callbacks.h` and `cupti_activity.h` of the `nvidia-cuda-cupti` 13.3.35 wheel, and
//! NVIDIA's CUPTI guide, "Multiple Subscribers") shares CUPTI among subscribers that all use
//! the V2 API, modelled here as it documents it:
//!
//! - `cuptiSubscribe_v2(handle, callback, userdata, CUpti_SubscriberParams *)`: the **first**
//!   subscriber's `allowMultipleSubscribers` decides for the process. 1: later
//!   `cuptiSubscribe_v2` calls with 1 succeed too; 0, or a first subscriber that used the
//!   unversioned `cuptiSubscribe`: every later one is refused (and the refused one gets the
//!   holder's name, "CUPTI for <name>", in `oldSubscriberName`). V1 and V2 do not mix: the
//!   unversioned activity calls are refused while subscribers share CUPTI. Below 13.3 the flag
//!   is ignored (one subscriber), and below 13.0 the V2 entry points answer
//!   `CUPTI_ERROR_NOT_SUPPORTED` (absent).
//! - each V2 subscriber has its own activity kinds (`cuptiActivityEnable_v2`), buffer
//!   callbacks (`cuptiActivityRegisterCallbacks_v2`), dropped count (reset when read) and
//!   callbacks (`cuptiEnableCallback` with its handle), and receives only the records of the
//!   kinds it enabled, from the moment it enabled them (its own cursor into libcuda's log: a
//!   subscriber that starts mid-run gets no history, and does not take records from another);
//! - `cuptiActivityFlushAll` flushes every subscriber's buffers.
//!
//! Simplification: the thread-id type (`CUPTI_ACTIVITY_ATTR_THREAD_ID_TYPE`) is one for the
//! process, not per subscriber.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};

use gpusim_core::ffi::guard;

use crate::activity::{self, Cursor};
use crate::api::{
    CuptiResult, CUPTI_ERROR_INVALID_PARAMETER, CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED,
    CUPTI_ERROR_NOT_SUPPORTED, CUPTI_ERROR_UNKNOWN, CUPTI_SUCCESS,
};
use crate::callbacks::{self, CallbackFn};

/// The first CUPTI_API_VERSION that shares CUPTI among subscribers (CUDA 13.3).
pub const MULTI_SUBSCRIBER_VERSION: u32 = 130_300;
/// The first with `cuptiSubscribe_v2` (CUDA 13.0).
const V2_VERSION: u32 = 130_000;
/// `CUPTI_ACTIVITY_ATTR_MULTIPLE_SUBSCRIBER_STATE` (13.3 header).
const ATTR_MULTIPLE_SUBSCRIBER_STATE: u32 = 12;
/// `CUPTI_ACTIVITY_ATTR_THREAD_ID_TYPE` (13.3 header).
const ATTR_THREAD_ID_TYPE: u32 = 21;
/// `CUPTI_OLD_SUBSCRIBER_NAME_MIN_LEN`.
const OLD_NAME_MIN_LEN: usize = 64;
/// The unversioned subscriber's handle.
const V1_HANDLE: usize = 0x5ab5;

/// The CUPTI_API_VERSION gpusim reports: `GPUSIM_CUPTI_VERSION`, default 28 (CUDA 12.9).
pub fn version() -> u32 {
    static VERSION: OnceLock<u32> = OnceLock::new();
    *VERSION.get_or_init(|| std::env::var("GPUSIM_CUPTI_VERSION").ok().and_then(|v| v.parse().ok()).unwrap_or(28))
}

/// `CUpti_SubscriberParams` (cupti_callbacks.h, 13.3: 40 bytes, checked with offsetof).
#[repr(C)]
pub struct SubscriberParams {
    /// 0: the size the client filled in
    pub struct_size: usize,
    /// 8: the subscriber's name (CUPTI reports it as "CUPTI for <name>")
    pub subscriber_name: *const c_char,
    /// 16: where a refused subscriber gets the holder's name
    pub old_subscriber_name: *mut c_char,
    /// 24: that buffer's size
    pub old_subscriber_size: usize,
    /// 32: 1 to allow other subscribers
    pub allow_multiple_subscribers: u8,
    /// 33
    pub padding: [u8; 7],
}

const _: () = {
    assert!(std::mem::size_of::<SubscriberParams>() == 40);
    assert!(std::mem::offset_of!(SubscriberParams, old_subscriber_size) == 24);
    assert!(std::mem::offset_of!(SubscriberParams, allow_multiple_subscribers) == 32);
};

/// `CUpti_BuffersCallbackRequestFunc_v2`.
pub type RequestV2 = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize, *mut c_void);
/// `CUpti_BuffersCallbackCompleteFunc_v2`.
pub type CompleteV2 = unsafe extern "C" fn(*mut u8, usize, usize, *mut c_void);

/// `CUpti_BufferCallbackRequestInfo` (8 bytes).
#[repr(C)]
struct RequestInfo {
    struct_size: usize,
}

/// `CUpti_BufferCallbackCompleteInfo` (32 bytes).
#[repr(C)]
struct CompleteInfo {
    struct_size: usize,
    thread_id: u64,
    record_layouts: *mut c_void,
    num_record_layouts: usize,
}

/// One V2 subscriber's activity settings.
struct Sub {
    handle: usize,
    enabled: [bool; 64],
    request: Option<RequestV2>,
    complete: Option<CompleteV2>,
    dropped: u64,
}

/// Who holds CUPTI.
#[derive(Default)]
struct Registry {
    /// Whether the first subscriber allowed others (meaningful while `count > 0`).
    shared: bool,
    /// Subscribers, V1 or V2.
    count: usize,
    /// The first subscriber's name, for refused ones.
    first_name: String,
    /// The V2 subscribers' activity.
    subs: Vec<Sub>,
    next_handle: usize,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REG: OnceLock<Mutex<Registry>> = OnceLock::new();
    REG.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Each V2 subscriber's progress through libcuda's log (locked only by flushes).
fn cursors() -> MutexGuard<'static, HashMap<usize, Cursor>> {
    static CURSORS: OnceLock<Mutex<HashMap<usize, Cursor>>> = OnceLock::new();
    CURSORS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether subscribers share CUPTI now (CUPTI_ACTIVITY_ATTR_MULTIPLE_SUBSCRIBER_STATE = 1).
pub fn multi() -> bool {
    let r = registry();
    r.count > 0 && r.shared
}

/// Adds a subscriber: `v2` is None for `cuptiSubscribe`, else (name, allow others). The
/// refusal carries the holder's name.
pub fn add(callback: CallbackFn, userdata: usize, v2: Option<(String, bool)>) -> Result<(usize, String), String> {
    let mut r = registry();
    let allow = v2.as_ref().is_some_and(|v| v.1) && version() >= MULTI_SUBSCRIBER_VERSION;
    if r.count > 0 && !(r.shared && allow) {
        return Err(r.first_name.clone());
    }
    let handle = match &v2 {
        None => V1_HANDLE,
        Some(_) => {
            r.next_handle += 1;
            0x5ab5_0000 + r.next_handle
        }
    };
    if r.count == 0 {
        r.shared = allow;
        r.first_name = match &v2 {
            Some((name, _)) if !name.is_empty() => format!("CUPTI for {name}"),
            _ => "CUPTI".into(),
        };
    }
    r.count += 1;
    if v2.is_some() {
        r.subs.push(Sub { handle, enabled: [false; 64], request: None, complete: None, dropped: 0 });
    }
    callbacks::subscribers()
        .push((handle, callbacks::Subscriber { callback, userdata, enabled: Default::default(), all_driver: false }));
    let first = r.first_name.clone();
    drop(r);
    callbacks::attach();
    Ok((handle, first))
}

/// `cuptiFinalize`: every subscriber is gone (their handles are invalid from now on).
pub fn clear() {
    callbacks::subscribers().clear();
    let mut r = registry();
    let next_handle = r.next_handle;
    *r = Registry { next_handle, ..Registry::default() };
    drop(r);
    cursors().clear();
}

/// Removes a subscriber; false for an unknown handle.
pub fn remove(handle: usize) -> bool {
    let mut subs = callbacks::subscribers();
    let Some(at) = subs.iter().position(|(h, _)| *h == handle) else { return false };
    subs.remove(at);
    drop(subs);
    let mut r = registry();
    r.count = r.count.saturating_sub(1);
    r.subs.retain(|s| s.handle != handle);
    drop(r);
    cursors().remove(&handle);
    true
}

thread_local! {
    static IN_FLUSH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Delivers every V2 subscriber's records (the part-filled buffers too when `forced`); false
/// when there is none with callbacks.
pub fn flush_all(forced: bool) -> bool {
    let clients: Vec<(usize, [bool; 64], RequestV2, CompleteV2)> =
        registry().subs.iter().filter_map(|s| Some((s.handle, s.enabled, s.request?, s.complete?))).collect();
    if clients.is_empty() {
        return false;
    }
    // A flush from a completion callback on this thread: the running one covers it.
    if IN_FLUSH.with(|f| f.replace(true)) {
        return true;
    }
    let mut cursors = cursors();
    let mut dropped_by: Vec<(usize, u64)> = Vec::new();
    for (handle, enabled, request, complete) in clients {
        let cur = cursors.entry(handle).or_default();
        let mut ask = || {
            let (mut buffer, mut size, mut max_records) = (std::ptr::null_mut(), 0usize, 0usize);
            let mut info = RequestInfo { struct_size: std::mem::size_of::<RequestInfo>() };
            // SAFETY: the subscriber's callback with valid out-pointers.
            unsafe { request(&mut buffer, &mut size, &mut max_records, (&mut info as *mut RequestInfo).cast()) };
            (buffer, size)
        };
        let mut done = |buffer: *mut u8, size: usize, used: usize| {
            let mut info = CompleteInfo {
                struct_size: std::mem::size_of::<CompleteInfo>(),
                thread_id: 0,
                record_layouts: std::ptr::null_mut(),
                num_record_layouts: 0,
            };
            // SAFETY: returning the subscriber's own buffer with the bytes written.
            unsafe { complete(buffer, size, used, (&mut info as *mut CompleteInfo).cast()) };
        };
        if let Some(d) = cur.deliver(&enabled, &mut ask, &mut done, forced) {
            dropped_by.push((handle, d));
        }
    }
    drop(cursors);
    IN_FLUSH.with(|f| f.set(false));
    let mut r = registry();
    for (handle, d) in dropped_by {
        if let Some(s) = r.subs.iter_mut().find(|s| s.handle == handle) {
            s.dropped += d;
        }
    }
    true
}

/// Runs `f` on the V2 subscriber `handle`; CUPTI_ERROR_INVALID_PARAMETER when there is none,
/// CUPTI_ERROR_NOT_SUPPORTED below 13.0.
fn with_sub(handle: *mut c_void, f: impl FnOnce(&mut Sub) -> CuptiResult) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if version() < V2_VERSION {
            return CUPTI_ERROR_NOT_SUPPORTED;
        }
        let mut r = registry();
        match r.subs.iter_mut().find(|s| s.handle == handle as usize) {
            Some(s) => f(s),
            None => CUPTI_ERROR_INVALID_PARAMETER,
        }
    })
}

/// `CUptiResult cuptiSubscribe_v2(CUpti_SubscriberHandle *, CUpti_CallbackFunc, void *userdata,
/// CUpti_SubscriberParams *)`.
#[no_mangle]
pub extern "C" fn cuptiSubscribe_v2(
    subscriber: *mut *mut c_void,
    callback: Option<CallbackFn>,
    userdata: *mut c_void,
    params: *mut SubscriberParams,
) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if version() < V2_VERSION {
            return CUPTI_ERROR_NOT_SUPPORTED;
        }
        let (Some(callback), false) = (callback, subscriber.is_null()) else {
            return CUPTI_ERROR_INVALID_PARAMETER;
        };
        // SAFETY: null or the client's params struct, whose size it states.
        let p = unsafe { params.as_mut() };
        if p.as_ref().is_some_and(|p| p.struct_size < 8) {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let name = p
            .as_ref()
            .filter(|p| p.struct_size >= 16 && !p.subscriber_name.is_null())
            // SAFETY: a C string per the header.
            .map(|p| unsafe { std::ffi::CStr::from_ptr(p.subscriber_name) }.to_string_lossy().into_owned())
            .unwrap_or_default();
        let allow = p.as_ref().is_some_and(|p| p.struct_size > 32 && p.allow_multiple_subscribers == 1);
        // The first subscriber's name goes to `oldSubscriberName` either way: the holder that
        // refused us, or the first of those we now share CUPTI with.
        let (rc, first) = match add(callback, userdata as usize, Some((name, allow))) {
            Ok((handle, first)) => {
                // SAFETY: non-null out-pointer.
                unsafe { *subscriber = handle as *mut c_void };
                (CUPTI_SUCCESS, first)
            }
            Err(holder) => (CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED, holder),
        };
        if let Some(p) = p.filter(|p| p.struct_size >= 32 && !p.old_subscriber_name.is_null()) {
            let n = first.len().min(p.old_subscriber_size.saturating_sub(1)).min(OLD_NAME_MIN_LEN - 1);
            if p.old_subscriber_size > 0 {
                // SAFETY: the client's buffer of `old_subscriber_size` bytes; n + 1 fit.
                unsafe {
                    std::ptr::copy_nonoverlapping(first.as_ptr(), p.old_subscriber_name.cast::<u8>(), n);
                    *p.old_subscriber_name.add(n) = 0;
                }
            }
        }
        rc
    })
}

/// `CUptiResult cuptiActivityRegisterCallbacks_v2(CUpti_SubscriberHandle,
/// CUpti_BuffersCallbackRequestFunc_v2, CUpti_BuffersCallbackCompleteFunc_v2)`.
#[no_mangle]
pub extern "C" fn cuptiActivityRegisterCallbacks_v2(
    subscriber: *mut c_void,
    request: Option<RequestV2>,
    complete: Option<CompleteV2>,
) -> CuptiResult {
    if request.is_none() || complete.is_none() {
        return CUPTI_ERROR_INVALID_PARAMETER;
    }
    with_sub(subscriber, |s| {
        (s.request, s.complete) = (request, complete);
        CUPTI_SUCCESS
    })
}

fn set_kind_v2(subscriber: *mut c_void, kind: u32, on: bool) -> CuptiResult {
    if crate::layout::record_size(kind).is_none() {
        return 21; // CUPTI_ERROR_INVALID_KIND
    }
    let mut starts = false;
    let rc = with_sub(subscriber, |s| {
        starts = on && !s.enabled.iter().any(|&e| e);
        s.enabled[kind as usize] = on;
        CUPTI_SUCCESS
    });
    if rc == CUPTI_SUCCESS && on {
        if starts {
            // This subscriber records from now on, whatever the others have enabled.
            cursors().entry(subscriber as usize).or_default().skip_to_now();
        }
        activity::ensure_worker();
    }
    rc
}

/// `CUptiResult cuptiActivityEnable_v2(CUpti_SubscriberHandle, CUpti_ActivityKind,
/// CUpti_ActivityConfig *)` (the config, for user-defined records, is ignored).
#[no_mangle]
pub extern "C" fn cuptiActivityEnable_v2(subscriber: *mut c_void, kind: u32, _config: *mut c_void) -> CuptiResult {
    set_kind_v2(subscriber, kind, true)
}

/// `CUptiResult cuptiActivityDisable_v2(CUpti_SubscriberHandle, CUpti_ActivityKind,
/// CUpti_ActivityConfig *)`.
#[no_mangle]
pub extern "C" fn cuptiActivityDisable_v2(subscriber: *mut c_void, kind: u32, _config: *mut c_void) -> CuptiResult {
    set_kind_v2(subscriber, kind, false)
}

/// `CUptiResult cuptiActivityGetNextRecord_v2(CUpti_SubscriberHandle, uint8_t *buffer, size_t
/// validBufferSizeBytes, CUpti_Activity **record)`.
#[no_mangle]
pub extern "C" fn cuptiActivityGetNextRecord_v2(
    subscriber: *mut c_void,
    buffer: *mut u8,
    valid_bytes: usize,
    record: *mut *mut u8,
) -> CuptiResult {
    let rc = with_sub(subscriber, |_| CUPTI_SUCCESS);
    if rc != CUPTI_SUCCESS {
        return rc;
    }
    crate::api::cuptiActivityGetNextRecord(buffer, valid_bytes, record)
}

/// `CUptiResult cuptiActivityGetNumDroppedRecords_v2(CUpti_SubscriberHandle, CUcontext, uint32_t
/// streamId, size_t *dropped)`: the subscriber's count, reset to 0 when read.
#[no_mangle]
pub extern "C" fn cuptiActivityGetNumDroppedRecords_v2(
    subscriber: *mut c_void,
    _context: *mut c_void,
    _stream_id: u32,
    dropped: *mut usize,
) -> CuptiResult {
    if dropped.is_null() {
        return CUPTI_ERROR_INVALID_PARAMETER;
    }
    with_sub(subscriber, |s| {
        // SAFETY: non-null out-pointer.
        unsafe { *dropped = std::mem::take(&mut s.dropped) as usize };
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiActivitySetAttribute_v2(CUpti_SubscriberHandle, CUpti_ActivityAttribute,
/// size_t *valueSize, void *value)`: the thread-id type; the multiple-subscriber state cannot
/// be set; other attributes are accepted and ignored.
#[no_mangle]
pub extern "C" fn cuptiActivitySetAttribute_v2(
    subscriber: *mut c_void,
    attr: u32,
    size: *mut usize,
    value: *mut c_void,
) -> CuptiResult {
    if size.is_null() || value.is_null() || attr == ATTR_MULTIPLE_SUBSCRIBER_STATE {
        return CUPTI_ERROR_INVALID_PARAMETER;
    }
    with_sub(subscriber, |_| {
        if attr == ATTR_THREAD_ID_TYPE {
            // SAFETY: non-null; the client states the value's size.
            let kind = unsafe { (*size >= 4).then(|| *(value as *const u32)) };
            match kind {
                Some(k @ (0 | 1)) => activity::THREAD_ID_TYPE.store(k, std::sync::atomic::Ordering::Relaxed),
                _ => return CUPTI_ERROR_INVALID_PARAMETER,
            }
        }
        CUPTI_SUCCESS
    })
}

/// `CUptiResult cuptiActivityGetAttribute_v2(CUpti_SubscriberHandle, CUpti_ActivityAttribute,
/// size_t *valueSize, void *value)`: the multiple-subscriber state only (uint8_t: 0 one
/// subscriber, 1 shared, 2 not set yet); the subscriber handle may be null for it.
#[no_mangle]
pub extern "C" fn cuptiActivityGetAttribute_v2(
    _subscriber: *mut c_void,
    attr: u32,
    size: *mut usize,
    value: *mut c_void,
) -> CuptiResult {
    guard(CUPTI_ERROR_UNKNOWN, || {
        if version() < V2_VERSION {
            return CUPTI_ERROR_NOT_SUPPORTED;
        }
        if size.is_null() || value.is_null() || attr != ATTR_MULTIPLE_SUBSCRIBER_STATE {
            return CUPTI_ERROR_INVALID_PARAMETER;
        }
        let r = registry();
        let state: u8 = match (r.count, r.shared) {
            (0, _) => 2,
            (_, true) => 1,
            _ => 0,
        };
        // SAFETY: non-null; one byte is written and its size stated.
        unsafe {
            if *size < 1 {
                return CUPTI_ERROR_INVALID_PARAMETER;
            }
            *(value as *mut u8) = state;
            *size = 1;
        }
        CUPTI_SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn nothing(_: *mut c_void, _: u32, _: u32, _: *const c_void) {}

    /// The first subscriber decides: unversioned or not shared → the next is refused with its
    /// name; shared (13.3) → the next V2 one that allows sharing is taken, a V1 one is not.
    /// (One test: the registry is the process's.)
    #[test]
    fn the_first_subscriber_decides_whether_cupti_is_shared() {
        if version() < MULTI_SUBSCRIBER_VERSION {
            // the default (12.9): one subscriber
            let a = add(nothing, 0, Some(("kineto".into(), true))).unwrap().0;
            assert_eq!(add(nothing, 0, Some(("ghostprof".into(), true))), Err("CUPTI for kineto".into()));
            assert!(!multi());
            assert!(remove(a));
        }
        let a = add(nothing, 0, None).unwrap().0;
        assert_eq!(add(nothing, 0, Some(("ghostprof".into(), true))), Err("CUPTI".into()));
        assert!(remove(a));
        assert!(!remove(a), "removed once");
        let b = add(nothing, 0, Some(("kineto".into(), false))).unwrap().0;
        assert!(add(nothing, 0, Some(("ghostprof".into(), true))).is_err());
        assert!(remove(b));
    }
}
