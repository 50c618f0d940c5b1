//! PM decode in ghostprof, not in the job (docs/architecture.md, "Where PM samples are
//! evaluated"). With `GHOSTPROF_PM_DECODE=collector` the injection library ships each decoded
//! counter-data image (`wire::PM_PART` blobs) instead of evaluating it with
//! `cuptiProfilerHostEvaluateToGpuValues`, which cost a PyTorch job on an H200 44 µs per sample
//! (47 % of its CPU at 50 µs sampling). Evaluation needs the job's own CUPTI, and ghostprof is
//! root: loading a library from the job's filesystem as root would hand the job root. So a
//! **decoder process** does it:
//!
//! - ghostprof opens the job's `libcupti.so*` as mapped in `/proc/PID/maps`, through the job's
//!   root (`/proc/PID/root`, `openat2` with no symlink anywhere on the way) and takes it only if
//!   it is a regular file with the device and inode of the mapping (`/proc/PID/map_files`);
//! - it runs its own binary (from its own filesystem) as the decoder ([`DECODER_ARG`]) with
//!   that file as fd 3 (and the `libnvperf*` files the job maps beside it, checked alike, as
//!   fds 4, 5, …), the job's pidfd after them, an empty environment and every other descriptor
//!   closed, forked inside the job's pid namespace; the decoder enters the job's mount,
//!   network, IPC, UTS and cgroup namespaces (not its user namespace), drops to the job's uid,
//!   gid and groups (all of its uids must agree) with an empty capability bounding set, no
//!   capabilities and `PR_SET_NO_NEW_PRIVS`, installs a seccomp filter (no namespaces, mounts,
//!   sockets, ptrace, bpf, …: [`DENIED_SYSCALLS`]) and checks all that before it `dlopen`s
//!   `/proc/self/fd/3`: the job's code runs with the job's view of the machine;
//! - one decoder serves every process with the same library file (device, inode) and uid,
//!   fed through a bounded queue by its own thread, which answers each image with its values or
//!   a failure; a decoder that dies, hangs ([`EVAL_TIMEOUT`]) or answers out of protocol is
//!   killed, and PM sampling stops for its processes with a note (the job is not affected);
//! - what comes back is hostile: sizes fixed by the request, every value checked by
//!   [`validate`] (finite, 0–100 % within [`PCT_TOLERANCE`]), the job's timestamps too
//!   (ordered, inside the session); refusals are counted by source ([`PmRefusals`]).
//!
//! The samples become the same `DeviceSample` records as in-job evaluation.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cudarc::cupti::sys as cs;
use ghostprof_ring::wire;

/// The decoder's first argument: `ghostprof __pm-decoder` runs [`decoder_main`].
pub const DECODER_ARG: &str = "__ghostprof-pm-decoder";
/// Images queued per decoder; more are dropped and counted (`queue_full`).
pub const QUEUE: usize = 16;
/// Decoders at once (one per library file and uid).
pub const MAX_DECODERS: usize = 32;
/// How long the decoder may take to load the library and answer a setup.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one image's evaluation may take, plus [`EVAL_PER_SAMPLE`] per sample (44 µs is what
/// an H200's CUPTI takes).
pub const EVAL_TIMEOUT: Duration = Duration::from_secs(2);
/// The time allowed per sample on top of [`EVAL_TIMEOUT`].
pub const EVAL_PER_SAMPLE: Duration = Duration::from_micros(200);
/// Waits on a decoder's pipes are cut in slices this long (ms), to see [`Decoder::close`].
const POLL_SLICE_MS: u128 = 100;
/// A percentage may be this far outside 0–100 (hardware counters overshoot slightly).
pub const PCT_TOLERANCE: f64 = 1.0;
/// The longest error text a decoder may send.
const MAX_ERROR_BYTES: usize = 512;

/// The executable run as the decoder: this process's own binary unless set (tests run inside
/// a test binary, so they name the `ghostprof` binary).
static DECODER_EXE: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Makes `exe` the decoder executable (a `ghostprof` binary); the first call wins.
pub fn set_decoder_exe(exe: &std::path::Path) {
    let _ = DECODER_EXE.set(exe.to_path_buf());
}

/// Whether PM samples should be evaluated here (collector mode): only when ghostprof's
/// environment says `GHOSTPROF_PM_DECODE=collector` and there is a decoder to run (this binary is
/// a `ghostprof`, or [`set_decoder_exe`] named one); otherwise the job evaluates. Opt-in, not the
/// default: the decoder starts from a live process (its namespaces, its libcupti), so a job that
/// ends before its PM setup is drained loses its samples, and on an H200 at the default 50 µs the
/// shipped images overran the ring (docs/performance.md, "PM evaluation out of the job").
pub fn use_collector() -> bool {
    if std::env::var("GHOSTPROF_PM_DECODE").as_deref() != Ok("collector") {
        return false;
    }
    DECODER_EXE.get().is_some()
        || std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().starts_with("ghostprof")))
            .unwrap_or(false)
}

/// Refusals of PM data, by who sent it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PmRefusals {
    /// Values from a decoder: not finite, out of range, or not the count asked for.
    pub decoder: u64,
    /// Timestamps (and blobs) from the job: out of order, outside the session, malformed.
    pub job: u64,
}

/// One accepted sample: [start, end) in CLOCK_MONOTONIC ns, tensor-pipe and SM activity (%).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PmSample {
    /// Start (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// End.
    pub end_ns: u64,
    /// Tensor-pipe activity, percent.
    pub tensor_pct: f64,
    /// SM activity, percent.
    pub sm_pct: f64,
}

/// Checks one image's results: `times` (the job's, in CUPTI time; + `offset_ns` is
/// CLOCK_MONOTONIC) and `values` (the decoder's, `n_metrics` per sample: tensor %, SM %
/// first). Keeps the samples whose times are ordered in the job's clock (start < end, not
/// before `last_end`, which it advances) and inside `session` (CLOCK_MONOTONIC [from, to]),
/// and whose first two values are finite and within 0–100 % ± [`PCT_TOLERANCE`]; counts each
/// refused sample in `refused` by source. A value list of the wrong length refuses every
/// sample (the decoder's).
pub fn validate(
    times: &[(u64, u64)],
    offset_ns: i64,
    values: &[f64],
    n_metrics: usize,
    session: (u64, u64),
    last_end: &mut u64,
    refused: &mut PmRefusals,
) -> Vec<PmSample> {
    let (floor_ns, ceiling_ns) = session;
    let mono = |t: u64| t.wrapping_add(offset_ns as u64);
    if n_metrics < 2 || values.len() != times.len().saturating_mul(n_metrics) {
        refused.decoder = refused.decoder.saturating_add(times.len() as u64);
        return Vec::new();
    }
    let pct = |v: f64| v.is_finite() && (-PCT_TOLERANCE..=100.0 + PCT_TOLERANCE).contains(&v);
    let mut out = Vec::with_capacity(times.len());
    for (i, &(start, end)) in times.iter().enumerate() {
        if start >= end
            || start < *last_end
            || mono(start) < floor_ns
            || mono(end) > ceiling_ns
            || mono(start) > mono(end)
        {
            refused.job = refused.job.saturating_add(1);
            continue;
        }
        let (tensor, sm) = (values[i * n_metrics], values[i * n_metrics + 1]);
        if !pct(tensor) || !pct(sm) {
            refused.decoder = refused.decoder.saturating_add(1);
            continue;
        }
        *last_end = end;
        out.push(PmSample { start_ns: mono(start), end_ns: mono(end), tensor_pct: tensor, sm_pct: sm });
    }
    out
}

