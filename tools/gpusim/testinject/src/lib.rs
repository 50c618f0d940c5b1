//! A minimal `CUDA_INJECTION64_PATH` library for gpusim's injection test: `InitializeInjection`
//! counts its calls, and `gpusim_testinject_calls` reports the count, so a test can check that
//! gpusim's `cuInit` calls it exactly once per process however often `cuInit` runs.

use std::sync::atomic::{AtomicU32, Ordering};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// `int InitializeInjection(void)`: the entry point the CUDA driver calls; 1 means success.
#[no_mangle]
pub extern "C" fn InitializeInjection() -> i32 {
    CALLS.fetch_add(1, Ordering::SeqCst);
    1
}

/// How many times `InitializeInjection` ran in this process.
#[no_mangle]
pub extern "C" fn gpusim_testinject_calls() -> u32 {
    CALLS.load(Ordering::SeqCst)
}
