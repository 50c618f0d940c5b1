//! `ghostprof watch`: the always-on service. It follows every CUDA process of the host (or of a
//! process tree or cgroup) as it appears and lets it go when it exits; the eBPF host side is
//! always on; CUPTI is duty-cycled through the dormant injection library's ring control word
//! (on for `sample` out of every `period`, PM sampling with it); each sample window is analyzed
//! (`analyze::account`, as `report` does) into the figures the Prometheus endpoint serves;
//! everything is kept in rotating trace segments under hard disk and age caps (the flight
//! recorder), from which triggers write one trace of the last minutes and the next seconds.
//!
//! Files: [`recorder`] (segments, caps, trigger files), [`window`] (a window's figures, the
//! straggler rule), [`exporter`] (the metrics and their HTTP endpoint), [`control`] (SIGUSR1
//! and the root-only trigger socket). Imports go one way: this file → the four.

pub mod control;
pub mod exporter;
pub mod recorder;
pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::collectors::Collectors;
use crate::analyze::Category;
use crate::collect::procmaps;
use crate::collect::sched::CollectError;
use crate::inject::{InjectError, InjectOptions, Injected};
use crate::pipeline::{Pipeline, Producer};
use crate::trace::{DropCause, Interner, LibKind, NameLimits, SessionNote, Source, TraceInfo};
use recorder::Recorder;
use window::WindowFigures;

/// Windows in a row a process may refuse live injection for a reason that may pass (no
/// blocking system call in time, another tracer, the library busy) before watch stops trying:
/// each try can hold the loop up to the injection's wait.
const INJECT_TRIES: u32 = 3;
/// How long a dormant injection library takes at most to notice its ring's control word (it
/// polls every 50 ms) and switch CUPTI on, with a margin: the sample window starts after it.
const RING_WAKE: Duration = Duration::from_millis(150);
/// How long the rings are drained at most after CUPTI is switched off, before the sample
/// window's segment is closed: the segment closes sooner once every library has said its
/// session ended (`SESSION_END`: CUPTI's buffers flushed into the ring as it goes dormant).
const RING_FLUSH: Duration = Duration::from_secs(3);
/// MFU values per device kept for the running median.
const MFU_HISTORY: usize = 15;
/// The names every segment's records may refer to, all segments together (they share one
/// string table so that a trigger can join them): the ceiling of that table's memory.
pub const NAME_BYTES_CEILING: u64 = 64 << 20;

/// Which processes `watch` follows.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every process of the host that maps libcuda.
    All,
    /// This process and its descendants.
    Tree(u32),
    /// The processes of this cgroup (v2 path, as in /proc/PID/cgroup, e.g. /kubepods/pod1) and
    /// below it.
    Cgroup(String),
}

/// The automatic triggers and the span each trigger's trace covers.
#[derive(Debug, Clone)]
pub struct TriggerConfig {
    /// The trace goes back this far before the trigger.
    pub before: Duration,
    /// And runs this long after it (CUPTI on throughout).
    pub after: Duration,
    /// Fire when a device's `comm.wait` is above this fraction of a sample window.
    pub comm_wait_above: Option<f64>,
    /// Fire when one rank arrived last at this many consecutive collectives of a window.
    pub straggler_collectives: Option<u32>,
    /// Fire when a device's MFU falls below this fraction of its running median.
    pub mfu_below_median: Option<f64>,
    /// An automatic trigger of one kind fires at most once in this long.
    pub cooldown: Duration,
}

/// What `ghostprof watch` needs (built by the command line).
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The processes followed.
    pub scope: Scope,
    /// CUPTI on this long ...
    pub sample: Duration,
    /// ... out of every `period`.
    pub period: Duration,
    /// The flight recorder's directory.
    pub dir: PathBuf,
    /// Hard cap on the bytes of the recorder's files.
    pub max_disk: u64,
    /// Files older than this are deleted.
    pub max_age: Duration,
    /// The Prometheus endpoint's address (None: no endpoint).
    pub listen: Option<SocketAddr>,
    /// The root-only trigger socket (None: none).
    pub socket: Option<PathBuf>,
    /// Where dormant injection libraries keep their rings.
    pub ring_dir: PathBuf,
    /// The triggers.
    pub triggers: TriggerConfig,
    /// Stop after this long (None: until stopped).
    pub max_duration: Option<Duration>,
    /// How often /proc is scanned for new CUDA processes.
    pub scan_interval: Duration,
    /// How long the loop sleeps between drains.
    pub drain_interval: Duration,
    /// The CUPTI library loaded with ptrace into followed CUDA processes started without it
    /// (`attach`'s live injection), at each sample window; None: `--no-inject`, eBPF and the
    /// dormant library's rings only.
    pub inject_library: Option<PathBuf>,
    /// The per-launch probes stay placed between sample windows (false: placed only while
    /// CUPTI is on, see [`crate::collect::host::HostCollector::set_launch_probes`]).
    pub launches_always: bool,
}

