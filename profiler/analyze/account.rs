//! The accounting of DESIGN.md §1 per (process, device) over a window. Every nanosecond of the
//! window lands in exactly one of eight categories; overlapping device work resolves compute >
//! comm > other, and idle time is attributed to what the launching threads were doing.
//!
//! - **Device work** comes from CUPTI kernel and memcpy/memset records. Kernels whose name
//!   starts with `nccl` are collectives; compute kernels with no FLOP attribution (fraction
//!   under 1 %) are `other.busy` like copies.
//! - **Useful time** comes from PM samples ([`super::flops`]); without them every compute
//!   nanosecond is `compute.inefficient` and MFU is unknown.
//! - **Collectives**: the k-th NCCL kernel of a rank is the k-th NCCL host call (eBPF) of that
//!   rank; calls with the same sequence number on the ranks of one communicator size are one
//!   collective. A kernel is `comm.wait` from its start until the last rank's kernel started,
//!   `comm.transfer` after. A collective whose ranks are not all in the trace is all transfer.
//! - **Idle time**: `idle.host_stall` where a launching thread of the process was blocked
//!   (off-CPU, in file I/O, in a synchronize/copy call, in an NCCL call), `idle.launch_bound`
//!   where it was not, `idle.other` when the process has no known launching thread.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::flops::{useful_fraction_by_name, FlopSource, KernelSpan, PmSample};
use super::steps::StepSource;
use crate::trace::{ApiDomain, Metric, NcclPhase, ProbedApi, RecordBatch, StallReason, WRITE_SYSCALLS};

pub const CATEGORY_NAMES: [&str; 8] = [
    "compute.useful",
    "compute.inefficient",
    "comm.transfer",
    "comm.wait",
    "other.busy",
    "idle.launch_bound",
    "idle.host_stall",
    "idle.other",
];
const USEFUL: usize = 0;
const INEFFICIENT: usize = 1;
const TRANSFER: usize = 2;
const WAIT: usize = 3;
const OTHER: usize = 4;
const LAUNCH_BOUND: usize = 5;
const HOST_STALL: usize = 6;
const IDLE_OTHER: usize = 7;

/// Nanoseconds per category, indexed like [`CATEGORY_NAMES`]; they sum to the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Categories {
    pub ns: [u64; 8],
}

impl Categories {
    pub fn get(&self, name: &str) -> u64 {
        CATEGORY_NAMES.iter().position(|c| *c == name).map_or(0, |i| self.ns[i])
    }

    pub fn total(&self) -> u64 {
        self.ns.iter().sum()
    }
}

#[derive(Debug, Clone)]
pub struct AccountOptions {
    /// The window for every device; default: from the device's first operation to its last.
    pub window: Option<(u64, u64)>,
    /// Windows per process (override `window`).
    pub windows: HashMap<u32, (u64, u64)>,
    /// A compute kernel name whose useful fraction is below this has no FLOP attribution.
    pub flop_less_below: f64,
    /// Count a launching thread's preemption and run-queue wait as `idle.host_stall` (DESIGN.md
    /// §1). Off, they count as `idle.launch_bound`: the thread wanted the CPU to issue work.
    pub preemption_is_stall: bool,
}

impl Default for AccountOptions {
    fn default() -> Self {
        AccountOptions { window: None, windows: HashMap::new(), flop_less_below: 0.01, preemption_is_stall: true }
    }
}

/// The accounting of one device of one process.
#[derive(Debug, Clone)]
pub struct DeviceAccount {
    pub pid: u32,
    pub device: u32,
    pub window_start_ns: u64,
    pub window_end_ns: u64,
    /// Union of device work in the window (what dashboards call busy).
    pub busy_ns: u64,
    pub categories: Categories,
    pub flop_source: FlopSource,
}