/// The job's libcupti as mapped: `/proc/PID/maps`' path, address range, device and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLibrary {
    /// The path in the job's mount namespace.
    pub path: String,
    /// `start-end` of one mapping (the `/proc/PID/map_files` name).
    pub range: String,
    /// Device (`makedev` of the maps' major:minor).
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

/// The first mapping of a file named `libcupti.so*` in `/proc/PID/maps` text.
pub fn find_cupti(maps: &str) -> Option<JobLibrary> {
    maps.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (range, _perms, _off, dev, ino) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        let path = f.next()?;
        // A path with spaces or " (deleted)" is not one to open.
        if f.next().is_some() || !path.starts_with('/') {
            return None;
        }
        let name = path.rsplit('/').next()?;
        if !name.starts_with("libcupti.so") {
            return None;
        }
        let (major, minor) = dev.split_once(':')?;
        let dev = libc::makedev(u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
        Some(JobLibrary { path: path.to_string(), range: range.to_string(), dev, ino: ino.parse().ok()? })
    })
}

/// Most companion libraries passed to a decoder.
pub const MAX_COMPANIONS: usize = 4;

/// Files the job maps from `lib`'s directory named `libnvperf*` (CUPTI's perfworks libraries,
/// which libcupti loads by name), at most [`MAX_COMPANIONS`], one mapping each.
pub fn find_companions(maps: &str, lib: &JobLibrary) -> Vec<JobLibrary> {
    let dir = lib.path.rsplit_once('/').map_or("", |(d, _)| d);
    let mut out: Vec<JobLibrary> = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_), Some(_), Some(dev), Some(ino), Some(path), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((d, name)) = path.rsplit_once('/') else { continue };
        if d != dir || !name.starts_with("libnvperf") || out.iter().any(|c| c.path == path) {
            continue;
        }
        let Some((major, minor)) = dev.split_once(':') else { continue };
        let (Ok(major), Ok(minor), Ok(ino)) =
            (u32::from_str_radix(major, 16), u32::from_str_radix(minor, 16), ino.parse::<u64>())
        else {
            continue;
        };
        out.push(JobLibrary { path: path.into(), range: range.into(), dev: libc::makedev(major, minor), ino });
        if out.len() == MAX_COMPANIONS {
            break;
        }
    }
    out
}

/// Opens the job's library through its root, refusing a symlink anywhere on the way, a file
/// that is not regular, and a file that is not the one mapped (device and inode of
/// `/proc/PID/map_files/<range>`, or of the maps line where that cannot be read).
pub fn open_job_library(pid: u32, lib: &JobLibrary) -> Result<File, String> {
    use std::os::unix::fs::MetadataExt;
    let root_path = CString::new(format!("/proc/{pid}/root")).map_err(|_| "bad path".to_string())?;
    // SAFETY: a plain open of a NUL-terminated path.
    let root = unsafe { libc::open(root_path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if root < 0 {
        return Err(format!("cannot open /proc/{pid}/root: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor just opened, owned here.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    let rel = CString::new(lib.path.trim_start_matches('/')).map_err(|_| "bad path".to_string())?;
    // SAFETY: open_how is plain data; all-zero is its default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a live dirfd, a NUL-terminated path and an open_how of its size.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, root.as_raw_fd(), rel.as_ptr(), &how, std::mem::size_of::<libc::open_how>())
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::ELOOP) {
            format!("{} in its root is or goes through a symlink", lib.path)
        } else {
            format!("cannot open {} in its root: {e}", lib.path)
        });
    }
    // SAFETY: a descriptor just opened, owned by the File.
    let file = unsafe { File::from_raw_fd(fd as RawFd) };
    let meta = file.metadata().map_err(|e| format!("cannot stat {}: {e}", lib.path))?;
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", lib.path));
    }
    let (dev, ino) = match std::fs::metadata(format!("/proc/{pid}/map_files/{}", lib.range)) {
        Ok(m) => (m.dev(), m.ino()),
        Err(_) => (lib.dev, lib.ino),
    };
    if (meta.dev(), meta.ino()) != (dev, ino) {
        return Err(format!("{} is not the file the process has mapped (another device or inode)", lib.path));
    }
    Ok(file)
}

/// A process's credentials from `/proc/PID/status`: its uid and gid (every uid field, and
/// every gid field, must agree: a process between identities gets no decoder) and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// [`Creds`] from `/proc/PID/status` text.
pub fn creds_of(status: &str) -> Option<Creds> {
    let ids = |key: &str| -> Option<Vec<u32>> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        line.split_whitespace().map(|v| v.parse().ok()).collect()
    };
    let (uids, gids, groups) = (ids("Uid:")?, ids("Gid:")?, ids("Groups:").unwrap_or_default());
    let same = |v: &[u32]| v.len() == 4 && v.iter().all(|&x| x == v[0]);
    (same(&uids) && same(&gids)).then(|| Creds { uid: uids[0], gid: gids[0], groups })
}

/// What a decoder's thread is asked to do.
enum Job {
    Setup { id: u32, pid: u32, blob: Vec<u8> },
    Eval { id: u32, pid: u32, session: u32, n_metrics: usize, offset_ns: i64, times: Vec<(u64, u64)>, image: Vec<u8> },
}

/// What comes back from a decoder's thread.
#[derive(Debug)]
pub enum Outcome {
    /// An image's values (not yet checked).
    Values {
        /// The process.
        pid: u32,
        /// Its PM session.
        session: u32,
        /// Metrics per sample.
        n_metrics: usize,
        /// CLOCK_MONOTONIC − CUPTI time when the image arrived.
        offset_ns: i64,
        /// The samples' times (CUPTI time, the job's).
        times: Vec<(u64, u64)>,
        /// `n_metrics` values per sample.
        values: Vec<f64>,
    },
    /// PM evaluation for `pid` has stopped.
    Failed {
        /// The process.
        pid: u32,
        /// Why, one line.
        why: String,
    },
}

