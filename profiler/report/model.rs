//! The report as types: [`ReportDoc`], the `ghostprof.report.v1` document
//! (docs/report-schema.md), built once from the analysis by [`ReportDoc::from_reports`]. The
//! JSON (`report --json`) is its serialization and the HTML page is drawn from it.
//!
//! Serialized byte for byte as the document has always been written: every object's keys in
//! sorted order (each struct declares its fields sorted), integers as integers and fractions as
//! floats, `null` for an unknown MFU. A device's steps and bins ([`Partitions`]) are made one
//! at a time as they are written: a long run has hundreds of thousands of them.
//!
//! Also `Deserialize`, every field optional, so a document written elsewhere can be drawn
//! (the HTML says which sections it lacks).

use serde::de::Deserializer;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::analyze::files::{cross_rank, straggler_activity, FileReport};
use crate::analyze::host::{HostFigures, OFF_CPU_REASONS};
use crate::analyze::{Categories, Category, DeviceAccount, DeviceDetail, Partition};
use crate::trace::StallReason;

/// The `schema` field.
pub const SCHEMA: &str = "ghostprof.report.v1";

/// The whole document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportDoc<'a> {
    /// How several files were put on one timeline; absent with one file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_alignment: Option<ClockAlignmentDoc>,
    /// Per (op, size bucket) over all files, most time first.
    pub collectives: Vec<CollectiveDoc>,
    /// Chunks of the files that could not be read and were left out.
    pub damaged_chunks: Vec<DamagedChunkDoc>,
    /// One per (process, device) with device activity, over all files.
    pub devices: Vec<DeviceDoc<'a>>,
    /// Host figures of every process of every file, with or without devices.
    pub hosts: Vec<ProcessHostDoc>,
    /// What the CUPTI injection library cost each traced process, measured inside it; absent
    /// from the JSON when no trace has it (traces recorded before it was measured).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiler_cost: Vec<ProfilerCostDoc>,
    /// The process ids of the devices' processes, sorted (one per rank in a multi-rank job).
    pub ranks: Vec<u32>,
    /// What each recording session noted in its trace.
    pub recording_notes: Vec<RecordingNoteDoc>,
    /// [`SCHEMA`].
    pub schema: String,
    /// Arrival skew, one per rank (process with NCCL calls) over all files, by rank.
    pub skew: Vec<SkewDoc>,
    /// What the straggler was doing while the others waited for it; None without a straggler.
    pub straggler_activity: Option<String>,
    /// The rank with the largest mean arrival skew; None with fewer than two matched ranks or no skew.
    pub straggler_rank: Option<u32>,
    /// Problems reading the files, records left out, the devices' notes (bins widened, ...).
    pub warnings: Vec<String>,
    /// Not in the JSON (the terminal report): each file given, in order.
    #[serde(skip)]
    pub files: Vec<FileDoc>,
    /// Not in the JSON: the straggler's index in `skew`.
    #[serde(skip)]
    pub straggler: Option<usize>,
}

/// `clock_alignment`: how the files' clocks were put on one timeline (docs/metrics.md, "Clock
/// alignment").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockAlignmentDoc {
    /// One per file, in the order given.
    pub files: Vec<FileClockDoc>,
    /// `collectives`, `realtime` or `monotonic`.
    pub method: String,
}

/// One file's clock: its time t maps to `t + offset_ns + drift_ppm × 1e-6 × (t − anchor_ns)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileClockDoc {
    /// Own time at which `offset_ns` holds, ns.
    pub anchor_ns: u64,
    /// Rate difference to the common clock, parts per million.
    pub drift_ppm: f64,
    /// The trace file's path.
    pub file: String,
    /// The recording host's identity, when the trace has one.
    pub host_id: Option<String>,
    /// Collectives matched with the reference file (`collectives` only).
    pub matched: u64,
    /// Added to the file's times at `anchor_ns`, ns.
    pub offset_ns: i64,
    /// Matched collectives left out of the fit as outliers.
    pub outliers: u64,
    /// Whether this is the reference file.
    pub reference: bool,
    /// Root mean square of the fit's residuals, ns.
    pub residual_ns: f64,
}

