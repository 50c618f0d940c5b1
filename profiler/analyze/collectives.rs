//! Collectives across ranks and files. Each rank's NCCL host calls (eBPF) are paired with its
//! collective kernels (CUPTI, in order; or the NCCL device records when a trace has them) into
//! instances; instances of different ranks with the same communicator (the k-th communicator a
//! process used), communicator size and sequence number are one collective. A rank's arrival
//! is its kernel's start (its host call when no kernel was seen), mapped onto one clock.
//!
//! From the matched instances: per (op, size) the time, transfer and wait (wait = time until the
//! last rank arrived) and bus bandwidth with NCCL's busBw factors; per rank the arrival skew
//! (own arrival − earliest); the straggler (largest mean skew) and what it was doing while the
//! others waited for it.

use std::collections::{BTreeMap, HashMap};

use super::model::Window;
use super::nccl_algo::{algo_name, AlgoCode};
use super::sweep::FastMap;
use crate::trace::{ClockDomain, CollOp, NcclPhase, RecordBatch};

/// One rank's part of one collective.
#[derive(Debug, Clone, PartialEq)]
pub struct CollInstance {
    /// The process.
    pub pid: u32,
    /// NCCL rank in the communicator.
    pub rank: u32,
    /// Ranks in the communicator.
    pub nranks: u32,
    /// Which communicator of the process (0 = the first it used).
    pub comm_index: u32,
    /// NCCL's sequence number of the collective in its communicator.
    pub seq: u64,
    /// The op, a [`CollOp`] value.
    pub op: u32,
    /// Payload in NCCL-tests terms (all-gather / reduce-scatter: the whole gathered buffer).
    pub size_bytes: u64,
    /// Kernel start, else host call start (the process's own clock).
    pub arrival_ns: u64,
    /// The collective kernel's `[start, end)`, ns on the process's own clock; None when no kernel
    /// was paired with the call.
    pub kernel: Option<(u64, u64)>,
    /// NCCL's algorithm and protocol (0: not recorded): [`super::nccl_algo`].
    pub algo: AlgoCode,
}

/// The collective instances of every process in `batch`.
pub fn instances(batch: &RecordBatch, names: &HashMap<u32, String>) -> Vec<CollInstance> {
    // whether a name id is a collective's, remembered per id
    let mut comm_of: FastMap<u32, bool> = FastMap::default();
    let mut is_comm = |id: u32| *comm_of.entry(id).or_insert_with(|| super::inputs::is_comm_name(names, id));
    let mut calls: BTreeMap<u32, Vec<&crate::trace::NcclColl>> = BTreeMap::new();
    // (sized at once: growing a map of 10^5 entries rehashes it many times)
    let host = batch.nccl.iter().filter(|c| c.phase == NcclPhase::Host as u32).count();
    let mut device: FastMap<(u32, u64, u64), (u64, u64)> =
        FastMap::with_capacity_and_hasher(batch.nccl.len() - host, Default::default());
    for c in &batch.nccl {
        if c.phase == NcclPhase::Host as u32 {
            calls.entry(c.pid).or_default().push(c);
        } else {
            device.insert((c.pid, c.comm, c.seq), (c.start_ns, c.end_ns));
        }
    }
    let mut kernels: FastMap<u32, Vec<(u64, u64)>> = FastMap::default();
    for k in batch.kernels.iter().filter(|k| is_comm(k.name_id)) {
        kernels.entry(k.pid).or_default().push((k.start_ns, k.end_ns));
    }
    let algos = super::nccl_algo::algorithms(batch, names);
    // A process's rank as NCCL's profiler plugin saw it, for calls whose communicator the host
    // probes did not see created (an attach after ncclCommInitRank).
    let mut plugin_rank: FastMap<u32, u32> = FastMap::default();
    for a in batch.nccl_algos.iter().filter(|a| a.rank != UNKNOWN) {
        plugin_rank.entry(a.pid).or_insert(a.rank);
    }
    let mut out = Vec::with_capacity(host);
    for (pid, mut calls) in calls {
        calls.sort_by_key(|c| (c.start_ns, c.seq));
        let mut ks = kernels.remove(&pid).unwrap_or_default();
        ks.sort_unstable();
        let mut comms: Vec<u64> = Vec::new();
        // Calls of unknown communicator come from an attach, whose rings were on before the
        // host probes: kernels of calls the probes did not see come first, so a call takes the
        // first free kernel that started after it, not the one of its index.
        let by_time = calls.iter().all(|c| c.nranks == UNKNOWN);
        let mut next_kernel = 0usize;
        for (i, c) in calls.iter().enumerate() {
            let comm_index = match comms.iter().position(|&x| x == c.comm) {
                Some(i) => i,
                None => {
                    comms.push(c.comm);
                    comms.len() - 1
                }
            } as u32;
            let kernel = device.get(&(pid, c.comm, c.seq)).copied().or_else(|| {
                if by_time {
                    next_kernel += ks[next_kernel..].partition_point(|k| k.0 < c.start_ns);
                    let k = ks.get(next_kernel).copied();
                    next_kernel = (next_kernel + 1).min(ks.len());
                    k
                } else {
                    ks.get(i).copied()
                }
            });
            let size_bytes = match CollOp::from_u32(c.op) {
                Some(CollOp::AllGather | CollOp::ReduceScatter) => c.bytes.saturating_mul(c.nranks.max(1) as u64),
                _ => c.bytes,
            };
            out.push(CollInstance {
                pid,
                rank: if c.rank == UNKNOWN { plugin_rank.get(&pid).copied().unwrap_or(UNKNOWN) } else { c.rank },
                nranks: c.nranks,
                comm_index,
                seq: c.seq,
                op: c.op,
                size_bytes,
                arrival_ns: kernel.map_or(c.start_ns, |k| k.0),
                kernel,
                algo: algos.get(&(pid, c.start_ns)).copied().unwrap_or(0),
            });
        }
    }
    out
}

