//! ghostprof's CUPTI injection library. The CUDA driver loads it from `CUDA_INJECTION64_PATH`
//! and calls [`InitializeInjection`] from the process's first `cuInit`. It creates the
//! shared-memory ring `$GHOSTPROF_RING_DIR/ghostprof-<pid>.ring` (default `/dev/shm`) and:
//!
//! - with `GHOSTPROF_ENABLE=1` (set by `ghostprof record`) starts CUPTI activity collection at
//!   once;
//! - otherwise stays **dormant** (no CUPTI subscription, one 50 ms timer) until a ghostprof
//!   attaches to the ring and sets its control word, and stops again when it detaches.
//!
//! Activity records (kernels, copies, sets, synchronization, driver and runtime API, NVTX
//! markers) are copied into the ring as they are (their CUPTI layout, which ghostprof parses as
//! untrusted input), except that name pointers, meaningless in another process, are replaced
//! by ids whose strings go through the ring once.
//!
//! The library is also NCCL's profiler plugin (`NCCL_PROFILER_PLUGIN`, set by `ghostprof
//! record`): [`nccl`] sends each collective's algorithm and protocol through the same ring. Nothing here may panic or unwind into the
//! host: every entry point catches panics, and every failure becomes a status record.

mod api;
mod cost;
mod cupti;
mod nccl;
mod pm;

use std::ffi::c_int;
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicBool, Ordering};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Called by the CUDA driver (once per process; later calls are no-ops). Returns 1 as the
/// driver expects; failures are reported through the ring, and the job runs on untouched.
#[no_mangle]
pub extern "C" fn InitializeInjection() -> c_int {
    if INITIALIZED.swap(true, Ordering::AcqRel) {
        return 1;
    }
    let t0 = cost::init();
    let started = catch_unwind(cupti::start);
    cost::started(t0);
    match started {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("ghostprof-inject: {e}; the job continues without CUPTI collection"),
        Err(_) => eprintln!("ghostprof-inject: internal error; the job continues without CUPTI collection"),
    }
    1
}
