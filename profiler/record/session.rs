//! A recording session over a launched command: the child is held before `exec` until the
//! eBPF side traces its pid, so nothing it does is missed; libraries are probed by path before
//! it starts and found again in its maps (and its children's) while it runs; the ring buffer is
//! drained on a timer; the trace is finalized when the command exits or `stop` is set.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::collectors::{Collectors, CollectorsSummary, Ended, LoopOptions, Rings};
use super::launch_probes::LaunchProbes;
use super::progress::Progress;
use crate::collect::cupti::CuptiStats;
use crate::collect::host::{AttachReport, HostStats, UprobeLinks};
use crate::collect::nvml::NvmlStats;
use crate::collect::procmaps;
use crate::collect::sched::{CollectError, OffCpuStats};
use crate::pipeline::{Pipeline, PipelineOptions, PipelineStats};
use crate::trace::{ClockDomain, ClockSync, ProcessInfo, Source, TraceError, TraceInfo, WriteSummary};

/// This host's CLOCK_MONOTONIC → CLOCK_REALTIME pair, so `report` can put traces of several
/// hosts on one timeline when their collectives cannot (docs/metrics.md, "Clock alignment").
pub(crate) fn realtime_sync() -> ClockSync {
    let (monotonic_ns, other_ns, uncertainty_ns) = crate::clock::realtime_pair();
    ClockSync { monotonic_ns, other_ns, uncertainty_ns, domain: ClockDomain::Realtime as u32, device: 0 }
}

/// Why a recording session (record or attach) failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A collector could not be started or read.
    #[error(transparent)]
    Collect(#[from] CollectError),
    /// The trace file could not be created or read.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The trace could not be written (a full disk, an I/O error): the file keeps every chunk
    /// written before the error; `job` says what became of the recorded job.
    #[error("{source}; {job}")]
    WriteFailed {
        /// The write error.
        #[source]
        source: TraceError,
        /// The job's fate: still running, exited, or detached.
        job: String,
    },
    /// A process could not be started (the command, or a helper such as `mkdir`).
    #[error("cannot start `{cmd}`: {source}")]
    Spawn {
        /// The command line that failed.
        cmd: String,
        /// The spawn's I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What to record and how.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The trace file to write.
    pub output: PathBuf,
    /// Replace `output` if it exists (otherwise an existing file is an error).
    pub overwrite: bool,
    /// Extra directories to look for libcuda / libnccl in before the command starts
    /// (its LD_LIBRARY_PATH and the loader cache are always searched).
    pub library_dirs: Vec<PathBuf>,
    /// How long the session sleeps between drains of the collectors.
    pub drain_interval: Duration,
    /// How often new GPU libraries and CUPTI rings are looked for.
    pub rescan_interval: Duration,
    /// Stop recording after this long (None: until the command exits or `stop` is set).
    pub max_duration: Option<Duration>,
    /// The CUPTI injection library to load into the command (`CUDA_INJECTION64_PATH`);
    /// None: eBPF only.
    pub inject_lib: Option<PathBuf>,
    /// Where the injection library's rings live; None: a private directory under /dev/shm
    /// for this session, removed at its end.
    pub ring_dir: Option<PathBuf>,
    /// Run the command as this (uid, gid) — the invoking user under sudo — and give them the
    /// trace file and the ring directory.
    pub run_as: Option<(u32, u32)>,
    /// Discard the command's standard output (the demo shows only ghostprof's).
    pub quiet_child: bool,
    /// The user's own `NCCL_PROFILER_PLUGIN` (default: ghostprof's environment). When set to
    /// anything but the injection library, the job keeps it and NCCL's algorithm/protocol records
    /// are off (a session note says so); otherwise the job gets the injection library as its NCCL
    /// profiler plugin.
    pub user_nccl_profiler: Option<String>,
    /// Keep the per-launch uprobes placed throughout. By default they are removed while every
    /// process using the GPU has CUPTI reporting its launches (its launch records stand for
    /// them: profiler/record/launch_probes.rs), which saves each launch a kernel trap.
    pub launches_always: bool,
    /// How the uprobes are placed: by default one `uprobe_multi` link per program where the
    /// kernel has them (removed in one grace period at the end), else one per function.
    pub uprobe_links: UprobeLinks,
}

impl LaunchConfig {
    /// Defaults for `command` and `output`: drains every 10 ms, rescans every 200 ms, no time
    /// limit, the injection library found by [`find_inject_lib`], the user's `NCCL_PROFILER_PLUGIN`.
    pub fn new(command: Vec<String>, output: PathBuf) -> Self {
        LaunchConfig {
            command,
            output,
            overwrite: false,
            library_dirs: Vec::new(),
            drain_interval: Duration::from_millis(10),
            rescan_interval: Duration::from_millis(200),
            max_duration: None,
            inject_lib: find_inject_lib(),
            ring_dir: None,
            run_as: None,
            quiet_child: false,
            user_nccl_profiler: std::env::var("NCCL_PROFILER_PLUGIN").ok().filter(|v| !v.is_empty()),
            launches_always: false,
            uprobe_links: UprobeLinks::detect(),
        }
    }
}

/// The injection library: `$GHOSTPROF_INJECT_LIB`, else `libghostprof_inject.so` next to the
/// running executable (or one directory up, for test binaries under `target/*/deps`).
pub fn find_inject_lib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GHOSTPROF_INJECT_LIB") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("libghostprof_inject.so"), dir.parent()?.join("libghostprof_inject.so")].into_iter().find(|p| p.exists())
}

