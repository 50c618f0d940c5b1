//! Attaching to a job that is already running: its process tree (a launcher such as torchrun
//! and every rank under it) is traced from now on, its GPU libraries probed, and the CUPTI ring
//! of every process that carries the dormant injection library switched on. Detaching switches
//! the rings off again and removes every probe; the job goes on exactly as before.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::collectors::{Collectors, LoopOptions, Rings};
use super::launch_probes::LaunchProbes;
use super::progress::Progress;
use super::session::{SessionError, SessionSummary};
use crate::collect::host::{HostCollector, UprobeLinks};
use crate::collect::sched::CollectError;
use crate::collect::{gpu_libraries_of, procmaps};
use crate::inject::{InjectError, InjectOptions};
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::trace::{Source, TraceInfo};

/// How long a dormant injection library takes at most to notice its ring's control word (it
/// polls every 50 ms) and switch CUPTI on or off, with a margin.
const RING_WAKE: Duration = Duration::from_millis(120);
/// How long a detach waits for each injection library to confirm that its session ended
/// (CUPTI flushed into the ring); a library of an older ghostprof never does.
const SESSION_END_WAIT: Duration = Duration::from_secs(5);

/// What `ghostprof attach` needs: the job's pid, the output file, and the session's timers.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// The pid the job is attached at: it and every descendant are traced.
    pub pid: u32,
    /// The trace file to write.
    pub output: PathBuf,
    /// Replace `output` if it exists (otherwise an existing file is an error).
    pub overwrite: bool,
    /// Detach after this long (None: until stopped or the job ends).
    pub max_duration: Option<Duration>,
    /// Where dormant injection libraries keep their rings (their GHOSTPROF_RING_DIR).
    pub ring_dir: PathBuf,
    /// How long the session sleeps between drains of the collectors.
    pub drain_interval: Duration,
    /// How often new GPU libraries and CUPTI rings are looked for.
    pub rescan_interval: Duration,
    /// (uid, gid) to give the trace to: the invoking user under sudo (None: root keeps it).
    pub owner: Option<(u32, u32)>,
    /// The CUPTI library to load into CUDA processes started without it (ptrace, `dlopen`);
    /// None: `--no-inject`, the job's memory is never touched.
    pub inject_library: Option<PathBuf>,
}

impl AttachConfig {
    /// Defaults for `pid` and `output`: rings in /dev/shm, drains every 10 ms, rescans every 200 ms, no time limit.
    pub fn new(pid: u32, output: PathBuf) -> Self {
        AttachConfig {
            pid,
            output,
            overwrite: false,
            max_duration: None,
            ring_dir: PathBuf::from("/dev/shm"),
            drain_interval: Duration::from_millis(10),
            rescan_interval: Duration::from_millis(200),
            owner: None,
            inject_library: None,
        }
    }
}