/// One file of the report (not in the JSON, which lists devices and hosts of all files):
/// its devices and hosts are the next `devices` and `hosts` of the document.
#[derive(Debug, Clone, Default)]
pub struct FileDoc {
    /// The trace file's path.
    pub path: String,
    /// How many of the document's `devices` are this file's.
    pub devices: usize,
    /// How many of the document's `hosts` are this file's.
    pub hosts: usize,
    /// Problems reading the file (without the devices' notes, which the JSON's `warnings` has).
    pub warnings: Vec<String>,
    /// What the recording session noted in the trace.
    pub recording_notes: Vec<String>,
    /// What the injection library cost the file's processes.
    pub profiler_cost: Vec<ProfilerCostDoc>,
}

/// One (process, device).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceDoc<'a> {
    /// The bins: their width and each bin's figures.
    pub bins: BinsDoc<'a>,
    /// `busy_ns` ÷ window.
    pub busy: f64,
    /// Union of device work in the window, ns.
    pub busy_ns: u64,
    /// Fractions of the window.
    pub categories: PerCategory<f64>,
    /// The categories in nanoseconds; they sum to the window exactly.
    pub categories_ns: PerCategory<u64>,
    /// Always there in a document made here; absent from some written elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointDoc>,
    /// CUDA device ordinal.
    pub device: u32,
    /// `busy − mfu`; None without a FLOP source.
    pub divergence: Option<f64>,
    /// The trace file's path.
    pub file: String,
    /// Where `compute.useful` came from: `pm_sampling`, `flops_per_step` or `none`.
    pub flop_source: String,
    /// Useful (FLOP-equivalent) time ÷ window; None without a FLOP source.
    pub mfu: Option<f64>,
    /// The process.
    pub pid: u32,
    /// Empty: absent from the document read.
    pub step_source: String,
    /// The steps, in time order.
    pub steps: Partitions<'a>,
    /// Up to 10 longest stretches with no device work, longest first.
    pub top_idle_gaps: Vec<IdleGapDoc>,
    /// Up to 10 kernel names, most time first.
    pub top_kernels: Vec<KernelDoc>,
    /// End of the window, CLOCK_MONOTONIC ns.
    pub window_end_ns: u64,
    /// Start of the window, CLOCK_MONOTONIC ns.
    pub window_start_ns: u64,
    /// Not in the JSON (there they are `warnings`): the device analysis's notes.
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// `{"items": […], "width_ns": …}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BinsDoc<'a> {
    /// The bins, from the window's start (the last one may be shorter).
    pub items: Partitions<'a>,
    /// Bin width, ns.
    pub width_ns: u64,
}

/// A step (with `end_ns` and `index`) or a bin (without).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartitionDoc {
    /// Union of device work ÷ the partition's length.
    pub busy: f64,
    /// The categories as fractions of the partition; they sum to 1.
    pub categories: PerCategory<f64>,
    /// End, CLOCK_MONOTONIC ns (steps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ns: Option<u64>,
    /// The step's index: 0, 1, ... (steps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// `compute.useful` ÷ the partition's length; None without a FLOP source.
    pub mfu: Option<f64>,
    /// Start, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// Not in the JSON (the terminal report): the union of device work behind `busy`, ns.
    #[serde(skip)]
    pub busy_ns: u64,
    /// Not in the JSON (the terminal report): the nanoseconds behind `categories`.
    #[serde(skip)]
    pub categories_ns: PerCategory<u64>,
}

/// Totals of one kernel name on one device (a `top_kernels` entry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelDoc {
    /// Launches that ran in the window.
    pub count: u64,
    /// `total_ns ÷ count`.
    pub mean_ns: f64,
    /// The kernel's name (`kernel#ID` when the trace has no string for it).
    pub name: String,
    /// `total_ns ÷ window` (shares of overlapping kernels can add up to more than busy).
    pub share: f64,
    /// Their time, clipped to the window, ns.
    pub total_ns: u64,
    /// FLOP-equivalent time, ns (0 for collectives and without a FLOP source).
    pub useful_ns: u64,
}

/// A stretch with no device work (a `top_idle_gaps` entry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IdleGapDoc {
    /// The idle category that got most of the gap.
    pub category: String,
    /// `end_ns − start_ns`.
    pub duration_ns: u64,
    /// End, CLOCK_MONOTONIC ns.
    pub end_ns: u64,
    /// What the launching threads were doing for most of the gap (docs/report-schema.md).
    pub reason: String,
    /// Start, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
}

