//! `gpusim-inject-check`: a tiny CUDA program for the injection test. It loads `libcuda.so.1`
//! by soname (LD_LIBRARY_PATH must point at a staged gpusim dir), calls `cuInit` twice, then asks
//! the library named by `CUDA_INJECTION64_PATH` (gpusim-testinject) how often its
//! `InitializeInjection` ran, and prints `initialize_injection_calls=N`.

use std::ffi::{c_void, CString};
use std::process::ExitCode;

fn fail(msg: String) -> ExitCode {
    eprintln!("gpusim-inject-check: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    // SAFETY: dlopen/dlsym with valid C strings; the symbols have the declared C signatures.
    unsafe {
        let cuda = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if cuda.is_null() {
            return fail("cannot dlopen libcuda.so.1 (set LD_LIBRARY_PATH to a staged gpusim dir)".into());
        }
        let sym = libc::dlsym(cuda, c"cuInit".as_ptr());
        if sym.is_null() {
            return fail("libcuda.so.1 has no cuInit".into());
        }
        let cu_init: extern "C" fn(u32) -> i32 = std::mem::transmute::<*mut c_void, _>(sym);
        for attempt in 1..=2 {
            let rc = cu_init(0);
            if rc != 0 {
                return fail(format!("cuInit call {attempt} returned {rc}"));
            }
        }
        let Ok(path) = std::env::var("CUDA_INJECTION64_PATH") else {
            return fail("CUDA_INJECTION64_PATH is not set".into());
        };
        let Ok(c_path) = CString::new(path.clone()) else {
            return fail("CUDA_INJECTION64_PATH has a NUL byte".into());
        };
        // RTLD_NOLOAD: only succeeds if the driver really loaded the injection library.
        let inject = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if inject.is_null() {
            println!("initialize_injection_calls=0");
            return fail(format!("{path} was not loaded by cuInit"));
        }
        let sym = libc::dlsym(inject, c"gpusim_testinject_calls".as_ptr());
        if sym.is_null() {
            return fail(format!("{path} is not gpusim-testinject"));
        }
        let calls: extern "C" fn() -> u32 = std::mem::transmute::<*mut c_void, _>(sym);
        println!("initialize_injection_calls={}", calls());
    }
    ExitCode::SUCCESS
}