/// `pid` and all its descendants, from /proc.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
            // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|x| x.parse::<u32>().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut tree: BTreeSet<u32> = BTreeSet::from([pid]);
    loop {
        let before = tree.len();
        for (p, pp) in &parent_of {
            if tree.contains(pp) {
                tree.insert(*p);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree.into_iter().collect()
}

/// Attaches to `cfg.pid` and its descendants and records until the duration, `stop`, or the
/// whole tree exited.
pub fn attach(
    cfg: &AttachConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SessionSummary, SessionError> {
    if !std::path::Path::new(&format!("/proc/{}", cfg.pid)).exists() {
        return Err(CollectError::NoSuchProcess { pid: cfg.pid }.into());
    }
    if cfg.pid <= 1 {
        // Its tree is the whole machine.
        return Err(CollectError::WholeMachine.into());
    }
    let tree = process_tree(cfg.pid);
    let mut gpu_libs = Vec::new();
    let mut first_error = None;
    for &p in &tree {
        match gpu_libraries_of(p) {
            Ok(libs) => gpu_libs.extend(libs.into_iter().map(|l| procmaps::host_path(p, &l.path))),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if gpu_libs.is_empty() {
        return Err(first_error.unwrap_or(CollectError::NoSuchProcess { pid: cfg.pid }).into());
    }
    let mut c = Collectors::load(&cfg.ring_dir, false, UprobeLinks::detect())?;
    let info = TraceInfo { target_pids: tree.clone(), ..Default::default() };
    let pipeline = Pipeline::create(&cfg.output, cfg.overwrite, &info, PipelineOptions::default())?;
    if let Some((uid, gid)) = cfg.owner {
        // lchown: never through a symlink, even one swapped in after the file was created.
        let _ = std::os::unix::fs::lchown(&cfg.output, Some(uid), Some(gid));
    }
    let mut producer = pipeline.producer(Source::Ebpf);
    producer.push(super::session::realtime_sync());
    c.start(&pipeline);
    // The library into every CUDA process of the tree first, so its ring is there for the scan.
    let mut injector = Injector::new(cfg);
    injector.visit(&tree);
    let mut newcomers = Newcomers::new(&tree);
    // The scheduler first: the pids go into the targets map (the sched program follows them;
    // no library is probed yet, so no launch is recorded), and every thread already blocked
    // is booked off-CPU from now, as it makes no switch-out (a loader blocked in `read`, a
    // rank in a synchronize). Stalls in progress when the device timeline starts are seen.
    for &p in &tree {
        c.host.add_target(p)?;
    }
    c.sched.seed_blocked(&tree);
    // Then the device timeline: a dormant injection library polls its ring's control word
    // every 50 ms, so its kernels flow within ~100 ms of the ring being opened. Launch probes go
    // on after that, so the window (first launch or kernel to the last) never opens with launches
    // whose kernels were not being recorded yet, which would look like an idle device.
    c.cupti.scan(&tree);
    if c.cupti.stats.rings > 0 {
        drain_cupti_for(&mut c, RING_WAKE, cfg.drain_interval);
        let without = nccl_without_profiler_plugin(&tree);
        if !without.is_empty() {
            c.cupti.notes.push(format!(
                "process {} uses NCCL but was started without NCCL_PROFILER_PLUGIN: NCCL's algorithm and protocol \
                 per collective are not recorded (start the job with NCCL_PROFILER_PLUGIN set to the injection \
                 library, as CUDA_INJECTION64_PATH)",
                without.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let ended = (|| {
        for lib in &gpu_libs {
            c.host.attach_library(lib)?;
        }
        let timers = LoopOptions {
            rings: Rings::OfTargets,
            drain_interval: cfg.drain_interval,
            rescan_interval: cfg.rescan_interval,
            max_duration: cfg.max_duration,
            // CUPTI starts mid-run, after the launches of the moment of attach.
            launch_probes: LaunchProbes::Always,
        };
        // The job's end: every traced process is gone. Ranks that start (or map libcuda)
        // during the window get the library too, at the rescan interval; a process new to the
        // tree is held out of the probes until its device timeline runs (`Newcomers`).
        let mut last_visit = Instant::now();
        let gone = |c: &mut Collectors, targets: &[u32]| {
            let rescan = last_visit.elapsed() >= cfg.rescan_interval;
            newcomers.tick(c, targets, &mut injector, rescan);
            if rescan {
                injector.visit(targets);
                last_visit = Instant::now();
            }
            let alive = |p: &u32| std::path::Path::new(&format!("/proc/{p}")).exists();
            (!targets.iter().chain(newcomers.held.keys()).any(alive)).then_some(())
        };
        c.run(&pipeline, &mut producer, &timers, stop, progress, gone)
    })();
    // Detach in the reverse order: host collection off first (the pids leave the targets map
    // every program filters on; removing the probes themselves takes seconds and happens when
    // the collectors go), then the rings dormant again once the last kernels launched have
    // completed and been flushed, so the window never closes on launches whose kernels were
    // not recorded. The rings are switched off whatever happened above.
    c.cupti.notes.append(&mut injector.notes);
    c.cupti.notes.append(&mut newcomers.notes);
    let drained = c.host.drain(&mut producer).and_then(|_| c.sched.drain(&mut producer));
    // The scheduler keeps following the tree until the device timeline ends, as it started
    // before it: stalls in the window's last ~150 ms are seen.
    c.sched.hold(&c.host.targets());
    stop_host_collection(&mut c.host);
    drain_cupti_for(&mut c, RING_WAKE, cfg.drain_interval);
    c.detach_cupti(SESSION_END_WAIT, cfg.drain_interval);
    c.sched.release();
    ended?;
    drained?;
    c.drain(&mut producer)?;
    let seen = c.finish(&mut producer);
    drop(producer);
    let (write, pipeline) = pipeline
        .finish()
        .map_err(|source| SessionError::WriteFailed { source, job: "detached; the job goes on".into() })?;
    Ok(SessionSummary::from_collectors(seen, None, cfg.pid, write, pipeline))
}

/// What [`Injector::visit_one`] did.
enum Visit {
    /// Injected now or earlier, or the library was there (dormant): its ring can be opened.
    Injected,
    /// No libcuda mapped (yet).
    NoCuda,
    /// Refused (a note says why), already tried, or injection is off.
    Refused,
}

/// Loads the CUPTI library into the CUDA processes of the traced tree (`crate::inject`), once
/// each; a refusal becomes one note and the process is not tried again.
struct Injector {
    opts: Option<InjectOptions>,
    /// Pids injected, found dormant, or refused.
    done: BTreeSet<u32>,
    /// One line per refusal, for the session's notes.
    notes: Vec<String>,
}

impl Injector {
    fn new(cfg: &AttachConfig) -> Self {
        let opts = cfg.inject_library.clone().map(|lib| {
            let mut o = InjectOptions::new(lib);
            o.ring_dir = cfg.ring_dir.clone();
            o.pm_decode_collector = crate::collect::pmdecode::use_collector();
            o
        });
        Injector { opts, done: BTreeSet::new(), notes: Vec::new() }
    }

    /// Injects into the processes of `pids` not visited yet that map libcuda (one that does
    /// not yet is looked at again next time).
    fn visit(&mut self, pids: &[u32]) {
        for &pid in pids {
            self.visit_one(pid);
        }
    }

    /// [`Self::visit`] of one process, saying what happened.
    fn visit_one(&mut self, pid: u32) -> Visit {
        let Some(opts) = &self.opts else { return Visit::Refused };
        if self.done.contains(&pid) {
            return Visit::Refused;
        }
        match crate::inject::inject(pid, opts) {
            Ok(_) => {
                self.done.insert(pid);
                Visit::Injected
            }
            Err(InjectError::NoCuda { .. }) => Visit::NoCuda,
            Err(e) => {
                self.done.insert(pid);
                let line = format!("{e}; process {pid} is recorded with eBPF only");
                eprintln!("ghostprof: {line}");
                self.notes.push(line);
                Visit::Refused
            }
        }
    }
}

/// How long a process new to the tree is held out of the probes waiting for it to map libcuda
/// (a rank's Python imports its CUDA libraries within this, usually); after that it is traced
/// as any process, and injected at a rescan if it maps libcuda later.
const HOLD_MAX: Duration = Duration::from_secs(2);

/// Processes that join the tree during the window (a rank a launcher starts late). Without
/// care, its launches are probed from its start (the fork tracepoint adds it to the targets)
/// while its device timeline starts only once it is injected and its ring is on, so its window
/// would open on launches without kernels (an idle GPU that was not). So a newcomer is taken
/// out of the targets map at once, injected when it maps libcuda, its ring opened, and put back
/// (with its threads already blocked booked, and any children it forked meanwhile) once its
/// kernels flow: its window opens on its device timeline, as the first processes' do.
struct Newcomers {
    /// Every pid seen so far.
    known: BTreeSet<u32>,
    /// Held out of the targets map: since when, and when its ring was opened.
    held: std::collections::BTreeMap<u32, (Instant, Option<Instant>)>,
    notes: Vec<String>,
}

impl Newcomers {
    fn new(tree: &[u32]) -> Self {
        Newcomers { known: tree.iter().copied().collect(), held: Default::default(), notes: Vec::new() }
    }

    /// Holds the new pids of `targets`; at a rescan, injects the held ones that map libcuda and
    /// opens their rings; puts back those whose ring has run `RING_WAKE`, or that waited
    /// `HOLD_MAX` without libcuda, or whose injection was refused.
    fn tick(&mut self, c: &mut Collectors, targets: &[u32], injector: &mut Injector, rescan: bool) {
        if injector.opts.is_none() {
            return;
        }
        for &p in targets {
            if self.known.insert(p) && !injector.done.contains(&p) {
                c.host.remove_target(p);
                self.held.insert(p, (Instant::now(), None));
            }
        }
        let mut admit = Vec::new();
        for (&p, (since, ring)) in self.held.iter_mut() {
            match ring {
                Some(at) if at.elapsed() >= RING_WAKE => admit.push(p),
                Some(_) => {}
                None if !rescan => {}
                None => match injector.visit_one(p) {
                    Visit::Injected => {
                        let before = c.cupti.stats.rings;
                        c.cupti.scan(&[p]);
                        if c.cupti.stats.rings > before {
                            *ring = Some(Instant::now());
                        } else {
                            admit.push(p);
                        }
                    }
                    Visit::NoCuda if since.elapsed() < HOLD_MAX => {}
                    Visit::NoCuda | Visit::Refused => admit.push(p),
                },
            }
        }
        for p in admit {
            self.held.remove(&p);
            if let Err(e) = c.host.add_target(p) {
                self.notes.push(format!("process {p} joined the job but could not be traced: {e}"));
                continue;
            }
            c.sched.seed_blocked(&[p]);
            // Its children forked while it was held were not followed: added now (and held in
            // turn, being new).
            for child in process_tree(p).into_iter().filter(|q| *q != p) {
                let _ = c.host.add_target(child);
            }
        }
    }
}

/// The processes of `tree` that mapped libnccl and whose environment at exec had no
/// `NCCL_PROFILER_PLUGIN` (NCCL reads it at its first communicator's creation).
fn nccl_without_profiler_plugin(tree: &[u32]) -> Vec<u32> {
    tree.iter()
        .copied()
        .filter(|p| {
            let maps = std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            maps.contains("libnccl.so") && !environ.split(|b| *b == 0).any(|v| v.starts_with(b"NCCL_PROFILER_PLUGIN="))
        })
        .collect()
}

/// Moves CUPTI records into the trace for `how_long`.
fn drain_cupti_for(c: &mut Collectors, how_long: Duration, every: Duration) {
    let t = Instant::now();
    while t.elapsed() < how_long {
        c.drain_cupti();
        std::thread::sleep(every);
    }
}

/// Takes every traced pid out of the targets map: the host and scheduler programs record
/// nothing more (their probes stay until the collectors are dropped).
fn stop_host_collection(host: &mut HostCollector) {
    for pid in host.targets() {
        host.remove_target(pid);
    }
}
