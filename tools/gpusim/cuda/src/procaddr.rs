//! `cuGetProcAddress`: how cudart and frameworks find driver entry points. Lookups go through
//! this library's own dynamic symbol table, so a returned pointer is the exported function a
//! uprobe is attached to. With `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM` the `_ptsz` /
//! `_ptds` variant wins, and the `_v2` form is preferred over the legacy name, as in the driver.

use std::ffi::{c_char, c_void, CString};

use gpusim_core::ffi::guard;

use crate::api_init::checked;
use crate::types::*;

const PER_THREAD_DEFAULT_STREAM: u64 = 1 << 1;

/// A handle to this very library, found from one of its own functions' addresses.
fn own_handle() -> *mut c_void {
    // SAFETY: dladdr on an address inside this library; dlopen with RTLD_NOLOAD only takes a
    // reference to the already loaded object.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(own_handle as *const c_void, &mut info) == 0 || info.dli_fname.is_null() {
            return std::ptr::null_mut();
        }
        libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD)
    }
}

fn resolve(symbol: &str, flags: u64) -> Option<*mut c_void> {
    let handle = own_handle();
    if handle.is_null() {
        return None;
    }
    let mut candidates = Vec::new();
    if flags & PER_THREAD_DEFAULT_STREAM != 0 {
        candidates.push(format!("{symbol}_ptsz"));
        candidates.push(format!("{symbol}_ptds"));
    }
    candidates.push(format!("{symbol}_v2"));
    candidates.push(symbol.to_string());
    candidates.into_iter().find_map(|name| {
        let c_name = CString::new(name).ok()?;
        // SAFETY: valid handle and C string.
        let ptr = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
        (!ptr.is_null()).then_some(ptr)
    })
}

fn get_proc_address(symbol: *const c_char, pfn: *mut *mut c_void, flags: u64, status: *mut i32) -> CuResult {
    // SAFETY: the caller passes a NUL-terminated name or null.
    let Some(name) = (unsafe { gpusim_core::ffi::c_str(symbol) }) else {
        return CUDA_ERROR_INVALID_VALUE;
    };
    if pfn.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    let found = resolve(&name, flags);
    // SAFETY: non-null out-pointers.
    unsafe {
        *pfn = found.unwrap_or(std::ptr::null_mut());
        if !status.is_null() {
            *status = if found.is_some() { 0 } else { 1 };
        }
    }
    if found.is_some() {
        CUDA_SUCCESS
    } else {
        CUDA_ERROR_NOT_FOUND
    }
}

/// `CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)`
/// (the pre-12.0 export).
#[no_mangle]
pub extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    _cuda_version: i32,
    flags: u64,
) -> CuResult {
    guard(CUDA_ERROR_UNKNOWN, || get_proc_address(symbol, pfn, flags, std::ptr::null_mut()))
}

/// `CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
/// cuuint64_t flags, CUdriverProcAddressQueryResult *symbolStatus)`.
#[no_mangle]
pub extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    _cuda_version: i32,
    flags: u64,
    status: *mut i32,
) -> CuResult {
    checked(|| get_proc_address(symbol, pfn, flags, status))
}
