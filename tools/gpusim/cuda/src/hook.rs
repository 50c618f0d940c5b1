//! The API hook libcupti installs (through `gpusim_set_api_hook`) to implement CUPTI's callback
//! API: entry points report their enter and exit, outside the device lock, with the correlation
//! id their activity records will carry.

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use gpusim_core::abi::{ApiHookFn, SITE_ENTER, SITE_EXIT};
use gpusim_core::ffi::guard;

static HOOK: AtomicUsize = AtomicUsize::new(0);

/// The spans CUPTI was attached (hook installed): (start, end or 0, API calls in them).
static ATTACHED: Mutex<Vec<(u64, u64, u64)>> = Mutex::new(Vec::new());
/// Driver API calls made since the current span began.
static CALLS_ATTACHED: AtomicU64 = AtomicU64::new(0);
/// Spans kept (a process that attaches more often keeps its first ones and the count).
const ATTACHED_SPANS_MAX: usize = 4096;

/// `void gpusim_set_api_hook(ApiHookFn hook)`. The real CUPTI stays in the driver's call path
/// from its first use until `cuptiFinalize`: each (un)installation opens or closes a span of
/// [`gpusim_cupti_attached`].
#[no_mangle]
pub extern "C" fn gpusim_set_api_hook(hook: Option<ApiHookFn>) {
    guard((), || {
        let new = hook.map_or(0, |f| f as usize);
        let old = HOOK.swap(new, Ordering::SeqCst);
        let mut spans = ATTACHED.lock().unwrap_or_else(|p| p.into_inner());
        let now = gpusim_core::clock::now_ns();
        if old == 0 && new != 0 {
            CALLS_ATTACHED.store(0, Ordering::SeqCst);
            if spans.len() < ATTACHED_SPANS_MAX {
                spans.push((now, 0, 0));
            }
        } else if old != 0 && new == 0 {
            if let Some(last) = spans.last_mut().filter(|s| s.1 == 0) {
                *last = (last.0, now.max(last.0), CALLS_ATTACHED.load(Ordering::SeqCst));
            }
        }
    })
}

/// `u64 gpusim_cupti_attached(u64 *out, u64 capacity)` (gpusim_core::abi::CUPTI_ATTACHED).
#[no_mangle]
pub extern "C" fn gpusim_cupti_attached(out: *mut u64, capacity: u64) -> u64 {
    guard(0, || {
        let spans = ATTACHED.lock().unwrap_or_else(|p| p.into_inner());
        let open_calls = CALLS_ATTACHED.load(Ordering::SeqCst);
        if !out.is_null() {
            for (i, s) in spans.iter().take(capacity as usize).enumerate() {
                let calls = if s.1 == 0 { open_calls } else { s.2 };
                // SAFETY: the caller's buffer holds `capacity` triples; i < capacity.
                unsafe {
                    *out.add(3 * i) = s.0;
                    *out.add(3 * i + 1) = s.1;
                    *out.add(3 * i + 2) = calls;
                }
            }
        }
        spans.len() as u64
    })
}

fn current() -> Option<ApiHookFn> {
    match HOOK.load(Ordering::SeqCst) {
        0 => None,
        // SAFETY: only ever stored from a valid ApiHookFn.
        f => Some(unsafe { std::mem::transmute::<usize, ApiHookFn>(f) }),
    }
}

/// One API call as seen by the hook.
pub struct Call<'a> {
    /// CUPTI driver cbid.
    pub cbid: u32,
    /// Entry point name.
    pub name: &'a str,
    /// Kernel name for launches.
    pub symbol: *const c_char,
    /// `<api>_params` struct or null.
    pub params: *const c_void,
    /// Correlation id of the call.
    pub correlation_id: u32,
}

/// Whether a hook is installed (skip building parameters otherwise).
pub fn active() -> bool {
    current().is_some()
}

/// Report the enter site.
pub fn enter(call: &Call) {
    if let Some(hook) = current() {
        CALLS_ATTACHED.fetch_add(1, Ordering::Relaxed);
        let name = CString::new(call.name).unwrap_or_default();
        // SAFETY: a hook installed by libcupti with the documented signature.
        unsafe {
            hook(
                SITE_ENTER,
                call.cbid,
                name.as_ptr(),
                call.symbol,
                call.params,
                std::ptr::null_mut(),
                call.correlation_id,
            )
        };
    }
}

/// Report the exit site with the call's result.
pub fn exit(call: &Call, mut result: i32) {
    if let Some(hook) = current() {
        let name = CString::new(call.name).unwrap_or_default();
        // SAFETY: as in `enter`; `result` outlives the call.
        unsafe {
            hook(
                SITE_EXIT,
                call.cbid,
                name.as_ptr(),
                call.symbol,
                call.params,
                &mut result as *mut i32 as *mut c_void,
                call.correlation_id,
            )
        };
    }
}