/// Checkpoint-like file I/O of the device's process in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointDoc {
    /// Bytes written by those calls.
    pub bytes: u64,
    /// `io_ns ÷ window`.
    pub fraction: f64,
    /// Union of the process's write, fsync-family and truncating file syscalls in the window, ns.
    pub io_ns: u64,
}

/// Totals of one (op, size bucket) over all files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CollectiveDoc {
    /// NCCL's `ALGORITHM/PROTOCOL`, with shares when several; None when none was recorded.
    pub algorithm: Option<String>,
    /// Σ payload × NCCL's busBw factor ÷ `transfer_ns`, GB/s.
    pub bus_bandwidth_gbps: f64,
    /// Sum of the payloads of the rank-instances.
    pub bytes: u64,
    /// Rank-instances: each rank's kernel of a collective counts once.
    pub count: u64,
    /// The op (`all_reduce`, `all_gather`, ...).
    pub op: String,
    /// The payload's size bucket (`1KiB-4KiB`, ...).
    pub size_bucket: String,
    /// Their kernel time, ns.
    pub time_ns: u64,
    /// `time_ns − wait_ns`.
    pub transfer_ns: u64,
    /// Time the kernels waited for the last rank to arrive, ns (matched instances only).
    pub wait_ns: u64,
}

/// A rank's arrival skew.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkewDoc {
    /// The rank's trace file.
    pub file: String,
    /// Matched collectives where this rank arrived last (and later than another rank).
    pub late_count: u64,
    /// The largest arrival skew, ns.
    pub max_arrival_skew_ns: u64,
    /// Mean over matched collectives of (own arrival − earliest arrival), ns.
    pub mean_arrival_skew_ns: f64,
    /// The process.
    pub pid: u32,
    /// NCCL rank (the pid if unknown).
    pub rank: u32,
    /// Not in the JSON (the terminal report): the collectives matched.
    #[serde(skip)]
    pub matched: u64,
}

/// A chunk of a file that could not be read and was left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DamagedChunkDoc {
    /// Its index in the file's chunk table.
    pub chunk: u64,
    /// Why it could not be read.
    pub error: String,
    /// The trace file's path.
    pub file: String,
    /// Byte offset of its frame in the file.
    pub offset: u64,
    /// The records it held, by the file's index.
    pub records_lost: u64,
}

/// A note a recording session stored in its trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordingNoteDoc {
    /// The trace file's path.
    pub file: String,
    /// The note's text.
    pub note: String,
}

/// What the CUPTI injection library cost one traced process (CPU time inside it, ns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfilerCostDoc {
    /// CPU time in CUPTI's buffer-completion callbacks (walk and forwarding).
    pub buffer_ns: u64,
    /// CPU time in ghostprof's callbacks on the job's threads.
    pub callback_ns: u64,
    /// ghostprof's CUPTI callbacks run on the job's threads.
    pub callbacks: u64,
    /// `callback_ns + buffer_ns + thread_ns`, at most `job_cpu_ns`.
    pub cost_ns: u64,
    /// The trace file's path.
    pub file: String,
    /// `cost_ns / job_cpu_ns` (0-1); None when the job's CPU time is unknown (0).
    pub fraction_of_job_cpu: Option<f64>,
    /// CPU time of the whole process (every thread) while it was traced.
    pub job_cpu_ns: u64,
    /// The process.
    pub pid: u32,
    /// CPU time of the library's own thread, its start and its exit handler.
    pub thread_ns: u64,
}

impl ProfilerCostDoc {
    /// The document of one process's cost record (the job's own figures: the cost is clamped to
    /// its CPU time).
    pub fn of(file: &str, c: &crate::trace::ProfilerCost) -> Self {
        let cost_ns = if c.job_cpu_ns > 0 { c.total_ns().min(c.job_cpu_ns) } else { c.total_ns() };
        ProfilerCostDoc {
            buffer_ns: c.buffer_ns,
            callback_ns: c.callback_ns,
            callbacks: c.callbacks,
            cost_ns,
            file: file.to_string(),
            fraction_of_job_cpu: (c.job_cpu_ns > 0).then(|| cost_ns as f64 / c.job_cpu_ns as f64),
            job_cpu_ns: c.job_cpu_ns,
            pid: c.pid,
            thread_ns: c.thread_ns,
        }
    }
}

