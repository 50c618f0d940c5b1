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
use super::sweep::{DevicePlan, DeviceSweep, Reasoned};
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
pub(crate) const USEFUL: usize = 0;
pub(crate) const INEFFICIENT: usize = 1;
pub(crate) const TRANSFER: usize = 2;
pub(crate) const WAIT: usize = 3;
pub(crate) const OTHER: usize = 4;
pub(crate) const LAUNCH_BOUND: usize = 5;
pub(crate) const HOST_STALL: usize = 6;
pub(crate) const IDLE_OTHER: usize = 7;

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
        self.window_end_ns.saturating_sub(self.window_start_ns)
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

/// Accounts every (process, device) with device work in `batch`. `names` maps string ids to
/// names (the chunks' string tables).
pub fn account(batch: &RecordBatch, names: &HashMap<u32, String>, opts: &AccountOptions) -> Vec<DeviceAccount> {
    analyze_with(batch, names, opts, None, &HashMap::new()).into_iter().map(|x| x.0).collect()
}

/// [`account`] with the details: steps, bins, top kernels, idle gaps, checkpoint I/O.
pub fn analyze(
    batch: &RecordBatch,
    names: &HashMap<u32, String>,
    opts: &AccountOptions,
    detail: &DetailOptions,
) -> Vec<(DeviceAccount, DeviceDetail)> {
    analyze_with(batch, names, opts, Some(detail), &HashMap::new()).into_iter().map(|x| (x.0, x.1)).collect()
}

/// Windows per process in which other ranks waited for it (from the cross-rank matching).
pub type LateWindows = HashMap<u32, Vec<(u64, u64)>>;

/// [`analyze`] (or [`account`] with `detail` None), plus for each device what its process was
/// doing in its `late` windows.
pub fn analyze_with(
    batch: &RecordBatch,
    names: &HashMap<u32, String>,
    opts: &AccountOptions,
    detail: Option<&DetailOptions>,
    late: &LateWindows,
) -> Vec<(DeviceAccount, DeviceDetail, Option<String>)> {
    let is_comm = |id: u32| is_comm_name(names, id);
    let waits = comm_waits(batch, &is_comm);
    device_keys(batch)
        .into_iter()
        .map(|(pid, device)| analyze_device(batch, names, pid, device, &waits, opts, detail, late))
        .collect()
}

