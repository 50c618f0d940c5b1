//! The collectors of a session and the loop that drains them, shared by `record` (a launched
//! command) and `attach` (a running process tree): eBPF host probes, the off-CPU scheduler
//! program, the CUPTI rings and the NVML sampler (its own thread).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::launch_probes::{LaunchProbeSwitch, LaunchProbes};
use super::progress::{Progress, Ticker};
use crate::collect::cupti::{CuptiCollector, CuptiStats};
use crate::collect::host::{AttachReport, HostCollector, HostStats, UprobeLinks};
use crate::collect::nvml::{NvmlSampler, NvmlStats};
use crate::collect::sched::{CollectError, OffCpuStats, SchedCollector};
use crate::pipeline::{Pipeline, Producer};
use crate::trace::{SessionNote, Source};

pub(crate) struct Collectors {
    pub(crate) host: HostCollector,
    pub(crate) sched: SchedCollector,
    pub(crate) cupti: CuptiCollector,
    nvml: Option<NvmlSampler>,
    /// The CUPTI rings' own producer (`Source::Cupti`), so their losses are listed under
    /// `cupti`, not under the host collectors' `ebpf`. PM samples come through the same rings
    /// and share its loss counters, so they stay under `cupti` too.
    cupti_out: Option<Producer>,
    /// `record`'s per-launch probes, removed while CUPTI sees every launch (None: placed
    /// throughout).
    launch_switch: Option<LaunchProbeSwitch>,
}

/// Where the CUPTI rings of the traced processes are found.
#[derive(Clone, Copy)]
pub(crate) enum Rings {
    /// Every ring in the session's own directory (record: the directory is private).
    InDir,
    /// The rings of the traced pids only (attach: a shared directory such as /dev/shm).
    OfTargets,
}

/// How the drain loop runs.
pub(crate) struct LoopOptions {
    pub(crate) rings: Rings,
    pub(crate) drain_interval: Duration,
    pub(crate) rescan_interval: Duration,
    pub(crate) max_duration: Option<Duration>,
    /// When the per-launch probes are placed.
    pub(crate) launch_probes: LaunchProbes,
}

/// Why the drain loop ended.
pub(crate) enum Ended<T> {
    /// The job's own end (`done` returned it).
    Job(T),
    /// `stop` was set (Ctrl-C) or the duration elapsed.
    Stopped,
    /// The trace writer failed (a full disk); the file holds every chunk so far.
    WriterFailed,
}

/// What the collectors saw, for the session summary.
pub(crate) struct CollectorsSummary {
    pub(crate) host: HostStats,
    pub(crate) sched: OffCpuStats,
    pub(crate) cupti: CuptiStats,
    pub(crate) nvml: NvmlStats,
    pub(crate) notes: Vec<String>,
    pub(crate) libraries: Vec<AttachReport>,
}

impl Collectors {
    /// Loads the eBPF programs (nothing traced yet) and prepares the CUPTI ring reader over
    /// `ring_dir` (`unlink`: remove ring files once open), with the uprobes placed as `links` says.
    pub(crate) fn load(ring_dir: &Path, unlink: bool, links: UprobeLinks) -> Result<Self, CollectError> {
        let host = HostCollector::load_with(true, links)?;
        let sched = SchedCollector::load(0, Some(&host.targets_map()?))?;
        Ok(Collectors {
            host,
            sched,
            cupti: CuptiCollector::new(ring_dir, unlink),
            nvml: None,
            cupti_out: None,
            launch_switch: None,
        })
    }

    /// Starts NVML sampling into the pipeline (its own thread) and gives the CUPTI rings their
    /// own producer; the rings are drained only after this.
    pub(crate) fn start(&mut self, pipeline: &Pipeline) {
        self.nvml = Some(NvmlSampler::start(pipeline.producer(Source::Nvml)));
        self.cupti_out = Some(pipeline.producer(Source::Cupti));
    }

    /// Moves NVML sampling and the CUPTI rings' producer to `pipeline` (`watch` rotates trace
    /// segments); the old producer is flushed into its pipeline first. Returns NVML's notes.
    pub(crate) fn switch_pipeline(&mut self, pipeline: &Pipeline) -> Vec<String> {
        let notes = match self.nvml.as_mut() {
            Some(n) => {
                n.stop();
                n.notes()
            }
            None => Vec::new(),
        };
        self.cupti_out = None;
        self.start(pipeline);
        notes
    }

    /// Drains every ring buffer: the host collectors' into `producer`, the CUPTI rings into
    /// their own.
    pub(crate) fn drain(&mut self, producer: &mut Producer) -> Result<(), CollectError> {
        self.drain_cupti();
        self.host.drain(producer)?;
        self.sched.drain(producer)
    }

    /// Drains the CUPTI rings into their producer.
    pub(crate) fn drain_cupti(&mut self) {
        if let Some(out) = self.cupti_out.as_mut() {
            self.cupti.drain(out);
        }
    }