/// The line `record`, `attach` and `report` print for a file's processes: "profiler cost: X ms
/// of host CPU in the job (Y% of its CPU time)"; None without cost records.
pub fn profiler_cost_line(costs: &[ProfilerCostDoc]) -> Option<String> {
    if costs.is_empty() {
        return None;
    }
    let cost: u64 = costs.iter().fold(0u64, |a, c| a.saturating_add(c.cost_ns));
    let job: u64 = costs.iter().filter(|c| c.job_cpu_ns > 0).fold(0u64, |a, c| a.saturating_add(c.job_cpu_ns));
    let share = if job > 0 {
        format!("{:.2}% of its CPU time", cost as f64 / job as f64 * 100.0)
    } else {
        "its CPU time unknown".into()
    };
    let procs = if costs.len() > 1 { format!(", {} processes", costs.len()) } else { String::new() };
    Some(format!("profiler cost: {:.1} ms of host CPU in the job ({share}{procs})", cost as f64 / 1e6))
}

/// A process's host figures (the sum over its threads) and its threads'.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessHostDoc {
    /// End of the latest thread span, CLOCK_MONOTONIC ns.
    pub end_ns: u64,
    /// The trace file's path.
    pub file: String,
    /// Regular-file I/O, summed over the threads.
    pub file_io: FileIoDoc,
    /// Off-CPU ns by reason, summed over the threads.
    pub off_cpu_ns: OffCpu,
    /// Σ over threads of (span − off-CPU time), ns.
    pub on_cpu_ns: u64,
    /// The process.
    pub pid: u32,
    /// Start of the earliest thread span, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// The same figures per thread, longest span first.
    pub threads: Vec<ThreadHostDoc>,
}

/// One thread's host figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThreadHostDoc {
    /// End of its last record, CLOCK_MONOTONIC ns.
    pub end_ns: u64,
    /// Its regular-file I/O.
    pub file_io: FileIoDoc,
    /// Off-CPU ns by reason.
    pub off_cpu_ns: OffCpu,
    /// Its span minus its off-CPU time, ns.
    pub on_cpu_ns: u64,
    /// First time seen, CLOCK_MONOTONIC ns: its first record (for the launched process's main
    /// thread: its launch).
    pub start_ns: u64,
    /// The thread id.
    pub tid: u32,
}

/// Regular-file syscalls: bytes and time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileIoDoc {
    /// Bytes of the read family.
    pub read_bytes: u64,
    /// Time in the read family, ns.
    pub read_ns: u64,
    /// Bytes of the write family.
    pub write_bytes: u64,
    /// Time in the write family, fsyncs and truncations, ns.
    pub write_ns: u64,
}

/// A value per category, indexed like [`Category::NAMES`]; a JSON object keyed by their names
/// (an absent name reads as the default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerCategory<T>(pub [T; 8]);

/// Off-CPU ns per [`StallReason`], indexed by its value; a JSON object keyed by the reasons'
/// names.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OffCpu(pub [u64; OFF_CPU_REASONS]);

fn reason_names() -> [&'static str; OFF_CPU_REASONS] {
    std::array::from_fn(|i| StallReason::ALL.iter().find(|r| **r as usize == i).map_or("", |r| r.name()))
}

impl OffCpu {
    /// (name, ns) in name order (the order of the JSON object).
    pub fn by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let names = reason_names();
        sorted(&names).into_iter().map(move |i| (names[i], self.0[i]))
    }
}

/// The indices of `names` in name order.
fn sorted<const N: usize>(names: &[&str; N]) -> [usize; N] {
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    order.sort_by_key(|&i| names[i]);
    order
}

fn serialize_named<S: Serializer, T: Serialize, const N: usize>(
    s: S,
    names: &[&str; N],
    values: &[T; N],
) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(N))?;
    for i in sorted(names) {
        m.serialize_entry(names[i], &values[i])?;
    }
    m.end()
}