/// A rank or rank count the host probes did not learn (the call's communicator was created
/// before an attach).
pub const UNKNOWN: u32 = u32::MAX;

/// NCCL's bus-bandwidth factor for an op on `n` ranks.
pub fn bus_factor(op: u32, n: u32) -> f64 {
    let n = n.max(1) as f64;
    match CollOp::from_u32(op) {
        Some(CollOp::AllReduce) => 2.0 * (n - 1.0) / n,
        Some(CollOp::AllGather | CollOp::ReduceScatter) => (n - 1.0) / n,
        _ => 1.0,
    }
}

/// Size bucket of a payload: powers of 4 from 1 KiB ("<1KiB", "1KiB-4KiB", …, "1GiB-4GiB", ">=4GiB").
pub fn size_bucket(bytes: u64) -> String {
    bucket_name(bucket_index(bytes))
}

/// The bucket of [`size_bucket`] as a number: 0 below 1 KiB, 64 from 4 GiB, else the
/// largest even power of 2 ≤ bytes (10 to 30).
fn bucket_index(bytes: u64) -> u32 {
    if bytes < 1024 {
        0
    } else if bytes >= 4 << 30 {
        64
    } else {
        (63 - bytes.leading_zeros()) / 2 * 2
    }
}

fn bucket_name(index: u32) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    match index {
        0 => "<1KiB".into(),
        64 => ">=4GiB".into(),
        lo_exp => {
            let name = |e: u32| format!("{}{}", 1u64 << (e % 10), UNITS[(e / 10 - 1) as usize]);
            format!("{}-{}", name(lo_exp), name(lo_exp + 2))
        }
    }
}

/// The offset from a trace's CLOCK_MONOTONIC to CLOCK_REALTIME, when it recorded one.
pub fn realtime_offset(batch: &RecordBatch) -> Option<i128> {
    batch
        .clock_syncs
        .iter()
        .find(|c| c.domain == ClockDomain::Realtime as u32)
        .map(|c| c.other_ns as i128 - c.monotonic_ns as i128)
}

/// One rank: the instances of one process of one file.
#[derive(Debug, Clone)]
pub struct RankInput {
    /// The trace file's path.
    pub file: String,
    /// The process.
    pub pid: u32,
    /// Its collective instances, in call order.
    pub instances: Vec<CollInstance>,
}

