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
use crate::trace::{ApiDomain, Metric, NcclPhase, ProbedApi, RecordBatch, StallReason};

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
    let mut keys: Vec<(u32, u32)> = batch
        .kernels
        .iter()
        .map(|k| (k.pid, k.device))
        .chain(batch.memops.iter().map(|m| (m.pid, m.device)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    keys.sort_unstable();
    keys.into_iter().map(|(pid, device)| account_device(batch, pid, device, &is_comm, &waits, opts)).collect()
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

fn account_device(
    batch: &RecordBatch,
    pid: u32,
    device: u32,
    is_comm: &dyn Fn(u32) -> bool,
    waits: &HashMap<(u32, u64), u64>,
    opts: &AccountOptions,
) -> DeviceAccount {
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
    let (fractions, flop_source) = if samples.is_empty() {
        (HashMap::new(), FlopSource::None)
    } else {
        (useful_fraction_by_name(&compute, &samples), FlopSource::PmSampling)
    };

    let mut ops: Vec<Op> = Vec::with_capacity(kernels.len() + memops.len());
    for k in &kernels {
        let (class, rate, transfer_from) = if is_comm(k.name_id) {
            let wait = waits.get(&(pid, k.start_ns)).copied().unwrap_or(0);
            (Class::Comm, 0.0, k.start_ns + wait)
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

    let (w0, w1) = opts.windows.get(&pid).copied().or(opts.window).unwrap_or_else(|| {
        let lo = ops.iter().map(|o| o.start).min().unwrap_or(0);
        let hi = ops.iter().map(|o| o.end).max().unwrap_or(lo);
        (lo, hi)
    });
    let blocked = host_blocked(batch, pid, opts.preemption_is_stall);
    let has_launcher = batch.launches.iter().any(|l| l.pid == pid);

    // Sweep: boundaries of every op (and of each collective's wait phase).
    let mut cuts: Vec<u64> = vec![w0, w1];
    for o in &ops {
        cuts.extend([o.start.clamp(w0, w1), o.end.clamp(w0, w1)]);
        if o.class == Class::Comm {
            cuts.push(o.transfer_from.clamp(w0, w1));
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    ops.sort_by_key(|o| o.start);
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
        let live: Vec<&Op> = active.iter().map(|&i| &ops[i]).filter(|o| o.start <= a && o.end >= b).collect();
        let dt = (b - a) as f64;
        if live.is_empty() {
            if !has_launcher {
                acc[IDLE_OTHER] += dt;
                continue;
            }
            let stalled = overlap(&blocked, a, b) as f64;
            acc[HOST_STALL] += stalled;
            acc[LAUNCH_BOUND] += dt - stalled;
            continue;
        }
        busy += b - a;
        let best = live.iter().map(|o| o.class).min().unwrap_or(Class::Other);
        match best {
            Class::Compute => {
                let rate: f64 = live.iter().filter(|o| o.class == Class::Compute).map(|o| o.rate).sum::<f64>().min(1.0);
                acc[USEFUL] += rate * dt;
                acc[INEFFICIENT] += (1.0 - rate) * dt;
            }
            Class::Comm => {
                let transferring = live.iter().any(|o| o.class == Class::Comm && a >= o.transfer_from);
                acc[if transferring { TRANSFER } else { WAIT }] += dt;
            }
            Class::Other => acc[OTHER] += dt,
        }
    }
    DeviceAccount {
        pid,
        device,
        window_start_ns: w0,
        window_end_ns: w1,
        busy_ns: busy,
        categories: Categories { ns: round_to_total(acc, w1 - w0) },
        flop_source,
    }
}

/// Rounds fractional nanoseconds so the categories still sum exactly to the window.
fn round_to_total(acc: [f64; 8], total: u64) -> [u64; 8] {
    let mut ns = acc.map(|v| v.max(0.0).floor() as u64);
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

/// Sorted, merged intervals during which a launching thread of `pid` was blocked.
fn host_blocked(batch: &RecordBatch, pid: u32, preemption_is_stall: bool) -> Vec<(u64, u64)> {
    let launchers: HashSet<u32> = batch.launches.iter().filter(|l| l.pid == pid).map(|l| l.tid).collect();
    let mine = |p: u32, t: u32| p == pid && launchers.contains(&t);
    let mut v: Vec<(u64, u64)> = Vec::new();
    let counts = |reason: u32| {
        preemption_is_stall || (reason != StallReason::Preempted as u32 && reason != StallReason::RunQueue as u32)
    };
    v.extend(batch.stalls.iter().filter(|s| mine(s.pid, s.tid) && counts(s.reason)).map(|s| (s.start_ns, s.end_ns)));
    v.extend(batch.file_io.iter().filter(|f| mine(f.pid, f.tid)).map(|f| (f.start_ns, f.end_ns)));
    v.extend(
        batch
            .nccl
            .iter()
            .filter(|c| c.phase == NcclPhase::Host as u32 && mine(c.pid, c.tid))
            .map(|c| (c.start_ns, c.end_ns)),
    );
    v.extend(
        batch
            .api_calls
            .iter()
            .filter(|c| c.domain == ApiDomain::Probe as u32 && mine(c.pid, c.tid))
            .filter(|c| ProbedApi::from_u32(c.call_id).is_some_and(|a| a.is_sync()))
            .map(|c| (c.start_ns, c.end_ns)),
    );
    v.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Length of [a, b) covered by sorted, disjoint `intervals`.
fn overlap(intervals: &[(u64, u64)], a: u64, b: u64) -> u64 {
    let i = intervals.partition_point(|iv| iv.1 <= a);
    intervals[i..].iter().take_while(|iv| iv.0 < b).map(|iv| iv.1.min(b).saturating_sub(iv.0.max(a))).sum()
}