/// The result of a session.
#[derive(Debug)]
pub struct SessionSummary {
    /// The command's exit status when it ended while recording; None when the recording
    /// stopped first (Ctrl-C, `--duration`) and the command goes on.
    pub exit_status: Option<ExitStatus>,
    /// The launched command's pid (record), or the attached pid.
    pub job_pid: u32,
    /// What the trace writer wrote (records, chunks, bytes).
    pub write: WriteSummary,
    /// The pipeline's final figures, drops included.
    pub pipeline: PipelineStats,
    /// What the eBPF host collector (uprobes on the GPU libraries) saw.
    pub host: HostStats,
    /// What the off-CPU (scheduler) collector saw.
    pub sched: OffCpuStats,
    /// What the CUPTI rings delivered.
    pub cupti: CuptiStats,
    /// What the NVML sampler did.
    pub nvml: NvmlStats,
    /// Things the user should know (optional parts off, CUPTI unavailable, …).
    pub notes: Vec<String>,
    /// What attaching to each GPU library did.
    pub libraries: Vec<AttachReport>,
}

impl SessionSummary {
    /// The session's summary: what the collectors saw, with the job's fate and the file's totals.
    pub(crate) fn from_collectors(
        seen: CollectorsSummary,
        exit_status: Option<ExitStatus>,
        job_pid: u32,
        write: WriteSummary,
        pipeline: PipelineStats,
    ) -> Self {
        SessionSummary {
            exit_status,
            job_pid,
            write,
            pipeline,
            host: seen.host,
            sched: seen.sched,
            cupti: seen.cupti,
            nvml: seen.nvml,
            notes: seen.notes,
            libraries: seen.libraries,
        }
    }
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
    /// Spawns `program args...` held, with `envs` added to its environment, as `run_as`
    /// (uid, gid) when given.
    pub fn spawn(
        program: &str,
        args: &[String],
        envs: &[(String, String)],
        run_as: Option<(u32, u32)>,
        quiet: bool,
    ) -> std::io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two fds; both close on exec (the read end is dup'ed to fd 3 below).
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("read -r _ <&3; exec 3<&-; exec \"$@\"")
            .arg("ghostprof-hold")
            .arg(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)));
        // Everything about the user is looked up here, before fork: the child may not allocate.
        let user = run_as.map(|(uid, gid)| RunAs::lookup(uid, gid));
        if let Some(u) = &user {
            for (k, v) in &u.env {
                cmd.env(k, v);
            }
        }
        if quiet {
            cmd.stdout(std::process::Stdio::null());
        }
        // SAFETY: between fork and exec the child only calls the async-signal-safe dup2,
        // setgroups, setgid and setuid, on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(read_fd, HOLD_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(u) = &user {
                    u.become_user()?;
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

    /// The held child's pid.
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