/// How one trace's clock maps onto the common one: `t + offset_ns + drift × (t − anchor_ns)`
/// (a constant offset, and a rate difference for long recordings across hosts).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClockMap {
    /// Added to its times at `anchor_ns`, ns.
    pub offset_ns: i128,
    /// Rate difference (20 ppm = 20e-6): the common clock gains this per ns of its own.
    pub drift: f64,
    /// Own time at which `offset_ns` holds, ns.
    pub anchor_ns: u64,
}

impl ClockMap {
    /// A constant offset.
    pub fn offset(offset_ns: i128) -> ClockMap {
        ClockMap { offset_ns, ..ClockMap::default() }
    }

    /// `t` on the common clock, ns.
    pub fn apply(&self, t: u64) -> i128 {
        let drift =
            if self.drift == 0.0 { 0 } else { (self.drift * (t as f64 - self.anchor_ns as f64)).round() as i128 };
        t as i128 + self.offset_ns + drift
    }
}

/// A rank for the matching, with the map that puts its clock on the common one.
#[derive(Debug, Clone, Copy)]
pub struct RankView<'a> {
    /// The rank.
    pub input: &'a RankInput,
    /// Puts its times on the common clock.
    pub clock: ClockMap,
}

/// Totals of one (op, size bucket).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollStat {
    /// The op's name ([`CollOp::name_of`]).
    pub op: String,
    /// The payload's [`size_bucket`].
    pub size_bucket: String,
    /// Rank-instances (each rank's kernel of a collective counts once).
    pub count: u64,
    /// Payload bytes, summed over the rank-instances.
    pub bytes: u64,
    /// Kernel time, ns, summed over the rank-instances.
    pub time_ns: u64,
    /// The part of `time_ns` after the last rank arrived, ns.
    pub transfer_ns: u64,
    /// The part of `time_ns` before the last rank arrived, ns.
    pub wait_ns: u64,
    /// Σ bytes × busBw factor ÷ Σ transfer time, GB/s.
    pub bus_bandwidth_gbps: f64,
    /// NCCL's algorithm/protocol ("RING/SIMPLE"), when the trace recorded it (NCCL's profiler
    /// plugin API); several: the most used first, with their shares ("RING/SIMPLE 75%, TREE/LL 25%").
    pub algorithm: Option<String>,
    /// bytes × factor, for the bandwidth
    bus_bytes: f64,
    /// instances per algorithm code
    algos: Vec<(AlgoCode, u64)>,
}

/// Arrival skew of one rank over the matched collectives.
#[derive(Debug, Clone, PartialEq)]
pub struct RankSkew {
    /// NCCL rank (the pid when the process has no instance).
    pub rank: u32,
    /// The process.
    pub pid: u32,
    /// The trace file's path.
    pub file: String,
    /// Collectives of this rank matched with every other rank of them.
    pub matched: u64,
    /// Mean of its arrival − the earliest arrival over the matched collectives, ns.
    pub mean_arrival_skew_ns: f64,
    /// Largest such arrival skew, ns.
    pub max_arrival_skew_ns: u64,
    /// Collectives where this rank arrived last (and later than another rank).
    pub late_count: u64,
    /// The windows (own clock) in which the others waited for it: [earliest arrival, own arrival).
    pub late_windows: Vec<Window>,
}

/// Everything cross-rank.
#[derive(Debug, Clone, Default)]
pub struct CrossRank {
    /// Totals per (op, size bucket), most time first.
    pub collectives: Vec<CollStat>,
    /// One per rank, sorted by rank, file, pid.
    pub skew: Vec<RankSkew>,
    /// Per file, (pid, kernel start) → wait of the collectives whose ranks are in several
    /// files (a file alone cannot match them) or that were matched by their end (unknown
    /// communicator): the accounting's `comm.wait` for them, over the file's own matching, so
    /// that the per-device split, the skew and the table are one matching.
    pub spanning_waits: HashMap<String, HashMap<(u32, u64), u64>>,
    /// Index into `skew` of the straggler.
    pub straggler: Option<usize>,
    /// Per rank view (in the order given to [`cross_rank`]) and instance: how it was matched.
    /// What `export --format parquet` writes per collective instance, from this one matching.
    pub instances: Vec<Vec<InstanceMatch>>,
}

/// How one collective instance came out of the matching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceMatch {
    /// Matched with one instance of every other rank of its collective.
    pub matched: bool,
    /// Its wait for the last rank (at most its kernel's length), when matched and its kernel
    /// was recorded: the `comm.wait` the report books for it.
    pub wait_ns: Option<u64>,
}

