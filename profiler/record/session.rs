//! A recording session over a launched command: the child is held before `exec` until the
//! eBPF side traces its pid, so nothing it does is missed; libraries are probed by path before
//! it starts and found again in its maps (and its children's) while it runs; the ring buffer is
//! drained on a timer; the trace is finalized when the command exits or `stop` is set.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::pipeline::{Pipeline, PipelineOptions, PipelineStats};
use crate::collect::host::{AttachReport, HostCollector, HostStats};
use crate::collect::procmaps;
use crate::collect::sched::{CollectError, OffCpuStats, SchedCollector};
use crate::trace::{ProcessInfo, Source, TraceError, TraceInfo, WriteSummary};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("cannot start `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

/// What to record and how.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub command: Vec<String>,
    pub output: PathBuf,
    pub overwrite: bool,
    /// Extra directories to look for libcuda / libnccl in before the command starts
    /// (its LD_LIBRARY_PATH and the loader cache are always searched).
    pub library_dirs: Vec<PathBuf>,
    pub drain_interval: Duration,
    pub rescan_interval: Duration,
    pub max_duration: Option<Duration>,
}

impl LaunchConfig {
    pub fn new(command: Vec<String>, output: PathBuf) -> Self {
        LaunchConfig {
            command,
            output,
            overwrite: false,
            library_dirs: Vec::new(),
            drain_interval: Duration::from_millis(10),
            rescan_interval: Duration::from_millis(200),
            max_duration: None,
        }
    }
}

/// The result of a session.
#[derive(Debug)]
pub struct SessionSummary {
    pub exit_status: Option<ExitStatus>,
    pub write: WriteSummary,
    pub pipeline: PipelineStats,
    pub host: HostStats,
    pub sched: OffCpuStats,
    pub libraries: Vec<AttachReport>,
}

/// A child process held before it runs its command until [`HeldChild::release`].
///
/// `Command::spawn` waits for the child's `exec`, so the child cannot simply block before it;
/// instead it execs `/bin/sh`, which waits for one line on a pipe and then execs the command in
/// the same process (same pid), so the pid can be traced before the command's first instruction.
pub struct HeldChild {
    child: Option<Child>,
    release_fd: libc::c_int,
}

/// File descriptor the holding shell reads its go-ahead from.
const HOLD_FD: libc::c_int = 3;

impl HeldChild {
    /// Spawns `program args...` held.
    pub fn spawn(program: &str, args: &[String]) -> std::io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two fds; both close on exec (the read end is dup'ed to fd 3 below).
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("read -r _ <&3; exec 3<&-; exec \"$@\"").arg("ghostprof-hold").arg(program).args(args);
        // SAFETY: between fork and exec the child only calls the async-signal-safe dup2.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(read_fd, HOLD_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        // SAFETY: the parent no longer needs the read end.
        unsafe { libc::close(read_fd) };
        match spawned {
            Ok(child) => Ok(HeldChild { child: Some(child), release_fd: write_fd }),
            Err(e) => {
                // SAFETY: closing our own fd.
                unsafe { libc::close(write_fd) };
                Err(e)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Lets the child run its command.
    pub fn release(mut self) -> Child {
        self.release_now();
        self.child.take().expect("a held child is released once")
    }

    fn release_now(&mut self) {
        if self.release_fd >= 0 {
            // SAFETY: writing one line to and closing our own pipe end.
            unsafe {
                libc::write(self.release_fd, b"go\n".as_ptr().cast(), 3);
                libc::close(self.release_fd);
            }
            self.release_fd = -1;
        }
    }
}

impl Drop for HeldChild {
    fn drop(&mut self) {
        self.release_now();
    }
}

/// Launches `cfg.command` under the host collector and records it.
pub fn record_command(cfg: &LaunchConfig, stop: &AtomicBool) -> Result<SessionSummary, SessionError> {
    let info = TraceInfo { command: cfg.command.clone(), ..Default::default() };
    let mut collector = HostCollector::load(true)?;
    let mut sched = SchedCollector::load(0, Some(&collector.targets_map()?))?;
    let pipeline = Pipeline::create(&cfg.output, cfg.overwrite, &info, PipelineOptions::default())?;
    let mut producer = pipeline.producer(Source::Ebpf);

    let mut dirs: Vec<String> = cfg.library_dirs.iter().map(|d| d.display().to_string()).collect();
    if let Ok(env) = std::env::var("LD_LIBRARY_PATH") {
        dirs.push(env);
    }
    for lib in procmaps::find_libraries(&["libcuda.so.1", "libnccl.so.2"], Some(&dirs.join(":"))) {
        collector.attach_library(&lib)?;
    }

    let program = cfg.command.first().cloned().unwrap_or_default();
    let held = HeldChild::spawn(&program, &cfg.command[1.min(cfg.command.len())..])
        .map_err(|source| SessionError::Spawn { cmd: cfg.command.join(" "), source })?;
    let pid = held.pid();
    collector.add_target(pid)?;
    producer.push(ProcessInfo {
        time_ns: now_ns(),
        pid,
        ppid: std::process::id(),
        name_id: producer.intern(&program),
        cmdline_id: producer.intern(&cfg.command.join(" ")),
    });
    let mut child = held.release();

    let started = Instant::now();
    let mut last_scan = Instant::now() - cfg.rescan_interval;
    let exit_status = loop {
        if last_scan.elapsed() >= cfg.rescan_interval {
            for lib in collector.rescan() {
                producer.push(lib);
            }
            last_scan = Instant::now();
        }
        if let Err(e) = collector.drain(&mut producer).and_then(|_| sched.drain(&mut producer)) {
            reap_in_background(child);
            return Err(e.into());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if stop.load(Ordering::Acquire) || cfg.max_duration.is_some_and(|d| started.elapsed() >= d) {
            // The recording ends; the job goes on untouched.
            reap_in_background(child);
            break None;
        }
        std::thread::sleep(cfg.drain_interval);
    };
    // Events of the last moments are still in the ring buffer.
    collector.drain(&mut producer)?;
    sched.drain(&mut producer)?;
    drop(producer);
    let (write, pipeline) = pipeline.finish()?;
    Ok(SessionSummary {
        exit_status,
        write,
        pipeline,
        host: collector.stats.clone(),
        sched: sched.stats.clone(),
        libraries: collector.reports.clone(),
    })
}

/// The job keeps running after the recording stops; a thread collects its exit status so it
/// does not linger as a zombie.
fn reap_in_background(mut child: Child) {
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
