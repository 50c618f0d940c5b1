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

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready {}", std::process::id()).and_then(|()| stdout.flush()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading the go-ahead: {e}"))? == 0 {
        return Ok(()); // the benchmark went away before starting us
    }

    // Raw pointers are not Send; the handle is an opaque index into gpusim's function table.
    let function_handle = function as usize;
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
    let report = serde_json::json!({
        "calls": calls, "threads": threads, "elapsed_ns": elapsed_ns, "cpu_ns": cpu_ns, "warmup_calls": WARMUP_CALLS,
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
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; the thread CPU clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