/// The user a command runs as under sudo: their groups and login environment, found before
/// the fork (`Command::uid` alone would leave the job without its supplementary groups, e.g.
/// `video`/`render` that open the GPU device files, and with root's HOME).
struct RunAs {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// HOME, USER, LOGNAME and SHELL from the password database (none if the uid has no entry).
    env: Vec<(&'static str, std::ffi::OsString)>,
}

impl RunAs {
    fn lookup(uid: u32, gid: u32) -> RunAs {
        use std::ffi::{CStr, OsStr};
        use std::os::unix::ffi::OsStrExt;
        let mut run = RunAs { uid, gid, groups: vec![gid], env: Vec::new() };
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: an all-zero passwd is a valid out-parameter.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        loop {
            // SAFETY: getpwuid_r writes into `pw` and `buf` (of the length given) only.
            let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
            if rc == libc::ERANGE && buf.len() < (1 << 20) {
                buf.resize(buf.len() * 4, 0);
                continue;
            }
            break;
        }
        if found.is_null() {
            return run;
        }
        // SAFETY: on success the entry's strings are NUL-terminated and live in `buf`.
        let field = |p: *const libc::c_char| {
            (!p.is_null()).then(|| OsStr::from_bytes(unsafe { CStr::from_ptr(p) }.to_bytes()).to_os_string())
        };
        for (key, value) in [("HOME", pw.pw_dir), ("SHELL", pw.pw_shell), ("USER", pw.pw_name), ("LOGNAME", pw.pw_name)]
        {
            if let Some(v) = field(value).filter(|v| !v.is_empty()) {
                run.env.push((key, v));
            }
        }
        let mut n: libc::c_int = 64;
        loop {
            let mut groups = vec![0 as libc::gid_t; n as usize];
            let asked = n;
            // SAFETY: getgrouplist writes at most `n` gids into `groups` and sets `n`.
            let rc = unsafe { libc::getgrouplist(pw.pw_name, gid, groups.as_mut_ptr(), &mut n) };
            if rc >= 0 {
                groups.truncate(n.max(0) as usize);
                run.groups = groups;
                break;
            }
            if n <= asked {
                n = asked * 2;
            }
            if n > 65536 {
                break;
            }
        }
        run
    }