impl DeviceAccount {
    pub fn window_ns(&self) -> u64 {
        self.window_end_ns - self.window_start_ns
    }
    /// Busy fraction of the window.
    pub fn busy(&self) -> f64 {
        self.busy_ns as f64 / self.window_ns().max(1) as f64
    }
    /// Useful (FLOP-equivalent) fraction of the window; None without a FLOP source.
    pub fn mfu(&self) -> Option<f64> {
        (self.flop_source != FlopSource::None)
            .then(|| self.categories.ns[USEFUL] as f64 / self.window_ns().max(1) as f64)
    }
    /// busy − MFU.
    pub fn divergence(&self) -> Option<f64> {
        self.mfu().map(|m| self.busy() - m)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Compute,
    Comm,
    Other,
}

struct Op {
    start: u64,
    end: u64,
    class: Class,
    /// useful fraction (compute)
    rate: f64,
    /// end of the wait phase (comm)
    transfer_from: u64,
}

/// Accounts every (process, device) with device work in `batch`. `names` maps string ids to
/// names (the chunks' string tables).
pub fn account(batch: &RecordBatch, names: &HashMap<u32, String>, opts: &AccountOptions) -> Vec<DeviceAccount> {
    let is_comm = |id: u32| names.get(&id).is_some_and(|n| n.to_ascii_lowercase().starts_with("nccl"));
    let waits = comm_waits(batch, &is_comm);
    device_keys(batch)
        .into_iter()
        .map(|(pid, device)| analyze_device(batch, names, pid, device, &is_comm, &waits, opts, None).0)
        .collect()
}

/// One rank's kernel of a collective: (pid, start, end).
type RankKernel = (u32, u64, u64);

/// (pid, kernel start) → wait ns, from cross-rank matching of collectives.
fn comm_waits(batch: &RecordBatch, is_comm: &dyn Fn(u32) -> bool) -> HashMap<(u32, u64), u64> {
    let mut kernels_by_pid: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for k in batch.kernels.iter().filter(|k| is_comm(k.name_id)) {
        kernels_by_pid.entry(k.pid).or_default().push((k.start_ns, k.end_ns));
    }
    let mut calls_by_pid: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    for c in batch.nccl.iter().filter(|c| c.phase == NcclPhase::Host as u32) {
        calls_by_pid.entry(c.pid).or_default().push((c.seq, c.nranks));
    }
    // (nranks, seq) → the ranks' kernels of that collective
    let mut groups: HashMap<(u32, u64), Vec<RankKernel>> = HashMap::new();
    for (pid, kernels) in kernels_by_pid.iter_mut() {
        kernels.sort_unstable();
        let Some(calls) = calls_by_pid.get_mut(pid) else { continue };
        calls.sort_unstable();
        for (k, c) in kernels.iter().zip(calls.iter()) {
            groups.entry((c.1, c.0)).or_default().push((*pid, k.0, k.1));
        }
    }
    let mut waits = HashMap::new();
    for ((nranks, _), members) in groups {
        if members.len() as u32 != nranks || nranks < 2 {
            continue;
        }
        let last = members.iter().map(|m| m.1).max().unwrap_or(0);
        for (pid, start, end) in members {
            waits.insert((pid, start), last.saturating_sub(start).min(end - start));
        }
    }
    waits
}

/// What to compute besides each device's totals: steps, bins, and the model-FLOPs source.
#[derive(Debug, Clone)]
pub struct DetailOptions {
    /// A step starts at each kernel whose name matches (when the trace has no NVTX steps).
    pub step_regex: Option<regex::Regex>,
    /// Look for a repeating kernel-name sequence when there are neither NVTX steps nor a regex.
    pub detect_periodicity: bool,
    /// Bin width; None: the window split into `default_bins` bins.
    pub bin_ns: Option<u64>,
    pub default_bins: u64,
    /// Model FLOPs of one step and the device's peak FLOP/s: the third FLOP source.
    pub flops_per_step: Option<f64>,
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
    pub start_ns: u64,
    pub end_ns: u64,
    pub busy_ns: u64,
    pub categories: Categories,
}

impl Partition {
    pub fn len_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

/// A maximal stretch with no device work, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleGap {
    pub start_ns: u64,
    pub end_ns: u64,
    /// The idle category that got most of the gap ([`CATEGORY_NAMES`] name).
    pub category: &'static str,
    /// What the launching threads were doing for most of the gap.
    pub reason: &'static str,
}

/// Totals of one kernel name on one device (time clipped to the window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelStat {
    pub name_id: u32,
    pub count: u64,
    pub total_ns: u64,
    pub useful_ns: u64,
}

/// Checkpoint-like I/O of the process: write and fsync-family file syscalls in the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointIo {
    /// Union of the write/fsync calls of the process's threads, ns.
    pub io_ns: u64,
    pub bytes: u64,
}

