//! The model of the accounting: the eight [`Category`]s every nanosecond of a window lands in,
//! the options ([`AccountOptions`], [`DetailOptions`]) and the results ([`DeviceAccount`],
//! [`DeviceDetail`] and their parts). Types only (and their arithmetic): no records.

use std::collections::HashMap;

use super::flops::FlopSource;
use crate::trace::{StallReason, StepSource};

/// Where a nanosecond of a device's window goes (docs/metrics.md). Overlapping device work
/// resolves compute > comm > other; idle time goes by what the launching threads were doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
pub enum Category {
    /// `compute.useful`: the FLOP-equivalent time of compute kernels (FLOPs ÷ peak FLOP/s).
    ComputeUseful,
    /// `compute.inefficient`: the rest of compute-kernel time (memory-bound, low occupancy, tails).
    ComputeInefficient,
    /// `comm.transfer`: collective-kernel time after the last rank arrived (data moving).
    CommTransfer,
    /// `comm.wait`: collective-kernel time before the last rank arrived (ghost compute).
    CommWait,
    /// `other.busy`: copies, memsets, and compute kernels with no FLOP attribution.
    OtherBusy,
    /// `idle.launch_bound`: device idle while a launching thread was on-CPU.
    IdleLaunchBound,
    /// `idle.host_stall`: device idle while a launching thread was blocked (I/O, futex, preemption,
    /// a synchronize or NCCL call).
    IdleHostStall,
    /// `idle.other`: device idle with no launching thread of the process seen.
    IdleOther,
}

impl Category {
    /// Every category, in report order (the order of [`Categories::ns`]).
    pub const ALL: [Category; 8] = [
        Category::ComputeUseful,
        Category::ComputeInefficient,
        Category::CommTransfer,
        Category::CommWait,
        Category::OtherBusy,
        Category::IdleLaunchBound,
        Category::IdleHostStall,
        Category::IdleOther,
    ];

    /// The names of [`Category::ALL`], in that order.
    pub const NAMES: [&'static str; 8] = {
        let mut names = [""; 8];
        let mut i = 0;
        while i < 8 {
            names[i] = Category::ALL[i].name();
            i += 1;
        }
        names
    };

    /// The category's position in [`Category::ALL`] (and in [`Categories::ns`]).
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name reports use ("compute.useful", ...).
    pub const fn name(self) -> &'static str {
        match self {
            Category::ComputeUseful => "compute.useful",
            Category::ComputeInefficient => "compute.inefficient",
            Category::CommTransfer => "comm.transfer",
            Category::CommWait => "comm.wait",
            Category::OtherBusy => "other.busy",
            Category::IdleLaunchBound => "idle.launch_bound",
            Category::IdleHostStall => "idle.host_stall",
            Category::IdleOther => "idle.other",
        }
    }

    /// The category of a name, if it is one.
    pub fn from_name(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Nanoseconds per category; they sum to the window. A plain array inside (indexed by
/// [`Category::index`]): the sweep adds to it in its hot loop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Categories {
    /// Nanoseconds of each category, indexed by [`Category::index`].
    pub ns: [u64; 8],
}

impl Categories {
    /// The nanoseconds of the category named `name` (0 for an unknown name).
    pub fn get(&self, name: &str) -> u64 {
        Category::from_name(name).map_or(0, |c| self[c])
    }

    /// The sum over all categories, ns (the window's or partition's length).
    pub fn total(&self) -> u64 {
        self.ns.iter().sum()
    }

    /// Each category with its nanoseconds, in [`Category::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Category, u64)> + '_ {
        Category::ALL.into_iter().map(|c| (c, self[c]))
    }
}

impl std::ops::Index<Category> for Categories {
    type Output = u64;
    #[inline]
    fn index(&self, c: Category) -> &u64 {
        &self.ns[c.index()]
    }
}

impl std::ops::IndexMut<Category> for Categories {
    #[inline]
    fn index_mut(&mut self, c: Category) -> &mut u64 {
        &mut self.ns[c.index()]
    }
}

/// A stretch of time, `[start_ns, end_ns)` on one clock: a device's window, a window in which
/// other ranks waited for a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// Start, ns (inclusive).
    pub start_ns: u64,
    /// End, ns (exclusive).
    pub end_ns: u64,
}

impl Window {
    /// `[start_ns, end_ns)`.
    pub const fn new(start_ns: u64, end_ns: u64) -> Self {
        Window { start_ns, end_ns }
    }