impl WatchConfig {
    /// The defaults of the command line for `dir`.
    pub fn new(dir: PathBuf) -> Self {
        WatchConfig {
            scope: Scope::All,
            sample: Duration::from_secs(2),
            period: Duration::from_secs(60),
            dir,
            max_disk: 2 << 30,
            max_age: Duration::from_secs(24 * 3600),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            socket: Some(PathBuf::from(control::DEFAULT_SOCKET)),
            ring_dir: PathBuf::from("/dev/shm"),
            triggers: TriggerConfig {
                before: Duration::from_secs(300),
                after: Duration::from_secs(10),
                comm_wait_above: None,
                straggler_collectives: None,
                mfu_below_median: None,
                cooldown: Duration::from_secs(600),
            },
            max_duration: None,
            scan_interval: Duration::from_millis(500),
            drain_interval: Duration::from_millis(10),
            inject_library: None,
            launches_always: false,
        }
    }
}

/// What a watch did, when it stops.
#[derive(Debug, Default)]
pub struct WatchSummary {
    /// Sample windows analyzed.
    pub windows: u64,
    /// Processes followed over the whole run.
    pub followed: u64,
    /// Trace files written by triggers.
    pub triggers: Vec<PathBuf>,
    /// Files deleted by the caps.
    pub deleted: u64,
    /// The endpoint's address, if one ran.
    pub listen: Option<SocketAddr>,
}

/// Where the duty cycle is.
enum Phase {
    /// Host side only, until the next window.
    Host,
    /// CUPTI switched on; the window starts once every library has noticed.
    Waking(Instant),
    /// The window: CUPTI on since `start_ns`, until the instant.
    Sampling { start_ns: u64, until: Instant },
    /// CUPTI switched off at `end_ns`; its last records are drained until the instant.
    Flushing { start_ns: u64, end_ns: u64, until: Instant },
}

/// A trigger waiting for its "after" time.
struct Pending {
    reasons: Vec<String>,
    kind: String,
    at_ns: u64,
    until: Instant,
}

/// The processes of the host that map libcuda and are in scope, checked with backoff: a
/// process that does not map it yet is looked at again after 1, 2, 4 … 16 scans.
struct Finder {
    scope: Scope,
    scans: u64,
    /// pid → (the scan it was first seen at, the scan at which to look again).
    not_yet: HashMap<u32, (u64, u64)>,
}

impl Finder {
    fn in_scope(&self, pid: u32, tree: &BTreeSet<u32>) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Tree(_) => tree.contains(&pid),
            Scope::Cgroup(cg) => std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|s| {
                    s.lines().any(|l| {
                        let path = l.splitn(3, ':').nth(2).unwrap_or("");
                        path == cg || path.starts_with(&format!("{}/", cg.trim_end_matches('/')))
                    })
                })
                .unwrap_or(false),
        }
    }

    /// New CUDA processes in scope (not in `followed`), with their GPU libraries as paths
    /// this process can open.
    fn find(&mut self, followed: &BTreeSet<u32>) -> Vec<(u32, Vec<PathBuf>)> {
        self.scans += 1;
        let me = std::process::id();
        let tree: BTreeSet<u32> = match self.scope {
            Scope::Tree(root) => super::attach::process_tree(root).into_iter().collect(),
            _ => BTreeSet::new(),
        };
        let mut alive = BTreeSet::new();
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return found };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            alive.insert(pid);
            if pid == me || followed.contains(&pid) {
                continue;
            }
            if self.not_yet.get(&pid).is_some_and(|(_, at)| *at > self.scans) {
                continue;
            }
            if !self.in_scope(pid, &tree) {
                self.back_off(pid);
                continue;
            }
            let libs = procmaps::mapped_libs(pid).unwrap_or_default();
            let gpu: Vec<_> =
                libs.iter().filter(|l| matches!(procmaps::classify(&l.path), LibKind::Cuda | LibKind::Nccl)).collect();
            if !gpu.iter().any(|l| procmaps::classify(&l.path) == LibKind::Cuda) {
                self.back_off(pid);
                continue;
            }
            self.not_yet.remove(&pid);
            let mut paths: Vec<PathBuf> = gpu.iter().map(|l| procmaps::host_path(pid, &l.path)).collect();
            if !gpu.iter().any(|l| procmaps::classify(&l.path) == LibKind::Nccl) {
                let cuda_dir = gpu.iter().find_map(|l| l.path.parent().map(Path::to_path_buf));
                paths.extend(nccl_before_it_is_mapped(pid, cuda_dir));
            }
            found.push((pid, paths));
        }
        self.not_yet.retain(|p, _| alive.contains(p));
        found
    }

    fn back_off(&mut self, pid: u32) {
        let scans = self.scans;
        let (first, at) = self.not_yet.entry(pid).or_insert((scans, scans));
        // Looked at every scan for its first 20 (a starting job maps libcuda soon), then
        // after 2, 4 … 16 scans.
        let age = scans - *first;
        let wait = if age < 20 { 1 } else { (2u64 << ((age - 20) / 20).min(3)).min(16) };
        *at = scans + wait;
    }
}