    /// In the child, after fork: groups, then gid, then uid (each needs the privilege the next
    /// one drops).
    fn become_user(&self) -> std::io::Result<()> {
        // SAFETY: async-signal-safe system calls on memory allocated before the fork.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Launches `cfg.command` under the host collector and records it.
pub fn record_command(cfg: &LaunchConfig, stop: &AtomicBool) -> Result<SessionSummary, SessionError> {
    record_command_with_progress(cfg, stop, &mut |_| {})
}

/// [`record_command`], calling `progress` about once a second.
pub fn record_command_with_progress(
    cfg: &LaunchConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SessionSummary, SessionError> {
    let info = TraceInfo { command: cfg.command.clone(), ..Default::default() };
    let private_dir = match &cfg.ring_dir {
        Some(_) => None,
        None => Some(
            private_ring_dir()
                .map_err(|source| SessionError::Spawn { cmd: "mkdir /dev/shm/ghostprof-*".into(), source })?,
        ),
    };
    // Removes the private ring directory however the session ends.
    let _rings_cleanup = RemoveDir(private_dir.clone());
    let ring_dir = cfg.ring_dir.clone().or_else(|| private_dir.clone()).unwrap_or_default();
    let mut c = Collectors::load(&ring_dir, true, cfg.uprobe_links)?;
    let pipeline = Pipeline::create(&cfg.output, cfg.overwrite, &info, PipelineOptions::default())?;
    let mut producer = pipeline.producer(Source::Ebpf);
    c.start(&pipeline);

    let mut dirs: Vec<String> = cfg.library_dirs.iter().map(|d| d.display().to_string()).collect();
    if let Ok(env) = std::env::var("LD_LIBRARY_PATH") {
        dirs.push(env);
    }
    for lib in procmaps::find_libraries(&["libcuda.so.1", "libnccl.so.2"], Some(&dirs.join(":"))) {
        c.host.attach_library(&lib)?;
    }

    let program = cfg.command.first().cloned().unwrap_or_default();
    let mut envs = Vec::new();
    if let (Some((uid, gid)), Some(dir)) = (cfg.run_as, &private_dir) {
        chown(dir, uid, gid);
    }
    if let Some((uid, gid)) = cfg.run_as {
        // lchown: never through a symlink, even one swapped in after the file was created.
        let _ = std::os::unix::fs::lchown(&cfg.output, Some(uid), Some(gid));
    }
    match &cfg.inject_lib {
        Some(lib) => {
            envs.push(("CUDA_INJECTION64_PATH".to_string(), lib.display().to_string()));
            envs.push(("GHOSTPROF_ENABLE".to_string(), "1".to_string()));
            envs.push(("GHOSTPROF_RING_DIR".to_string(), ring_dir.display().to_string()));
            // PM samples evaluated by ghostprof's decoder, not in the job (collect/pmdecode.rs),
            // unless the user asked for the job (`GHOSTPROF_PM_DECODE=job`) or there is no decoder.
            if crate::collect::pmdecode::use_collector() {
                envs.push(("GHOSTPROF_PM_DECODE".to_string(), "collector".to_string()));
            }
            // The same library is NCCL's profiler plugin (NCCL ≥ 2.23): each collective's
            // algorithm and protocol. A plugin of the user's own wins.
            let ours = |own: &str| {
                let canon = |p: &Path| std::fs::canonicalize(p).ok();
                canon(Path::new(own)).is_some_and(|o| Some(o) == canon(lib))
            };
            match &cfg.user_nccl_profiler {
                Some(own) if !ours(own) => {
                    envs.push(("NCCL_PROFILER_PLUGIN".to_string(), own.clone()));
                    c.cupti.notes.push(format!(
                        "NCCL_PROFILER_PLUGIN is set ({own}): the job keeps its own NCCL profiler plugin, so NCCL's \
                         algorithm and protocol per collective are not recorded"
                    ));
                }
                _ => envs.push(("NCCL_PROFILER_PLUGIN".to_string(), lib.display().to_string())),
            }
        }
        None => c.cupti.notes.push(
            "no CUPTI injection library (--no-cupti, or libghostprof_inject.so not found: set GHOSTPROF_INJECT_LIB): no CUPTI device timeline, eBPF only".into(),
        ),
    }
    let held = HeldChild::spawn(&program, &cfg.command[1.min(cfg.command.len())..], &envs, cfg.run_as, cfg.quiet_child)
        .map_err(|source| SessionError::Spawn { cmd: cfg.command.join(" "), source })?;
    let pid = held.pid();
    c.host.add_target(pid)?;
    producer.push(ProcessInfo {
        time_ns: crate::clock::monotonic_ns(),
        pid,
        ppid: std::process::id(),
        name_id: producer.intern(&program),
        cmdline_id: producer.intern(&cfg.command.join(" ")),
    });
    producer.push(realtime_sync());
    let mut child = held.release();

    let timers = LoopOptions {
        rings: Rings::InDir,
        drain_interval: cfg.drain_interval,
        rescan_interval: cfg.rescan_interval,
        max_duration: cfg.max_duration,
        launch_probes: if cfg.launches_always { LaunchProbes::Always } else { LaunchProbes::WhereCuptiMisses },
    };
    let ended = c.run(&pipeline, &mut producer, &timers, stop, progress, |_, _| child.try_wait().ok().flatten());
    let exit_status = match ended {
        Ok(Ended::Job(status)) => Some(status),
        // Ctrl-C, the duration, a full disk or a collector error: the recording ends, the job
        // goes on untouched (and a full disk's error says so).
        Ok(Ended::Stopped | Ended::WriterFailed) => {
            reap_in_background(child);
            None
        }
        Err(e) => {
            reap_in_background(child);
            return Err(e.into());
        }
    };
    // Events of the last moments are still in the ring buffers; a process that exited before
    // its ring was opened left the file behind, complete.
    c.cupti.scan_dir();
    c.drain(&mut producer)?;
    let seen = c.finish(&mut producer);
    drop(producer);
    let (write, pipeline) = pipeline.finish().map_err(|source| SessionError::WriteFailed {
        source,
        job: match exit_status {
            Some(status) => format!("the command had exited ({status})"),
            None => format!("recording stopped; the command goes on (pid {pid})"),
        },
    })?;
    Ok(SessionSummary::from_collectors(seen, exit_status, pid, write, pipeline))
}

/// Removes a directory when dropped.
struct RemoveDir(Option<PathBuf>);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
}

/// The job keeps running after the recording stops; a thread collects its exit status so it
/// does not linger as a zombie.
fn reap_in_background(mut child: Child) {
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

/// A fresh directory for one session's rings, mode 0700 (the job writes there as its user:
/// `record` gives the directory to that user when it drops privileges).
fn private_ring_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    sweep_stale_ring_dirs(&base);
    for n in 0..100u32 {
        let dir =
            base.join(format!("ghostprof-{}-{}-{n}", std::process::id(), crate::clock::monotonic_ns() % 1_000_000));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free ring directory name"))
}

/// Removes the private ring directories (`ghostprof-<pid>-…`) of `record` sessions that were
/// killed before they could (their ghostprof pid is gone): each holds up to 64 MiB per process.
/// Only real directories (lstat: a symlink named so is left alone) that are private as
/// `private_ring_dir` makes them; `remove_dir_all` never follows links inside. Returns how
/// many were removed.
pub fn sweep_stale_ring_dirs(base: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("ghostprof-")) else { continue };
        let mut parts = rest.split('-');
        let (Some(pid), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid == std::process::id() || pid == 0 || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = e.path();
        let private = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir() && m.mode() & 0o077 == 0);
        if private && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}