fn deserialize_named<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default + Copy, const N: usize>(
    d: D,
    names: &[&str; N],
) -> Result<[T; N], D::Error> {
    let m: std::collections::HashMap<String, T> = Deserialize::deserialize(d)?;
    Ok(std::array::from_fn(|i| m.get(names[i]).copied().unwrap_or_default()))
}

impl<T: Serialize> Serialize for PerCategory<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_named(s, &Category::NAMES, &self.0)
    }
}

impl<'de, T: Deserialize<'de> + Default + Copy> Deserialize<'de> for PerCategory<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_named(d, &Category::NAMES).map(PerCategory)
    }
}

impl Serialize for OffCpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_named(s, &reason_names(), &self.0)
    }
}

impl<'de> Deserialize<'de> for OffCpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_named(d, &reason_names()).map(OffCpu)
    }
}

/// A device's steps or bins: those of the analysis, each [`PartitionDoc`] made as it is
/// written or read ([`Partitions::iter`]), or those of a document read.
#[derive(Debug, Clone)]
pub struct Partitions<'a>(Parts<'a>);

#[derive(Debug, Clone)]
enum Parts<'a> {
    Analysis {
        parts: &'a [Partition],
        /// The device has a FLOP source (else `mfu` is null).
        mfu_known: bool,
        /// Steps: with `index` and `end_ns`.
        steps: bool,
    },
    Read(Vec<PartitionDoc>),
}

impl Default for Partitions<'_> {
    fn default() -> Self {
        Partitions(Parts::Read(Vec::new()))
    }
}

impl<'a> Partitions<'a> {
    /// A device's steps (`steps`) or bins.
    pub fn of_analysis(parts: &'a [Partition], a: &DeviceAccount, steps: bool) -> Self {
        Partitions(Parts::Analysis { parts, mfu_known: a.mfu().is_some(), steps })
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        match &self.0 {
            Parts::Analysis { parts, .. } => parts.len(),
            Parts::Read(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each one's [`PartitionDoc`], in order, made as it is yielded.
    pub fn iter(&self) -> impl Iterator<Item = PartitionDoc> + '_ {
        let (analysis, read) = match &self.0 {
            Parts::Analysis { parts, mfu_known, steps } => (Some((parts.iter(), *mfu_known, *steps)), None),
            Parts::Read(v) => (None, Some(v.iter().cloned())),
        };
        let analysis = analysis.into_iter().flat_map(|(parts, mfu_known, steps)| {
            parts.enumerate().map(move |(i, p)| PartitionDoc::of_analysis(i, p, mfu_known, steps))
        });
        analysis.chain(read.into_iter().flatten())
    }
}

impl Serialize for Partitions<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut q = s.serialize_seq(Some(self.len()))?;
        for p in self.iter() {
            q.serialize_element(&p)?;
        }
        q.end()
    }
}

impl<'de> Deserialize<'de> for Partitions<'_> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::deserialize(d).map(|v| Partitions(Parts::Read(v)))
    }
}

impl PerCategory<f64> {
    /// Each category's share of `len_ns`.
    pub fn fractions(c: &Categories, len_ns: u64) -> Self {
        let w = len_ns.max(1) as f64;
        PerCategory(c.ns.map(|n| n as f64 / w))
    }
}

impl PartitionDoc {
    /// The `i`th step (`step`) or bin.
    fn of_analysis(i: usize, p: &Partition, mfu_known: bool, step: bool) -> Self {
        let len = p.len_ns().max(1) as f64;
        PartitionDoc {
            busy: p.busy_ns as f64 / len,
            categories: PerCategory::fractions(&p.categories, p.len_ns()),
            end_ns: step.then_some(p.end_ns),
            index: step.then_some(i as u64),
            mfu: mfu_known.then(|| p.categories.get("compute.useful") as f64 / len),
            start_ns: p.start_ns,
            busy_ns: p.busy_ns,
            categories_ns: PerCategory(p.categories.ns),
        }
    }
}

impl ThreadHostDoc {
    fn of(tid: u32, h: &HostFigures) -> Self {
        ThreadHostDoc {
            end_ns: h.end_ns,
            file_io: FileIoDoc::of(h),
            off_cpu_ns: OffCpu(h.off_cpu_ns),
            on_cpu_ns: h.on_cpu_ns,
            start_ns: h.start_ns,
            tid,
        }
    }
}