/// The libnccl a process would load (next to its libcuda, or on its LD_LIBRARY_PATH), as a
/// path this process can open: probed before the process maps it, so that its communicators'
/// creation (their rank) is seen even when NCCL is loaded just before it, between two scans.
fn nccl_before_it_is_mapped(pid: u32, cuda_dir: Option<PathBuf>) -> Option<PathBuf> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let ld_path = environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"LD_LIBRARY_PATH="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let dirs =
        cuda_dir.into_iter().chain(ld_path.split(':').filter(|d| d.starts_with('/')).take(32).map(PathBuf::from));
    dirs.map(|d| procmaps::host_path(pid, &d.join("libnccl.so.2"))).find(|p| p.is_file())
}

/// The one place a process starts being followed: its pid joins the eBPF targets, its GPU
/// libraries are probed, and the CUPTI ring of its dormant injection library (if it carries
/// one) is opened. A process without the library is injected by [`Watch::arm`] at each sample
/// window instead ([`needs_injection`]).
fn start_following(
    c: &mut Collectors,
    pid: u32,
    libs: &[PathBuf],
    notes: &mut Vec<String>,
) -> Result<(), CollectError> {
    c.host.add_target(pid)?;
    for lib in libs {
        if let Err(e) = c.host.attach_library(lib) {
            notes.push(format!("process {pid}: cannot probe {}: {e}", lib.display()));
        }
    }
    c.cupti.scan(&[pid]);
    Ok(())
}

/// Whether `pid` gets its device timeline from live injection: it maps no ghostprof library
/// and was not started with one (`CUDA_INJECTION64_PATH` naming it: the driver loads it at
/// `cuInit`, which may not have happened yet, and two libraries would fight over one ring).
fn needs_injection(pid: u32) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if maps.contains("libghostprof_inject.so") {
        return false;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    !environ
        .split(|b| *b == 0)
        .any(|v| v.strip_prefix(b"CUDA_INJECTION64_PATH=").is_some_and(|p| p.ends_with(b"libghostprof_inject.so")))
}

/// The `reason` label of an injection refusal (a fixed set: [`exporter::INJECT_REFUSAL_REASONS`]),
/// and whether the next window tries again (the refusal may not hold then).
fn refusal_reason(e: &InjectError) -> (&'static str, bool) {
    match e {
        InjectError::NotX86_64 { .. } => ("not_x86_64", false),
        InjectError::NoCuda { .. } => ("no_cuda", true),
        InjectError::Traced { .. } => ("traced", true),
        InjectError::PtraceDenied { .. } => ("ptrace_denied", false),
        InjectError::NoDlopen { .. } => ("no_dlopen", false),
        InjectError::NoSafeMoment { .. } => ("no_safe_moment", true),
        // (not a refusal: `arm` lets it go)
        InjectError::Gone { .. } => ("failed", false),
        InjectError::Library { .. } => ("library", false),
        InjectError::Failed { .. } => ("failed", false),
        // Busy (an `attach` session of its own runs in it) is the common one: it ends.
        InjectError::Refused { .. } => ("library_refused", true),
    }
}