/// Keeps at most this many late windows per rank for the straggler's activity.
const MAX_LATE_WINDOWS: usize = 100_000;

/// Matches the instances of all ranks; see the module docs.
pub fn cross_rank(views: &[RankView<'_>]) -> CrossRank {
    let ranks: Vec<&RankInput> = views.iter().map(|v| v.input).collect();
    // (comm index, nranks, seq, rank input, instance index), sorted: each collective's
    // instances are a run, in rank-input then instance order (one rank's instances come
    // sorted by their sequence numbers already, so the sort is mostly a check). Runs are
    // taken in key order: deterministic, whatever the hash seed.
    let mut members_of: Vec<(u32, u32, u64, u32, u32)> =
        Vec::with_capacity(ranks.iter().map(|r| r.instances.len()).sum());
    for (r, input) in ranks.iter().enumerate() {
        for (i, inst) in input.instances.iter().enumerate() {
            members_of.push((inst.comm_index, inst.nranks, inst.seq, r as u32, i as u32));
        }
    }
    // Stable (run-detecting) sort: each rank's instances are one run already when it uses one
    // communicator, so two ranks are one merge; the keys are distinct (rank input, index), so
    // the order is the unstable sort's.
    members_of.sort();
    // Where each rank's instances start in `wait` (one slot per instance).
    let mut first_slot = Vec::with_capacity(ranks.len() + 1);
    first_slot.push(0usize);
    for input in &ranks {
        first_slot.push(first_slot.last().copied().unwrap_or(0) + input.instances.len());
    }
    let mut wait: Vec<Option<u64>> = vec![None; first_slot.last().copied().unwrap_or(0)];
    let mut skew: Vec<RankSkew> = ranks
        .iter()
        .map(|r| RankSkew {
            rank: r.instances.iter().map(|i| i.rank).find(|&x| x != UNKNOWN).unwrap_or(r.pid),
            pid: r.pid,
            file: r.file.clone(),
            matched: 0,
            mean_arrival_skew_ns: 0.0,
            max_arrival_skew_ns: 0,
            late_count: 0,
            late_windows: Vec::new(),
        })
        .collect();
    let mut book = Booking {
        ranks: &ranks,
        views,
        first_slot: &first_slot,
        wait: &mut wait,
        group_size: vec![0; first_slot.last().copied().unwrap_or(0)],
        matched: vec![false; first_slot.last().copied().unwrap_or(0)],
        skew: &mut skew,
        skew_sum: vec![0f64; ranks.len()],
        spanning_waits: HashMap::new(),
    };
    let mut distinct: Vec<u32> = Vec::new();
    let mut members: Vec<(usize, usize)> = Vec::new();
    for run in members_of.chunk_by(|x, y| (x.0, x.1, x.2) == (y.0, y.1, y.2)) {
        let nranks = run[0].1;
        if nranks < 2 || run.len() != nranks as usize {
            continue;
        }
        members.clear();
        members.extend(run.iter().map(|m| (m.3 as usize, m.4 as usize)));
        distinct.clear();
        distinct.extend(members.iter().map(|&(r, i)| ranks[r].instances[i].rank));
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != members.len() {
            continue;
        }
        book.group(&members, false);
    }
    // Collectives of unknown communicator (an attach after ncclCommInitRank: no rank count, no
    // sequence numbers): matched by their kernels' common end on the common clock, by the rule
    // the per-device comm.wait uses too (inputs::groups_by_end).
    let mut by_end: Vec<(i128, u32, usize, i128)> = Vec::new();
    for (r, input) in ranks.iter().enumerate() {
        for (i, inst) in input.instances.iter().enumerate() {
            if let (UNKNOWN, Some((ks, ke))) = (inst.nranks, inst.kernel) {
                let c = views[r].clock;
                by_end.push((c.apply(ke), r as u32, i, c.apply(ks)));
            }
        }
    }
    by_end.sort_unstable();
    for group in super::inputs::groups_by_end(&by_end, |m| m.1, |m| m.0) {
        members.clear();
        members.extend(by_end[group].iter().map(|m| (m.1 as usize, m.2)));
        book.group(&members, true);
    }
    let Booking { skew_sum, spanning_waits, group_size, matched, .. } = book;
    // An unmatched collective of unknown communicator: taken to span every rank of unknown
    // communicator (its partners' kernels were not recorded).
    let unknown_ranks = ranks.iter().filter(|r| r.instances.iter().any(|i| i.nranks == UNKNOWN)).count().max(1) as u32;
    for (rs, sum) in skew.iter_mut().zip(&skew_sum) {
        rs.mean_arrival_skew_ns = if rs.matched > 0 { sum / rs.matched as f64 } else { 0.0 };
        rs.late_windows.sort_unstable();
    }
    skew.sort_by(|a, b| a.rank.cmp(&b.rank).then(a.file.cmp(&b.file)).then(a.pid.cmp(&b.pid)));
    let straggler = (skew.iter().filter(|s| s.matched > 0).count() >= 2)
        .then(|| {
            (0..skew.len())
                .filter(|&i| skew[i].matched > 0 && skew[i].mean_arrival_skew_ns > 0.0)
                .max_by(|&a, &b| skew[a].mean_arrival_skew_ns.total_cmp(&skew[b].mean_arrival_skew_ns))
        })
        .flatten();

    // Totals per (op, size bucket): accumulated per (op id, bucket index), each in instance
    // order as before (the names are a function of those: op ids and buckets map one to one
    // onto op names and bucket names), then named once.
    let mut slot_of: FastMap<(u32, u32), usize> = FastMap::default();
    let mut acc: Vec<CollStat> = Vec::new();
    let mut last: Option<((u32, u32), usize)> = None;
    for (r, input) in ranks.iter().enumerate() {
        for (i, inst) in input.instances.iter().enumerate() {
            let Some((ks, ke)) = inst.kernel else { continue };
            let key = (inst.op, bucket_index(inst.size_bytes));
            let at = match last {
                Some((k, at)) if k == key => at,
                _ => {
                    let at = *slot_of.entry(key).or_insert_with(|| {
                        acc.push(CollStat::default());
                        acc.len() - 1
                    });
                    last = Some((key, at));
                    at
                }
            };
            let st = &mut acc[at];
            let time = ke.saturating_sub(ks);
            let w = wait[first_slot[r] + i].unwrap_or(0).min(time);
            st.count += 1;
            st.bytes += inst.size_bytes;
            st.time_ns += time;
            st.wait_ns += w;
            st.transfer_ns += time - w;
            let nranks = match group_size[first_slot[r] + i] {
                0 if inst.nranks == UNKNOWN => unknown_ranks,
                0 => inst.nranks,
                n => n,
            };
            st.bus_bytes += inst.size_bytes as f64 * bus_factor(inst.op, nranks);
            if inst.algo != 0 {
                match st.algos.iter_mut().find(|a| a.0 == inst.algo) {
                    Some(a) => a.1 += 1,
                    None => st.algos.push((inst.algo, 1)),
                }
            }
        }
    }
    let mut stats: BTreeMap<(String, String), CollStat> = BTreeMap::new();
    for ((op, bucket), at) in slot_of {
        let st = CollStat { op: CollOp::name_of(op), size_bucket: bucket_name(bucket), ..std::mem::take(&mut acc[at]) };
        stats.insert((st.op.clone(), st.size_bucket.clone()), st);
    }
    let mut collectives: Vec<CollStat> = stats
        .into_values()
        .map(|mut s| {
            s.bus_bandwidth_gbps = if s.transfer_ns > 0 { s.bus_bytes / s.transfer_ns as f64 } else { 0.0 };
            s.algorithm = algorithm_label(&mut s.algos);
            s
        })
        .collect();
    collectives.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then(a.op.cmp(&b.op)));
    let instances = (0..ranks.len())
        .map(|r| {
            (first_slot[r]..first_slot[r + 1])
                .map(|slot| InstanceMatch { matched: matched[slot], wait_ns: wait[slot] })
                .collect()
        })
        .collect();
    CrossRank { collectives, skew, spanning_waits, straggler, instances }
}

