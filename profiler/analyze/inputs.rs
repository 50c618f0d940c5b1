//! Record selection: what the accounting takes from a trace's records besides the device
//! operations themselves: which kernels are collectives and how long each rank waited in them,
//! the launching threads' blocked intervals (with their reasons), PM samples, checkpoint I/O and
//! the window rule's end. Used by the in-memory ([`super::account`]) and the streaming
//! ([`super::stream`]) paths alike.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::flops::PmSample;
use super::model::{CheckpointIo, StallPolicy, Window};
use crate::trace::{ApiDomain, Metric, NcclPhase, ProbedApi, RecordBatch, StallReason, WRITE_SYSCALLS};

/// A blocked interval of a launching thread and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reasoned {
    pub start_ns: u64,
    pub end_ns: u64,
    /// What blocked it ([`stall_reason_label`], "file I/O", "NCCL call", "sync call").
    pub reason: &'static str,
}

impl Reasoned {
    pub fn new(start_ns: u64, end_ns: u64, reason: &'static str) -> Self {
        Reasoned { start_ns, end_ns, reason }
    }
}

/// Collective kernels are the ones whose name starts with `nccl`.
pub(crate) fn is_comm_name(names: &HashMap<u32, String>, id: u32) -> bool {
    names.get(&id).is_some_and(|n| crate::trace::classify::is_collective_name(n))
}

pub(crate) use crate::trace::classify::is_checkpoint_syscall;

/// Checkpoint I/O of `pid` in the window, from its file I/O records.
pub(crate) fn checkpoint_io(batch: &RecordBatch, pid: u32, window: Window) -> CheckpointIo {
    let Window { start_ns: w0, end_ns: w1 } = window;
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
    windows: &mut HashMap<u32, Window>,
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
            if end > w.end_ns && is_launcher(pid, tid) {
                w.end_ns = end;
            }
        }
    }
}

/// One rank's kernel of a collective.
#[derive(Debug, Clone, Copy)]
struct RankKernel {
    pid: u32,
    start_ns: u64,
    end_ns: u64,
}

impl RankKernel {
    /// Its wait: from its start until the last rank's kernel started (`last_start`), at most
    /// its length.
    fn wait(&self, last_start: u64) -> u64 {
        last_start.saturating_sub(self.start_ns).min(self.end_ns.saturating_sub(self.start_ns))
    }
}

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
        members.extend(
            kernels
                .iter()
                .zip(calls.iter())
                .map(|(k, c)| ((c.1, c.0), RankKernel { pid: *pid, start_ns: k.0, end_ns: k.1 })),
        );
    }
    members.sort_by_key(|m| m.0);
    let mut waits = HashMap::new();
    for group in members.chunk_by(|a, b| a.0 == b.0) {
        let nranks = group[0].0 .0;
        if group.len() as u32 != nranks || nranks < 2 {
            continue;
        }
        let last = group.iter().map(|m| m.1.start_ns).max().unwrap_or(0);
        for (_, k) in group {
            waits.insert((k.pid, k.start_ns), k.wait(last));
        }
    }
    // Collectives whose communicator is unknown (an `attach` after ncclCommInitRank learns no
    // rank, size or sequence): the ranks of one collective finish their kernels together, once
    // the last rank's data has moved, so kernels of different processes that end within
    // END_MATCH_NS of each other are taken as one collective.
    let mut rest: Vec<RankKernel> = kernels_by_pid
        .iter()
        .flat_map(|(pid, ks)| ks.iter().map(move |k| RankKernel { pid: *pid, start_ns: k.0, end_ns: k.1 }))
        .filter(|k| !waits.contains_key(&(k.pid, k.start_ns)))
        .collect();
    rest.sort_unstable_by_key(|k| (k.end_ns, k.pid));
    for group in groups_by_end(&rest, |k| k.pid, |k| k.end_ns as i128) {
        let group = &rest[group];
        let last = group.iter().map(|m| m.start_ns).max().unwrap_or(0);
        for k in group {
            waits.insert((k.pid, k.start_ns), k.wait(last));
        }
    }
    waits
}

/// The collectives among kernels of unknown communicator (an `attach` after
/// ncclCommInitRank): `items`, sorted by (end, member), are cut into runs of kernels of
/// different members (processes) that end within [`END_MATCH_NS`] of the run's first; the runs
/// of two or more are returned. The one rule both the per-device `comm.wait`
/// ([`comm_waits`]) and the cross-rank view (`collectives::cross_rank`: skew, straggler, the
/// collectives table) match such kernels by.
pub(crate) fn groups_by_end<T>(
    items: &[T],
    member: impl Fn(&T) -> u32,
    end: impl Fn(&T) -> i128,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let mut j = i + 1;
        while j < items.len()
            && end(&items[j]) - end(&items[i]) <= END_MATCH_NS as i128
            && !items[i..j].iter().any(|m| member(m) == member(&items[j]))
        {
            j += 1;
        }
        if j - i >= 2 {
            out.push(i..j);
        }
        i = j;
    }
    out
}

/// Kernels of different processes ending within this many ns belong to one collective (when the
/// communicator's sequence numbers are unknown); real NCCL ranks finish within a few µs.
const END_MATCH_NS: u64 = 20_000;

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
            .map(|s| Reasoned::new(s.start_ns, s.end_ns, stall_reason_label(s.reason))),
    );
    v.extend(
        batch.file_io.iter().filter(|f| mine(f.pid, f.tid)).map(|f| Reasoned::new(f.start_ns, f.end_ns, "file I/O")),
    );
    v.extend(
        batch
            .nccl
            .iter()
            .filter(|c| c.phase == NcclPhase::Host as u32 && mine(c.pid, c.tid))
            .map(|c| Reasoned::new(c.start_ns, c.end_ns, "NCCL call")),
    );
    v.extend(
        batch
            .api_calls
            .iter()
            .filter(|c| c.domain == ApiDomain::Probe as u32 && mine(c.pid, c.tid))
            .filter(|c| ProbedApi::from_u32(c.call_id).is_some_and(|a| a.is_sync()))
            .map(|c| Reasoned::new(c.start_ns, c.end_ns, "sync call")),
    );
    v.sort_unstable_by_key(|x| (x.start_ns, x.end_ns));
    (merge(v.iter().map(|x| (x.start_ns, x.end_ns))), v)
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