    /// Its length (0 when it ends before it starts).
    #[inline]
    pub fn len_ns(self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// Whether `t` is in it.
    #[inline]
    pub fn contains(self, t: u64) -> bool {
        self.start_ns <= t && t < self.end_ns
    }

    /// How long it overlaps `other`.
    #[inline]
    pub fn overlap(self, other: Window) -> u64 {
        self.end_ns.min(other.end_ns).saturating_sub(self.start_ns.max(other.start_ns))
    }

    /// Widened to take in `[start_ns, end_ns)`.
    #[inline]
    pub fn widen(&mut self, start_ns: u64, end_ns: u64) {
        self.start_ns = self.start_ns.min(start_ns);
        self.end_ns = self.end_ns.max(end_ns);
    }
}

/// What the accounting covers and how it classifies off-CPU time (docs/metrics.md).
#[derive(Debug, Clone)]
pub struct AccountOptions {
    /// The window for every device; default: from the device's first operation to its last.
    pub window: Option<Window>,
    /// Windows per process (override `window`).
    pub windows: HashMap<u32, Window>,
    /// A compute kernel name whose useful fraction is below this has no FLOP attribution.
    pub flop_less_below: f64,
    /// Count a launching thread's involuntary preemption as `idle.host_stall` (docs/metrics.md).
    /// Off, it counts as `idle.launch_bound`: the thread was running and wanted the CPU to issue
    /// work (how a simulator that times only its own calls sees it).
    pub preemption_is_stall: bool,
    /// Count the run-queue wait after a block (sleep, futex, I/O: woken, waiting for a CPU) as
    /// `idle.host_stall`. Off, it counts as `idle.launch_bound`. A simulator that times its
    /// blocking calls by the clock includes this wait in them, but not the wait after a block
    /// it cannot see (a lock inside its launch path).
    pub run_queue_is_stall: bool,
}

impl Default for AccountOptions {
    fn default() -> Self {
        AccountOptions {
            window: None,
            windows: HashMap::new(),
            flop_less_below: 0.01,
            preemption_is_stall: true,
            run_queue_is_stall: true,
        }
    }
}

/// The accounting of one device of one process.
#[derive(Debug, Clone)]
pub struct DeviceAccount {
    /// The process.
    pub pid: u32,
    /// The device's ordinal (the `device` of its CUPTI records).
    pub device: u32,
    /// Start of the accounted window, ns.
    pub window_start_ns: u64,
    /// End of the accounted window, ns (exclusive).
    pub window_end_ns: u64,
    /// Union of device work in the window (what dashboards call busy).
    pub busy_ns: u64,
    /// Nanoseconds per category; they sum to the window's length.
    pub categories: Categories,
    /// Where `compute.useful` came from.
    pub flop_source: FlopSource,
}

impl DeviceAccount {
    /// The window's length, ns (0 when it ends before it starts).
    pub fn window_ns(&self) -> u64 {
        self.window_end_ns.saturating_sub(self.window_start_ns)
    }
    /// Busy fraction of the window.
    pub fn busy(&self) -> f64 {
        self.busy_ns as f64 / self.window_ns().max(1) as f64
    }
    /// Useful (FLOP-equivalent) fraction of the window; None without a FLOP source.
    pub fn mfu(&self) -> Option<f64> {
        (self.flop_source != FlopSource::None)
            .then(|| self.categories[Category::ComputeUseful] as f64 / self.window_ns().max(1) as f64)
    }
    /// busy − MFU.
    pub fn divergence(&self) -> Option<f64> {
        self.mfu().map(|m| self.busy() - m)
    }
}

/// Windows per process in which other ranks waited for it (from the cross-rank matching).
pub type LateWindows = HashMap<u32, Vec<Window>>;

/// What to compute besides each device's totals: steps, bins, and the model-FLOPs source.
#[derive(Debug, Clone)]
pub struct DetailOptions {
    /// A step starts at each kernel whose name matches (when the trace has no NVTX steps).
    pub step_regex: Option<regex::Regex>,
    /// Look for a repeating kernel-name sequence when there are neither NVTX steps nor a regex.
    pub detect_periodicity: bool,
    /// Bin width; None: the window split into `default_bins` bins.
    pub bin_ns: Option<u64>,
    /// The number of bins when `bin_ns` is None.
    pub default_bins: u64,
    /// Model FLOPs of one step and the device's peak FLOP/s: the third FLOP source.
    pub flops_per_step: Option<f64>,
    /// Peak FLOP/s of the device; the model-FLOPs source needs both it and `flops_per_step`.
    pub peak_flops: Option<f64>,
}

impl Default for DetailOptions {
    fn default() -> Self {
        DetailOptions {
            step_regex: None,
            detect_periodicity: true,
            bin_ns: None,
            default_bins: 200,
            flops_per_step: None,
            peak_flops: None,
        }
    }
}

/// At most this many bins per device; a narrower `--bin` is widened (and the report says so).
pub const MAX_BINS: u64 = 1_000_000;

/// A stretch of the window (a step or a bin) with its own accounting; categories sum to its length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Partition {
    /// Start, ns.
    pub start_ns: u64,
    /// End, ns (exclusive).
    pub end_ns: u64,
    /// Union of device work in the partition, ns.
    pub busy_ns: u64,
    /// Nanoseconds per category; they sum to the partition's length.
    pub categories: Categories,
}