    /// Switches collection off in every CUPTI ring and drains them until each library whose
    /// process is alive has closed its session ([`CuptiCollector::wait_session_ends`]), for at
    /// most `timeout`. Returns the pids that did not.
    ///
    /// A fixed wait lost the tail on an H200: with PM sampling keeping the library's thread
    /// busy, its final flush reached the ring after the last drain, and 1.46 s of kernels of
    /// a 10 s attach were missing with no drop counted.
    pub(crate) fn detach_cupti(&mut self, timeout: Duration, every: Duration) -> Vec<u32> {
        let before = self.cupti.session_ends();
        self.cupti.detach_all();
        match self.cupti_out.as_mut() {
            Some(out) => self.cupti.wait_session_ends(out, &before, timeout, every),
            None => Vec::new(),
        }
    }

    /// Drains on a timer until `done` returns the job's end, `stop` is set, the duration
    /// elapses or the writer fails. New libraries and CUPTI rings are looked for every
    /// `rescan_interval`. `done` gets the collectors and the traced pids.
    pub(crate) fn run<T>(
        &mut self,
        pipeline: &Pipeline,
        producer: &mut Producer,
        timers: &LoopOptions,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(&Progress),
        mut done: impl FnMut(&mut Self, &[u32]) -> Option<T>,
    ) -> Result<Ended<T>, CollectError> {
        let started = Instant::now();
        let mut last_scan = Instant::now() - timers.rescan_interval;
        let mut ticker = Ticker::new();
        if timers.launch_probes == LaunchProbes::WhereCuptiMisses {
            self.launch_switch.get_or_insert_with(LaunchProbeSwitch::new);
        }
        if let Rings::InDir = timers.rings {
            // The directory may hold rings named after any pid: only the traced tree's count.
            self.cupti.only_traced();
        }
        loop {
            let targets = self.host.targets();
            // Every pid ever traced, so the ring of a process that already exited is still taken.
            self.cupti.add_traced(&targets);
            if let Some(stats) = ticker.tick(pipeline, targets.len(), self.cupti.stats.rings, progress) {
                if stats.writer_error.is_some() {
                    return Ok(Ended::WriterFailed);
                }
            }
            if last_scan.elapsed() >= timers.rescan_interval {
                for lib in self.host.rescan() {
                    producer.push(lib);
                }
                match timers.rings {
                    Rings::InDir => self.cupti.scan_dir(),
                    Rings::OfTargets => self.cupti.scan(&targets),
                }
                last_scan = Instant::now();
            } else if let (Rings::InDir, false, Some(_)) =
                (timers.rings, self.host.launch_probes(), self.launch_switch.as_ref())
            {
                // While the per-launch probes are off, a new ring (a process starting CUDA)
                // is looked for every turn, not every rescan: if its CUPTI turns out not to
                // see its launches, the probes are back within a turn. The directory is the
                // session's own and holds only rings not yet opened: a cheap read.
                self.cupti.scan_dir();
            }
            self.drain(producer)?;
            if let Some(switch) = self.launch_switch.as_mut() {
                switch.update(&mut self.host, &self.cupti);
            }
            if let Some(end) = done(self, &targets) {
                return Ok(Ended::Job(end));
            }
            if stop.load(Ordering::Acquire) || timers.max_duration.is_some_and(|d| started.elapsed() >= d) {
                return Ok(Ended::Stopped);
            }
            std::thread::sleep(timers.drain_interval);
        }
    }

    /// A drain takes at most `MAX_DRAIN_BYTES` per ring; at the session's end there is no next
    /// tick, so the rest is drained now (bounded: a producer still writing cannot hold us).
    fn drain_rings_to_the_end(&mut self) {
        let most = ghostprof_ring::MAX_CAPACITY.div_ceil(ghostprof_ring::MAX_DRAIN_BYTES) + 1;
        for _ in 0..most {
            let before = self.cupti.stats.records;
            self.drain_cupti();
            if self.cupti.stats.records == before {
                break;
            }
        }
        // PM images still with ghostprof's decoder (the job's last ones came with its exit).
        if let Some(out) = self.cupti_out.as_mut() {
            self.cupti.settle_pm(out, std::time::Duration::from_secs(10));
        }
    }

    /// Stops NVML sampling (before the pipeline finishes) and gathers what every collector saw;
    /// the session's notes also go into the trace (`note` records), for whoever reviews it.
    pub(crate) fn finish(mut self, producer: &mut Producer) -> CollectorsSummary {
        self.drain_rings_to_the_end();
        let (nvml, nvml_notes) = match self.nvml.as_mut() {
            Some(n) => {
                n.stop();
                (n.stats(), n.notes())
            }
            None => (NvmlStats::default(), Vec::new()),
        };
        let launch_notes = self.launch_switch.as_ref().map(|s| s.notes(&self.cupti)).unwrap_or_default();
        let notes: Vec<String> = self
            .host
            .notes
            .iter()
            .chain(&self.sched.notes)
            .chain(&self.cupti.notes)
            .cloned()
            .chain(launch_notes)
            .chain(nvml_notes)
            .collect();
        let now = crate::clock::monotonic_ns();
        for n in &notes {
            producer.push(SessionNote { time_ns: now, pid: 0, text_id: producer.intern(n) });
        }
        CollectorsSummary {
            host: self.host.stats.clone(),
            sched: self.sched.stats.clone(),
            cupti: self.cupti.stats.clone(),
            nvml,
            notes,
            libraries: self.host.reports.clone(),
        }
    }
}