/// Everything about one device beyond its totals.
#[derive(Debug, Clone, Default)]
pub struct DeviceDetail {
    pub step_source: StepSource,
    pub steps: Vec<Partition>,
    pub bin_ns: u64,
    pub bins: Vec<Partition>,
    /// Up to 10, most time first.
    pub top_kernels: Vec<KernelStat>,
    /// Up to 10, longest first.
    pub top_idle_gaps: Vec<IdleGap>,
    pub checkpoint: CheckpointIo,
    pub notes: Vec<String>,
}

/// [`account`] with the details: steps, bins, top kernels, idle gaps, checkpoint I/O.
pub fn analyze(
    batch: &RecordBatch,
    names: &HashMap<u32, String>,
    opts: &AccountOptions,
    detail: &DetailOptions,
) -> Vec<(DeviceAccount, DeviceDetail)> {
    let is_comm = |id: u32| names.get(&id).is_some_and(|n| n.to_ascii_lowercase().starts_with("nccl"));
    let waits = comm_waits(batch, &is_comm);
    device_keys(batch)
        .into_iter()
        .map(|(pid, device)| analyze_device(batch, names, pid, device, &is_comm, &waits, opts, Some(detail)))
        .collect()
}

fn device_keys(batch: &RecordBatch) -> Vec<(u32, u32)> {
    let mut keys: Vec<(u32, u32)> = batch
        .kernels
        .iter()
        .map(|k| (k.pid, k.device))
        .chain(batch.memops.iter().map(|m| (m.pid, m.device)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    keys.sort_unstable();
    keys
}

/// Accumulates a sweep's segments into disjoint, sorted partitions.
struct Partitions {
    spans: Vec<(u64, u64)>,
    acc: Vec<[f64; 8]>,
    busy: Vec<u64>,
    cursor: usize,
}

impl Partitions {
    fn new(spans: Vec<(u64, u64)>) -> Self {
        let n = spans.len();
        Partitions { spans, acc: vec![[0.0; 8]; n], busy: vec![0; n], cursor: 0 }
    }

    /// Adds segment [a, b) (which never straddles a partition boundary; segments come in order).
    fn add(&mut self, a: u64, b: u64, seg: &[f64; 8], busy: bool) {
        while self.cursor < self.spans.len() && self.spans[self.cursor].1 <= a {
            self.cursor += 1;
        }
        if let Some(&(s, e)) = self.spans.get(self.cursor) {
            if s <= a && b <= e {
                add_into(&mut self.acc[self.cursor], seg);
                if busy {
                    self.busy[self.cursor] += b - a;
                }
            }
        }
    }

    fn finish(self) -> Vec<Partition> {
        self.spans
            .iter()
            .zip(self.acc.iter().zip(&self.busy))
            .map(|(&(s, e), (acc, &busy))| Partition {
                start_ns: s,
                end_ns: e,
                busy_ns: busy,
                categories: Categories { ns: round_to_total(*acc, e - s) },
            })
            .collect()
    }
}

fn add_into(acc: &mut [f64; 8], seg: &[f64; 8]) {
    for (a, s) in acc.iter_mut().zip(seg) {
        *a += s;
    }
}

/// The idle stretch being built by the sweep.
#[derive(Default)]
struct OpenGap {
    start: u64,
    end: u64,
    /// launch-bound, host-stall, other ns
    split: [f64; 3],
}

#[allow(clippy::too_many_arguments)]
fn analyze_device(
    batch: &RecordBatch,
    names: &HashMap<u32, String>,
    pid: u32,
    device: u32,
    is_comm: &dyn Fn(u32) -> bool,
    waits: &HashMap<(u32, u64), u64>,
    opts: &AccountOptions,
    detail: Option<&DetailOptions>,
) -> (DeviceAccount, DeviceDetail) {
    let kernels: Vec<_> = batch.kernels.iter().filter(|k| k.pid == pid && k.device == device).collect();
    let memops: Vec<_> = batch.memops.iter().filter(|m| m.pid == pid && m.device == device).collect();

    // FLOP attribution per compute kernel name, from this process's PM samples of the device.
    let mut compute: Vec<KernelSpan> = kernels
        .iter()
        .filter(|k| !is_comm(k.name_id))
        .map(|k| KernelSpan { start: k.start_ns, end: k.end_ns, name: k.name_id })
        .collect();
    compute.sort_by_key(|k| k.start);
    let samples = pm_samples(batch, pid, device);
    let (fractions, mut flop_source) = if samples.is_empty() {
        (HashMap::new(), FlopSource::None)
    } else {
        (useful_fraction_by_name(&compute, &samples), FlopSource::PmSampling)
    };

    let first_op = kernels.iter().map(|k| k.start_ns).chain(memops.iter().map(|m| m.start_ns)).min().unwrap_or(0);
    let last_op = kernels.iter().map(|k| k.end_ns).chain(memops.iter().map(|m| m.end_ns)).max().unwrap_or(first_op);
    let (w0, w1) = opts.windows.get(&pid).copied().or(opts.window).unwrap_or((first_op, last_op));

    // Steps come first: the model-FLOPs source spreads each step's FLOPs over its kernels.
    let (step_source, step_spans) = match detail {
        Some(d) => super::steps::find_steps(batch, names, pid, &compute, is_comm, d, (w0, w1)),
        None => (StepSource::None, Vec::new()),
    };
    let step_rates = match detail {
        Some(d) if flop_source == FlopSource::None && !step_spans.is_empty() => {
            match (d.flops_per_step, d.peak_flops) {
                (Some(f), Some(peak)) if f > 0.0 && peak > 0.0 => {
                    flop_source = FlopSource::FlopsPerStep;
                    super::steps::step_rates(&step_spans, &compute, f / peak * 1e9)
                }
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    let step_rate = |t: u64| -> f64 {
        let i = step_spans.partition_point(|s| s.1 <= t);
        match step_spans.get(i) {
            Some(s) if s.0 <= t => step_rates.get(i).copied().unwrap_or(0.0),
            _ => 0.0,
        }
    };

    let mut ops: Vec<Op> = Vec::with_capacity(kernels.len() + memops.len());
    for k in &kernels {
        let (class, rate, transfer_from) = if is_comm(k.name_id) {
            let wait = waits.get(&(pid, k.start_ns)).copied().unwrap_or(0);
            (Class::Comm, 0.0, k.start_ns + wait)
        } else if flop_source == FlopSource::FlopsPerStep {
            (Class::Compute, step_rate(k.start_ns), 0)
        } else {
            match fractions.get(&k.name_id) {
                Some(&f) if f >= opts.flop_less_below => (Class::Compute, f, 0),
                _ if flop_source == FlopSource::None => (Class::Compute, 0.0, 0),
                _ => (Class::Other, 0.0, 0),
            }
        };
        ops.push(Op { start: k.start_ns, end: k.end_ns, class, rate, transfer_from });
    }
    for m in &memops {
        ops.push(Op { start: m.start_ns, end: m.end_ns, class: Class::Other, rate: 0.0, transfer_from: 0 });
    }

    let (blocked, reasons) = host_blocked(batch, pid, opts.preemption_is_stall);
    let has_launcher = batch.launches.iter().any(|l| l.pid == pid);

    // Bins: fixed width over the window.
    let mut notes = Vec::new();
    let window = w1 - w0;
    let bin_ns = match detail {
        Some(d) => {
            let want = d.bin_ns.unwrap_or_else(|| window.div_ceil(d.default_bins.max(1))).max(1);
            let min = window.div_ceil(MAX_BINS).max(1);
            if want < min {
                notes.push(format!("bin width {want} ns would give more than {MAX_BINS} bins: widened to {min} ns"));
            }
            want.max(min)
        }
        None => 0,
    };
    let bin_spans: Vec<(u64, u64)> = if bin_ns > 0 && window > 0 {
        (0..window.div_ceil(bin_ns)).map(|i| (w0 + i * bin_ns, (w0 + (i + 1) * bin_ns).min(w1))).collect()
    } else {
        Vec::new()
    };

    // Sweep: boundaries of every op (and of each collective's wait phase), steps and bins.
    let mut cuts: Vec<u64> = vec![w0, w1];
    for o in &ops {
        cuts.extend([o.start.clamp(w0, w1), o.end.clamp(w0, w1)]);
        if o.class == Class::Comm {
            cuts.push(o.transfer_from.clamp(w0, w1));
        }
    }
    for &(s, e) in step_spans.iter().chain(&bin_spans) {
        cuts.extend([s, e]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    ops.sort_by_key(|o| o.start);
    let mut steps = Partitions::new(step_spans);
    let mut bins = Partitions::new(bin_spans);
    let mut gaps: Vec<OpenGap> = Vec::new();
    let mut gap = OpenGap::default();
    let tracking = detail.is_some();
    let mut acc = [0f64; 8];
    let mut busy = 0u64;
    let mut active: Vec<usize> = Vec::new();
    let mut next = 0usize;
    for pair in cuts.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        while next < ops.len() && ops[next].start <= a {
            active.push(next);
            next += 1;
        }
        active.retain(|&i| ops[i].end > a);
        let dt = (b - a) as f64;
        let mut seg = [0f64; 8];
        let mut best: Option<Class> = None;
        let (mut rate, mut transferring) = (0f64, false);
        for o in active.iter().map(|&i| &ops[i]).filter(|o| o.start <= a && o.end >= b) {
            best = Some(best.map_or(o.class, |c| c.min(o.class)));
            match o.class {
                Class::Compute => rate += o.rate,
                Class::Comm => transferring |= a >= o.transfer_from,
                Class::Other => {}
            }
        }
        match best {
            None => {
                if !has_launcher {
                    seg[IDLE_OTHER] = dt;
                } else {
                    let stalled = overlap(&blocked, a, b) as f64;
                    seg[HOST_STALL] = stalled;
                    seg[LAUNCH_BOUND] = dt - stalled;
                }
                if tracking {
                    if gap.end != a || gap.end == gap.start {
                        close_gap(&mut gaps, std::mem::take(&mut gap));
                        gap.start = a;
                    }
                    gap.end = b;
                    gap.split[0] += seg[LAUNCH_BOUND];
                    gap.split[1] += seg[HOST_STALL];
                    gap.split[2] += seg[IDLE_OTHER];
                }
            }
            Some(class) => {
                busy += b - a;
                match class {
                    Class::Compute => {
                        let rate = rate.min(1.0);
                        seg[USEFUL] = rate * dt;
                        seg[INEFFICIENT] = (1.0 - rate) * dt;
                    }
                    Class::Comm => seg[if transferring { TRANSFER } else { WAIT }] = dt,
                    Class::Other => seg[OTHER] = dt,
                }
            }
        }
        add_into(&mut acc, &seg);
        if tracking {
            steps.add(a, b, &seg, best.is_some());
            bins.add(a, b, &seg, best.is_some());
        }
    }
    close_gap(&mut gaps, gap);
    let account = DeviceAccount {
        pid,
        device,
        window_start_ns: w0,
        window_end_ns: w1,
        busy_ns: busy,
        categories: Categories { ns: round_to_total(acc, w1 - w0) },
        flop_source,
    };
    if !tracking {
        return (account, DeviceDetail::default());
    }
    let top_idle_gaps = gaps
        .into_iter()
        .map(|g| {
            let cat = (0..3).max_by(|&i, &j| g.split[i].total_cmp(&g.split[j])).unwrap_or(2);
            let (category, reason) = match cat {
                0 => (CATEGORY_NAMES[LAUNCH_BOUND], "on-CPU"),
                1 => (CATEGORY_NAMES[HOST_STALL], main_reason(&reasons, g.start, g.end)),
                _ => (CATEGORY_NAMES[IDLE_OTHER], "no launching thread seen"),
            };
            IdleGap { start_ns: g.start, end_ns: g.end, category, reason }
        })
        .collect();
    let detail = DeviceDetail {
        step_source,
        steps: steps.finish(),
        bin_ns,
        bins: bins.finish(),
        top_kernels: top_kernels(&kernels, &ops_rates(&kernels, &ops), (w0, w1)),
        top_idle_gaps,
        checkpoint: checkpoint_io(batch, pid, (w0, w1)),
        notes,
    };
    (account, detail)
}

/// Keeps the 10 longest gaps, longest first.
fn close_gap(gaps: &mut Vec<OpenGap>, gap: OpenGap) {
    let len = gap.end - gap.start;
    if len == 0 {
        return;
    }
    if gaps.len() == 10 && gaps.last().is_some_and(|g| g.end - g.start >= len) {
        return;
    }
    let at = gaps.partition_point(|g| g.end - g.start >= len);
    gaps.insert(at, gap);
    gaps.truncate(10);
}

/// The useful rate of each kernel (same order as `kernels`): ops hold kernels first, unsorted
/// copies are matched by start and end.
fn ops_rates(kernels: &[&crate::trace::KernelExec], ops: &[Op]) -> Vec<f64> {
    let mut by_span: HashMap<(u64, u64), f64> = HashMap::with_capacity(ops.len());
    for o in ops.iter().filter(|o| o.class == Class::Compute) {
        by_span.insert((o.start, o.end), o.rate);
    }
    kernels.iter().map(|k| by_span.get(&(k.start_ns, k.end_ns)).copied().unwrap_or(0.0)).collect()
}

fn top_kernels(kernels: &[&crate::trace::KernelExec], rates: &[f64], (w0, w1): (u64, u64)) -> Vec<KernelStat> {
    let mut by_name: HashMap<u32, (KernelStat, f64)> = HashMap::new();
    for (k, rate) in kernels.iter().zip(rates) {
        let clipped = k.end_ns.min(w1).saturating_sub(k.start_ns.max(w0));
        if clipped == 0 && (k.start_ns < w0 || k.start_ns >= w1) {
            continue;
        }
        let e =
            by_name.entry(k.name_id).or_insert_with(|| (KernelStat { name_id: k.name_id, ..Default::default() }, 0.0));
        e.0.count += 1;
        e.0.total_ns += clipped;
        e.1 += rate.min(1.0) * clipped as f64;
    }
    let mut v: Vec<KernelStat> = by_name
        .into_values()
        .map(|(mut s, useful)| {
            s.useful_ns = useful.round() as u64;
            s
        })
        .collect();
    v.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.name_id.cmp(&b.name_id)));
    v.truncate(10);
    v
}

/// Syscalls counted as checkpoint I/O: the write family, fsync (74) and fdatasync (75).
fn is_checkpoint_syscall(nr: i32) -> bool {
    WRITE_SYSCALLS.contains(&nr) || nr == 74 || nr == 75
}

fn checkpoint_io(batch: &RecordBatch, pid: u32, (w0, w1): (u64, u64)) -> CheckpointIo {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut bytes = 0u64;
    for f in batch.file_io.iter().filter(|f| f.pid == pid && is_checkpoint_syscall(f.syscall)) {
        let (s, e) = (f.start_ns.max(w0), f.end_ns.min(w1));
        if s < e {
            spans.push((s, e));
        }
        if f.start_ns < w1 && f.end_ns >= w0 && f.syscall != 74 && f.syscall != 75 {
            bytes += f.bytes;
        }
    }
    CheckpointIo { io_ns: union_len(spans), bytes }
}

/// Length of the union of intervals.
pub(crate) fn union_len(mut spans: Vec<(u64, u64)>) -> u64 {
    spans.sort_unstable();
    let (mut total, mut end) = (0u64, 0u64);
    for (s, e) in spans {
        if e <= end {
            continue;
        }
        total += e - s.max(end);
        end = e;
    }
    total
}

/// The reason that covers most of [a, b) among a process's blocked intervals.
fn main_reason(reasons: &[(u64, u64, &'static str)], a: u64, b: u64) -> &'static str {
    let mut by: Vec<(&'static str, u64)> = Vec::new();
    for &(s, e, r) in reasons.iter().take_while(|x| x.0 < b) {
        let o = e.min(b).saturating_sub(s.max(a));
        if o == 0 {
            continue;
        }
        match by.iter_mut().find(|x| x.0 == r) {
            Some(x) => x.1 += o,
            None => by.push((r, o)),
        }
    }
    by.into_iter().max_by_key(|x| x.1).map_or("off-CPU", |x| x.0)
}

/// Rounds fractional nanoseconds so the categories still sum exactly to the window.
fn round_to_total(acc: [f64; 8], total: u64) -> [u64; 8] {
    let mut ns = acc.map(|v| v.max(0.0).floor() as u64);
    // Floating-point sums can overshoot by a nanosecond: take it from the largest.
    while ns.iter().sum::<u64>() > total {
        let i = (0..8).max_by_key(|&i| ns[i]).unwrap_or(0);
        ns[i] -= 1;
    }
    let mut short = total.saturating_sub(ns.iter().sum());
    let mut order: Vec<usize> = (0..8).collect();
    order.sort_by(|&i, &j| (acc[j] - acc[j].floor()).total_cmp(&(acc[i] - acc[i].floor())));
    for i in order.into_iter().cycle().take(16) {
        if short == 0 {
            break;
        }
        ns[i] += 1;
        short -= 1;
    }
    ns
}

fn pm_samples(batch: &RecordBatch, pid: u32, device: u32) -> Vec<PmSample> {
    let mut by_time: BTreeMap<u64, (u64, f64)> = BTreeMap::new();
    for s in batch.samples.iter().filter(|s| s.pid == pid && s.device == device) {
        match Metric::from_u32(s.metric) {
            Some(Metric::SampleIntervalNs) => by_time.entry(s.time_ns).or_default().0 = s.value.max(0.0) as u64,
            Some(Metric::TensorActive) => by_time.entry(s.time_ns).or_default().1 = s.value,
            _ => {}
        }
    }
    by_time
        .into_iter()
        .filter(|(_, (len, _))| *len > 0)
        .map(|(start, (len, tensor))| PmSample { start, len, tensor: tensor.clamp(0.0, 1.0) })
        .collect()
}

/// A blocked interval of a launching thread and why.
type Reasoned = (u64, u64, &'static str);

/// Sorted, merged intervals during which a launching thread of `pid` was blocked, and the same
/// intervals unmerged with their reasons (sorted by start).
fn host_blocked(batch: &RecordBatch, pid: u32, preemption_is_stall: bool) -> (Vec<(u64, u64)>, Vec<Reasoned>) {
    let launchers: HashSet<u32> = batch.launches.iter().filter(|l| l.pid == pid).map(|l| l.tid).collect();
    let mine = |p: u32, t: u32| p == pid && launchers.contains(&t);
    let mut v: Vec<Reasoned> = Vec::new();
    let counts = |reason: u32| {
        preemption_is_stall || (reason != StallReason::Preempted as u32 && reason != StallReason::RunQueue as u32)
    };
    v.extend(
        batch
            .stalls
            .iter()
            .filter(|s| mine(s.pid, s.tid) && counts(s.reason))
            .map(|s| (s.start_ns, s.end_ns, stall_reason_label(s.reason))),
    );
    v.extend(batch.file_io.iter().filter(|f| mine(f.pid, f.tid)).map(|f| (f.start_ns, f.end_ns, "file I/O")));
    v.extend(
        batch
            .nccl
            .iter()
            .filter(|c| c.phase == NcclPhase::Host as u32 && mine(c.pid, c.tid))
            .map(|c| (c.start_ns, c.end_ns, "NCCL call")),
    );
    v.extend(
        batch
            .api_calls
            .iter()
            .filter(|c| c.domain == ApiDomain::Probe as u32 && mine(c.pid, c.tid))
            .filter(|c| ProbedApi::from_u32(c.call_id).is_some_and(|a| a.is_sync()))
            .map(|c| (c.start_ns, c.end_ns, "sync call")),
    );
    v.sort_unstable_by_key(|x| (x.0, x.1));
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for &(s, e, _) in &v {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    (merged, v)
}

/// The words a report uses for an off-CPU reason.
pub fn stall_reason_label(reason: u32) -> &'static str {
    match StallReason::from_u32(reason) {
        Some(StallReason::Futex) => "futex",
        Some(StallReason::Io) => "block I/O",
        Some(StallReason::PageFault) => "page fault",
        Some(StallReason::Preempted) => "preempted",
        Some(StallReason::Sleep) => "sleep",
        Some(StallReason::Poll) => "poll",
        Some(StallReason::RunQueue) => "run queue",
        Some(StallReason::Other) | None => "off-CPU (other)",
    }
}

/// Length of [a, b) covered by sorted, disjoint `intervals`.
fn overlap(intervals: &[(u64, u64)], a: u64, b: u64) -> u64 {
    let i = intervals.partition_point(|iv| iv.1 <= a);
    intervals[i..].iter().take_while(|iv| iv.0 < b).map(|iv| iv.1.min(b).saturating_sub(iv.0.max(a))).sum()
}
