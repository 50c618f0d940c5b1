//! `gpusim-train launch-loop --calls N [--threads T]`: the workload of `tools/bench probe`. One
//! process, one tiny kernel launched through `cuLaunchKernel` in a tight loop (by default on one
//! thread; `--threads` splits the calls over T threads to push more events per second at a
//! collector), so that the time per call is the driver call plus whatever a probe on it adds.
//!
//! Protocol on stdio, so a benchmark can attach probes between setup and the timed loop:
//! setup (CUDA context, module, function, a warm-up) → prints `ready <pid>` → waits for one
//! line on stdin (EOF: exit without running) → runs the timed loop → prints one JSON object
//! `{"calls": N, "threads": T, "elapsed_ns": E, "cpu_ns": C, "warmup_calls": W}` and exits.
//! `cpu_ns` is the loop threads' own CPU time (uprobe handling runs in the calling thread, so it
//! is included); unlike `elapsed_ns` it leaves out time a thread spent preempted by other work.
//!
//! The report also has `process_cpu_ns` (for `tools/bench cupti`): the CPU time of the whole
//! process over the timed loop, every thread included, so the work a CUPTI client does on
//! CUPTI's own threads (buffer completion) counts. When a CUPTI client (a
//! `CUDA_INJECTION64_PATH` library) has loaded libcupti, the loop asks CUPTI to deliver its
//! buffered records (`cuptiActivityFlushAll`) before `ready` and again before reading the clock
//! at the end, so exactly the timed calls' records are delivered inside the window
//! (`cupti_flushed` says whether that happened). Without libcupti nothing changes.

use std::ffi::{c_void, CString};
use std::io::{BufRead, Write};
use std::time::Instant;

use crate::driver::{check, Cuda};
use crate::launch::Launchers;

/// Launches before `ready`: first-touch page faults and lazy symbol binding land here, not in
/// the timed loop (and not under a probe, which is attached only after `ready`).
const WARMUP_CALLS: u64 = 10_000;

/// A 1 ns kernel without FLOPs: the simulated stream never falls behind the host, so nothing
/// queues up and no call waits (gpusim's launches never block; only synchronize calls do).
const MODULE_IMAGE: &str = "gpusim-module v1\nbench_empty 1 0\n";

type Handle = *mut c_void;

/// Run the loop; `LD_LIBRARY_PATH` must name a staged gpusim dir. Set `GPUSIM_LAUNCH_CPU_NS=0`
/// to measure the bare call (the default burns 2 µs per launch, like a real driver).
pub fn run(calls: u64, threads: u64) -> Result<(), String> {
    let threads = threads.max(1);
    let cuda = Cuda::load()?;
    let mut module: Handle = std::ptr::null_mut();
    let mut function: Handle = std::ptr::null_mut();
    let image = CString::new(MODULE_IMAGE).map_err(|e| e.to_string())?;
    // SAFETY: calls into the loaded driver with pointers to live locals, following cuda.h.
    unsafe {
        check("cuInit", (cuda.init)(0))?;
        let mut device = 0;
        check("cuDeviceGet", (cuda.device_get)(&mut device, 0))?;
        let mut ctx: Handle = std::ptr::null_mut();
        check("cuDevicePrimaryCtxRetain", (cuda.primary_ctx_retain)(&mut ctx, device))?;
        check("cuCtxSetCurrent", (cuda.ctx_set_current)(ctx))?;
        check("cuModuleLoadData", (cuda.module_load_data)(&mut module, image.as_ptr() as *const c_void))?;
        check("cuModuleGetFunction", (cuda.module_get_function)(&mut function, module, c"bench_empty".as_ptr()))?;
    }
    let mut launchers = Launchers::resolve(&cuda, &["cuLaunchKernel".to_string()])?;
    // The default stream (null), as a simple CUDA program would use.
    for _ in 0..WARMUP_CALLS {
        launchers.launch(function, std::ptr::null_mut())?;
    }

    // The warm-up's records are delivered now, outside the timed window.
    let cupti_flushed = flush_cupti();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready {}", std::process::id()).and_then(|()| stdout.flush()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading the go-ahead: {e}"))? == 0 {
        return Ok(()); // the benchmark went away before starting us
    }

    // Raw pointers are not Send; the handle is an opaque index into gpusim's function table.
    let function_handle = function as usize;
    let process_cpu_start_ns = cpu_clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
    let start = Instant::now();
    let cpu_ns_per_thread: Vec<Result<u64, String>> = if threads == 1 {
        // On the thread that did the warm-up.
        vec![timed_loop(&mut launchers, function_handle, calls)]
    } else {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|i| {
                    let launchers = Launchers::resolve(&cuda, &["cuLaunchKernel".to_string()]);
                    let share = calls / threads + u64::from(i < calls % threads);
                    scope.spawn(move || timed_loop(&mut launchers?, function_handle, share))
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err("a launch thread panicked".into()))).collect()
        })
    };
    let elapsed_ns = start.elapsed().as_nanos() as u64;
    let cpu_ns = cpu_ns_per_thread.into_iter().sum::<Result<u64, String>>()?;
    // The timed calls' records still buffered in CUPTI are delivered (and paid for) here, not
    // at exit after the clock was read.
    let cupti_flushed = cupti_flushed && flush_cupti();
    let process_cpu_ns = cpu_clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) - process_cpu_start_ns;
    let report = serde_json::json!({
        "calls": calls, "threads": threads, "elapsed_ns": elapsed_ns, "cpu_ns": cpu_ns, "warmup_calls": WARMUP_CALLS,
        "process_cpu_ns": process_cpu_ns, "cupti_flushed": cupti_flushed,
    });
    writeln!(stdout, "{report}").and_then(|()| stdout.flush()).map_err(|e| e.to_string())
}

/// `calls` launches; returns the CPU time they took on this thread.
fn timed_loop(launchers: &mut Launchers, function_handle: usize, calls: u64) -> Result<u64, String> {
    let (function, stream) = (function_handle as Handle, std::ptr::null_mut());
    let cpu_start_ns = thread_cpu_ns();
    for _ in 0..calls {
        launchers.launch(function, stream)?;
    }
    Ok(thread_cpu_ns() - cpu_start_ns)
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    cpu_clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// A CPU-time clock (this thread's or this process's), in ns.
fn cpu_clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; both CPU clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `cuptiActivityFlushAll(1)` if some CUPTI client already loaded libcupti into this process
/// (RTLD_NOLOAD: the loop itself never loads it, so an uninstrumented run stays untouched).
/// True when CUPTI accepted the flush.
fn flush_cupti() -> bool {
    // SAFETY: dlopen with RTLD_NOLOAD only takes a reference to an already loaded library;
    // the symbol has the signature of cupti_activity.h; the reference is released afterwards.
    unsafe {
        let lib = libc::dlopen(c"libcupti.so.12".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY);
        if lib.is_null() {
            return false;
        }
        let sym = libc::dlsym(lib, c"cuptiActivityFlushAll".as_ptr());
        let ok = !sym.is_null() && {
            let flush_all = std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> i32>(sym);
            // CUPTI_ACTIVITY_FLAG_FLUSH_FORCED = 1: also deliver partially filled buffers.
            flush_all(1) == 0
        };
        libc::dlclose(lib);
        ok
    }
}