/// A file's (device, inode), as the host collector keys its probes.
fn file_key(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `pid` still runs: a zombie (exited, not yet reaped by its parent) or a process
/// already exiting does not, though /proc still lists it.
fn alive(pid: u32) -> bool {
    !crate::inject::process_exiting(pid)
}

/// The running service's state.
struct Watch<'a> {
    cfg: &'a WatchConfig,
    c: Collectors,
    recorder: Recorder,
    pipeline: Pipeline,
    producer: Producer,
    state: Arc<Mutex<exporter::State>>,
    followed: BTreeSet<u32>,
    followed_total: u64,
    cupti_on: bool,
    /// Each ring's closed sessions when CUPTI was last switched off: the window's segment is
    /// closed once every library still alive has closed one more (its last records are in).
    ends_at_off: BTreeMap<u32, u64>,
    notes_done: [usize; 3],
    log: &'a mut dyn FnMut(&str),
    /// Drops of causes counted per pipeline, summed over closed segments.
    closed_drops: BTreeMap<(String, String), u64>,
    mfu_history: HashMap<(u32, u32), VecDeque<f64>>,
    last_auto: HashMap<String, Instant>,
    pending: Option<Pending>,
    summary: WatchSummary,
    finder: Finder,
    /// The library files probed for each followed process (kept while it lives).
    libs_of: HashMap<u32, Vec<(u64, u64)>>,
    said: std::collections::HashSet<String>,
    /// Live injection's options (None: `--no-inject`, or no library found).
    inject: Option<InjectOptions>,
    /// Followed processes whose device timeline comes from an attach session started by
    /// injection: one per sample window, as the library ends a session when its ring is
    /// switched off.
    to_inject: BTreeSet<u32>,
    /// Refusals in a row per process (see [`INJECT_TRIES`]).
    inject_tries: HashMap<u32, u32>,
    /// Probes let go, removed on a thread of their own (see [`Watch::let_go`]).
    reaper: std::sync::mpsc::Sender<Vec<libbpf_rs::Link>>,
    /// Trigger socket connections refused (peer not root), counted by its thread.
    socket_refused: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Watch<'_> {
    fn info(&self, kind: &str) -> TraceInfo {
        let mut extra = serde_json::Map::new();
        extra.insert("watch_segment".into(), kind.into());
        extra.insert("watch_sample_ns".into(), (self.cfg.sample.as_nanos() as u64).into());
        extra.insert("watch_period_ns".into(), (self.cfg.period.as_nanos() as u64).into());
        TraceInfo { command: Vec::new(), target_pids: self.followed.iter().copied().collect(), extra }
    }

    /// Writes the session's new notes into the open segment and the log.
    fn push_notes(&mut self) {
        let now = crate::clock::monotonic_ns();
        let lists: [&Vec<String>; 3] = [&self.c.host.notes, &self.c.sched.notes, &self.c.cupti.notes];
        let mut fresh = Vec::new();
        for (i, list) in lists.iter().enumerate() {
            fresh.extend(list.iter().skip(self.notes_done[i]).cloned());
            self.notes_done[i] = list.len();
        }
        // The recorder's and the service's own notes are taken, so they do not pile up.
        fresh.append(&mut self.recorder.notes);
        for n in fresh {
            // CUPTI held by another tool in a process we injected: no device timeline there.
            if n.contains("CUPTI is held by another subscriber") {
                let pid = n.strip_prefix("process ").and_then(|r| r.split(':').next()).and_then(|p| p.parse().ok());
                if pid.is_some_and(|p: u32| self.to_inject.contains(&p)) {
                    *self
                        .state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .inject_refusals
                        .entry("cupti_held".to_string())
                        .or_insert(0) += 1;
                }
            }
            // The same note from every segment's collectors (NVML missing) is said once.
            if self.said.len() < 4096 && !self.said.insert(n.clone()) {
                continue;
            }
            (self.log)(&n);
            let text_id = self.producer.intern(&n);
            self.producer.push(SessionNote { time_ns: now, pid: 0, text_id });
        }
    }

    fn note(&mut self, text: String) {
        self.recorder.notes.push(text);
        self.push_notes();
    }

    /// Closes the open segment and opens the next (of `kind`); returns the closed one.
    fn rotate(&mut self, kind: &str) -> anyhow::Result<Option<recorder::Segment>> {
        self.c.drain(&mut self.producer)?;
        self.push_notes();
        let info = self.info(kind);
        let next = self.recorder.open(&info)?;
        for n in self.c.switch_pipeline(&next) {
            self.recorder.notes.push(n);
        }
        let old_producer = std::mem::replace(&mut self.producer, next.producer(Source::Ebpf));
        drop(old_producer);
        let old = std::mem::replace(&mut self.pipeline, next);
        for (s, cause, n) in old.stats().drops {
            if matches!(cause, DropCause::QueueFull | DropCause::WriterStopped) {
                *self.closed_drops.entry((s.name().to_string(), cause.name().to_string())).or_insert(0) += n;
            }
        }
        Ok(self.recorder.close(old))
    }

    fn set_cupti(&mut self, on: bool) {
        if on != self.cupti_on {
            self.cupti_on = on;
            if on {
                // Probes first: the window's first launches come once the rings switch on.
                self.want_launch_probes(true);
                let pids: Vec<u32> = self.to_inject.iter().copied().collect();
                self.arm(&pids);
            }
            if !on {
                self.ends_at_off = self.c.cupti.session_ends();
            }
            self.c.cupti.set_collecting(on);
        }
    }

    /// Places or removes the per-launch probes (unless `--launches-always`); removed ones go
    /// to the reaper thread. They are placed before the libraries switch CUPTI on, and removed
    /// once the window's segment is closed (CUPTI's last records are in): every kernel a
    /// window's segment holds has its launch.
    fn want_launch_probes(&mut self, on: bool) {
        if self.cfg.launches_always || self.c.host.launch_probes() == on {
            return;
        }
        let (removed, failed) = self.c.host.set_launch_probes(on);
        if !removed.is_empty() {
            let _ = self.reaper.send(removed);
        }
        self.recorder.notes.extend(failed);
    }

    /// Whether every library still alive has closed the session that the last switch-off
    /// ended ([`crate::collect::cupti::CuptiCollector::sessions_open`]).
    fn sessions_closed(&self) -> bool {
        self.c.cupti.sessions_open(&self.ends_at_off).is_empty()
    }

    /// Starts an attach session in each of `pids` (injected with ptrace the first time, its
    /// entry point called again after) and opens its new ring, which switches its CUPTI on.
    /// The session of the last window ended when its ring was switched off (the library
    /// removes its ring then): that ring, drained, is closed first. A refusal is a note and a
    /// count (`ghostprof_inject_refusals_total`), never a failure of watch.
    fn arm(&mut self, pids: &[u32]) {
        let Some(opts) = self.inject.clone() else { return };
        if pids.is_empty() {
            return;
        }
        let _ = self.c.drain(&mut self.producer);
        let open = self.c.cupti.open_rings();
        for &pid in pids {
            if !alive(pid) {
                continue;
            }
            if open.contains(&pid) {
                self.c.cupti.forget(pid);
            }
            match crate::inject::inject(pid, &opts) {
                Ok(how) => {
                    self.inject_tries.remove(&pid);
                    if how == Injected::Dormant {
                        self.to_inject.remove(&pid);
                    } else {
                        self.state.lock().unwrap_or_else(|p| p.into_inner()).inject_sessions += 1;
                    }
                    self.c.cupti.scan(&[pid]);
                }
                // It is exiting as its window begins: not a refusal; the scan lets it go (and
                // a process still there is tried again at the next window).
                Err(InjectError::Gone { .. }) => {}
                Err(e) => {
                    let (reason, again) = refusal_reason(&e);
                    *self
                        .state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .inject_refusals
                        .entry(reason.to_string())
                        .or_insert(0) += 1;
                    let tries = self.inject_tries.entry(pid).or_insert(0);
                    *tries += 1;
                    let again = again && *tries < INJECT_TRIES;
                    if !again {
                        self.to_inject.remove(&pid);
                        self.inject_tries.remove(&pid);
                    }
                    self.recorder.notes.push(format!(
                        "{e}; process {pid} is followed with eBPF only{}",
                        if again { " (tried again at the next sample window)" } else { "" }
                    ));
                }
            }
        }
        self.push_notes();
    }

    /// Follows new processes, lets go of exited ones (after a last drain of their ring).
    fn follow(&mut self) -> anyhow::Result<Vec<u32>> {
        let mut notes = Vec::new();
        for (pid, libs) in self.finder.find(&self.followed) {
            match start_following(&mut self.c, pid, &libs, &mut notes) {
                Ok(()) => {
                    self.libs_of.insert(pid, libs.iter().filter_map(|l| file_key(l)).collect());
                    self.followed.insert(pid);
                    self.followed_total += 1;
                    // Even with a ring open: that is an attach session's (the library loaded
                    // live by a watch that was killed, or by `attach`), which ends at the next
                    // switch-off; a session of our own is started at each window instead.
                    if self.inject.is_some() && needs_injection(pid) {
                        self.to_inject.insert(pid);
                        if self.cupti_on {
                            self.arm(&[pid]);
                        }
                    }
                }
                Err(e) => notes.push(format!("cannot follow process {pid}: {e}")),
            }
        }
        for n in notes {
            self.note(n);
        }
        // Children the eBPF fork handler added, and rings that appeared after the process
        // mapped libcuda (the library creates its ring at cuInit).
        let targets = self.c.host.targets();
        let mut with_rings: Vec<u32> = self.followed.iter().copied().chain(targets).collect();
        with_rings.sort_unstable();
        with_rings.dedup();
        self.c.cupti.scan(&with_rings);
        self.c.cupti.set_collecting(self.cupti_on);
        for lib in self.c.host.rescan() {
            self.producer.push(lib);
        }
        let gone: Vec<u32> =
            self.c.cupti.open_rings().into_iter().chain(self.followed.iter().copied()).filter(|p| !alive(*p)).collect();
        Ok(gone)
    }

    /// Forgets processes that are gone (their rings drained first by the caller), and the
    /// probes of library files no live process maps or was probed for.
    fn let_go(&mut self, gone: &[u32]) {
        for &pid in gone {
            self.c.cupti.forget(pid);
            self.followed.remove(&pid);
            self.to_inject.remove(&pid);
            self.inject_tries.remove(&pid);
            self.libs_of.remove(&pid);
            self.mfu_history.retain(|k, _| k.0 != pid);
        }
        if gone.is_empty() {
            return;
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).retain_pids(&alive);
        self.libs_of.retain(|p, _| alive(*p));
        let mut in_use: std::collections::HashSet<(u64, u64)> = self.libs_of.values().flatten().copied().collect();
        for pid in self.c.host.targets() {
            for l in procmaps::mapped_libs(pid).unwrap_or_default() {
                if let Some(k) = file_key(&procmaps::host_path(pid, &l.path)) {
                    in_use.insert(k);
                }
            }
        }
        let links = self.c.host.release_libraries(&in_use);
        if !links.is_empty() {
            // Removing probes takes the kernel seconds on a loaded host: on the reaper's
            // thread, so that the loop goes on scanning (a job that started and ended inside
            // such a pause was never followed: 1 in 50 short jobs).
            if let Err(e) = self.reaper.send(links) {
                drop(e.0);
            }
        }
    }

    /// The figures of a closed sample window, and the automatic triggers they fire.
    fn window_done(&mut self, seg: &recorder::Segment, start_ns: u64, end_ns: u64) {
        let figures = match window::analyze_window(&seg.path, start_ns, end_ns) {
            Ok(f) => f,
            Err(e) => {
                self.note(format!("no figures for a sample window: {e}"));
                return;
            }
        };
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.add_window(&figures);
            st.sampled_seconds += end_ns.saturating_sub(start_ns) as f64 / 1e9;
        }
        self.summary.windows += 1;
        for (kind, reason) in self.automatic_triggers(&figures) {
            self.trigger(kind, reason, true);
        }
    }

    fn automatic_triggers(&mut self, w: &WindowFigures) -> Vec<(String, String)> {
        let t = &self.cfg.triggers;
        let mut out = Vec::new();
        for d in &w.devices {
            let wait = d.ratio(Category::CommWait);
            if let Some(x) = t.comm_wait_above {
                if wait > x {
                    out.push((
                        "comm-wait".to_string(),
                        format!(
                            "comm-wait: process {} GPU {} spent {:.1}% of a sample window in comm.wait (above {:.1}%)",
                            d.pid,
                            d.device,
                            wait * 100.0,
                            x * 100.0
                        ),
                    ));
                }
            }
            if let (Some(frac), Some(mfu)) = (t.mfu_below_median, d.mfu()) {
                let h = self.mfu_history.entry((d.pid, d.device)).or_default();
                if h.len() >= 3 {
                    let mut v: Vec<f64> = h.iter().copied().collect();
                    v.sort_by(f64::total_cmp);
                    let median = v[v.len() / 2];
                    if mfu < frac * median {
                        out.push((
                            "mfu-drop".to_string(),
                            format!(
                                "mfu-drop: process {} GPU {} MFU {:.1}% below {:.0}% of its running median {:.1}%",
                                d.pid,
                                d.device,
                                mfu * 100.0,
                                frac * 100.0,
                                median * 100.0
                            ),
                        ));
                    }
                }
                h.push_back(mfu);
                while h.len() > MFU_HISTORY {
                    h.pop_front();
                }
            }
        }
        if let (Some(k), Some((pid, rank, run))) = (t.straggler_collectives, w.late_run) {
            if run >= k {
                out.push((
                    "straggler".to_string(),
                    format!("straggler: rank {rank} (process {pid}) arrived last at {run} consecutive collectives (threshold {k})"),
                ));
            }
        }
        out
    }

    /// Starts a trigger (or joins the one pending). Automatic ones respect the cooldown.
    fn trigger(&mut self, kind: String, reason: String, automatic: bool) {
        if automatic {
            if self.last_auto.get(&kind).is_some_and(|t| t.elapsed() < self.cfg.triggers.cooldown) {
                return;
            }
            self.last_auto.insert(kind.clone(), Instant::now());
        }
        (self.log)(&format!("trigger: {reason}"));
        match self.pending.as_mut() {
            Some(p) => {
                if p.reasons.len() < 16 {
                    p.reasons.push(reason);
                }
            }
            None => {
                self.pending = Some(Pending {
                    reasons: vec![reason],
                    kind,
                    at_ns: crate::clock::monotonic_ns(),
                    until: Instant::now() + self.cfg.triggers.after,
                })
            }
        }
    }

    /// Writes the pending trigger's trace (its "after" time over, or the watch stopping).
    fn finish_trigger(&mut self) -> anyhow::Result<()> {
        let Some(p) = self.pending.take() else { return Ok(()) };
        self.rotate("host")?;
        let from = p.at_ns.saturating_sub(self.cfg.triggers.before.as_nanos() as u64);
        let info = self.info("trigger");
        let reason = p.reasons.join("; ");
        match self.recorder.write_trigger(&reason, from, crate::clock::monotonic_ns(), &info) {
            Ok(path) => {
                (self.log)(&format!("trigger trace written: {}", path.display()));
                *self.state.lock().unwrap_or_else(|p| p.into_inner()).triggers.entry(p.kind.clone()).or_insert(0) += 1;
                self.summary.triggers.push(path);
            }
            Err(e) => self.note(format!("trigger ({reason}): cannot write its trace: {e}")),
        }
        Ok(())
    }

    /// The endpoint's health figures, once a second.
    fn update_health(&mut self, started: Instant, last: &mut (Instant, f64)) {
        let (cpu, rss) = exporter::own_usage();
        let dt = last.0.elapsed().as_secs_f64();
        let stats = self.pipeline.stats();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.cpu_ratio = if dt > 0.0 { (cpu - last.1) / dt } else { 0.0 };
        *last = (Instant::now(), cpu);
        st.cpu_seconds = cpu;
        st.resident_bytes = rss;
        st.watched_seconds = started.elapsed().as_secs_f64();
        st.disk_bytes = self.recorder.disk_used();
        st.paused = self.recorder.paused.is_some();
        st.followed = self.followed.len();
        st.trigger_socket_refusals = self.socket_refused.as_ref().map_or(0, |r| r.load(Ordering::Relaxed));
        for ((s, c), n) in &self.closed_drops {
            st.drops.insert((s.clone(), c.clone()), *n);
        }
        for (s, cause, n) in stats.drops {
            let key = (s.name().to_string(), cause.name().to_string());
            let base = self.closed_drops.get(&key).copied().unwrap_or(0);
            let e = st.drops.entry(key).or_insert(0);
            // Counters of the collectors are cumulative over the whole watch; those of one
            // pipeline (queue full, writer stopped) start again with each segment.
            *e = if matches!(cause, DropCause::QueueFull | DropCause::WriterStopped) { base + n } else { (*e).max(n) };
        }
    }
}

