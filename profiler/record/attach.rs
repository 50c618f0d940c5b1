//! Attaching to a job that is already running: its process tree (a launcher such as torchrun
//! and every rank under it) is traced from now on, its GPU libraries probed, and the CUPTI ring
//! of every process that carries the dormant injection library switched on. Detaching switches
//! the rings off again and removes every probe; the job goes on exactly as before.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::pipeline::{Pipeline, PipelineOptions};
use super::session::{Progress, SessionError, SessionSummary, Ticker};
use crate::collect::cupti::CuptiCollector;
use crate::collect::host::HostCollector;
use crate::collect::nvml::NvmlSampler;
use crate::collect::sched::{CollectError, SchedCollector};
use crate::collect::{gpu_libraries_of, procmaps};
use crate::trace::{Source, TraceInfo};

/// How long a dormant injection library takes at most to notice its ring's control word (it
/// polls every 50 ms) and switch CUPTI on or off, with a margin.
const RING_WAKE: Duration = Duration::from_millis(120);

#[derive(Debug, Clone)]
pub struct AttachConfig {
    pub pid: u32,
    pub output: PathBuf,
    pub overwrite: bool,
    pub max_duration: Option<Duration>,
    /// Where dormant injection libraries keep their rings (their GHOSTPROF_RING_DIR).
    pub ring_dir: PathBuf,
    pub drain_interval: Duration,
    pub rescan_interval: Duration,
}

impl AttachConfig {
    pub fn new(pid: u32, output: PathBuf) -> Self {
        AttachConfig {
            pid,
            output,
            overwrite: false,
            max_duration: None,
            ring_dir: PathBuf::from("/dev/shm"),
            drain_interval: Duration::from_millis(10),
            rescan_interval: Duration::from_millis(200),
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
    let mut host = HostCollector::load(true)?;
    let mut sched = SchedCollector::load(0, Some(&host.targets_map()?))?;
    let info = TraceInfo { target_pids: tree.clone(), ..Default::default() };
    let pipeline = Pipeline::create(&cfg.output, cfg.overwrite, &info, PipelineOptions::default())?;
    let mut producer = pipeline.producer(Source::Ebpf);
    let mut nvml = NvmlSampler::start(pipeline.producer(Source::Nvml));
    // The device timeline first: a dormant injection library polls its ring's control word
    // every 50 ms, so its kernels flow within ~100 ms of the ring being opened. Host probes go
    // on after that, so the window (first launch or kernel to the last) never opens with launches
    // whose kernels were not being recorded yet, which would look like an idle device.
    let mut cupti = CuptiCollector::new(&cfg.ring_dir, false);
    cupti.scan(&tree);
    if cupti.stats.rings > 0 {
        let t = Instant::now();
        while t.elapsed() < RING_WAKE {
            cupti.drain(&mut producer);
            std::thread::sleep(cfg.drain_interval);
        }
    }
    for &p in &tree {
        host.add_target(p)?;
    }
    for lib in &gpu_libs {
        host.attach_library(lib)?;
    }
    let started = Instant::now();
    let mut last_scan = Instant::now() - cfg.rescan_interval;
    let mut ticker = Ticker::new();
    loop {
        let targets = host.targets();
        if let Some(stats) = ticker.tick(&pipeline, targets.len(), cupti.stats.rings, progress) {
            if stats.writer_error.is_some() {
                break;
            }
        }
        if last_scan.elapsed() >= cfg.rescan_interval {
            for lib in host.rescan() {
                producer.push(lib);
            }
            cupti.scan(&targets);
            last_scan = Instant::now();
        }
        cupti.drain(&mut producer);
        host.drain(&mut producer)?;
        sched.drain(&mut producer)?;
        let alive = targets.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive || stop.load(Ordering::Acquire) || cfg.max_duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        std::thread::sleep(cfg.drain_interval);
    }
    // Detach in the reverse order: host collection off first (the pids leave the targets map
    // every program filters on; removing the probes themselves takes seconds and happens when
    // the collector goes), then the rings dormant again once the last kernels launched have
    // completed and been flushed, so the window never closes on launches whose kernels were
    // not recorded.
    host.drain(&mut producer)?;
    sched.drain(&mut producer)?;
    stop_host_collection(&host);
    let t = Instant::now();
    while t.elapsed() < RING_WAKE {
        cupti.drain(&mut producer);
        std::thread::sleep(cfg.drain_interval);
    }
    cupti.detach_all();
    std::thread::sleep(RING_WAKE);
    cupti.drain(&mut producer);
    host.drain(&mut producer)?;
    sched.drain(&mut producer)?;
    nvml.stop();
    drop(producer);
    let (write, pipeline) = pipeline
        .finish()
        .map_err(|source| SessionError::WriteFailed { source, job: "detached; the job goes on".into() })?;
    Ok(SessionSummary {
        exit_status: None,
        job_pid: cfg.pid,
        write,
        pipeline,
        host: host.stats.clone(),
        sched: sched.stats.clone(),
        cupti: cupti.stats.clone(),
        nvml: nvml.stats(),
        notes: host.notes.iter().chain(&sched.notes).chain(&cupti.notes).cloned().chain(nvml.notes()).collect(),
        libraries: host.reports.clone(),
    })
}

/// Takes every traced pid out of the targets map: the host and scheduler programs record
/// nothing more (their probes stay until the collectors are dropped).
fn stop_host_collection(host: &HostCollector) {
    use libbpf_rs::MapCore;
    if let Ok(map) = host.targets_map() {
        for pid in host.targets() {
            let _ = map.delete(&pid.to_ne_bytes());
        }
    }
}