/// The bookkeeping of [`cross_rank`]: each matched collective's waits, skews and late windows.
struct Booking<'r, 'a> {
    ranks: &'r [&'a RankInput],
    views: &'r [RankView<'a>],
    first_slot: &'r [usize],
    /// Per instance slot: its wait, when matched.
    wait: &'r mut [Option<u64>],
    /// Per instance slot: the ranks of its collective when matched by end (0: its own `nranks`).
    group_size: Vec<u32>,
    /// Per instance slot: matched.
    matched: Vec<bool>,
    skew: &'r mut [RankSkew],
    skew_sum: Vec<f64>,
    spanning_waits: HashMap<String, HashMap<(u32, u64), u64>>,
}

impl Booking<'_, '_> {
    /// Books one collective: `members` are (rank input, instance index), one per rank.
    fn group(&mut self, members: &[(usize, usize)], by_end: bool) {
        let (ranks, views) = (self.ranks, self.views);
        let at = |&(r, i): &(usize, usize)| views[r].clock.apply(ranks[r].instances[i].arrival_ns);
        let first = members.iter().map(at).min().unwrap_or(0);
        let last = members.iter().map(at).max().unwrap_or(0);
        let spanning = by_end || members.iter().any(|m| ranks[m.0].file != ranks[members[0].0].file);
        for m in members {
            let inst = &ranks[m.0].instances[m.1];
            let own = at(m);
            let s = (own - first) as u64;
            let slot = self.first_slot[m.0] + m.1;
            self.matched[slot] = true;
            if inst.nranks == UNKNOWN {
                self.group_size[slot] = members.len() as u32;
            }
            if let Some((ks, ke)) = inst.kernel {
                let w = ((last - own) as u64).min(ke.saturating_sub(ks));
                self.wait[slot] = Some(w);
                if spanning {
                    self.spanning_waits.entry(ranks[m.0].file.clone()).or_default().insert((inst.pid, ks), w);
                }
            }
            let rs = &mut self.skew[m.0];
            rs.matched += 1;
            self.skew_sum[m.0] += s as f64;
            rs.max_arrival_skew_ns = rs.max_arrival_skew_ns.max(s);
            if own == last && last > first {
                rs.late_count += 1;
                if rs.late_windows.len() < MAX_LATE_WINDOWS {
                    rs.late_windows.push(Window::new(inst.arrival_ns.saturating_sub(s), inst.arrival_ns));
                }
            }
        }
    }
}

