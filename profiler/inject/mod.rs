//! Live injection of the CUPTI library into a running CUDA process that was not started with
//! it (`ghostprof attach`): one thread of the target is stopped with ptrace at the entry of a
//! blocking system call, made to `dlopen` the library (handed over as a memfd, so that the path
//! resolves in any mount namespace) and to call its `ghostprof_attach` entry point, and put back
//! exactly as it was, the system call replayed. The target is untrusted input: its maps, its
//! libc and its answers are checked and capped (docs/security.md, "Injection").
//!
//! x86-64 only; [`inject`] refuses anything else with a message saying so.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(target_arch = "x86_64")]
mod ptrace;
mod target;

pub use target::{tracer_of, LibcDlopen};

/// What [`inject`] needs besides the pid.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// The injection library on this host (`libghostprof_inject.so`): its bytes are copied
    /// into a memfd of the target.
    pub library: PathBuf,
    /// Where the library creates its ring, as the target sees it (absolute; `/dev/shm`).
    pub ring_dir: PathBuf,
    /// PM sampling interval passed to the library (0: off).
    pub pm_interval_ns: u64,
    /// Per-call API activity records instead of launch callbacks.
    pub api_activity: bool,
    /// PM samples evaluated by ghostprof's decoder (`pm_decode=collector`), not in the job
    /// (false, the default: in the job; `attach` sets it when it can run a decoder).
    pub pm_decode_collector: bool,
    /// How long one thread of the target may take to enter a blocking system call.
    pub wait: Duration,
}

impl InjectOptions {
    /// Defaults for `library`: rings in `/dev/shm`, PM sampling every 1 ms (or
    /// `GHOSTPROF_PM_INTERVAL_NS` of ghostprof's environment; 0 turns PM off), 2 s to find a
    /// moment. Not `record`'s 50 µs: the job pays for the PM decode per sample (~45 µs of CPU
    /// per sample on an H200 with CUPTI 13.0, even with evaluation in ghostprof's decoder), so
    /// at 50 µs an attach cost a PyTorch job 48 % of its CPU; a job attached in production
    /// gets 1 kHz, which still gives MFU and the per-window categories.
    pub fn new(library: PathBuf) -> Self {
        InjectOptions {
            library,
            ring_dir: PathBuf::from("/dev/shm"),
            pm_interval_ns: std::env::var("GHOSTPROF_PM_INTERVAL_NS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_PM_INTERVAL_NS),
            api_activity: false,
            pm_decode_collector: false,
            wait: Duration::from_secs(2),
        }
    }
}

/// `attach`'s and `watch`'s PM sampling interval (ns) unless `GHOSTPROF_PM_INTERVAL_NS` says.
pub const DEFAULT_PM_INTERVAL_NS: u64 = 1_000_000;

/// What an injection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// The library was loaded now and its attach session started.
    Loaded,
    /// The library was already mapped from an earlier attach: only its entry point was called.
    Reused,
    /// The library was loaded by the CUDA driver at start (`CUDA_INJECTION64_PATH`): its dormant
    /// ring is opened as before, the process's memory is not touched.
    Dormant,
}

/// The memfd name the library is loaded from (`/memfd:ghostprof-inject (deleted)` in maps).
pub const MEMFD_NAME: &str = "ghostprof-inject";
/// The library's attach entry point.
pub const ENTRY: &str = "ghostprof_attach";