impl FileIoDoc {
    fn of(h: &HostFigures) -> Self {
        FileIoDoc {
            read_bytes: h.file_read_bytes,
            read_ns: h.file_read_ns,
            write_bytes: h.file_write_bytes,
            write_ns: h.file_write_ns,
        }
    }
}

impl<'a> DeviceDoc<'a> {
    fn of(r: &FileReport, a: &'a DeviceAccount, d: &'a DeviceDetail) -> Self {
        let w = a.window_ns().max(1) as f64;
        DeviceDoc {
            bins: BinsDoc { items: Partitions::of_analysis(&d.bins, a, false), width_ns: d.bin_ns },
            busy: a.busy(),
            busy_ns: a.busy_ns,
            categories: PerCategory::fractions(&a.categories, a.window_ns()),
            categories_ns: PerCategory(a.categories.ns),
            checkpoint: Some(CheckpointDoc {
                bytes: d.checkpoint.bytes,
                fraction: d.checkpoint.io_ns as f64 / w,
                io_ns: d.checkpoint.io_ns,
            }),
            device: a.device,
            divergence: a.divergence(),
            file: r.path.clone(),
            flop_source: a.flop_source.name().to_string(),
            mfu: a.mfu(),
            pid: a.pid,
            step_source: crate::trace::StepSource::report_name(d.step_source).to_string(),
            steps: Partitions::of_analysis(&d.steps, a, true),
            top_idle_gaps: d
                .top_idle_gaps
                .iter()
                .map(|g| IdleGapDoc {
                    category: g.category.to_string(),
                    duration_ns: g.end_ns - g.start_ns,
                    end_ns: g.end_ns,
                    reason: g.reason.to_string(),
                    start_ns: g.start_ns,
                })
                .collect(),
            top_kernels: d
                .top_kernels
                .iter()
                .map(|k| KernelDoc {
                    count: k.count,
                    mean_ns: k.total_ns as f64 / k.count.max(1) as f64,
                    name: r.kernel_names.get(&k.name_id).cloned().unwrap_or_default(),
                    share: k.total_ns as f64 / w,
                    total_ns: k.total_ns,
                    useful_ns: k.useful_ns,
                })
                .collect(),
            window_end_ns: a.window_end_ns,
            window_start_ns: a.window_start_ns,
            notes: d.notes.clone(),
        }
    }
}

/// An empty detail, for an account without one.
static NO_DETAIL: std::sync::LazyLock<DeviceDetail> = std::sync::LazyLock::new(DeviceDetail::default);

