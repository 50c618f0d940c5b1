//! The API hook libcupti installs (through `gpusim_set_api_hook`) to implement CUPTI's callback
//! API: entry points report their enter and exit, outside the device lock, with the correlation
//! id their activity records will carry.

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

use gpusim_core::abi::{ApiHookFn, SITE_ENTER, SITE_EXIT};
use gpusim_core::ffi::guard;

static HOOK: AtomicUsize = AtomicUsize::new(0);

/// `void gpusim_set_api_hook(ApiHookFn hook)`.
#[no_mangle]
pub extern "C" fn gpusim_set_api_hook(hook: Option<ApiHookFn>) {
    guard((), || HOOK.store(hook.map_or(0, |f| f as usize), Ordering::SeqCst))
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