/// Why a process was not injected; each is one line saying what to do, and in each case the
/// process was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The target (or ghostprof) is not x86-64.
    #[error("process {pid} is {arch}: live injection supports x86-64 only; start the job with CUDA_INJECTION64_PATH=libghostprof_inject.so for its device timeline, or use --no-inject")]
    NotX86_64 {
        /// The target.
        pid: u32,
        /// What it is.
        arch: String,
    },
    /// The process maps no libcuda.
    #[error("process {pid} has no libcuda mapped (found: {found}): nothing to inject into; is it a CUDA job, and has it initialized CUDA yet?")]
    NoCuda {
        /// The target.
        pid: u32,
        /// The shared libraries it maps.
        found: String,
    },
    /// Another tracer (a debugger, strace) holds the process.
    #[error("process {pid} is already traced by process {tracer} ({name}): a process has one tracer; detach it (or use --no-inject for eBPF only)")]
    Traced {
        /// The target.
        pid: u32,
        /// The tracer's pid.
        tracer: u32,
        /// The tracer's command name.
        name: String,
    },
    /// The kernel refused ptrace.
    #[error("ptrace of process {pid} was refused: {why}; run ghostprof as root (CAP_SYS_PTRACE), or use --no-inject for eBPF only")]
    PtraceDenied {
        /// The target.
        pid: u32,
        /// Yama's setting, seccomp or the errno.
        why: String,
    },
    /// The target's libc exports no `dlopen`.
    #[error("process {pid} has no dlopen to call ({what}): a static or stripped libc, or glibc older than 2.34 without libdl; start the job with CUDA_INJECTION64_PATH=libghostprof_inject.so instead")]
    NoDlopen {
        /// The target.
        pid: u32,
        /// What was looked at.
        what: String,
    },
    /// No thread entered a blocking system call in time.
    #[error("no thread of process {pid} entered a blocking system call within {secs:.1} s, the only moment ghostprof injects at (safe for the loader and malloc); try again, or use --no-inject")]
    NoSafeMoment {
        /// The target.
        pid: u32,
        /// How long was waited.
        secs: f64,
    },
    /// The process exited during the injection.
    #[error("process {pid} exited during the injection")]
    Gone {
        /// The target.
        pid: u32,
    },
    /// The injection library could not be read on this host.
    #[error("the injection library {path}: {what}; set GHOSTPROF_INJECT_LIB to libghostprof_inject.so")]
    Library {
        /// The library.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A step inside the target failed; the thread was put back and the process goes on.
    #[error(
        "injection into process {pid} failed: {what}; the process goes on untouched (use --no-inject for eBPF only)"
    )]
    Failed {
        /// The target.
        pid: u32,
        /// Which step and how.
        what: String,
    },
    /// The library refused to start a session.
    #[error("the injection library in process {pid} refused to start: {what}")]
    Refused {
        /// The target.
        pid: u32,
        /// Its reason.
        what: String,
    },
}

/// The library's refusal codes (`cuda/inject`, `ghostprof_attach`) as text.
pub fn refusal_text(code: i32) -> String {
    match code {
        -1 => "an attach session is still running in it (another ghostprof attach, or one that ended less than a second ago)".into(),
        -2 => "it could not read its argument (a library of another ghostprof version?)".into(),
        -3 => "it could not create its ring (is /dev/shm there and writable in the job's namespace?)".into(),
        -4 => "no libcupti was found for it (set LD_LIBRARY_PATH for the job, or CUDA_HOME)".into(),
        -5 => "it could not start its thread".into(),
        -6 => "it hit an internal error".into(),
        c => format!("unknown code {c}"),
    }
}

/// Injects the library into `pid` (or finds it there) and starts its attach session; the ring
/// appears as `ghostprof-<its own pid>.ring` in `opts.ring_dir` of its mount namespace
/// (`nspid`, `/proc/PID/root`). Every refusal leaves the process as it was.
pub fn inject(pid: u32, opts: &InjectOptions) -> Result<Injected, InjectError> {
    // A process that ends while it is looked at fails any step (its maps read empty, ptrace
    // answers EPERM): it is gone, not a refusal (`watch` meets it at the end of a job).
    inject_into(pid, opts).map_err(|e| match e {
        InjectError::Gone { .. } => e,
        _ if process_exiting(pid) => InjectError::Gone { pid },
        e => e,
    })
}

/// Whether process `pid` has exited or is exiting (gone from /proc, a zombie, or past the
/// point where it lets go of its memory): nothing can be injected into it any more.
pub fn process_exiting(pid: u32) -> bool {
    ptrace::exiting(&format!("/proc/{pid}/stat"))
}