/// "RING/SIMPLE", or the algorithms by use with their shares of the recorded instances.
fn algorithm_label(algos: &mut [(AlgoCode, u64)]) -> Option<String> {
    algos.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: u64 = algos.iter().map(|a| a.1).sum();
    match algos {
        [] => None,
        [(one, _)] => algo_name(*one),
        many => Some(
            many.iter()
                .filter_map(|&(c, n)| {
                    algo_name(c).map(|name| format!("{name} {:.0}%", n as f64 * 100.0 / total as f64))
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::nccl_algo::algo_code;
    use super::*;

    #[test]
    fn algorithm_labels() {
        let (ring, tree) = (algo_code("RING", "SIMPLE"), algo_code("TREE", "LL"));
        assert_eq!(algorithm_label(&mut []), None);
        assert_eq!(algorithm_label(&mut [(ring, 5)]).as_deref(), Some("RING/SIMPLE"));
        assert_eq!(algorithm_label(&mut [(tree, 1), (ring, 3)]).as_deref(), Some("RING/SIMPLE 75%, TREE/LL 25%"));
    }

    /// Instances of unknown communicator (an attach): matched by their kernels' common end
    /// across files and clocks; the early rank waits for the late one, the late one is the
    /// straggler, and busBw uses the matched collective's 2 ranks (factor 1), not `nranks`.
    #[test]
    fn unknown_communicators_match_by_their_end() {
        let inst = |pid: u32, start: u64, end: u64| CollInstance {
            pid,
            rank: UNKNOWN,
            nranks: UNKNOWN,
            comm_index: 0,
            seq: 0,
            op: CollOp::AllReduce as u32,
            size_bytes: 1_000_000,
            arrival_ns: start,
            kernel: Some((start, end)),
            algo: 0,
        };
        // rank B's clock runs 1 ms ahead: offset −1 ms puts it on A's
        let a = RankInput {
            file: "a".into(),
            pid: 10,
            instances: vec![inst(10, 1_000, 11_000), inst(10, 50_000, 61_000), inst(10, 90_000, 95_000)],
        };
        let b = RankInput {
            file: "b".into(),
            pid: 20,
            instances: vec![inst(20, 1_005_000, 1_011_005), inst(20, 1_058_000, 1_061_002)],
        };
        let views = [
            RankView { input: &a, clock: ClockMap::offset(0) },
            RankView { input: &b, clock: ClockMap::offset(-1_000_000) },
        ];
        let cross = cross_rank(&views);
        let by_pid = |pid| cross.skew.iter().find(|s| s.pid == pid).unwrap();
        assert_eq!((by_pid(10).matched, by_pid(20).matched), (2, 2));
        assert_eq!(by_pid(20).max_arrival_skew_ns, 8_000);
        assert_eq!(by_pid(20).mean_arrival_skew_ns, 6_000.0);
        assert_eq!(by_pid(20).late_count, 2);
        assert_eq!(cross.straggler.map(|i| cross.skew[i].pid), Some(20));
        // unknown rank: the pid stands for it
        assert_eq!(by_pid(20).rank, 20);
        // waits: A 4 µs and 8 µs; the unmatched third kernel is all transfer
        assert_eq!(cross.spanning_waits["a"][&(10, 1_000)], 4_000);
        assert_eq!(cross.spanning_waits["a"][&(10, 50_000)], 8_000);
        assert_eq!(cross.spanning_waits["b"][&(20, 1_058_000)], 0);
        let st = &cross.collectives[0];
        assert_eq!((st.count, st.wait_ns), (5, 12_000));
        assert_eq!(st.time_ns, 10_000 + 11_000 + 5_000 + 6_005 + 3_002);
        // 5 MB × factor 1 (2 ranks) ÷ transfer
        let transfer = st.time_ns - 12_000;
        assert_eq!(st.transfer_ns, transfer);
        assert!((st.bus_bandwidth_gbps - 5e6 / transfer as f64).abs() < 1e-9, "{}", st.bus_bandwidth_gbps);
    }

    #[test]
    fn buckets_and_factors() {
        assert_eq!(size_bucket(512), "<1KiB");
        assert_eq!(size_bucket(1024), "1KiB-4KiB");
        assert_eq!(size_bucket(5000), "4KiB-16KiB");
        assert_eq!(size_bucket(3 << 20), "1MiB-4MiB");
        assert_eq!(size_bucket(100_000_000), "64MiB-256MiB");
        assert_eq!(size_bucket(1 << 30), "1GiB-4GiB");
        assert_eq!(size_bucket(5 << 30), ">=4GiB");
        assert!((bus_factor(CollOp::AllReduce as u32, 8) - 1.75).abs() < 1e-12);
        assert!((bus_factor(CollOp::AllGather as u32, 4) - 0.75).abs() < 1e-12);
        assert_eq!(bus_factor(CollOp::Broadcast as u32, 4), 1.0);
    }

    /// The bucket index and its name (what the totals are keyed and named by) give the
    /// buckets of the direct formula, at and around every power of 2.
    #[test]
    fn bucket_index_names_the_same_buckets() {
        let direct = |bytes: u64| -> String {
            const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
            if bytes < 1024 {
                return "<1KiB".into();
            }
            if bytes >= 4 << 30 {
                return ">=4GiB".into();
            }
            let lo_exp = (63 - bytes.leading_zeros()) / 2 * 2;
            let name = |e: u32| format!("{}{}", 1u64 << (e % 10), UNITS[(e / 10 - 1) as usize]);
            format!("{}-{}", name(lo_exp), name(lo_exp + 2))
        };
        let mut names = std::collections::HashMap::new();
        for p in 0..64 {
            for bytes in [(1u64 << p) - 1, 1 << p, (1 << p) + 1, (1 << p) / 3 * 2] {
                assert_eq!(size_bucket(bytes), direct(bytes), "{bytes}");
                // one index, one name
                assert_eq!(names.entry(bucket_index(bytes)).or_insert_with(|| direct(bytes)), &direct(bytes));
            }
        }
        assert_eq!(size_bucket(0), "<1KiB");
        assert_eq!(size_bucket(u64::MAX), ">=4GiB");
    }
}
