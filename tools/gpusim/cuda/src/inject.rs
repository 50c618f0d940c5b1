//! `CUDA_INJECTION64_PATH`: like the real driver, the first `cuInit` of a process `dlopen`s the
//! named library and calls its `int InitializeInjection(void)` once; later `cuInit` calls (and a
//! re-entrant one from inside the injection) do not call it again.

use std::sync::atomic::{AtomicBool, Ordering};

static STARTED: AtomicBool = AtomicBool::new(false);

/// Load and initialize the injection library, once per process. Failures are reported on
/// stderr and otherwise ignored, as the real driver does (the job still runs).
pub fn run_once() {
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(path) = std::env::var("CUDA_INJECTION64_PATH") else {
        return;
    };
    if path.is_empty() {
        return;
    }
    let Ok(c_path) = std::ffi::CString::new(path.clone()) else {
        eprintln!("gpusim libcuda: CUDA_INJECTION64_PATH contains a NUL byte; ignored");
        return;
    };
    // SAFETY: dlopen/dlsym with valid C strings; the handle stays open for the process lifetime
    // because the injection library keeps running (callbacks, threads).
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if handle.is_null() {
            eprintln!("gpusim libcuda: cannot load CUDA_INJECTION64_PATH={path}");
            return;
        }
        let sym = libc::dlsym(handle, c"InitializeInjection".as_ptr());
        if sym.is_null() {
            eprintln!("gpusim libcuda: {path} has no InitializeInjection symbol");
            return;
        }
        let init: extern "C" fn() -> i32 = std::mem::transmute(sym);
        init();
    }
}