/// Collective kernels are the ones whose name starts with `nccl`.
pub(crate) fn is_comm_name(names: &HashMap<u32, String>, id: u32) -> bool {
    names.get(&id).is_some_and(|n| crate::trace::classify::is_collective_name(n))
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

#[allow(clippy::too_many_arguments)]
fn analyze_device(
    batch: &RecordBatch,
    names: &HashMap<u32, String>,
    pid: u32,
    device: u32,
    waits: &HashMap<(u32, u64), u64>,
    opts: &AccountOptions,
    detail: Option<&DetailOptions>,
    late: &LateWindows,
) -> (DeviceAccount, DeviceDetail, Option<String>) {
    let is_comm = |id: u32| is_comm_name(names, id);
    let kernels: Vec<_> = batch.kernels.iter().filter(|k| k.pid == pid && k.device == device).collect();
    let memops: Vec<_> = batch.memops.iter().filter(|m| m.pid == pid && m.device == device).collect();

    // FLOP attribution per compute kernel name, from this process's PM samples of the device.
    let mut compute: Vec<KernelSpan> = kernels
        .iter()
        .filter(|k| !is_comm(k.name_id))
        .map(|k| KernelSpan { start: k.start_ns, end: k.end_ns, name: k.name_id })
        .collect();
    compute.sort_by_key(|k| (k.start, k.end, k.name));
    let samples = pm_samples(batch, pid, device);
    let (fractions, flop_source) = if samples.is_empty() {
        (HashMap::new(), FlopSource::None)
    } else {
        (useful_fraction_by_name(&compute, &samples), FlopSource::PmSampling)
    };

    let first_op = kernels.iter().map(|k| k.start_ns).chain(memops.iter().map(|m| m.start_ns)).min().unwrap_or(0);
    let last_op = kernels.iter().map(|k| k.end_ns).chain(memops.iter().map(|m| m.end_ns)).max().unwrap_or(first_op);
    let window = opts.windows.get(&pid).copied().or(opts.window).unwrap_or((first_op, last_op));
    let launchers: HashSet<u32> = batch.launches.iter().filter(|l| l.pid == pid).map(|l| l.tid).collect();

    let mut plan = DevicePlan::totals_only(pid, device, window, flop_source);
    plan.fractions = fractions;
    plan.flop_less_below = opts.flop_less_below;
    plan.has_launcher = !launchers.is_empty();
    if let Some(d) = detail {
        plan.detail = true;
        // Steps come first: the model-FLOPs source spreads each step's FLOPs over its kernels.
        let (source, steps) = super::steps::find_steps(batch, names, pid, device, &compute, &is_comm, d, window);
        plan.step_source = source;
        plan.steps = steps;
        if let (FlopSource::None, Some(f), Some(peak)) = (flop_source, d.flops_per_step, d.peak_flops) {
            if !plan.steps.is_empty() && f > 0.0 && peak > 0.0 {
                let per_step = super::steps::compute_per_step(&plan.steps, compute.iter().map(|k| (k.start, k.end)));
                plan.set_step_rates(f / peak * 1e9, &per_step);
            }
        }
        plan.set_bins(d);
        plan.late_windows = late.get(&pid).cloned().unwrap_or_default();
    }

    let mut ops = Vec::with_capacity(kernels.len() + memops.len());
    for k in &kernels {
        let wait = waits.get(&(pid, k.start_ns)).copied().unwrap_or(0);
        ops.push(plan.kernel_op(k.start_ns, k.end_ns, k.name_id, is_comm(k.name_id), wait));
    }
    ops.extend(memops.iter().map(|m| DevicePlan::copy_op(m.start_ns, m.end_ns)));
    let (blocked, reasons) = host_blocked(batch, pid, &launchers, opts.stall_policy());
    let mut sweep = DeviceSweep::new(plan);
    sweep.feed(window.0, window.1, &mut ops, &blocked, &reasons);
    let checkpoint = if detail.is_some() { checkpoint_io(batch, pid, window) } else { CheckpointIo::default() };
    sweep.finish(checkpoint)
}

pub(crate) use crate::trace::classify::is_checkpoint_syscall;

/// Checkpoint I/O of `pid` in the window, from its file I/O records.
pub(crate) fn checkpoint_io(batch: &RecordBatch, pid: u32, (w0, w1): (u64, u64)) -> CheckpointIo {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut bytes = 0u64;
    for f in batch.file_io.iter().filter(|f| f.pid == pid && is_checkpoint_syscall(f.syscall)) {
        let (s, e) = (f.start_ns.max(w0), f.end_ns.min(w1));
        if s < e {
            spans.push((s, e));
        }
        if f.start_ns < w1 && f.end_ns >= w0 && WRITE_SYSCALLS.contains(&f.syscall) {
            bytes += f.bytes;
        }
    }
    spans.sort_unstable();
    CheckpointIo { io_ns: merge(spans.into_iter()).iter().map(|s| s.1 - s.0).sum(), bytes }
}

/// The window rule's end (docs/metrics.md, "Window"): a process's window ends at the later of
/// its last device operation and the end of its launching threads' last blocking interval: an
/// NCCL call, a synchronize call, or checkpoint-family file I/O (write, fsync, truncating
/// open). Work after the last device operation (a final checkpoint written after its
/// device-to-host copy) is then inside the window, as `idle.host_stall`. Reads are left out: a
/// read after the last device operation loads data no step used. Only those records are
/// looked at because the streaming summary keeps exactly them (so both analyses agree).
pub fn extend_windows_to_blocking(
    windows: &mut HashMap<u32, (u64, u64)>,
    batch: &RecordBatch,
    is_launcher: &dyn Fn(u32, u32) -> bool,
) {
    let ends = batch
        .nccl
        .iter()
        .filter(|c| c.phase == NcclPhase::Host as u32)
        .map(|c| (c.pid, c.tid, c.end_ns))
        .chain(
            batch
                .api_calls
                .iter()
                .filter(|c| c.domain == ApiDomain::Probe as u32)
                .filter(|c| ProbedApi::from_u32(c.call_id).is_some_and(|a| a.is_sync()))
                .map(|c| (c.pid, c.tid, c.end_ns)),
        )
        .chain(batch.file_io.iter().filter(|f| is_checkpoint_syscall(f.syscall)).map(|f| (f.pid, f.tid, f.end_ns)));
    for (pid, tid, end) in ends {
        if let Some(w) = windows.get_mut(&pid) {
            if end > w.1 && is_launcher(pid, tid) {
                w.1 = end;
            }
        }
    }
}

/// One rank's kernel of a collective: (pid, start, end).
type RankKernel = (u32, u64, u64);

/// (pid, kernel start) → wait ns, from cross-rank matching of collectives.
pub(crate) fn comm_waits(batch: &RecordBatch, is_comm: &dyn Fn(u32) -> bool) -> HashMap<(u32, u64), u64> {
    let mut kernels_by_pid: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for k in batch.kernels.iter().filter(|k| is_comm(k.name_id)) {
        kernels_by_pid.entry(k.pid).or_default().push((k.start_ns, k.end_ns));
    }
    let mut calls_by_pid: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    for c in batch.nccl.iter().filter(|c| c.phase == NcclPhase::Host as u32) {
        calls_by_pid.entry(c.pid).or_default().push((c.seq, c.nranks));
    }
    // ((nranks, seq), the rank's kernel) of every collective, grouped by sorting (a map of
    // vectors allocated one vector per collective)
    let mut members: Vec<((u32, u64), RankKernel)> = Vec::new();
    for (pid, kernels) in kernels_by_pid.iter_mut() {
        kernels.sort_unstable();
        let Some(calls) = calls_by_pid.get_mut(pid) else { continue };
        calls.sort_unstable();
        members.extend(kernels.iter().zip(calls.iter()).map(|(k, c)| ((c.1, c.0), (*pid, k.0, k.1))));
    }
    members.sort_by_key(|m| m.0);
    let mut waits = HashMap::new();
    for group in members.chunk_by(|a, b| a.0 == b.0) {
        let nranks = group[0].0 .0;
        if group.len() as u32 != nranks || nranks < 2 {
            continue;
        }
        let last = group.iter().map(|m| m.1 .1).max().unwrap_or(0);
        for &(_, (pid, start, end)) in group {
            waits.insert((pid, start), last.saturating_sub(start).min(end.saturating_sub(start)));
        }
    }
    // Collectives whose communicator is unknown (an `attach` after ncclCommInitRank learns no
    // rank, size or sequence): the ranks of one collective finish their kernels together, once
    // the last rank's data has moved, so kernels of different processes that end within
    // END_MATCH_NS of each other are taken as one collective.
    let mut rest: Vec<RankKernel> = kernels_by_pid
        .iter()
        .flat_map(|(pid, ks)| ks.iter().map(move |k| (*pid, k.0, k.1)))
        .filter(|k| !waits.contains_key(&(k.0, k.1)))
        .collect();
    rest.sort_unstable_by_key(|k| (k.2, k.0));
    let mut i = 0;
    while i < rest.len() {
        let mut j = i + 1;
        while j < rest.len() && rest[j].2 - rest[i].2 <= END_MATCH_NS && !rest[i..j].iter().any(|m| m.0 == rest[j].0) {
            j += 1;
        }
        if j - i >= 2 {
            let last = rest[i..j].iter().map(|m| m.1).max().unwrap_or(0);
            for &(pid, start, end) in &rest[i..j] {
                waits.insert((pid, start), last.saturating_sub(start).min(end.saturating_sub(start)));
            }
        }
        i = j;
    }
    waits
}

/// Kernels of different processes ending within this many ns belong to one collective (when the
/// communicator's sequence numbers are unknown); real NCCL ranks finish within a few µs.
const END_MATCH_NS: u64 = 20_000;

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

pub(crate) fn pm_samples(batch: &RecordBatch, pid: u32, device: u32) -> Vec<PmSample> {
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

/// Sorted, merged intervals during which a launching thread of `pid` was blocked, and the same
/// intervals unmerged with their reasons (sorted by start).
pub(crate) fn host_blocked(
    batch: &RecordBatch,
    pid: u32,
    launchers: &HashSet<u32>,
    policy: StallPolicy,
) -> (Vec<(u64, u64)>, Vec<Reasoned>) {
    let mine = |p: u32, t: u32| p == pid && launchers.contains(&t);
    let mut v: Vec<Reasoned> = Vec::new();
    let counts = |reason: u32| policy.counts(reason);
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
    (merge(v.iter().map(|x| (x.0, x.1))), v)
}

/// Merges intervals sorted by start into sorted, disjoint ones.
pub(crate) fn merge(sorted: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in sorted {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{KernelExec, Record};

    fn kernel(pid: u32, start: u64, end: u64) -> Record {
        KernelExec { start_ns: start, end_ns: end, name_id: 1, pid, ..Default::default() }.into()
    }

    /// No NCCL host records (an attach after the communicators were made): kernels of two
    /// processes that end together are one collective, the early rank waits for the late one.
    #[test]
    fn collectives_without_sequence_numbers_match_by_their_end() {
        let mut batch = RecordBatch::default();
        for r in [
            kernel(10, 1_000, 9_000),   // rank A arrives first
            kernel(20, 4_000, 9_005),   // rank B 3 µs later; both end together
            kernel(10, 20_000, 30_000), // next collective: A late this time
            kernel(20, 18_000, 30_002),
            kernel(10, 50_000, 60_000), // a kernel with no partner ending near it
        ] {
            batch.push(r);
        }
        let waits = comm_waits(&batch, &|_| true);
        assert_eq!(waits.get(&(10, 1_000)), Some(&3_000));
        assert_eq!(waits.get(&(20, 4_000)), Some(&0));
        assert_eq!(waits.get(&(10, 20_000)), Some(&0));
        assert_eq!(waits.get(&(20, 18_000)), Some(&2_000));
        assert_eq!(waits.get(&(10, 50_000)), None, "no partner: all transfer");
        assert_eq!(waits.len(), 4);
    }
}