impl<'a> ReportDoc<'a> {
    /// The document of the analysis of `reports` (the cross-rank part is run here). Steps and
    /// bins are borrowed, made one at a time when written.
    pub fn from_reports(reports: &'a [FileReport]) -> Self {
        let devices = reports
            .iter()
            .flat_map(|r| {
                r.accounts
                    .iter()
                    .enumerate()
                    .map(move |(i, a)| DeviceDoc::of(r, a, r.details.get(i).unwrap_or(&NO_DETAIL)))
            })
            .collect();
        let mut ranks: Vec<u32> = reports.iter().flat_map(|r| r.accounts.iter().map(|a| a.pid)).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let cross = cross_rank(reports);
        let collectives = cross
            .collectives
            .iter()
            .map(|c| CollectiveDoc {
                algorithm: c.algorithm.clone(),
                bus_bandwidth_gbps: c.bus_bandwidth_gbps,
                bytes: c.bytes,
                count: c.count,
                op: c.op.clone(),
                size_bucket: c.size_bucket.clone(),
                time_ns: c.time_ns,
                transfer_ns: c.transfer_ns,
                wait_ns: c.wait_ns,
            })
            .collect();
        let skew = cross
            .skew
            .iter()
            .map(|s| SkewDoc {
                file: s.file.clone(),
                late_count: s.late_count,
                max_arrival_skew_ns: s.max_arrival_skew_ns,
                mean_arrival_skew_ns: s.mean_arrival_skew_ns,
                pid: s.pid,
                rank: s.rank,
                matched: s.matched,
            })
            .collect();
        let mut warnings: Vec<String> = reports.iter().flat_map(|r| r.warnings.clone()).collect();
        for r in reports {
            for (a, d) in r.accounts.iter().zip(&r.details) {
                warnings.extend(d.notes.iter().map(|n| format!("{} pid {} GPU {}: {n}", r.path, a.pid, a.device)));
            }
        }
        let damaged_chunks = reports
            .iter()
            .flat_map(|r| {
                r.damaged_chunks.iter().map(move |d| DamagedChunkDoc {
                    chunk: d.chunk as u64,
                    error: d.error.clone(),
                    file: r.path.clone(),
                    offset: d.offset,
                    records_lost: d.records_lost,
                })
            })
            .collect();
        let hosts = reports
            .iter()
            .flat_map(|r| {
                r.host.iter().map(move |p| ProcessHostDoc {
                    end_ns: p.total.end_ns,
                    file: r.path.clone(),
                    file_io: FileIoDoc::of(&p.total),
                    off_cpu_ns: OffCpu(p.total.off_cpu_ns),
                    on_cpu_ns: p.total.on_cpu_ns,
                    pid: p.pid,
                    start_ns: p.total.start_ns,
                    threads: p.threads.iter().map(|(tid, t)| ThreadHostDoc::of(*tid, t)).collect(),
                })
            })
            .collect();
        let recording_notes = reports
            .iter()
            .flat_map(|r| {
                r.recording_notes.iter().map(move |n| RecordingNoteDoc { file: r.path.clone(), note: n.clone() })
            })
            .collect();
        let clock_alignment = (reports.len() > 1).then(|| ClockAlignmentDoc {
            files: reports
                .iter()
                .map(|r| FileClockDoc {
                    anchor_ns: r.clock.map.anchor_ns,
                    drift_ppm: r.clock.map.drift * 1e6,
                    file: r.path.clone(),
                    host_id: r.host_id.clone(),
                    matched: r.clock.matched,
                    offset_ns: r.clock.map.offset_ns.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                    outliers: r.clock.outliers,
                    reference: r.clock.reference,
                    residual_ns: r.clock.residual_ns,
                })
                .collect(),
            method: reports[0].clock.method.name().to_string(),
        });
        let profiler_cost =
            reports.iter().flat_map(|r| r.profiler_cost.iter().map(move |c| ProfilerCostDoc::of(&r.path, c))).collect();
        ReportDoc {
            clock_alignment,
            profiler_cost,
            collectives,
            damaged_chunks,
            devices,
            hosts,
            ranks,
            recording_notes,
            schema: SCHEMA.to_string(),
            skew,
            straggler_activity: straggler_activity(reports, &cross),
            straggler_rank: cross.straggler.map(|i| cross.skew[i].rank),
            warnings,
            files: reports
                .iter()
                .map(|r| FileDoc {
                    path: r.path.clone(),
                    devices: r.accounts.len(),
                    hosts: r.host.len(),
                    warnings: r.warnings.clone(),
                    recording_notes: r.recording_notes.clone(),
                    profiler_cost: r.profiler_cost.iter().map(|c| ProfilerCostDoc::of(&r.path, c)).collect(),
                })
                .collect(),
            straggler: cross.straggler,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document with every field and every list filled.
    fn full() -> ReportDoc<'static> {
        let part = |index: Option<u64>| PartitionDoc {
            busy: 0.5,
            categories: PerCategory([0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]),
            end_ns: index.map(|_| 20),
            index,
            mfu: Some(0.25),
            start_ns: 10,
            ..Default::default()
        };
        let host =
            ThreadHostDoc { end_ns: 9, off_cpu_ns: OffCpu([1, 2, 3, 4, 5, 6, 7, 8]), tid: 3, ..Default::default() };
        ReportDoc {
            collectives: vec![CollectiveDoc { algorithm: Some("RING/SIMPLE".into()), ..Default::default() }],
            damaged_chunks: vec![DamagedChunkDoc { error: "bad".into(), ..Default::default() }],
            devices: vec![DeviceDoc {
                bins: BinsDoc { items: Partitions(Parts::Read(vec![part(None)])), width_ns: 10 },
                checkpoint: Some(CheckpointDoc::default()),
                mfu: Some(0.1),
                divergence: Some(0.2),
                steps: Partitions(Parts::Read(vec![part(Some(0)), part(Some(1))])),
                top_idle_gaps: vec![IdleGapDoc::default()],
                top_kernels: vec![KernelDoc::default()],
                ..Default::default()
            }],
            hosts: vec![ProcessHostDoc { threads: vec![host], ..Default::default() }],
            profiler_cost: vec![ProfilerCostDoc { fraction_of_job_cpu: Some(0.01), ..Default::default() }],
            ranks: vec![1, 2],
            recording_notes: vec![RecordingNoteDoc::default()],
            schema: SCHEMA.into(),
            skew: vec![SkewDoc::default()],
            straggler_activity: Some("on-CPU".into()),
            straggler_rank: Some(1),
            warnings: vec!["w".into()],
            ..Default::default()
        }
    }

    /// Serialized directly (as `write_json` streams it), the document has the bytes of its
    /// `Value` (whose objects sort their keys): every struct declares its fields in key order.
    #[test]
    fn fields_are_declared_in_key_order() {
        let doc = full();
        let direct = serde_json::to_string_pretty(&doc).unwrap();
        let value = serde_json::to_value(&doc).unwrap();
        assert_eq!(direct, serde_json::to_string_pretty(&value).unwrap());
        assert_eq!(value["devices"][0]["steps"][1]["index"], 1);
        assert!(value["devices"][0]["bins"]["items"][0].get("index").is_none(), "a bin has no index");
        assert_eq!(value["hosts"][0]["threads"][0]["off_cpu_ns"]["run_queue"], 8);
        assert_eq!(value["devices"][0]["steps"][0]["categories"]["idle.other"], 0.5);
        // Read back: the same document.
        let read: ReportDoc = serde_json::from_str(&direct).unwrap();
        assert_eq!(serde_json::to_string_pretty(&read).unwrap(), direct);
    }

    /// The cost line sums a file's processes, clamps each to its CPU time, and says so when
    /// the job's CPU time is unknown.
    #[test]
    fn profiler_cost_line_sums_and_clamps() {
        let rec = |pid, callback_ns, job_cpu_ns| crate::trace::ProfilerCost {
            callback_ns,
            buffer_ns: 1_000_000,
            thread_ns: 500_000,
            job_cpu_ns,
            pid,
            ..Default::default()
        };
        assert_eq!(profiler_cost_line(&[]), None);
        let one = [ProfilerCostDoc::of("t", &rec(1, 2_500_000, 400_000_000))];
        assert_eq!(one[0].cost_ns, 4_000_000);
        assert_eq!(one[0].fraction_of_job_cpu, Some(0.01));
        assert_eq!(
            profiler_cost_line(&one).unwrap(),
            "profiler cost: 4.0 ms of host CPU in the job (1.00% of its CPU time)"
        );
        // A job claiming more cost than CPU is clamped to its CPU time.
        let two = [one[0].clone(), ProfilerCostDoc::of("t", &rec(2, u64::MAX, 100_000_000))];
        assert_eq!(two[1].cost_ns, 100_000_000);
        assert_eq!(
            profiler_cost_line(&two).unwrap(),
            "profiler cost: 104.0 ms of host CPU in the job (20.80% of its CPU time, 2 processes)"
        );
        let unknown = [ProfilerCostDoc::of("t", &rec(3, 0, 0))];
        assert_eq!(unknown[0].fraction_of_job_cpu, None);
        assert_eq!(
            profiler_cost_line(&unknown).unwrap(),
            "profiler cost: 1.5 ms of host CPU in the job (its CPU time unknown)"
        );
    }

    /// A document of an older build lacks fields: they read as empty.
    #[test]
    fn absent_fields_read_as_empty() {
        let doc: ReportDoc =
            serde_json::from_str(r#"{"schema": "ghostprof.report.v1", "devices": [{"pid": 7}]}"#).unwrap();
        assert_eq!(doc.devices[0].pid, 7);
        assert!(doc.devices[0].steps.is_empty() && doc.devices[0].checkpoint.is_none() && doc.hosts.is_empty());
        assert_eq!(doc.straggler_rank, None);
    }
}
