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
//! `GHOSTPROF_PM_DECODE=collector` (set by `ghostprof record`; `pm_decode=collector` in the
//! attach argument) ships PM sampling's decoded images to ghostprof for evaluation instead of
//! evaluating them in the job ([`pm`]).
//!
//! `ghostprof attach` can also load it into a job started without it (ptrace, `dlopen`) and call
//! [`ghostprof_attach`]: one attach session, which ends when ghostprof detaches (CUPTI off,
//! the session's thread gone, the ring removed); the library stays mapped and dormant, and the
//! next attach calls the entry point again.
//!
//! The library is also NCCL's profiler plugin (`NCCL_PROFILER_PLUGIN`, set by `ghostprof
//! record`): [`nccl`] sends each collective's algorithm and protocol through the same ring. Nothing here may panic or unwind into the
//! host: every entry point catches panics, and every failure becomes a status record.

mod api;
mod cost;
mod cupti;
mod nccl;
mod pm;

use std::ffi::{c_char, c_int, CStr};
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
    // Read here, on the thread that called cuInit (the control thread never calls getenv).
    if let Some(on) = std::env::var("GHOSTPROF_PM_DECODE").ok().as_deref().and_then(pm::parse_mode) {
        pm::set_collector_decode(on);
    }
    let started = catch_unwind(cupti::start);
    cost::started(t0);
    match started {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("ghostprof-inject: {e}; the job continues without CUPTI collection"),
        Err(_) => eprintln!("ghostprof-inject: internal error; the job continues without CUPTI collection"),
    }
    1
}

/// [`ghostprof_attach`]: the library was loaded by the driver (`CUDA_INJECTION64_PATH`) and
/// its dormant ring is already there: ghostprof opens that ring instead.
pub const ATTACH_DORMANT: c_int = 1;
/// [`ghostprof_attach`]: a panic was caught.
pub const ATTACH_PANIC: c_int = -6;

/// Called by `ghostprof attach` on a thread it borrowed from the job (the library was just
/// `dlopen`ed, or is still mapped from an earlier attach): starts an attach session configured
/// by `arg` (`key=value` lines: `ring_dir`, `pm_interval_ns`, `pm_decode`, `api_activity`), and returns at
/// once. 0: started; [`ATTACH_DORMANT`]; negative: refused (`cupti::AttachRefused`'s values,
/// [`ATTACH_PANIC`]). Never unwinds.
///
/// # Safety
/// `arg` is null or a NUL-terminated string (ghostprof writes it into the process).
#[no_mangle]
pub unsafe extern "C" fn ghostprof_attach(arg: *const c_char) -> c_int {
    if INITIALIZED.load(Ordering::Acquire) {
        return ATTACH_DORMANT;
    }
    let run = || {
        if arg.is_null() {
            return cupti::AttachRefused::BadArgument as c_int;
        }
        // SAFETY: ghostprof passes a NUL-terminated string it wrote into the process.
        let text = unsafe { CStr::from_ptr(arg) };
        let Ok(text) = text.to_str() else { return cupti::AttachRefused::BadArgument as c_int };
        // `pm_decode=collector|job`: where PM samples are evaluated (cupti's parser ignores
        // the key; an absent or unknown value keeps evaluation in the job).
        let mode = text.lines().find_map(|l| l.strip_prefix("pm_decode=")).and_then(pm::parse_mode);
        pm::set_collector_decode(mode.unwrap_or(false));
        match cupti::AttachArgs::parse(text).and_then(|a| cupti::attach(&a)) {
            Ok(()) => 0,
            Err(e) => e as c_int,
        }
    };
    catch_unwind(run).unwrap_or(ATTACH_PANIC)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_attach_argument_says_where_libcupti_is() {
        let a =
            crate::cupti::AttachArgs::parse("ring_dir=/r\ncupti_path=/c/libcupti.so.13\ncuda_home=/cuda\nnew_key=1\n")
                .unwrap_or_else(|_| panic!("parses"));
        assert_eq!(a.search.cupti_path.as_deref(), Some("/c/libcupti.so.13"));
        assert_eq!(a.search.cuda_home.as_deref(), Some("/cuda"));
        let b = crate::cupti::AttachArgs::parse("ring_dir=/r\n").unwrap_or_else(|_| panic!("parses"));
        assert_eq!(b.search, crate::api::Search::default());
    }
}