struct Decoder {
    tx: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    child_pid: u32,
    dead: Arc<AtomicBool>,
    cpu_ns: Arc<AtomicU64>,
    /// Set by [`Decoder::close`]: the thread gives up what it waits for and fails the rest.
    closing: Arc<AtomicBool>,
    uid: u32,
}

/// The decoders of a session and what they returned.
pub struct Decoders {
    /// The executable run as the decoder (None: [`set_decoder_exe`]'s, else this binary).
    exe: Option<std::path::PathBuf>,
    decoders: HashMap<Key, Decoder>,
    results_tx: Sender<Outcome>,
    results: Receiver<Outcome>,
    next_id: u32,
    /// Jobs sent and not answered yet.
    pub in_flight: u64,
    /// Images dropped because a decoder's queue was full.
    pub queue_full: u64,
    /// Samples evaluated (accepted).
    pub samples: u64,
    /// Refusals by source.
    pub refused: PmRefusals,
}

impl Default for Decoders {
    fn default() -> Self {
        let (results_tx, results) = std::sync::mpsc::channel();
        Decoders {
            exe: None,
            decoders: HashMap::new(),
            results_tx,
            results,
            next_id: 1,
            in_flight: 0,
            queue_full: 0,
            samples: 0,
            refused: PmRefusals::default(),
        }
    }
}

/// A decoder serves one library file (device, inode), one uid and one set of namespaces
/// (their inodes, [`NS_NAMES`]' order): a decoder inside one container never serves another.
type Key = (u64, u64, u32, [u64; 6]);

/// The job's namespaces the key names (the user namespace is not entered: see [`JOB_NAMESPACES`]).
const NS_NAMES: [&str; 6] = ["mnt", "net", "pid", "ipc", "uts", "cgroup"];

/// The namespaces the decoder enters besides the pid namespace (entered by forking it there):
/// all of the job's but its user namespace, since the decoder runs as the job's host uid, and a
/// user namespace would only give it a uid 0 with capabilities over the job's namespaces.
const JOB_NAMESPACES: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWCGROUP;

/// The inodes of `pid`'s namespaces ([`NS_NAMES`]).
fn namespaces_of(pid: u32) -> Result<[u64; 6], String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = [0u64; 6];
    for (o, name) in out.iter_mut().zip(NS_NAMES) {
        *o = std::fs::metadata(format!("/proc/{pid}/ns/{name}"))
            .map_err(|e| format!("cannot read its {name} namespace: {e}"))?
            .ino();
    }
    Ok(out)
}

