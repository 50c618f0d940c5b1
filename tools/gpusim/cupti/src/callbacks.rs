//! The CUPTI callback API for the driver domain: one subscriber (as CUPTI before 13.3) or several
//! (CUPTI 13.3's multiple subscribers, [`crate::subscribers`]), per-cbid
//! or whole-domain enabling, and `CUpti_CallbackData` built from libcuda's API hook at each
//! enter and exit. Only `CUPTI_CB_DOMAIN_DRIVER_API` fires; gpusim has no runtime library.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use gpusim_core::abi;
use gpusim_core::ffi::guard;

/// `CUPTI_CB_DOMAIN_DRIVER_API`.
pub const DOMAIN_DRIVER_API: u32 = 1;

/// `CUpti_CallbackFunc`: `void (*)(void *userdata, CUpti_CallbackDomain, CUpti_CallbackId,
/// const void *cbdata)`.
pub type CallbackFn = unsafe extern "C" fn(*mut c_void, u32, u32, *const c_void);

/// `CUpti_CallbackData` (cupti_callbacks.h; offsets checked against the 12.9 header).
#[repr(C)]
pub struct CallbackData {
    /// 0: CUPTI_API_ENTER / CUPTI_API_EXIT
    pub callback_site: u32,
    /// 8
    pub function_name: *const c_char,
    /// 16: the `<api>_params` struct
    pub function_params: *const c_void,
    /// 24: the CUresult, at exit
    pub function_return_value: *mut c_void,
    /// 32: kernel name for launches
    pub symbol_name: *const c_char,
    /// 40
    pub context: *mut c_void,
    /// 48
    pub context_uid: u32,
    /// 56: per-call scratch kept from enter to exit
    pub correlation_data: *mut u64,
    /// 64
    pub correlation_id: u32,
}

const _: () = {
    assert!(std::mem::size_of::<CallbackData>() == 72);
    assert!(std::mem::offset_of!(CallbackData, symbol_name) == 32);
    assert!(std::mem::offset_of!(CallbackData, correlation_data) == 56);
    assert!(std::mem::offset_of!(CallbackData, correlation_id) == 64);
};

/// The subscriber.
pub struct Subscriber {
    /// Its callback.
    pub callback: CallbackFn,
    /// Its userdata.
    pub userdata: usize,
    /// Enabled driver cbids.
    pub enabled: HashSet<u32>,
    /// Whole driver domain enabled.
    pub all_driver: bool,
}

/// The subscribers by handle: one (as CUPTI before 13.3), or several that all subscribed with
/// `cuptiSubscribe_v2` allowing it (CUPTI 13.3; [`crate::subscribers`]). Each gets the
/// callbacks it enabled.
pub fn subscribers() -> MutexGuard<'static, Vec<(usize, Subscriber)>> {
    static SUBS: OnceLock<Mutex<Vec<(usize, Subscriber)>>> = OnceLock::new();
    SUBS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// `correlationData` scratch of the calling thread: CUPTI keeps it between enter and exit.
    static CORRELATION_DATA: Cell<u64> = const { Cell::new(0) };
    /// The site of the subscriber callback this thread is in (None: in none).
    static IN_CALLBACK: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Subscriber callbacks running now, on all threads.
static CALLBACKS_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Whether a `cuptiFinalize` now is one the real CUPTI survives: called from an API exit
/// callback (NVIDIA's recommendation, what its cupti_finalize sample does), or with no
/// callback running on another thread. Err names what a real process would hit: CUPTI tears
/// down the state another thread's callback is using (a SIGSEGV in Kineto before it moved its
/// teardown into the exit callback).
pub fn finalize_is_safe() -> Result<(), String> {
    let mine = IN_CALLBACK.with(|c| c.get());
    if mine == Some(abi::SITE_EXIT) {
        return Ok(());
    }
    let others = CALLBACKS_RUNNING.load(Ordering::SeqCst) - usize::from(mine.is_some());
    if others > 0 {
        return Err(format!(
            "cuptiFinalize outside an API exit callback while {others} callback(s) run on other threads: \
             the real CUPTI frees the state they use (call it from the exit callsite of a driver API)"
        ));
    }
    Ok(())
}

/// CUPTI's first use in the process: from now until `cuptiFinalize` it sits in every driver
/// API call (libcuda's hook), whatever is enabled.
pub fn attach() -> bool {
    install_hook(true)
}

/// Install (or remove) the hook in libcuda; false when libcuda is not loaded.
pub fn install_hook(on: bool) -> bool {
    let Some(set) = abi::lookup(abi::SET_API_HOOK) else { return false };
    // SAFETY: the symbol has the signature in gpusim_core::abi.
    let set = unsafe { std::mem::transmute::<*mut c_void, abi::SetApiHookFn>(set) };
    // SAFETY: valid function pointer; `on_api` matches ApiHookFn.
    unsafe { set(if on { Some(on_api) } else { None }) };
    true
}

/// libcuda's hook: forward an enabled driver API call to the subscriber.
unsafe extern "C" fn on_api(
    site: u32,
    cbid: u32,
    name: *const c_char,
    symbol: *const c_char,
    params: *const c_void,
    return_value: *mut c_void,
    correlation_id: u32,
) {
    guard((), || {
        let wanted: Vec<(CallbackFn, usize)> = subscribers()
            .iter()
            .filter(|(_, s)| s.all_driver || s.enabled.contains(&cbid))
            .map(|(_, s)| (s.callback, s.userdata))
            .collect();
        for (callback, userdata) in wanted {
            call(callback, userdata, site, cbid, name, symbol, params, return_value, correlation_id);
        }
    })
}

/// One subscriber's callback with CUPTI's arguments.
#[allow(clippy::too_many_arguments)]
fn call(
    callback: CallbackFn,
    userdata: usize,
    site: u32,
    cbid: u32,
    name: *const c_char,
    symbol: *const c_char,
    params: *const c_void,
    return_value: *mut c_void,
    correlation_id: u32,
) {
    {
        CORRELATION_DATA.with(|slot| {
            let mut scratch = slot.get();
            let data = CallbackData {
                callback_site: site,
                function_name: name,
                function_params: params,
                function_return_value: return_value,
                symbol_name: symbol,
                context: 0xC0_0000 as *mut c_void,
                context_uid: 1,
                correlation_data: &mut scratch,
                correlation_id,
            };
            CALLBACKS_RUNNING.fetch_add(1, Ordering::SeqCst);
            let outer = IN_CALLBACK.with(|c| c.replace(Some(site)));
            // SAFETY: the subscriber's callback with CUPTI's arguments; `data` outlives it.
            unsafe {
                callback(
                    userdata as *mut c_void,
                    DOMAIN_DRIVER_API,
                    cbid,
                    &data as *const CallbackData as *const c_void,
                )
            };
            IN_CALLBACK.with(|c| c.set(outer));
            CALLBACKS_RUNNING.fetch_sub(1, Ordering::SeqCst);
            slot.set(scratch);
        });
    }
}