fn inject_into(pid: u32, opts: &InjectOptions) -> Result<Injected, InjectError> {
    let maps = target::Maps::read(pid).map_err(|_| InjectError::Gone { pid })?;
    if maps.has_file_named("libghostprof_inject.so") {
        return Ok(Injected::Dormant);
    }
    if let Some(arch) = target::non_x86_64(pid) {
        return Err(InjectError::NotX86_64 { pid, arch });
    }
    if !maps.has_file_prefix("libcuda.so") {
        return Err(InjectError::NoCuda { pid, found: maps.library_names() });
    }
    if let Some((tracer, name)) = tracer_of(pid) {
        return Err(InjectError::Traced { pid, tracer, name });
    }
    let entry = target::entry_offset(&opts.library)?;
    let loaded = maps.memfd_base(MEMFD_NAME);
    if loaded.is_some() {
        wait_for_session_end(pid, SESSION_END_WAIT);
    }
    let plan = Plan {
        pid,
        dlopen: if loaded.is_some() { None } else { Some(target::find_dlopen(pid, &maps)?) },
        library: &opts.library,
        entry_offset: entry,
        loaded_base: loaded,
        arg: entry_argument(opts, &target::environ_values(pid, &["GHOSTPROF_CUPTI_PATH", "CUDA_HOME"])),
        wait: opts.wait,
    };
    run_plan(&plan)
}

/// How long a new attach waits for the library's previous session to end (its last PM decode,
/// flush and CUPTI teardown) before asking it for a new one.
const SESSION_END_WAIT: Duration = Duration::from_secs(3);

/// The library's session thread is named `ghostprof-attach` (the kernel keeps 15 bytes): while
/// one is alive in `pid`, a new session would be refused, so an attach right after a detach
/// waits for it (up to `max`) instead of falling back to eBPF only. A job that names a thread
/// of its own so only delays the attach; the library's own check still decides.
fn wait_for_session_end(pid: u32, max: Duration) {
    let started = std::time::Instant::now();
    let alive = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().any(|t| {
            std::fs::read(t.path().join("comm"))
                .is_ok_and(|c| c.strip_suffix(b"\n").unwrap_or(&c) == b"ghostprof-attac")
        })
    };
    while alive() && started.elapsed() < max {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The entry point's argument: `key=value` lines (cuda/inject `AttachArgs`). `env` is the
/// job's GHOSTPROF_CUPTI_PATH and CUDA_HOME, where the library looks for libcupti.
fn entry_argument(opts: &InjectOptions, env: &[Option<String>]) -> String {
    let mut arg = format!(
        "ring_dir={}\npm_interval_ns={}\napi_activity={}\npm_decode={}\n",
        opts.ring_dir.display(),
        opts.pm_interval_ns,
        u8::from(opts.api_activity),
        if opts.pm_decode_collector { "collector" } else { "job" }
    );
    for (key, value) in ["cupti_path", "cuda_home"].iter().zip(env) {
        if let Some(v) = value {
            arg.push_str(&format!("{key}={v}\n"));
        }
    }
    arg
}

/// What the thread will be made to do.
#[allow(dead_code)]
struct Plan<'a> {
    pid: u32,
    /// `dlopen`'s address in the target (None: the library is already mapped).
    dlopen: Option<LibcDlopen>,
    library: &'a Path,
    /// `ghostprof_attach`'s offset from the library's load base.
    entry_offset: u64,
    /// The load base of the library already mapped.
    loaded_base: Option<u64>,
    /// The entry point's argument.
    arg: String,
    wait: Duration,
}

#[cfg(target_arch = "x86_64")]
fn run_plan(plan: &Plan<'_>) -> Result<Injected, InjectError> {
    ptrace::run(plan)
}

#[cfg(not(target_arch = "x86_64"))]
fn run_plan(plan: &Plan<'_>) -> Result<Injected, InjectError> {
    Err(InjectError::NotX86_64 {
        pid: plan.pid,
        arch: format!("traced by a ghostprof built for {}", std::env::consts::ARCH),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_carries_where_the_job_keeps_libcupti() {
        let mut opts = InjectOptions::new("/x/libghostprof_inject.so".into());
        opts.pm_decode_collector = true;
        let arg = entry_argument(&opts, &[Some("/opt/cupti/libcupti.so.13".into()), None]);
        assert_eq!(
            arg,
            "ring_dir=/dev/shm\npm_interval_ns=1000000\napi_activity=0\npm_decode=collector\n\
             cupti_path=/opt/cupti/libcupti.so.13\n"
        );
    }
}