/// Runs the service until `stop` is set or `cfg.max_duration` elapses. `log` gets one line per
/// event worth saying (a trigger, a pause, a collector's note).
pub fn watch(cfg: &WatchConfig, stop: &AtomicBool, log: &mut dyn FnMut(&str)) -> anyhow::Result<WatchSummary> {
    if cfg.sample.is_zero() || cfg.period < cfg.sample {
        anyhow::bail!("--sample must be positive and at most --period");
    }
    let interner = Arc::new(Interner::with_limits(NameLimits {
        names_total: 1 << 18,
        bytes_total: NAME_BYTES_CEILING,
        ..NameLimits::default()
    }));
    let mut recorder = Recorder::new(&cfg.dir, cfg.max_disk, cfg.max_age, interner)
        .map_err(|e| anyhow::anyhow!("flight recorder directory: {e}"))?;
    let state = Arc::new(Mutex::new(exporter::State::new(hostname())));
    let (tx, rx) = control::channel();
    let _control = match &cfg.socket {
        Some(p) => Some(control::Control::start(p, tx)?),
        None => None,
    };
    control::install_sigusr1();
    let mut c = Collectors::load(&cfg.ring_dir, false, crate::collect::host::UprobeLinks::detect())?;
    // The endpoint answers once the probes can be placed: a scraper (or a test) that sees it
    // up knows processes starting now are followed.
    let exporter = match cfg.listen {
        Some(addr) => Some(
            exporter::Exporter::start(addr, state.clone())
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e} (give another --listen, or --no-listen)"))?,
        ),
        None => None,
    };
    let (reaper_tx, reaper_rx) = std::sync::mpsc::channel::<Vec<libbpf_rs::Link>>();
    let reaper = std::thread::Builder::new().name("ghostprof-unprobe".into()).spawn(move || {
        for links in reaper_rx {
            crate::collect::host::drop_links(links);
        }
    })?;
    if !cfg.launches_always {
        // Nothing is probed yet: this only says that libraries probed from now on get their
        // per-launch probes at the sample windows.
        let _ = c.host.set_launch_probes(false);
    }
    let first_info = TraceInfo::default();
    let pipeline = recorder.open(&first_info)?;
    c.start(&pipeline);
    let producer = pipeline.producer(Source::Ebpf);
    let mut w = Watch {
        cfg,
        c,
        recorder,
        pipeline,
        producer,
        state,
        followed: BTreeSet::new(),
        followed_total: 0,
        cupti_on: false,
        ends_at_off: BTreeMap::new(),
        notes_done: [0; 3],
        log,
        closed_drops: BTreeMap::new(),
        mfu_history: HashMap::new(),
        last_auto: HashMap::new(),
        pending: None,
        summary: WatchSummary { listen: exporter.as_ref().map(|e| e.addr), ..Default::default() },
        finder: Finder { scope: cfg.scope.clone(), scans: 0, not_yet: HashMap::new() },
        said: Default::default(),
        libs_of: HashMap::new(),
        inject: cfg.inject_library.clone().map(|lib| {
            let mut o = InjectOptions::new(lib);
            o.ring_dir = cfg.ring_dir.clone();
            // The loop waits for it: a job that enters no blocking call within this is tried
            // again at the next window, rather than stalling the other processes' drains.
            o.wait = Duration::from_secs(1);
            o
        }),
        to_inject: BTreeSet::new(),
        inject_tries: HashMap::new(),
        socket_refused: _control.as_ref().map(|c| c.refused.clone()),
        reaper: reaper_tx,
    };
    let started = Instant::now();
    let mut next_window = Instant::now() + cfg.sample.min(Duration::from_secs(1));
    let mut phase = Phase::Host;
    let mut last_scan = Instant::now() - cfg.scan_interval;
    let mut last_health = (Instant::now(), 0.0);
    let mut gone: Vec<u32> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        loop {
            let now = Instant::now();
            if now.duration_since(last_scan) >= cfg.scan_interval {
                // Gone processes: their rings were drained by the drain below since the last
                // scan; those that exited since are drained once more before they are let go.
                let newly_gone = w.follow()?;
                w.c.drain(&mut w.producer)?;
                w.let_go(&gone);
                gone = newly_gone;
                last_scan = now;
            }
            w.c.drain(&mut w.producer)?;
            // The duty cycle.
            phase = match phase {
                Phase::Host if now >= next_window => {
                    w.set_cupti(true);
                    // From the end of the injections, which may take a moment each.
                    Phase::Waking(Instant::now() + RING_WAKE)
                }
                Phase::Waking(t) if now >= t => {
                    w.rotate("sample")?;
                    Phase::Sampling { start_ns: crate::clock::monotonic_ns(), until: now + cfg.sample }
                }
                Phase::Sampling { start_ns, until } if now >= until => {
                    let end_ns = crate::clock::monotonic_ns();
                    if w.pending.is_none() {
                        w.set_cupti(false);
                    }
                    Phase::Flushing { start_ns, end_ns, until: now + RING_FLUSH }
                }
                Phase::Flushing { start_ns, end_ns, until } if now >= until || w.sessions_closed() => {
                    if let Some(seg) = w.rotate("host")? {
                        w.window_done(&seg, start_ns, end_ns);
                    }
                    next_window += cfg.period;
                    if next_window < now {
                        next_window = now + cfg.period - cfg.sample;
                    }
                    Phase::Host
                }
                p => p,
            };
            // Per-launch probes: while CUPTI is on and until its window's segment closes.
            w.want_launch_probes(w.cupti_on || !matches!(phase, Phase::Host));
            // Triggers: a signal, the socket, then the pending one's end.
            if control::take_sigusr1() {
                w.trigger("sigusr1".into(), "sigusr1: SIGUSR1 received".into(), false);
            }
            while let Ok(reason) = rx.try_recv() {
                w.trigger("manual".into(), reason, false);
            }
            if w.pending.is_some() {
                w.set_cupti(true);
            }
            if w.pending.as_ref().is_some_and(|p| now >= p.until) {
                w.finish_trigger()?;
                if !matches!(phase, Phase::Waking(_) | Phase::Sampling { .. }) {
                    w.set_cupti(false);
                }
            }
            // The caps: a segment is cut at its share of --max-disk or when its writer failed.
            let failed = w.pipeline.stats().writer_error.is_some();
            let open_bytes = w.recorder.open_bytes();
            if failed || open_bytes >= w.recorder.segment_limit() {
                match phase {
                    Phase::Host => {
                        w.rotate("host")?;
                    }
                    // A sample window cut in two has figures from its second part only.
                    Phase::Sampling { until, .. } => {
                        w.rotate("sample")?;
                        phase = Phase::Sampling { start_ns: crate::clock::monotonic_ns(), until };
                    }
                    // Cut at the window's own rotation, a few hundred ms away.
                    Phase::Waking(_) | Phase::Flushing { .. } => {}
                }
                w.recorder.enforce(0);
            }
            if last_health.0.elapsed() >= Duration::from_secs(1) {
                w.recorder.enforce(0);
                w.update_health(started, &mut last_health);
                w.push_notes();
            }
            if stop.load(Ordering::Acquire) || cfg.max_duration.is_some_and(|d| started.elapsed() >= d) {
                return Ok(());
            }
            std::thread::sleep(cfg.drain_interval);
        }
    })();
    // Stopping: a pending trigger is written with what it has; the rings go dormant; the last
    // segment is finalized whatever happened above.
    let _ = w.finish_trigger();
    w.set_cupti(false);
    w.c.cupti.detach_all();
    let _ = w.c.drain(&mut w.producer);
    w.push_notes();
    let Watch { c, mut producer, pipeline, mut recorder, followed_total, mut summary, reaper: reaper_tx, .. } = w;
    // The probes let go so far are removed before the rest.
    drop(reaper_tx);
    let _ = reaper.join();
    let _ = c.finish(&mut producer);
    drop(producer);
    recorder.close(pipeline);
    recorder.enforce(0);
    summary.followed = followed_total;
    summary.deleted = recorder.deleted;
    drop(exporter);
    result?;
    Ok(summary)
}

/// This host's name (the `host` label).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