/// A pidfd for `pid`: it pins the process (a pid reused after it is opened is not it).
fn pidfd_open(pid: u32) -> Result<OwnedFd, String> {
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(format!("cannot open the process (pidfd_open): {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor just opened, owned by the result.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether the process behind `pidfd` still runs (signal 0).
fn pidfd_alive(pidfd: RawFd) -> bool {
    // SAFETY: signal 0 through a pidfd only checks.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, 0, std::ptr::null::<libc::siginfo_t>(), 0) == 0 }
}

/// Enters one or more of the job's namespaces: through its pidfd (kernel ≥ 5.8, all at once),
/// else through `/proc/PID/ns/*` (opened from `/proc/PID` without following a symlink on the
/// way, then the pidfd checked: the pid was still the job's when they were opened).
fn enter_namespaces(pidfd: RawFd, pid: u32, flags: libc::c_int) -> Result<(), String> {
    // SAFETY: setns on a pidfd with namespace flags.
    if unsafe { libc::setns(pidfd, flags) } == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    let dir = CString::new(format!("/proc/{pid}")).map_err(|e| e.to_string())?;
    // SAFETY: open of a NUL-terminated path.
    let dir =
        unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if dir < 0 {
        return Err(format!("cannot enter the job's namespaces ({first}); the job is gone"));
    }
    // SAFETY: just opened, owned here.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let all = [
        (libc::CLONE_NEWPID, c"ns/pid"),
        (libc::CLONE_NEWNET, c"ns/net"),
        (libc::CLONE_NEWIPC, c"ns/ipc"),
        (libc::CLONE_NEWUTS, c"ns/uts"),
        (libc::CLONE_NEWCGROUP, c"ns/cgroup"),
        // Last: /proc is the host's until then.
        (libc::CLONE_NEWNS, c"ns/mnt"),
    ];
    let mut fds = Vec::new();
    for (flag, name) in all.into_iter().filter(|(f, _)| flags & f != 0) {
        // SAFETY: openat under a live directory fd.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("cannot enter the job's namespaces ({first}; {})", std::io::Error::last_os_error()));
        }
        // SAFETY: just opened, owned here.
        fds.push((flag, unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    if !pidfd_alive(pidfd) {
        return Err("the job is gone".into());
    }
    for (flag, fd) in &fds {
        // SAFETY: setns on a namespace fd of the type named.
        if unsafe { libc::setns(fd.as_raw_fd(), *flag) } != 0 {
            return Err(format!("cannot enter the job's namespaces: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Where a process's images go: its decoder and its setup there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    key: Key,
    id: u32,
}

impl Decoders {
    /// Decoders that run `exe` (a `ghostprof` binary), whatever [`set_decoder_exe`] says.
    pub fn with_exe(exe: &std::path::Path) -> Self {
        let mut d = Decoders::default();
        d.exe = Some(exe.to_path_buf());
        d
    }

    /// Starts (or reuses) the decoder for `pid`'s libcupti and uid and sends it `setup` (a
    /// `wire::PmSetup` blob); Err is the one-line reason PM stops for the process.
    pub fn setup(&mut self, pid: u32, setup: &[u8]) -> Result<Route, String> {
        // First: whatever is read below is the process this pidfd holds.
        let pidfd = pidfd_open(pid)?;
        let maps =
            std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| format!("cannot read maps: {e}"))?;
        let lib = find_cupti(&maps).ok_or("no libcupti.so mapped")?;
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("cannot read status: {e}"))?;
        let creds = creds_of(&status).ok_or("its uids or gids differ from each other")?;
        let file = open_job_library(pid, &lib)?;
        // CUPTI's own companions the job maps beside it (libnvperf_host.so: libcupti needs it and
        // would look for it next to /proc/self/fd/3), taken with the same checks.
        let companions: Vec<File> =
            find_companions(&maps, &lib).iter().filter_map(|c| open_job_library(pid, c).ok()).collect();
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(|e| e.to_string())?;
        let key = (meta.dev(), meta.ino(), creds.uid, namespaces_of(pid)?);
        if !pidfd_alive(pidfd.as_raw_fd()) {
            return Err("the process is gone".into());
        }
        let alive = self.decoders.get(&key).is_some_and(|d| !d.dead.load(Ordering::Acquire));
        if !alive {
            if let Some(mut old) = self.decoders.remove(&key) {
                old.close();
            }
            if self.decoders.len() >= MAX_DECODERS {
                return Err(format!("{MAX_DECODERS} decoders already run"));
            }
            let job = (pid, pidfd.as_raw_fd());
            let d = spawn(self.exe.as_deref(), &file, &companions, &creds, job, self.results_tx.clone())?;
            self.decoders.insert(key, d);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let d = self.decoders.get(&key).ok_or("decoder gone")?;
        let tx = d.tx.as_ref().ok_or("decoder gone")?;
        tx.try_send(Job::Setup { id, pid, blob: setup.to_vec() }).map_err(|_| "the decoder's queue is full")?;
        self.in_flight += 1;
        Ok(Route { key, id })
    }

    /// Queues one image of `pid` for evaluation (its samples' `times` in CUPTI time, mapped by
    /// `offset_ns`); false (counted in `queue_full`) when the decoder's queue is full, Err when
    /// its decoder is gone.
    #[allow(clippy::too_many_arguments)]
    pub fn eval(
        &mut self,
        route: Route,
        pid: u32,
        session: u32,
        n_metrics: usize,
        offset_ns: i64,
        times: Vec<(u64, u64)>,
        image: Vec<u8>,
    ) -> Result<bool, String> {
        let d = self.decoders.get(&route.key).ok_or("its decoder is gone")?;
        let tx = d.tx.as_ref().ok_or("its decoder is gone")?;
        match tx.try_send(Job::Eval { id: route.id, pid, session, n_metrics, offset_ns, times, image }) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(true)
            }
            Err(TrySendError::Full(_)) => {
                self.queue_full += 1;
                Ok(false)
            }
            Err(TrySendError::Disconnected(_)) => Err("its decoder is gone".into()),
        }
    }

    /// Outcomes ready now (waiting up to `wait` for the first when jobs are in flight).
    pub fn ready(&mut self, wait: Duration) -> Vec<Outcome> {
        let mut out = Vec::new();
        if self.in_flight > 0 && !wait.is_zero() {
            if let Ok(o) = self.results.recv_timeout(wait) {
                out.push(o);
            }
        }
        while let Ok(o) = self.results.try_recv() {
            out.push(o);
        }
        self.in_flight = self.in_flight.saturating_sub(out.len() as u64);
        out
    }

    /// The decoders' processes (pid, uid) still running.
    pub fn processes(&self) -> Vec<(u32, u32)> {
        self.decoders.values().filter(|d| !d.dead.load(Ordering::Acquire)).map(|d| (d.child_pid, d.uid)).collect()
    }

    /// Ends every decoder (its queue first) and returns their CPU time (ns).
    pub fn close(&mut self) -> u64 {
        self.decoders.values_mut().map(|d| d.close()).sum()
    }

    /// Whether any decoder was started.
    pub fn any(&self) -> bool {
        !self.decoders.is_empty()
    }
}

impl Decoder {
    /// Ends the decoder now (the session is over: [`super::cupti::CuptiCollector::settle_pm`]
    /// waited for its answers first): what it is still working on is given up, so a slow or
    /// hostile decoder cannot hold `record`'s end.
    fn close(&mut self) -> u64 {
        self.closing.store(true, Ordering::Release);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.cpu_ns.load(Ordering::Acquire)
    }
}

impl Drop for Decoders {
    fn drop(&mut self) {
        self.close();
    }
}

/// Requests (ghostprof → decoder): `op u32, len u32, body`. Replies: `status u32, len u32,
/// body` (status 0: ok, the body as asked; else a UTF-8 reason).
const OP_SETUP: u32 = 1;
const OP_EVAL: u32 = 2;

/// A copy of `fd` at 64 or above (close-on-exec), so that placing the libraries at 3, 4, … in
/// the child never overwrites a source (execveat of a clobbered fd 3 once ran the library).
fn high_copy(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: duplicating a live descriptor; the copy is owned by the result.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64) };
    if copy < 0 {
        return Err(format!("cannot duplicate a descriptor: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: just made.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Starts the decoder for the job `(pid, pidfd)`: forked inside the job's pid namespace (by a
/// thread that entered it for that: `setns(CLONE_NEWPID)` applies to children), run as root
/// from ghostprof's own filesystem (its loader and libraries are the host's, not the job's),
/// with the job's pidfd and identity, so that it enters the job's other namespaces and drops
/// to the job's user itself ([`decoder_confine`]) before it loads anything of the job's.
fn spawn(
    exe: Option<&std::path::Path>,
    lib: &File,
    companions: &[File],
    creds: &Creds,
    job: (u32, RawFd),
    results: Sender<Outcome>,
) -> Result<Decoder, String> {
    let exe =
        exe.map(|e| e.to_path_buf()).or_else(|| DECODER_EXE.get().cloned()).unwrap_or_else(|| "/proc/self/exe".into());
    // Opened as root, executed by its descriptor: the job's user may not be able to reach our
    // binary's path (/root/...).
    let exe_file = File::open(&exe).map_err(|e| format!("cannot open {}: {e}", exe.display()))?;
    let exe_copy = high_copy(exe_file.as_raw_fd())?;
    drop(exe_file);
    let exe_fd = exe_copy.as_raw_fd();
    // The child's fd 3 (libcupti), then 4, 5, … (its companions), then the job's pidfd.
    let fds: Vec<OwnedFd> = std::iter::once(lib.as_raw_fd())
        .chain(companions.iter().take(MAX_COMPANIONS).map(|f| f.as_raw_fd()))
        .chain(std::iter::once(job.1))
        .map(high_copy)
        .collect::<Result<_, _>>()?;
    let raw_fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let n_companions = raw_fds.len() - 2;
    let groups = if creds.groups.is_empty() {
        "-".to_string()
    } else {
        creds.groups.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
    };
    let args = [n_companions.to_string(), job.0.to_string(), creds.uid.to_string(), creds.gid.to_string(), groups];
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(DECODER_ARG).env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    // SAFETY: only async-signal-safe system calls between fork and exec, on memory made before
    // the fork.
    unsafe {
        cmd.pre_exec(move || place_fds(&raw_fds));
    }
    let (pid, pidfd) = job;
    let mut child = std::thread::scope(|s| {
        s.spawn(|| {
            // This thread's children are born in the job's pid namespace; the thread ends here.
            enter_namespaces(pidfd, pid, libc::CLONE_NEWPID)?;
            spawn_by_fd(&mut cmd, exe_fd, &args)
        })
        .join()
        .unwrap_or_else(|_| Err("the decoder's starter panicked".into()))
    })?;
    drop((exe_copy, fds));
    let (stdin, stdout) = (child.stdin.take().ok_or("no pipe")?, child.stdout.take().ok_or("no pipe")?);
    let dead = Arc::new(AtomicBool::new(false));
    let cpu_ns = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let child_pid = child.id();
    let (d, c) = (dead.clone(), cpu_ns.clone());
    let closing = Arc::new(AtomicBool::new(false));
    let stop = closing.clone();
    let thread = std::thread::Builder::new()
        .name("ghostprof-pmdec".into())
        .spawn(move || serve(child, stdin, stdout, rx, results, d, c, stop))
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    Ok(Decoder { tx: Some(tx), thread: Some(thread), child_pid, dead, cpu_ns, closing, uid: creds.uid })
}

/// `Command` runs `/proc/self/exe`; the pre-exec hook has replaced nothing of that, so the
/// executable is switched by `execveat(exe_fd, "")` inside the hook instead.
fn spawn_by_fd(cmd: &mut Command, exe_fd: RawFd, args: &[String]) -> Result<Child, String> {
    let mut argv: Vec<CString> = vec![c"ghostprof".into(), CString::new(DECODER_ARG).map_err(|e| e.to_string())?];
    for a in args {
        argv.push(CString::new(a.as_str()).map_err(|e| e.to_string())?);
    }
    // Raw pointers made before the fork, leaked: they live as long as this process.
    let ptrs: Vec<usize> = argv.into_iter().map(|a| a.into_raw() as usize).chain(std::iter::once(0)).collect();
    // SAFETY: execveat is async-signal-safe; the argv strings were made before the fork and
    // live as long as this process.
    unsafe {
        cmd.pre_exec(move || {
            let envp = [std::ptr::null::<c_char>()];
            libc::syscall(libc::SYS_execveat, exe_fd, c"".as_ptr(), ptrs.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
            Err(std::io::Error::last_os_error())
        });
    }
    cmd.spawn().map_err(|e| format!("cannot start the decoder: {e}"))
}

/// In the forked child: the libraries and the job's pidfd at fd 3, 4, … (`fds`, all at 64 or
/// above), every other descriptor above 2 closed at exec (the binary's too: execveat runs it
/// first). Only raw system calls.
fn place_fds(fds: &[RawFd]) -> std::io::Result<()> {
    // SAFETY: raw system calls on this (child) process.
    unsafe {
        for (i, &fd) in fds.iter().enumerate() {
            // dup2 to another number clears close-on-exec on the copy.
            if libc::dup2(fd, 3 + i as i32) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let first_other = 3 + fds.len() as u32;
        if libc::syscall(libc::SYS_close_range, first_other, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the decoder, before it loads anything of the job's: no capability (bounding, ambient,
/// inheritable, permitted), the job's groups, gid and uid, and no new privileges.
fn drop_privileges(creds: &Creds) -> Result<(), String> {
    let err = |what: &str| Err(format!("cannot drop privileges ({what}): {}", std::io::Error::last_os_error()));
    // SAFETY (whole fn): raw system calls on this single-threaded process.
    unsafe {
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 {
            return err("ambient");
        }
        for cap in 0..64 {
            // EINVAL past the last capability the kernel knows.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        if libc::syscall(libc::SYS_setgroups, creds.groups.len(), creds.groups.as_ptr()) < 0 {
            return err("setgroups");
        }
        if libc::syscall(libc::SYS_setresgid, creds.gid, creds.gid, creds.gid) < 0
            || libc::syscall(libc::SYS_setresuid, creds.uid, creds.uid, creds.uid) < 0
        {
            return err("setresuid");
        }
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = CapHeader { version: 0x2008_0522, pid: 0 };
        let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
            return err("capset");
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return err("no_new_privs");
        }
    }
    Ok(())
}

/// The decoder's thread: waits for its ready line, then serves each job; on death, a hang or
/// a broken reply, kills the child and fails this and every later job.
#[allow(clippy::too_many_arguments)]
fn serve(
    mut child: Child,
    mut stdin: ChildStdin,
    mut stdout: ChildStdout,
    jobs: Receiver<Job>,
    results: Sender<Outcome>,
    dead: Arc<AtomicBool>,
    cpu_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let stop = &*stop;
    let mut failure = read_reply(&mut stdout, START_TIMEOUT, 0, stop)
        .and_then(|r| r.map(|_| ()).map_err(|e| format!("the decoder could not start: {e}")))
        .err();
    if failure.is_some() {
        dead.store(true, Ordering::Release);
        let _ = child.kill();
    }
    for job in jobs.iter() {
        let pid = match &job {
            Job::Setup { pid, .. } | Job::Eval { pid, .. } => *pid,
        };
        if failure.is_none() && stop.load(Ordering::Acquire) {
            failure = Some("the session ended".into());
        }
        if let Some(why) = &failure {
            let _ = results.send(Outcome::Failed { pid, why: why.clone() });
            continue;
        }
        let outcome = match job {
            Job::Setup { id, pid, blob } => {
                let mut body = id.to_le_bytes().to_vec();
                body.extend_from_slice(&blob);
                match request(&mut stdin, &mut stdout, OP_SETUP, &body, START_TIMEOUT, 0, stop) {
                    Ok(Ok(_)) => continue, // a setup answers only when it fails
                    Ok(Err(e)) => Outcome::Failed { pid, why: format!("the job's CUPTI refused the setup: {e}") },
                    Err(e) => {
                        failure = Some(e.clone());
                        Outcome::Failed { pid, why: e }
                    }
                }
            }
            Job::Eval { id, pid, session, n_metrics, offset_ns, times, image } => {
                let mut body = Vec::with_capacity(8 + image.len());
                body.extend_from_slice(&id.to_le_bytes());
                body.extend_from_slice(&(times.len() as u32).to_le_bytes());
                body.extend_from_slice(&image);
                let expect = times.len() * n_metrics * 8;
                let timeout = EVAL_TIMEOUT + EVAL_PER_SAMPLE * times.len() as u32;
                match request(&mut stdin, &mut stdout, OP_EVAL, &body, timeout, expect, stop) {
                    Ok(Ok(bytes)) => {
                        let values = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
                        Outcome::Values { pid, session, n_metrics, offset_ns, times, values: values.collect() }
                    }
                    Ok(Err(e)) => {
                        Outcome::Failed { pid, why: format!("the job's CUPTI could not evaluate an image: {e}") }
                    }
                    Err(e) => {
                        failure = Some(e.clone());
                        Outcome::Failed { pid, why: e }
                    }
                }
            }
        };
        if failure.is_some() {
            dead.store(true, Ordering::Release);
            let _ = child.kill();
        }
        let _ = results.send(outcome);
    }
    drop(stdin);
    cpu_ns.store(reap(&mut child), Ordering::Release);
    dead.store(true, Ordering::Release);
}

/// Waits for the child (its stdin closed: it exits), killing it after 1 s; its CPU time (ns).
fn reap(child: &mut Child) -> u64 {
    let pid = child.id() as libc::pid_t;
    let began = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 on our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if began.elapsed() > Duration::from_secs(1) {
            let _ = child.kill();
            0
        } else {
            libc::WNOHANG
        };
        // SAFETY: as above.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if r == pid {
            let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
            return tv(usage.ru_utime) + tv(usage.ru_stime);
        }
        if r < 0 {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends one request and reads its reply: Err (the decoder is broken: dead, hung, out of
/// protocol), Ok(Err) (it refused), Ok(Ok(body)).
fn request(
    stdin: &mut ChildStdin,
    stdout: &mut ChildStdout,
    op: u32,
    body: &[u8],
    timeout: Duration,
    expect: usize,
    stop: &AtomicBool,
) -> Result<Result<Vec<u8>, String>, String> {
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&op.to_le_bytes());
    head[4..].copy_from_slice(&(body.len() as u32).to_le_bytes());
    // The same deadline for writing: a decoder that stops reading must not hold this thread
    // (and `record`'s end, which joins it) in a full pipe.
    let deadline = Instant::now() + timeout;
    write_by(stdin, &head, deadline, stop)?;
    write_by(stdin, body, deadline, stop)?;
    read_reply(stdout, deadline.saturating_duration_since(Instant::now()), expect, stop)
}

/// One reply: status 0 with exactly `expect` bytes, or a refusal of at most
/// [`MAX_ERROR_BYTES`]; anything else is a broken decoder.
fn read_reply(
    stdout: &mut ChildStdout,
    timeout: Duration,
    expect: usize,
    stop: &AtomicBool,
) -> Result<Result<Vec<u8>, String>, String> {
    let deadline = Instant::now() + timeout;
    let mut head = [0u8; 8];
    read_by(stdout, &mut head, deadline, stop)?;
    let status = u32::from_le_bytes(head[..4].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(head[4..].try_into().unwrap_or_default()) as usize;
    if status == 0 && len != expect || status != 0 && len > MAX_ERROR_BYTES {
        return Err(format!("the decoder answered {len} bytes (status {status}), not the {expect} asked for"));
    }
    let mut body = vec![0u8; len];
    read_by(stdout, &mut body, deadline, stop)?;
    Ok(if status == 0 {
        Ok(body)
    } else {
        Err(crate::units::escape_text(&String::from_utf8_lossy(&body)).into_owned())
    })
}

/// Writes all of `buf` by `deadline` (the pipe is non-blocking); a dead decoder gives EPIPE
/// (SIGPIPE is ignored in Rust programs).
fn write_by(stdin: &mut ChildStdin, buf: &[u8], deadline: Instant, stop: &AtomicBool) -> Result<(), String> {
    let fd = stdin.as_raw_fd();
    // SAFETY: fcntl on our own pipe end.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
    let mut at = 0;
    while at < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the decoder did not read in time (killed)".into());
        }
        if stop.load(Ordering::Acquire) {
            return Err("the session ended".into());
        }
        match stdin.write(&buf[at..]) {
            Ok(0) => return Err("the decoder died".into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(POLL_SLICE_MS) as i32) };
            }
            Err(e) => return Err(format!("the decoder died ({e})")),
        }
    }
    Ok(())
}

fn read_by(stdout: &mut ChildStdout, buf: &mut [u8], deadline: Instant, stop: &AtomicBool) -> Result<(), String> {
    let mut at = 0;
    while at < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the decoder did not answer in time (killed)".into());
        }
        if stop.load(Ordering::Acquire) {
            return Err("the session ended".into());
        }
        let mut pfd = libc::pollfd { fd: stdout.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(POLL_SLICE_MS) as i32) };
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if r <= 0 {
            continue;
        }
        match stdout.read(&mut buf[at..]) {
            Ok(0) => return Err("the decoder died".into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("the decoder died ({e})")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The decoder process.

type HostFn<P> = unsafe extern "C" fn(*mut P) -> u32;

struct Cupti {
    init: HostFn<cs::CUpti_Profiler_Host_Initialize_Params>,
    add: HostFn<cs::CUpti_Profiler_Host_ConfigAddMetrics_Params>,
    eval: HostFn<cs::CUpti_Profiler_Host_EvaluateToGpuValues_Params>,
    /// `cuptiProfilerInitialize`, tried once if the host API refuses to start without it.
    profiler_init: Option<HostFn<cs::CUpti_Profiler_Initialize_Params>>,
}

struct Host {
    object: *mut cs::CUpti_Profiler_Host_Object,
    metrics: Vec<CString>,
}

/// `ghostprof __ghostprof-pm-decoder`: the decoder process (see the module docs). Returns
/// None when this process is not one (the first argument is not [`DECODER_ARG`]); else runs
/// until its input closes and returns the exit code.
pub fn decoder_main() -> Option<std::process::ExitCode> {
    if std::env::args_os().nth(1).as_deref() != Some(std::ffi::OsStr::new(DECODER_ARG)) {
        return None;
    }
    let mut out = std::io::stdout().lock();
    let code = match decoder_confine().and_then(decoder_start) {
        Ok(cupti) => {
            let _ = reply(&mut out, 0, &[]);
            decoder_loop(&cupti, &mut std::io::stdin().lock(), &mut out);
            0
        }
        Err(e) => {
            let _ = reply(&mut out, 1, e.as_bytes());
            1
        }
    };
    Some(std::process::ExitCode::from(code))
}

fn reply(out: &mut impl Write, status: u32, body: &[u8]) -> std::io::Result<()> {
    let body = if status != 0 { &body[..body.len().min(MAX_ERROR_BYTES)] } else { body };
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&status.to_le_bytes());
    head[4..].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out.write_all(&head)?;
    out.write_all(body)?;
    out.flush()
}

/// The decoder's arguments after [`DECODER_ARG`]: companions, the job's pid (ghostprof's
/// numbering), uid, gid, groups (`a,b,c` or `-`); its fds: 3 libcupti, 4.. companions, then
/// the job's pidfd. Enters the job's namespaces (it was forked inside its pid namespace),
/// drops to the job's user and installs [`seccomp_filter`]; returns the companions' count.
fn decoder_confine() -> Result<usize, String> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let num = |i: usize| -> Result<u32, String> {
        args.get(i).and_then(|a| a.parse().ok()).ok_or_else(|| "the decoder was started without its job".to_string())
    };
    let companions = (num(0)? as usize).min(MAX_COMPANIONS);
    let (pid, uid, gid) = (num(1)?, num(2)?, num(3)?);
    let groups = match args.get(4).map(String::as_str) {
        Some("-") => Vec::new(),
        Some(g) => g.split(',').map(|v| v.parse().map_err(|_| "bad groups".to_string())).collect::<Result<_, _>>()?,
        None => return Err("the decoder was started without its job".into()),
    };
    let pidfd = 4 + companions as RawFd;
    enter_namespaces(pidfd, pid, JOB_NAMESPACES)?;
    // SAFETY: our copy of the job's pidfd, not needed from here on.
    unsafe { libc::close(pidfd) };
    drop_privileges(&Creds { uid, gid, groups })?;
    seccomp_filter()?;
    Ok(companions)
}

/// The x86-64 system calls the decoder may not make (EPERM): new namespaces or joining
/// others, mounts, other processes' memory, kernel objects and modules, sockets (the CUPTI
/// host API evaluates images in memory and talks to nothing), io_uring (a way around this
/// filter's view of calls).
const DENIED_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
];

/// Namespace flags of clone(2): `CLONE_NEWTIME`, `CLONE_NEWNS` and the six at the top.
const CLONE_NEW_ANY: u32 = (libc::CLONE_NEWTIME
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// The decoder's seccomp filter (classic BPF): another architecture or the x32 ABI kills the
/// process; [`DENIED_SYSCALLS`] and clone with any namespace flag fail with EPERM; clone3 fails
/// with ENOSYS, which makes glibc fall back to clone for threads (its flags live in memory the
/// filter cannot read); everything else is allowed.
fn seccomp_filter() -> Result<(), String> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_BIT: u32 = 0x4000_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
    const JEQ: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE: u16 = 0x05 | 0x30;
    const JSET: u16 = 0x05 | 0x40;
    const RET: u16 = 0x06; // BPF_RET | BPF_K
                           // seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low half first: little-endian).
    let op = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| libc::sock_filter { code, jt, jf, k };
    let mut f = vec![
        op(LD_W_ABS, 4),
        jump(JEQ, AUDIT_ARCH_X86_64, 1, 0),
        op(RET, RET_KILL_PROCESS),
        op(LD_W_ABS, 0),
        jump(JGE, X32_BIT, 0, 1),
        op(RET, RET_KILL_PROCESS),
    ];
    for &nr in DENIED_SYSCALLS {
        f.push(jump(JEQ, nr as u32, 0, 1));
        f.push(op(RET, RET_ERRNO | libc::EPERM as u32));
    }
    f.push(jump(JEQ, libc::SYS_clone3 as u32, 0, 1));
    f.push(op(RET, RET_ERRNO | libc::ENOSYS as u32));
    f.push(jump(JEQ, libc::SYS_clone as u32, 0, 3));
    f.push(op(LD_W_ABS, 16));
    f.push(jump(JSET, CLONE_NEW_ANY, 0, 1));
    f.push(op(RET, RET_ERRNO | libc::EPERM as u32));
    f.push(op(RET, RET_ALLOW));
    let prog = libc::sock_fprog { len: f.len() as u16, filter: f.as_mut_ptr() };
    // SAFETY: a filter program that lives through the call; no new privileges is already set.
    if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) } != 0 {
        return Err(format!("cannot install the decoder's seccomp filter: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn decoder_start(companions: usize) -> Result<Cupti, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("");
    if !field("CapEff:").trim_start_matches('0').is_empty() || !field("CapPrm:").trim_start_matches('0').is_empty() {
        return Err("the decoder holds capabilities; refusing to load the job's library".into());
    }
    if field("NoNewPrivs:") != "1" {
        return Err("the decoder may gain privileges; refusing to load the job's library".into());
    }
    if field("Seccomp:") != "2" {
        return Err("the decoder has no seccomp filter; refusing to load the job's library".into());
    }
    // Companions first, global: libcupti's `libnvperf_host.so` then matches an object already
    // loaded (by its soname) instead of a search next to /proc/self/fd/3. A failure here shows
    // as libcupti's own.
    for fd in 4..4 + companions {
        let path = CString::new(format!("/proc/self/fd/{fd}")).map_err(|e| e.to_string())?;
        // SAFETY: dlopen of a descriptor ghostprof checked; this process runs as the job's user.
        unsafe {
            libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            libc::close(fd as i32);
        }
    }
    // SAFETY: dlopen of the descriptor ghostprof checked; this process runs as the job's user.
    let handle = unsafe { libc::dlopen(c"/proc/self/fd/3".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    // SAFETY: closing our copy (the mapping stays).
    unsafe { libc::close(3) };
    if handle.is_null() {
        // SAFETY: dlerror's string is valid until the next dl call.
        let e = unsafe { libc::dlerror() };
        let e = if e.is_null() { "?".into() } else { unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned() };
        return Err(format!("cannot load the job's libcupti: {e}"));
    }
    let sym = |name: &CStr| -> Result<*mut c_void, String> {
        // SAFETY: dlsym on a live handle.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() {
            Err(format!("the job's libcupti has no {}", name.to_string_lossy()))
        } else {
            Ok(p)
        }
    };
    // SAFETY: the CUPTI host API's signatures (cupti_profiler_host.h).
    unsafe {
        Ok(Cupti {
            init: std::mem::transmute::<*mut c_void, HostFn<cs::CUpti_Profiler_Host_Initialize_Params>>(sym(
                c"cuptiProfilerHostInitialize",
            )?),
            add: std::mem::transmute::<*mut c_void, HostFn<cs::CUpti_Profiler_Host_ConfigAddMetrics_Params>>(sym(
                c"cuptiProfilerHostConfigAddMetrics",
            )?),
            eval: std::mem::transmute::<*mut c_void, HostFn<cs::CUpti_Profiler_Host_EvaluateToGpuValues_Params>>(sym(
                c"cuptiProfilerHostEvaluateToGpuValues",
            )?),
            profiler_init: sym(c"cuptiProfilerInitialize")
                .ok()
                .map(|p| std::mem::transmute::<*mut c_void, HostFn<cs::CUpti_Profiler_Initialize_Params>>(p)),
        })
    }
}

macro_rules! zeroed_params {
    ($t:ident) => {{
        // SAFETY: CUPTI params structs are plain C data; all-zero is their documented default.
        let mut p: cs::$t = unsafe { std::mem::zeroed() };
        p.structSize = std::mem::size_of::<cs::$t>();
        p
    }};
}

fn decoder_loop(cupti: &Cupti, input: &mut impl Read, out: &mut impl Write) {
    let mut hosts: HashMap<u32, Host> = HashMap::new();
    loop {
        let mut head = [0u8; 8];
        if input.read_exact(&mut head).is_err() {
            return;
        }
        let op = u32::from_le_bytes(head[..4].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(head[4..].try_into().unwrap_or_default()) as usize;
        if !(4..=wire::PM_IMAGE_MAX + 8).contains(&len) {
            return;
        }
        let mut body = vec![0u8; len];
        if input.read_exact(&mut body).is_err() {
            return;
        }
        let id = u32::from_le_bytes(body[..4].try_into().unwrap_or_default());
        let result = match op {
            OP_SETUP => setup_host(cupti, &body[4..]).map(|h| {
                hosts.insert(id, h);
                Vec::new()
            }),
            OP_EVAL if body.len() >= 8 => match hosts.get(&id) {
                Some(host) => {
                    let n = u32::from_le_bytes(body[4..8].try_into().unwrap_or_default()) as usize;
                    evaluate(cupti, host, &body[8..], n)
                }
                None => Err("no setup for this image".into()),
            },
            _ => return,
        };
        let sent = match result {
            Ok(bytes) => reply(out, 0, &bytes),
            Err(e) => reply(out, 1, e.as_bytes()),
        };
        if sent.is_err() {
            return;
        }
    }
}

fn setup_host(cupti: &Cupti, blob: &[u8]) -> Result<Host, String> {
    let setup = wire::PmSetup::decode(blob).ok_or("a malformed setup")?;
    let chip = CString::new(setup.chip).map_err(|_| "a chip name with a NUL")?;
    let metrics = setup.metrics.iter().map(|m| CString::new(*m)).collect::<Result<Vec<_>, _>>().map_err(|_| "NUL")?;
    let mut init = zeroed_params!(CUpti_Profiler_Host_Initialize_Params);
    init.profilerType = cs::CUpti_ProfilerType::CUPTI_PROFILER_TYPE_PM_SAMPLING;
    init.pChipName = chip.as_ptr();
    init.pCounterAvailabilityImage = setup.availability.as_ptr();
    // SAFETY: initialized params; the strings and image live through the call.
    let mut rc = unsafe { (cupti.init)(&mut init) };
    if rc != 0 {
        // The host API is documented to need no device; should a CUPTI still want the
        // profiler initialized first, it gets that once.
        if let Some(profiler_init) = cupti.profiler_init {
            let mut p = zeroed_params!(CUpti_Profiler_Initialize_Params);
            // SAFETY: initialized params.
            if unsafe { profiler_init(&mut p) } == 0 {
                // SAFETY: as above.
                rc = unsafe { (cupti.init)(&mut init) };
            }
        }
    }
    if rc != 0 {
        return Err(format!("cuptiProfilerHostInitialize failed ({rc})"));
    }
    let mut names: Vec<*const c_char> = metrics.iter().map(|m| m.as_ptr()).collect();
    let mut add = zeroed_params!(CUpti_Profiler_Host_ConfigAddMetrics_Params);
    add.pHostObject = init.pHostObject;
    add.ppMetricNames = names.as_mut_ptr();
    add.numMetrics = names.len();
    // SAFETY: as above.
    let rc = unsafe { (cupti.add)(&mut add) };
    if rc != 0 {
        return Err(format!("cuptiProfilerHostConfigAddMetrics failed ({rc})"));
    }
    Ok(Host { object: init.pHostObject, metrics })
}

fn evaluate(cupti: &Cupti, host: &Host, image: &[u8], n: usize) -> Result<Vec<u8>, String> {
    if n > wire::PM_SAMPLES_MAX {
        return Err("too many samples".into());
    }
    let mut names: Vec<*const c_char> = host.metrics.iter().map(|m| m.as_ptr()).collect();
    let mut values = vec![0f64; names.len()];
    let mut out = Vec::with_capacity(n * names.len() * 8);
    for index in 0..n {
        let mut eval = zeroed_params!(CUpti_Profiler_Host_EvaluateToGpuValues_Params);
        eval.pHostObject = host.object;
        eval.pCounterDataImage = image.as_ptr();
        eval.counterDataImageSize = image.len();
        eval.rangeIndex = index;
        eval.ppMetricNames = names.as_mut_ptr();
        eval.numMetrics = names.len();
        eval.pMetricValues = values.as_mut_ptr();
        // SAFETY: initialized params; the image, names and values live through the call.
        let rc = unsafe { (cupti.eval)(&mut eval) };
        if rc != 0 {
            return Err(format!("cuptiProfilerHostEvaluateToGpuValues failed ({rc}) at sample {index}"));
        }
        for v in &values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_give_the_mapped_libcupti() {
        let maps = "7f00-7f10 r-xp 00000000 fd:01 1234 /usr/lib/libc.so.6\n\
                    7f20-7f30 r--p 00000000 00:2a 99 /opt/cuda/lib/libcupti.so.12 (deleted)\n\
                    7f40-7f50 r--p 00000000 103:02 777 /opt/cuda/lib/libcupti.so.12\n";
        let lib = find_cupti(maps).unwrap_or_else(|| panic!("found"));
        assert_eq!(lib.path, "/opt/cuda/lib/libcupti.so.12");
        assert_eq!(lib.range, "7f40-7f50");
        assert_eq!((lib.dev, lib.ino), (libc::makedev(0x103, 2), 777));
        assert_eq!(find_cupti("7f00-7f10 r-xp 00000000 fd:01 1234 /usr/lib/libcuptix.so\n"), None);
    }

    #[test]
    fn only_cuptis_perfworks_libraries_beside_it_are_companions() {
        let maps = "1-2 r-xp 0 fd:01 10 /cuda/lib/libcuda.so.1\n\
                    3-4 r-xp 0 fd:01 11 /cuda/lib/libnvperf_host.so\n\
                    5-6 r--p 0 fd:01 11 /cuda/lib/libnvperf_host.so\n\
                    7-8 r-xp 0 fd:01 12 /other/libnvperf_target.so\n\
                    9-a r-xp 0 fd:01 13 /cuda/lib/libnvperf_target.so (deleted)\n\
                    b-c r-xp 0 fd:01 14 /cuda/lib/libcupti.so.12\n";
        let lib = find_cupti(maps).unwrap_or_else(|| panic!("found"));
        let c = find_companions(maps, &lib);
        assert_eq!(
            c.iter().map(|c| (c.path.as_str(), c.ino)).collect::<Vec<_>>(),
            vec![("/cuda/lib/libnvperf_host.so", 11)]
        );
    }

    #[test]
    fn credentials_must_agree() {
        let s = "Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 24 100\n";
        assert_eq!(creds_of(s), Some(Creds { uid: 1000, gid: 100, groups: vec![4, 24, 100] }));
        assert_eq!(creds_of("Uid:\t1000\t0\t1000\t1000\nGid:\t100\t100\t100\t100\n"), None);
        assert_eq!(creds_of("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").map(|c| c.groups), Some(vec![]));
    }
}