impl Partition {
    /// The partition's length, ns.
    pub fn len_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

/// A maximal stretch with no device work, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleGap {
    /// Start, ns.
    pub start_ns: u64,
    /// End, ns (exclusive).
    pub end_ns: u64,
    /// The idle category that got most of the gap ([`Category::name`]).
    pub category: &'static str,
    /// What the launching threads were doing for most of the gap.
    pub reason: &'static str,
}

/// Totals of one kernel name on one device (time clipped to the window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelStat {
    /// The kernel name's id in the trace's string table.
    pub name_id: u32,
    /// Launches of the name that ran in the window.
    pub count: u64,
    /// Their time in the window, ns.
    pub total_ns: u64,
    /// The useful (FLOP-equivalent) part of `total_ns`, ns.
    pub useful_ns: u64,
}

/// Checkpoint-like I/O of the process: write and fsync-family file syscalls in the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointIo {
    /// Union of the write/fsync calls of the process's threads, ns.
    pub io_ns: u64,
    /// Bytes written by write-family calls overlapping the window.
    pub bytes: u64,
}

/// Everything about one device beyond its totals.
#[derive(Debug, Clone, Default)]
pub struct DeviceDetail {
    /// Where the steps came from; None: no steps were found.
    pub step_source: Option<StepSource>,
    /// The steps, in time order (empty when none were found).
    pub steps: Vec<Partition>,
    /// The bin width used, ns (after widening to at most [`MAX_BINS`] bins).
    pub bin_ns: u64,
    /// The window cut into bins of `bin_ns`.
    pub bins: Vec<Partition>,
    /// Up to 10, most time first.
    pub top_kernels: Vec<KernelStat>,
    /// Every kernel name that ran in the window, most time first (then by name id): the first
    /// 10 are `top_kernels`. As many as the trace's names (its string table's caps bound them).
    pub kernels: Vec<KernelStat>,
    /// Up to 10, longest first.
    pub top_idle_gaps: Vec<IdleGap>,
    /// Checkpoint-like I/O of the device's process in the window.
    pub checkpoint: CheckpointIo,
    /// Remarks for the report (a widened bin width, ...).
    pub notes: Vec<String>,
}

/// The analysis of one device.
#[derive(Debug, Clone)]
pub struct DeviceResult {
    /// The totals.
    pub account: DeviceAccount,
    /// Empty without details.
    pub detail: DeviceDetail,
    /// What the device's process was doing while other ranks waited for it (the straggler
    /// line); None when no rank waited for it.
    pub late_activity: Option<String>,
}

/// Rounds fractional nanoseconds so the categories still sum exactly to the window.
pub(crate) fn round_to_total(acc: [f64; 8], total: u64) -> [u64; 8] {
    let mut ns = acc.map(|v| v.max(0.0).floor() as u64);
    // Floating-point sums can overshoot by a nanosecond: take it from the largest.
    while ns.iter().sum::<u64>() > total {
        let i = (0..8).max_by_key(|&i| ns[i]).unwrap_or(0);
        ns[i] -= 1;
    }
    let mut short = total.saturating_sub(ns.iter().sum());
    let mut order: Vec<usize> = (0..8).collect();
    order.sort_by(|&i, &j| (acc[j] - acc[j].floor()).total_cmp(&(acc[i] - acc[i].floor())));
    for i in order.into_iter().cycle() {
        if short == 0 {
            break;
        }
        ns[i] += 1;
        short -= 1;
    }
    ns
}

/// Which off-CPU intervals count as stalls ([`AccountOptions::preemption_is_stall`] and
/// [`AccountOptions::run_queue_is_stall`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StallPolicy {
    pub preemption: bool,
    pub run_queue: bool,
}

impl StallPolicy {
    /// Whether an off-CPU interval with this reason is a stall.
    pub fn counts(self, reason: u32) -> bool {
        (self.preemption || reason != StallReason::Preempted as u32)
            && (self.run_queue || reason != StallReason::RunQueue as u32)
    }
}

impl AccountOptions {
    pub(crate) fn stall_policy(&self) -> StallPolicy {
        StallPolicy { preemption: self.preemption_is_stall, run_queue: self.run_queue_is_stall }
    }
}
