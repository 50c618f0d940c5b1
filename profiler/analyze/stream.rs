//! The analysis of a trace file with bounded memory, chunk by chunk (a trace can be larger
//! than RAM). Same arithmetic as the in-memory [`super::analyze_with`] (both build their
//! plans with `super::plan` and feed `sweep::DeviceSweep`); only what is kept
//! differs:
//!
//! 1. **Summary pass**: per process its window and launching threads; per device the kernel
//!    time per name, the first [`PERIOD_PROBE`] compute kernels (a bounded heap), the starts of
//!    kernels matching `--step-regex`; and the few records the plans need whole: NCCL calls and
//!    collective kernels (cross-rank matching), step markers, PM samples, clock syncs,
//!    checkpoint writes. (Tensor-activity samples are kept for devices whose PM sample
//!    intervals have been seen, in that chunk or before: they come together.) Also the records
//!    that will reach the sweep too late: kernels and copies starting more than the reorder
//!    window before the newest device record of the chunks before theirs (up to `MAX_LATE`),
//!    and host blocks of at least half the window (recorded when they end).
//! 2. **Kernel pass** (only when needed): PM least squares kernel by kernel; the launches of a
//!    periodic sequence's anchor kernel; each step's compute time for `--flops-per-step`.
//! 3. **Sweep**: chunks in file order; a record is swept once no later chunk can hold an earlier
//!    one (the chunk index's minimum timestamps), or once it is more than the reorder window
//!    older than the newest device record read, which bounds what is held. The late records
//!    the summary kept are swept in time; any other record older than what was already swept
//!    is counted (`late_records`) and left out. With threads (`jobs`), the sweep runs in time
//!    spans of the chunks, one a thread, added up exactly (`sweep_in_spans`).

use std::collections::{BinaryHeap, HashMap, HashSet};

use super::flops::{FlopSource, FractionAccumulator, KernelSpan};
use super::host::{HostAccumulator, ProcessHost};
use super::inputs::{comm_waits, is_checkpoint_syscall, is_comm_name, merge, pm_samples, stall_reason_label, Reasoned};
use super::model::{AccountOptions, CheckpointIo, DetailOptions, DeviceResult, LateWindows, StallPolicy, Window};
use super::plan::{device_plan, settle_periodicity, useful_ns_per_step, wants_step_rates, DeviceInputs, StepInputs};
use super::steps::{compute_per_step, PeriodicAnchor, PERIOD_PROBE};
use super::sweep::FastMap;
use super::sweep::{DevicePlan, DeviceSweep, Op};
use crate::trace::digest::{ChunkDigest, DIGEST_LONG_NS, DIGEST_VERSION};
use crate::trace::{
    ApiDomain, Chunk, DenseMap, Kind, Metric, NcclPhase, ProbedApi, RecordBatch, Scratch, StepSource, TraceError,
    TraceReader,
};

/// Options of the streaming analysis.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// What the accounting covers.
    pub account: AccountOptions,
    /// Steps, bins and the FLOP source.
    pub detail: DetailOptions,
    /// Records arriving later than this behind the newest record read are counted, not swept.
    pub reorder_window_ns: u64,
    /// Threads for the file's passes: the sweep in that many spans of the file's chunks, one a
    /// thread (chunks decoded ahead of one sweep when it cannot be split), the summary's chunk
    /// heads read ahead (1: none of these).
    pub jobs: usize,
    /// Tests only: the first chunk of each span of the sweep (the first is 0), instead of
    /// `jobs` spans of about as many records.
    #[doc(hidden)]
    pub span_starts: Option<Vec<usize>>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            account: AccountOptions::default(),
            detail: DetailOptions::default(),
            reorder_window_ns: 5_000_000_000,
            jobs: 1,
            span_starts: None,
        }
    }
}

/// Per device, from the summary pass.
#[derive(Default)]
struct DeviceSummary {
    first_op: u64,
    last_op: u64,
    /// compute kernel time per name
    time_by_name: FastMap<u32, u64>,
    /// the earliest compute kernels (max-heap on start, capped)
    prefix: BinaryHeap<(u64, u64, u32)>,
    regex_starts: Vec<u64>,
    /// compute kernel time per name id, folded into `time_by_name` at the end
    time_by_id: DenseMap<u64>,
}

impl DeviceSummary {
    #[inline]
    fn add_time(&mut self, name: u32, ns: u64) {
        *self.time_by_id.get_or_insert_with(name, || 0) += ns;
    }

    fn fold_times(&mut self) {
        for (id, t) in std::mem::take(&mut self.time_by_id).into_map() {
            *self.time_by_name.entry(id).or_default() += t;
        }
    }
}

/// What the summary pass keeps of a trace.
pub struct Skeleton {
    /// The string table: id → string.
    pub names: HashMap<u32, String>,
    /// NCCL calls, collective kernels, step markers, PM samples, clock syncs, checkpoint I/O.
    pub small: RecordBatch,
    /// Active window per process: first device operation or launch to the later of the last
    /// one and the launching threads' last blocking interval (docs/metrics.md, "Window").
    pub windows: HashMap<u32, Window>,
    launchers: FastMap<u32, HashSet<u32>>,
    /// Each process's first CUPTI launch record: it opens the window, never ends it
    /// ([`crate::trace::digest::launch_times`]).
    cupti_launch_first: FastMap<u32, u64>,
    devices: FastMap<(u32, u32), DeviceSummary>,
    /// Minimum record time of each chunk and all later ones.
    suffix_min_ts: Vec<u64>,
    /// The newest device-record start of each chunk and all earlier ones: with
    /// `suffix_min_ts`, where the sweep stops after each chunk, known before it runs.
    chunk_newest: Vec<u64>,
    /// Host intervals (off-CPU, file I/O) of at least half the reorder window, of every
    /// thread. A long block is recorded when it ends, so its
    /// record arrives about its length after its start, later than the reorder window allows
    /// (a 9 s stall of a PyTorch job on an H200); the sweep takes them from here, in time.
    long_blocked: Vec<LongBlock>,
    /// Kernels and copies whose records come more than the reorder window after newer ones
    /// (a device record held in a part-filled CUPTI buffer: ~6 s on an H200 before the forced
    /// flush), found with the sweep's own rule, up to [`MAX_LATE`]; the sweep takes them in time.
    late: RecordBatch,
    /// Records read by the summary pass.
    pub records: u64,
    /// Chunks the summary read from their digest alone (the others were decoded whole).
    pub chunks_from_digest: u64,
    /// The per-device collective waits of this file ([`skeleton_comm_waits`]) when they were
    /// made beside its collective instances (`report --jobs` ≥ 2); else the sweep makes them.
    pub(crate) comm_waits: Option<HashMap<(u32, u64), u64>>,
}

/// The per-device collective waits of a file from its summary (`inputs::comm_waits` over the
/// small records).
pub(crate) fn skeleton_comm_waits(sk: &Skeleton) -> HashMap<(u32, u64), u64> {
    comm_waits(&sk.small, &|id| is_comm_name(&sk.names, id))
}

/// A host interval of a thread long enough to reach the sweep late ([`Skeleton`]).
struct LongBlock {
    pid: u32,
    tid: u32,
    block: Reasoned,
}

/// At most this many late kernels and copies are kept for the sweep (~80 MiB); later ones are
/// left out and counted, as before.
const MAX_LATE: usize = 1 << 20;

/// Consecutive kernels of one (process, device): chunks hold them in such runs, so maps are
/// looked up once per run.
fn device_runs(ks: &[crate::trace::KernelExec]) -> impl Iterator<Item = &[crate::trace::KernelExec]> {
    ks.chunk_by(|a, b| a.pid == b.pid && a.device == b.device)
}

/// The newest device-record start of `r` (what moves the sweep's reorder bound).
fn newest_start(r: &RecordBatch, newest: u64) -> u64 {
    let k = r.kernels.iter().fold(newest, |m, k| m.max(k.start_ns));
    r.memops.iter().fold(k, |m, x| m.max(x.start_ns))
}

/// The summary pass (1). A chunk with a digest ([`crate::trace::digest`]) is read from its
/// digest alone (the start of its frame) unless the digest cannot answer for it: a kernel
/// regex, a reorder window under twice [`DIGEST_LONG_NS`], device records that will be late,
/// or compute kernels that may enter the periodicity probe. Those chunks are decoded whole.
pub fn summarize(reader: &TraceReader, opts: &StreamOptions) -> Result<Skeleton, TraceError> {
    let mut sk = Skeleton {
        names: HashMap::new(),
        small: RecordBatch::default(),
        windows: HashMap::new(),
        launchers: FastMap::default(),
        cupti_launch_first: FastMap::default(),
        devices: FastMap::default(),
        suffix_min_ts: Vec::new(),
        chunk_newest: Vec::new(),
        long_blocked: Vec::new(),
        late: RecordBatch::default(),
        records: 0,
        chunks_from_digest: 0,
        comm_waits: None,
    };
    let mut st = SummaryState {
        long: opts.reorder_window_ns / 2,
        newest: 0,
        regex_match: FastMap::default(),
        comm_cache: CommCache::default(),
        chunk_min: Vec::new(),
        chunk_newest: Vec::new(),
        pm_devices: HashSet::new(),
    };
    // The index knows how many NCCL records there are: no doubling of that vector.
    let counts = reader.counts();
    let count_of = |kind: Kind| Kind::ALL.iter().position(|k| *k == kind).map_or(0, |i| counts[i]);
    sk.small.nccl.reserve_exact(count_of(Kind::NcclColl).min(1 << 28) as usize);
    let wanted = |k: Kind| {
        !matches!(k, Kind::ProcessInfo | Kind::ThreadInfo | Kind::LibraryInfo | Kind::FunctionName | Kind::Drops)
    };
    let digests = opts.detail.step_regex.is_none() && st.long >= DIGEST_LONG_NS;
    let mut scratch = Scratch::default();
    let mut chunk = Chunk::default();
    let mut digest = ChunkDigest::default();
    // A damaged chunk (the reader remembers it, and the sweep skips it too) counts as empty.
    let skip = |e: TraceError, st: &mut SummaryState| match e {
        TraceError::Corrupt { .. } => {
            st.chunk_min.push(u64::MAX);
            st.chunk_newest.push(st.newest);
            Ok(())
        }
        e => Err(e),
    };
    // With threads to spare, the chunks' heads (decompressing the start of each frame: most of
    // this pass) are read ahead on the other threads, and on this one while the next is not
    // ready; this one absorbs them in order, and decodes whole the chunks that need it.
    let n = reader.chunks().len();
    let workers = if digests { opts.jobs.saturating_sub(1).min(n) } else { 0 };
    let read_head = |i: usize, scratch: &mut Scratch, spare: Option<Head>| {
        let mut h =
            spare.unwrap_or_else(|| Head { result: Ok(false), strings: Vec::new(), digest: Default::default() });
        h.result = if digests { reader.read_chunk_head(i, scratch, &mut h.strings, &mut h.digest) } else { Ok(false) };
        h
    };
    super::ahead::in_order(n, workers, HEADS_AHEAD * workers.max(1), &read_head, |i, h| {
        let meta = &reader.chunks()[i];
        // (the head's buffers go back for reuse: the chunk's old ones)
        std::mem::swap(&mut chunk.strings, &mut h.strings);
        std::mem::swap(&mut digest, &mut h.digest);
        let head = std::mem::replace(&mut h.result, Ok(false));
        let has_digest = match head {
            Ok(h) => h,
            Err(e) => return skip(e, &mut st),
        };
        let from_digest =
            has_digest && digest.version == DIGEST_VERSION && !needs_whole(&sk, &st, &digest, opts.reorder_window_ns);
        if from_digest {
            let n: u64 = Kind::ALL.iter().zip(&meta.counts).filter(|(k, _)| wanted(**k)).map(|(_, n)| n).sum();
            st.absorb_digest(&mut sk, &chunk.strings, &digest, meta.min_ts, n, opts);
            sk.chunks_from_digest += 1;
            return Ok(());
        }
        if let Err(e) = reader.read_chunk_decode(i, &mut scratch, &mut chunk, &wanted, true) {
            return skip(e, &mut st);
        }
        st.absorb_chunk(&mut sk, &chunk, opts);
        Ok(())
    })?;
    for d in sk.devices.values_mut() {
        d.fold_times();
    }
    for (&pid, &t) in &sk.cupti_launch_first {
        widen_start(&mut sk.windows, pid, t);
    }
    let launchers = &sk.launchers;
    let is_launcher = |pid: u32, tid: u32| launchers.get(&pid).is_some_and(|t| t.contains(&tid));
    super::inputs::extend_windows_to_blocking(&mut sk.windows, &sk.small, &is_launcher);
    let mut min = u64::MAX;
    sk.suffix_min_ts = st
        .chunk_min
        .iter()
        .rev()
        .map(|&m| {
            min = min.min(m);
            min
        })
        .collect();
    sk.suffix_min_ts.reverse();
    sk.chunk_newest = st.chunk_newest;
    Ok(sk)
}

/// Chunk heads read ahead of the summary pass per reading thread, at most (a head is its
/// string table and digest: small).
const HEADS_AHEAD: usize = 16;

/// A chunk's head read ahead: what [`TraceReader::read_chunk_head`] gives.
struct Head {
    result: Result<bool, TraceError>,
    strings: Vec<(u32, String)>,
    digest: ChunkDigest,
}

/// Whether a chunk must be decoded whole although it has a digest: it holds device records
/// that will reach the sweep late (the summary keeps those), or compute kernels that may be
/// among the first [`PERIOD_PROBE`] of their device.
fn needs_whole(sk: &Skeleton, st: &SummaryState, digest: &ChunkDigest, reorder_window_ns: u64) -> bool {
    let bound = st.newest.saturating_sub(reorder_window_ns);
    digest.spans.iter().any(|s| {
        if bound > 0 && s.min_start < bound {
            return true;
        }
        if s.min_compute_start == u64::MAX {
            return false;
        }
        match sk.devices.get(&(s.pid, s.device)) {
            Some(d) if d.prefix.len() >= PERIOD_PROBE => d.prefix.peek().is_none_or(|top| s.min_compute_start <= top.0),
            _ => true,
        }
    })
}

/// The summary pass's state besides the skeleton.
struct SummaryState {
    /// host blocks at least this long are kept whole
    long: u64,
    /// newest device-record start of the chunks read
    newest: u64,
    regex_match: FastMap<u32, bool>,
    comm_cache: CommCache,
    chunk_min: Vec<u64>,
    /// `newest` after each chunk
    chunk_newest: Vec<u64>,
    pm_devices: HashSet<(u32, u32)>,
}

fn widen(w: &mut HashMap<u32, Window>, pid: u32, s: u64, e: u64) {
    w.entry(pid).or_insert(Window::new(s, e)).widen(s, e);
}

/// Opens `pid`'s window at `t` at the latest, leaving its end (a CUPTI launch's rule).
pub(crate) fn widen_start(w: &mut HashMap<u32, Window>, pid: u32, t: u64) {
    let x = w.entry(pid).or_insert(Window::new(t, t));
    x.start_ns = x.start_ns.min(t);
}

fn launch_seen(sk: &mut Skeleton, pid: u32, tid: u32, first: u64, last: u64, cupti: bool) {
    if cupti {
        let f = sk.cupti_launch_first.entry(pid).or_insert(first);
        *f = (*f).min(first);
    } else {
        widen(&mut sk.windows, pid, first, last);
    }
    sk.launchers.entry(pid).or_default().insert(tid);
}

fn device_entry(
    devices: &mut FastMap<(u32, u32), DeviceSummary>,
    key: (u32, u32),
    lo: u64,
    hi: u64,
) -> &mut DeviceSummary {
    let d = devices.entry(key).or_insert_with(|| DeviceSummary { first_op: lo, last_op: hi, ..Default::default() });
    d.first_op = d.first_op.min(lo);
    d.last_op = d.last_op.max(hi);
    d
}

impl SummaryState {
    /// A chunk decoded whole.
    fn absorb_chunk(&mut self, sk: &mut Skeleton, c: &Chunk, opts: &StreamOptions) {
        sk.names.extend(c.strings.iter().cloned());
        sk.records += c.records.len() as u64;
        self.chunk_min.push(if c.records.is_empty() && c.strings.is_empty() { u64::MAX } else { c.min_ts });
        let r = &c.records;
        // The sweep's rule: a device record starting before (newest start of the chunks read
        // before this one) − the reorder window will be too late for it.
        let bound = self.newest.saturating_sub(opts.reorder_window_ns);
        if bound > 0 {
            for k in r.kernels.iter().filter(|k| k.start_ns < bound) {
                if sk.late.kernels.len() + sk.late.memops.len() < MAX_LATE {
                    sk.late.kernels.push(*k);
                }
            }
            for m in r.memops.iter().filter(|m| m.start_ns < bound) {
                if sk.late.kernels.len() + sk.late.memops.len() < MAX_LATE {
                    sk.late.memops.push(*m);
                }
            }
        }
        self.newest = newest_start(r, self.newest);
        self.chunk_newest.push(self.newest);
        let names = &sk.names;
        // Kernels come in runs of one device: the maps are looked up once per run.
        for run in device_runs(&r.kernels) {
            let (pid, device) = (run[0].pid, run[0].device);
            let (lo, hi) = run.iter().fold((u64::MAX, 0), |(lo, hi), k| (lo.min(k.start_ns), hi.max(k.end_ns)));
            widen(&mut sk.windows, pid, lo, hi);
            let d = device_entry(&mut sk.devices, (pid, device), lo, hi);
            for k in run {
                let comm = self.comm_cache.is_comm(names, k.name_id);
                if comm {
                    sk.small.kernels.push(*k);
                } else {
                    d.add_time(k.name_id, k.end_ns.saturating_sub(k.start_ns));
                    if d.prefix.len() < PERIOD_PROBE {
                        d.prefix.push((k.start_ns, k.end_ns, k.name_id));
                    } else if d.prefix.peek().is_some_and(|top| (k.start_ns, k.end_ns, k.name_id) < *top) {
                        d.prefix.pop();
                        d.prefix.push((k.start_ns, k.end_ns, k.name_id));
                    }
                }
                if let Some(re) = &opts.detail.step_regex {
                    let hit = *self
                        .regex_match
                        .entry(k.name_id)
                        .or_insert_with(|| names.get(&k.name_id).is_some_and(|n| re.is_match(n)));
                    if hit {
                        d.regex_starts.push(k.start_ns);
                    }
                }
            }
        }
        for m in &r.memops {
            widen(&mut sk.windows, m.pid, m.start_ns, m.end_ns);
            device_entry(&mut sk.devices, (m.pid, m.device), m.start_ns, m.end_ns);
        }
        for (pid, tid, t, cupti) in crate::trace::digest::launch_times(r) {
            launch_seen(sk, pid, tid, t, t, cupti);
        }
        self.absorb_small(sk, r, opts.account.stall_policy());
    }

    /// A chunk read from its digest: the same as [`SummaryState::absorb_chunk`] for the
    /// chunks [`needs_whole`] lets through (no late device records, no kernel for the probe,
    /// no regex). `records`: the chunk's record count of the kinds the summary decodes.
    fn absorb_digest(
        &mut self,
        sk: &mut Skeleton,
        strings: &[(u32, String)],
        d: &ChunkDigest,
        min_ts: u64,
        records: u64,
        opts: &StreamOptions,
    ) {
        sk.names.extend(strings.iter().cloned());
        sk.records += records;
        self.chunk_min.push(if records == 0 && strings.is_empty() { u64::MAX } else { min_ts });
        for s in &d.spans {
            self.newest = self.newest.max(s.max_start);
            widen(&mut sk.windows, s.pid, s.min_start, s.max_end);
            device_entry(&mut sk.devices, (s.pid, s.device), s.min_start, s.max_end);
        }
        self.chunk_newest.push(self.newest);
        for n in &d.name_times {
            if let Some(dev) = sk.devices.get_mut(&(n.pid, n.device)) {
                dev.add_time(n.name_id, n.ns);
            }
        }
        for l in &d.launches {
            launch_seen(sk, l.pid, l.tid, l.first, l.last, l.cupti);
        }
        sk.small.kernels.extend_from_slice(&d.records.kernels);
        // (the digest's records are a superset of what absorb_small keeps)
        self.absorb_small(sk, &d.records, opts.account.stall_policy());
    }

    /// The few records kept whole: NCCL, synchronizing calls, NVTX steps, clock syncs,
    /// checkpoint I/O, long host blocks, PM samples, session notes, NCCL algorithms.
    fn absorb_small(&mut self, sk: &mut Skeleton, r: &RecordBatch, policy: StallPolicy) {
        sk.small.nccl.extend_from_slice(&r.nccl);
        sk.small.api_calls.extend(r.api_calls.iter().filter(|a| {
            a.domain == ApiDomain::Probe as u32 && ProbedApi::from_u32(a.call_id).is_some_and(|x| x.is_sync())
        }));
        sk.small.steps.extend(r.steps.iter().filter(|s| s.source == StepSource::Nvtx as u32));
        sk.small.clock_syncs.extend_from_slice(&r.clock_syncs);
        sk.small.notes.extend_from_slice(&r.notes);
        sk.small.nccl_algos.extend_from_slice(&r.nccl_algos);
        sk.small.costs.extend_from_slice(&r.costs);
        sk.small.file_io.extend(r.file_io.iter().filter(|f| is_checkpoint_syscall(f.syscall)));
        let long = self.long;
        for st in r.stalls.iter().filter(|st| st.end_ns.saturating_sub(st.start_ns) >= long) {
            if policy.counts(st.reason) {
                let block = Reasoned::new(st.start_ns, st.end_ns, stall_reason_label(st.reason));
                sk.long_blocked.push(LongBlock { pid: st.pid, tid: st.tid, block });
            }
        }
        for f in r.file_io.iter().filter(|f| f.end_ns.saturating_sub(f.start_ns) >= long) {
            let block = Reasoned::new(f.start_ns, f.end_ns, "file I/O");
            sk.long_blocked.push(LongBlock { pid: f.pid, tid: f.tid, block });
        }
        // PM samples: tensor activity only of devices that have PM sample intervals (NVML-like
        // samples without them do not make a FLOP source, and would only take memory).
        for s in r.samples.iter().filter(|s| s.metric == Metric::SampleIntervalNs as u32) {
            self.pm_devices.insert((s.pid, s.device));
        }
        // (the last device's answer is remembered: samples come in runs of one device)
        let mut last: Option<((u32, u32), bool)> = None;
        let pm_devices = &self.pm_devices;
        sk.small.samples.extend(r.samples.iter().filter(|s| match Metric::from_u32(s.metric) {
            Some(Metric::SampleIntervalNs) => true,
            Some(Metric::TensorActive) => {
                let key = (s.pid, s.device);
                match last {
                    Some((k, pm)) if k == key => pm,
                    _ => {
                        let pm = pm_devices.contains(&key);
                        last = Some((key, pm));
                        pm
                    }
                }
            }
            _ => false,
        }));
    }
}

/// Passes 2 and 3: the accounting and details of every device, and the records that came
/// too late to be swept. `extra_waits`: (pid, kernel start) → wait of collectives the
/// cross-rank matching found with ranks in other files or by their end (these come before the
/// file's own matching).
pub fn sweep_file(
    reader: &TraceReader,
    sk: &Skeleton,
    opts: &StreamOptions,
    late: &LateWindows,
    extra_waits: &HashMap<(u32, u64), u64>,
) -> Result<(Vec<DeviceResult>, u64), TraceError> {
    sweep_file_with_host(reader, sk, opts, late, extra_waits).map(|(r, late, _)| (r, late))
}

/// [`sweep_file`], plus the host figures of every process ([`super::host`]), added up in the
/// same pass.
pub fn sweep_file_with_host(
    reader: &TraceReader,
    sk: &Skeleton,
    opts: &StreamOptions,
    late: &LateWindows,
    extra_waits: &HashMap<(u32, u64), u64>,
) -> Result<SweptFile, TraceError> {
    sweep_file_passes(reader, sk, opts, late, extra_waits, false).map(Option::unwrap_or_default)
}

/// What [`sweep_file_with_host`] gives: each device's result, records left out, host figures.
pub type SweptFile = (Vec<DeviceResult>, u64, Vec<ProcessHost>);

/// Tests only: [`sweep_file_with_host`] when it sweeps the file in spans (`opts.jobs` or
/// `opts.span_starts`), None when it would sweep it in one pass.
#[doc(hidden)]
pub fn sweep_file_in_spans(
    reader: &TraceReader,
    sk: &Skeleton,
    opts: &StreamOptions,
    late: &LateWindows,
    extra_waits: &HashMap<(u32, u64), u64>,
) -> Result<Option<SweptFile>, TraceError> {
    sweep_file_passes(reader, sk, opts, late, extra_waits, true)
}

/// [`sweep_file_with_host`]; `spans_only`: None instead of the one-pass sweep.
fn sweep_file_passes(
    reader: &TraceReader,
    sk: &Skeleton,
    opts: &StreamOptions,
    late: &LateWindows,
    extra_waits: &HashMap<(u32, u64), u64>,
    spans_only: bool,
) -> Result<Option<SweptFile>, TraceError> {
    let names = &sk.names;
    let is_comm = |id: u32| is_comm_name(names, id);
    let detail = &opts.detail;
    let mut keys: Vec<(u32, u32)> = sk.devices.keys().copied().collect();
    keys.sort_unstable();

    // Plans, with what the summary decides; the kernel pass fills in the rest.
    let mut plans: HashMap<(u32, u32), DevicePlan> = HashMap::new();
    let mut fraction_acc: HashMap<(u32, u32), FractionAccumulator> = HashMap::new();
    let mut anchors: HashMap<(u32, u32), (PeriodicAnchor, Vec<u64>)> = HashMap::new();
    for &(pid, device) in &keys {
        let d = &sk.devices[&(pid, device)];
        let samples = pm_samples(&sk.small, pid, device);
        let flop_source = if samples.is_empty() { FlopSource::None } else { FlopSource::PmSampling };
        if !samples.is_empty() {
            fraction_acc.insert((pid, device), FractionAccumulator::new(&d.time_by_name, samples));
        }
        let has_launcher = sk.launchers.get(&pid).is_some_and(|l| !l.is_empty());
        let dev = DeviceInputs { pid, device, first_op: d.first_op, last_op: d.last_op, flop_source, has_launcher };
        let markers =
            sk.small.steps.iter().filter(|s| s.pid == pid).map(|s| (s.start_ns, s.end_ns, s.name_id)).collect();
        let mut regex_starts = || d.regex_starts.clone();
        let mut probe = || {
            let mut prefix: Vec<KernelSpan> =
                d.prefix.iter().map(|&(start, end, name)| KernelSpan { start, end, name }).collect();
            prefix.sort_by_key(|k| (k.start, k.end, k.name));
            prefix
        };
        let inputs = StepInputs { markers, regex_starts: &mut regex_starts, probe: &mut probe };
        let (plan, anchor) = device_plan(dev, &opts.account, Some(detail), late, names, inputs);
        if let Some(anchor) = anchor {
            anchors.insert((pid, device), (anchor, Vec::new()));
        }
        plans.insert((pid, device), plan);
    }
    let useful_per_step = useful_ns_per_step(detail);
    let wants_rates = |p: &DevicePlan| wants_step_rates(p, detail);

    // Pass 2: PM least squares, anchor launches, and step compute time where the steps are known.
    let mut per_step: HashMap<(u32, u32), Vec<u64>> = HashMap::new();
    let need_steps_compute: Vec<(u32, u32)> =
        keys.iter().copied().filter(|k| wants_rates(&plans[k]) && !plans[k].steps.is_empty()).collect();
    if !fraction_acc.is_empty() || !anchors.is_empty() || !need_steps_compute.is_empty() {
        for k in &need_steps_compute {
            per_step.insert(*k, vec![0; plans[k].steps.len()]);
        }
        decoded_in_order(reader, &|k| k == Kind::KernelExec, opts.jobs, |_, c| {
            for k in c.records.kernels.iter().filter(|k| !is_comm(k.name_id)) {
                let key = (k.pid, k.device);
                if let Some(acc) = fraction_acc.get_mut(&key) {
                    acc.add(KernelSpan { start: k.start_ns, end: k.end_ns, name: k.name_id });
                }
                if let Some((anchor, starts)) = anchors.get_mut(&key) {
                    if anchor.name == k.name_id {
                        starts.push(k.start_ns);
                    }
                }
                if let Some(busy) = per_step.get_mut(&key) {
                    add_step_compute(&plans[&key].steps, busy, k.start_ns, k.end_ns);
                }
            }
        })?;
    }
    for (key, acc) in fraction_acc {
        if let Some(p) = plans.get_mut(&key) {
            p.fractions = acc.finish();
        }
    }
    let mut late_steps: Vec<(u32, u32)> = Vec::new();
    for (key, (anchor, starts)) in anchors {
        let p = plans.get_mut(&key).expect("a plan per device");
        settle_periodicity(p, &anchor, starts);
        if p.step_source == Some(StepSource::Periodicity) && wants_rates(p) {
            late_steps.push(key);
        }
    }
    if !late_steps.is_empty() {
        // Pass 2b: compute time of the steps found in pass 2.
        for k in &late_steps {
            per_step.insert(*k, vec![0; plans[k].steps.len()]);
        }
        decoded_in_order(reader, &|k| k == Kind::KernelExec, opts.jobs, |_, c| {
            for k in c.records.kernels.iter().filter(|k| !is_comm(k.name_id)) {
                let key = (k.pid, k.device);
                if let Some(busy) = per_step.get_mut(&key) {
                    add_step_compute(&plans[&key].steps, busy, k.start_ns, k.end_ns);
                }
            }
        })?;
    }
    if let Some(useful) = useful_per_step {
        for (key, busy) in &per_step {
            if let Some(p) = plans.get_mut(key) {
                p.set_step_rates(useful, busy);
            }
        }
    }

    // Pass 3: the sweep.
    let mut waits = match &sk.comm_waits {
        Some(w) => w.clone(),
        None => comm_waits(&sk.small, &is_comm),
    };
    // The cross-rank matching's waits first: what it matched, the skew and the collectives
    // table show too.
    for (k, w) in extra_waits {
        waits.insert(*k, *w);
    }
    let long = opts.reorder_window_ns / 2;
    let start = SweepStart { keys: &keys, plans: &plans, sk, waits: &waits, long };
    let swept = match sweep_in_spans(reader, &start, opts)? {
        Some(swept) => swept,
        None if spans_only => return Ok(None),
        None => {
            let mut sweep = start.sweep(false);
            let mut comm_cache = CommCache::default();
            let mut host = HostAccumulator::default();
            decoded_in_order(reader, &swept_kinds, opts.jobs, |i, c| {
                host.add(&c.records);
                sweep.ingest(c, &mut |id| comm_cache.is_comm(names, id), &waits, opts.account.stall_policy(), long);
                let next_min = sk.suffix_min_ts.get(i + 1).copied().unwrap_or(u64::MAX);
                let bound = sweep.newest.saturating_sub(opts.reorder_window_ns);
                let to = next_min.max(bound);
                if to != u64::MAX && to > sweep.swept_to {
                    sweep.advance(to);
                }
            })?;
            sweep.advance(u64::MAX);
            (sweep, host)
        }
    };
    let (mut sweep, host) = swept;
    // Those the summary kept were counted again when read: only the rest was left out.
    // (saturating: a chunk found damaged only now held some of those; the caller reruns)
    let late_records = sweep.late_records.saturating_sub((sk.late.kernels.len() + sk.late.memops.len()) as u64);
    let results = keys
        .iter()
        .map(|k| {
            let state = sweep.devices.remove(k).expect("state per device");
            let window = state.sweep_window();
            state.sweep.finish(checkpoint_of(&sk.small, k.0, window))
        })
        .collect();
    Ok(Some((results, late_records, host.finish())))
}

/// The record kinds the sweep reads.
fn swept_kinds(k: Kind) -> bool {
    matches!(k, Kind::KernelExec | Kind::MemOp | Kind::HostStall | Kind::FileIo | Kind::NcclColl | Kind::ProcessInfo)
}

/// What every sweep of a file starts from: its devices' plans, the summary, the waits.
struct SweepStart<'a> {
    keys: &'a [(u32, u32)],
    plans: &'a HashMap<(u32, u32), DevicePlan>,
    sk: &'a Skeleton,
    waits: &'a HashMap<(u32, u64), u64>,
    /// host blocks at least this long come from the summary
    long: u64,
}

impl SweepStart<'_> {
    /// The sweep before its first chunk: the late device records the summary kept and the
    /// launching threads' synchronizing calls and long blocks are in. `span`: for a later span
    /// of the file ([`DeviceSweep::span`]).
    fn sweep(&self, span: bool) -> Sweep {
        let sk = self.sk;
        let names = &sk.names;
        let mut sweep = Sweep {
            devices: self
                .keys
                .iter()
                .map(|k| {
                    let plan = self.plans[k].clone();
                    let sweep = if span { DeviceSweep::span(plan) } else { DeviceSweep::new(plan) };
                    (*k, DeviceState { sweep, carry: Vec::new(), incoming: Vec::new() })
                })
                .collect(),
            pids: HashMap::new(),
            swept_to: 0,
            newest: 0,
            late_records: 0,
        };
        let mut comm_cache = CommCache::default();
        // Late device records, kept by the summary pass: in time now, skipped when read again.
        for k in &sk.late.kernels {
            let Some(d) = sweep.devices.get_mut(&(k.pid, k.device)) else { continue };
            let comm = comm_cache.is_comm(names, k.name_id);
            let wait = if comm { self.waits.get(&(k.pid, k.start_ns)).copied().unwrap_or(0) } else { 0 };
            d.incoming.push(d.sweep.kernel_op_cached(k.start_ns, k.end_ns, k.name_id, comm, wait));
        }
        for m in &sk.late.memops {
            if let Some(d) = sweep.devices.get_mut(&(m.pid, m.device)) {
                d.incoming.push(DevicePlan::copy_op(m.start_ns, m.end_ns));
            }
        }
        let long = self.long;
        for (pid, launchers) in &sk.launchers {
            // Synchronizing calls are few: the summary kept them all; so are long blocks, which
            // the summary kept because their records arrive late (see `Skeleton::long_blocked`).
            let incoming = sk
                .small
                .api_calls
                .iter()
                .filter(|a| a.pid == *pid && launchers.contains(&a.tid))
                .map(|a| Reasoned::new(a.start_ns, a.end_ns, "sync call"))
                .chain(sk.long_blocked.iter().filter(|b| b.pid == *pid && launchers.contains(&b.tid)).map(|b| b.block))
                .chain(
                    sk.small
                        .nccl
                        .iter()
                        .filter(|n| {
                            n.pid == *pid
                                && n.phase == NcclPhase::Host as u32
                                && launchers.contains(&n.tid)
                                && n.end_ns.saturating_sub(n.start_ns) >= long
                        })
                        .map(|n| Reasoned::new(n.start_ns, n.end_ns, "NCCL call")),
                )
                .collect();
            sweep.pids.insert(*pid, PidState { launchers: launchers.clone(), incoming, ..Default::default() });
        }
        sweep
    }
}

/// The first chunk of each span of the sweep: `jobs` spans of about as many records (of the
/// kinds the sweep reads), or the test's own; one span when the file cannot be split.
fn span_starts(reader: &TraceReader, opts: &StreamOptions, spans: usize) -> Vec<usize> {
    let n = reader.chunks().len();
    if let Some(starts) = &opts.span_starts {
        let mut v: Vec<usize> = std::iter::once(0).chain(starts.iter().copied().filter(|&c| c < n)).collect();
        v.sort_unstable();
        v.dedup();
        return v;
    }
    let spans = spans.min(n).max(1);
    if spans == 1 {
        return vec![0];
    }
    let weight = |i: usize| -> u64 {
        let c = &reader.chunks()[i].counts;
        Kind::ALL
            .iter()
            .zip(c)
            .filter(|(k, _)| swept_kinds(**k))
            .map(|(_, n)| *n)
            .fold(0u64, u64::saturating_add)
            .max(1)
    };
    let total = (0..n).map(weight).fold(0u64, u64::saturating_add);
    let (mut starts, mut sum) = (vec![0], 0u64);
    for i in 0..n {
        // a span begins at the first chunk past its share of the records
        let k = starts.len() as u128;
        if k < spans as u128 && i > 0 && sum as u128 * spans as u128 >= k * total as u128 {
            starts.push(i);
        }
        sum = sum.saturating_add(weight(i));
    }
    starts
}

/// The partial sums the spans of a file may hold in all (steps and bins of every device, per
/// span): 256 MiB.
const SPAN_PARTS_BYTES: u64 = 256 << 20;

/// Bytes of one step's or bin's partial sums (`sweep::Partitions`: sums, busy, span).
const PART_BYTES: u64 = 112;

/// One span's sweep: its devices' partial sweeps, records left out, host figures; `exact`
/// false when the file was not what its index and summary said (then the one-pass sweep runs).
struct SpanOut {
    sweep: Sweep,
    host: HostAccumulator,
    exact: bool,
}

/// The sweep of one file in time spans, one a thread (`opts.jobs` of them), when every device's
/// sums are exact in any order ([`DevicePlan::sums_exact`]: a window under 2^53 ns); None when
/// it cannot be split (one span, or the file not what its index said), and the one-pass sweep
/// runs instead.
///
/// Exact, the same as one pass: where the one-pass sweep stops after each chunk is known
/// before it runs (the summary's minimum start of the later chunks and newest start of the
/// earlier ones); a span starts with what the one pass holds there: the records of earlier
/// chunks not yet swept, found again in the chunks whose latest record (the index's `max_ts`)
/// reaches that point, filtered by the same rules. Each span sweeps the same slices, and the
/// spans' sums (exact: whole ns, and useful compute in fixed point) are added in order
/// ([`DeviceSweep::absorb`]). What the index and
/// summary said is checked on the way (each chunk's latest record, the newest start after it);
/// a file that lied is swept again in one pass.
fn sweep_in_spans(
    reader: &TraceReader,
    start: &SweepStart<'_>,
    opts: &StreamOptions,
) -> Result<Option<(Sweep, HostAccumulator)>, TraceError> {
    let sk = start.sk;
    let n = reader.chunks().len();
    if sk.chunk_newest.len() != n || !start.keys.iter().all(|k| start.plans[k].sums_exact()) {
        return Ok(None);
    }
    // Each span holds its own partial sums of every step and bin: no more spans than keep
    // those under SPAN_PARTS_BYTES in all (fine bins of long windows on many cores).
    let parts: u64 = start.plans.values().map(|p| p.partitions()).fold(0, u64::saturating_add);
    // Under a memory limit, no more than the room its threads' buffers leave (`budget`).
    let cap = super::budget::room().map_or(SPAN_PARTS_BYTES, |r| {
        let buffers = super::budget::thread_bytes(reader).saturating_mul(opts.jobs as u64);
        SPAN_PARTS_BYTES.min(r.bytes.saturating_sub(buffers))
    });
    let by_memory = (cap / parts.saturating_mul(PART_BYTES).max(1)).max(1);
    let starts = span_starts(reader, opts, opts.jobs.min(by_memory.try_into().unwrap_or(usize::MAX)));
    if starts.len() < 2 {
        return Ok(None);
    }
    let damaged: HashSet<usize> = reader.damaged_chunks().iter().map(|d| d.chunk).collect();
    // Where the one-pass sweep stands before each chunk, and where it goes after it.
    let (mut before, mut cut) = (vec![0u64; n], vec![None; n]);
    let mut swept_to = 0u64;
    for i in 0..n {
        before[i] = swept_to;
        if damaged.contains(&i) {
            continue;
        }
        let next_min = sk.suffix_min_ts.get(i + 1).copied().unwrap_or(u64::MAX);
        let to = next_min.max(sk.chunk_newest[i].saturating_sub(opts.reorder_window_ns));
        if to != u64::MAX && to > swept_to {
            cut[i] = Some(to);
            swept_to = to;
        }
    }
    // A span reads again the earlier chunks whose latest record reaches its start: when records
    // are long (or their times damaged) that can be most of the file for every span; then one
    // pass, decoded ahead, costs less. (Not for the tests' own cuts.)
    let again: usize = starts[1..]
        .iter()
        .map(|&c| reader.chunks()[..c].iter().filter(|m| m.max_ts >= before[c]).count())
        .fold(0, usize::saturating_add);
    if opts.span_starts.is_none() && again > n / 4 + starts.len() {
        return Ok(None);
    }
    let (before, cut, damaged) = (&before, &cut, &damaged);
    let names = &sk.names;
    let policy = opts.account.stall_policy();
    let span = |k: usize| -> Result<SpanOut, TraceError> {
        let (first, end) = (starts[k], starts.get(k + 1).copied().unwrap_or(n));
        let mut sweep = start.sweep(k > 0);
        let mut comm_cache = CommCache::default();
        let mut is_comm = |id: u32| comm_cache.is_comm(names, id);
        let (mut scratch, mut chunk) = (Scratch::default(), Chunk::default());
        // Reads chunk i (false: damaged, skipped and remembered as the one pass does).
        let mut read = |i: usize, chunk: &mut Chunk| -> Result<bool, TraceError> {
            if damaged.contains(&i) {
                return Ok(false);
            }
            match reader.read_chunk_decode(i, &mut scratch, chunk, &swept_kinds, true) {
                Ok(()) => Ok(true),
                Err(TraceError::Corrupt { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        if k > 0 {
            // What the one pass holds at this span's start: the records of earlier chunks it
            // has not swept yet (those ending after that point, or starting at or after it).
            let t = before[first];
            for (j, &at) in before.iter().enumerate().take(first) {
                if reader.chunks()[j].max_ts < t || !read(j, &mut chunk)? {
                    continue;
                }
                sweep.swept_to = at;
                sweep.ingest(&chunk, &mut is_comm, start.waits, policy, start.long);
            }
            sweep.keep_unswept(t);
            (sweep.swept_to, sweep.newest, sweep.late_records) = (t, sk.chunk_newest[first - 1], 0);
        }
        let mut host = HostAccumulator::default();
        let mut exact = true;
        for (i, &to) in cut.iter().enumerate().take(end).skip(first) {
            if !read(i, &mut chunk)? {
                continue;
            }
            // The index's latest record of the chunk chose the chunks read again above.
            exact &= chunk.records.time_range().is_none_or(|(_, hi)| hi <= reader.chunks()[i].max_ts);
            host.add(&chunk.records);
            sweep.ingest(&chunk, &mut is_comm, start.waits, policy, start.long);
            // The summary's newest start chose where the sweep stops.
            exact &= sweep.newest == sk.chunk_newest[i];
            if let Some(to) = to {
                sweep.advance(to);
            }
        }
        if end == n {
            sweep.advance(u64::MAX);
        }
        Ok(SpanOut { sweep, host, exact })
    };
    let span = &span;
    let outs: Vec<Result<SpanOut, TraceError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..starts.len()).map(|k| scope.spawn(move || span(k))).collect();
        let mut outs = vec![span(0)];
        for h in handles {
            outs.push(h.join().unwrap_or_else(|_| {
                Err(TraceError::Writer { what: "sweeping a span of the file failed on another thread".into() })
            }));
        }
        outs
    });
    let mut merged: Option<(Sweep, HostAccumulator)> = None;
    for out in outs {
        let out = out?;
        if !out.exact {
            return Ok(None);
        }
        match &mut merged {
            None => merged = Some((out.sweep, out.host)),
            Some((sweep, host)) => {
                sweep.late_records += out.sweep.late_records;
                for (key, d) in out.sweep.devices {
                    if let Some(m) = sweep.devices.get_mut(&key) {
                        m.sweep.absorb(d.sweep);
                    }
                }
                host.absorb(out.host);
            }
        }
    }
    Ok(merged)
}

/// Chunks decoded ahead of a consumer at most, per decoding thread: bounds the memory the
/// decoded chunks hold (a chunk is at most 131,072 records by default).
const AHEAD_PER_THREAD: usize = 2;

/// [`TraceReader::for_each_chunk_lean_at`] with `jobs − 1` threads decoding (decompressing,
/// decoding the columns) the next chunks while `f` consumes the current one on this thread,
/// in chunk order (this thread decodes too while its next chunk is not ready): `f` sees
/// exactly the chunks, in the order, of the one-thread call, so the result does not depend on
/// `jobs`. At most `AHEAD_PER_THREAD` chunks per decoding thread are held decoded ahead.
/// Damaged chunks are skipped and remembered by the reader, as there.
fn decoded_in_order(
    reader: &TraceReader,
    wanted: &(dyn Fn(Kind) -> bool + Sync),
    jobs: usize,
    mut f: impl FnMut(usize, &Chunk),
) -> Result<(), TraceError> {
    let n = reader.chunks().len();
    let workers = jobs.saturating_sub(1).min(n.saturating_sub(1));
    if workers == 0 {
        return reader.for_each_chunk_lean_at(wanted, f);
    }
    let damaged: HashSet<usize> = reader.damaged_chunks().iter().map(|d| d.chunk).collect();
    // (the chunk, and false when it is damaged: skipped)
    let decode = |i: usize, scratch: &mut Scratch, spare: Option<(Chunk, Result<bool, TraceError>)>| {
        let mut chunk = spare.map(|s| s.0).unwrap_or_default();
        let result = if damaged.contains(&i) {
            Ok(false)
        } else {
            match reader.read_chunk_decode(i, scratch, &mut chunk, wanted, true) {
                Ok(()) => Ok(true),
                // remembered by read_chunk_decode
                Err(TraceError::Corrupt { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        (chunk, result)
    };
    super::ahead::in_order(n, workers, workers * AHEAD_PER_THREAD, &decode, |i, (chunk, result)| {
        if std::mem::replace(result, Ok(false))? {
            f(i, chunk);
        }
        Ok(())
    })
}

fn add_step_compute(steps: &[(u64, u64)], busy: &mut [u64], start: u64, end: u64) {
    let one = compute_per_step(steps, std::iter::once((start, end)));
    for (b, o) in busy.iter_mut().zip(one) {
        *b += o;
    }
}

fn checkpoint_of(small: &RecordBatch, pid: u32, window: Window) -> CheckpointIo {
    super::inputs::checkpoint_io(small, pid, window)
}

struct DeviceState {
    sweep: DeviceSweep,
    /// ops already started at the last sweep point (overlapping what comes next)
    carry: Vec<Op>,
    /// ops that start after the last sweep point
    incoming: Vec<Op>,
}

impl DeviceState {
    fn sweep_window(&self) -> Window {
        self.sweep.window()
    }
}

#[derive(Default)]
struct PidState {
    launchers: HashSet<u32>,
    carry: Vec<Reasoned>,
    incoming: Vec<Reasoned>,
}

/// Whether a name id is a collective's, remembered per id (ids are small and dense).
#[derive(Default)]
struct CommCache(Vec<u8>);

impl CommCache {
    fn is_comm(&mut self, names: &HashMap<u32, String>, id: u32) -> bool {
        let i = id as usize;
        if i >= self.0.len() {
            if i > 1 << 24 {
                return is_comm_name(names, id);
            }
            self.0.resize(i + 1, 0);
        }
        if self.0[i] == 0 {
            self.0[i] = if is_comm_name(names, id) { 1 } else { 2 };
        }
        self.0[i] == 1
    }
}

/// A process's blocked intervals in one sweep step.
struct Blocked {
    /// merged, sorted
    merged: Vec<(u64, u64)>,
    /// unmerged with their reasons, sorted by start
    reasons: Vec<Reasoned>,
}

struct Sweep {
    devices: FastMap<(u32, u32), DeviceState>,
    pids: HashMap<u32, PidState>,
    /// everything before this is swept
    swept_to: u64,
    /// newest device-record start read
    newest: u64,
    late_records: u64,
}

impl Sweep {
    fn ingest(
        &mut self,
        c: &Chunk,
        is_comm: &mut impl FnMut(u32) -> bool,
        waits: &HashMap<(u32, u64), u64>,
        policy: StallPolicy,
        long: u64,
    ) {
        let r = &c.records;
        let swept_to = self.swept_to;
        // Device records before `newest − reorder window` were kept by the summary pass
        // (`Skeleton::late`) if it had room. `swept_to` is at least that bound, so every one of
        // them is skipped below (none is swept twice); the sweep function subtracts them from
        // the late count.
        // One pass over the chunk's kernels (their records are read once: a chunk's decoded
        // kernels outgrow the caches), taking the newest start too. Kernels come in runs of
        // one device: the device is looked up again only when it changes.
        let mut new_newest = self.newest;
        let mut key: Option<(u32, u32)> = None;
        let mut state: Option<&mut DeviceState> = None;
        for k in &r.kernels {
            new_newest = new_newest.max(k.start_ns);
            if key != Some((k.pid, k.device)) {
                key = Some((k.pid, k.device));
                state = self.devices.get_mut(&(k.pid, k.device));
            }
            let Some(d) = state.as_deref_mut() else { continue };
            if k.start_ns < swept_to {
                self.late_records += 1;
                continue;
            }
            let comm = is_comm(k.name_id);
            let wait =
                if waits.is_empty() || !comm { 0 } else { waits.get(&(k.pid, k.start_ns)).copied().unwrap_or(0) };
            // (two pushes: the common one writes the op's fields in place; one op from two
            // paths was built on the stack and read back whole, stalling store forwarding)
            match d.sweep.cached_class(k.name_id).filter(|_| !comm) {
                Some((class, rate)) => d.incoming.push(Op::new(k.start_ns, k.end_ns, class, rate, 0, k.name_id, true)),
                None => d.incoming.push(d.sweep.kernel_op_cached(k.start_ns, k.end_ns, k.name_id, comm, wait)),
            }
        }
        for m in &r.memops {
            new_newest = new_newest.max(m.start_ns);
            let Some(d) = self.devices.get_mut(&(m.pid, m.device)) else { continue };
            if m.start_ns < swept_to {
                self.late_records += 1;
                continue;
            }
            d.incoming.push(DevicePlan::copy_op(m.start_ns, m.end_ns));
        }
        let launcher = |pids: &HashMap<u32, PidState>, pid: u32, tid: u32| {
            pids.get(&pid).is_some_and(|p| p.launchers.contains(&tid))
        };
        let mut blocked: Vec<(u32, Reasoned)> = Vec::new();
        for s in r.stalls.iter().filter(|s| policy.counts(s.reason)) {
            if launcher(&self.pids, s.pid, s.tid) {
                blocked.push((s.pid, Reasoned::new(s.start_ns, s.end_ns, stall_reason_label(s.reason))));
            }
        }
        for f in r.file_io.iter().filter(|f| launcher(&self.pids, f.pid, f.tid)) {
            blocked.push((f.pid, Reasoned::new(f.start_ns, f.end_ns, "file I/O")));
        }
        for n in r.nccl.iter().filter(|n| n.phase == NcclPhase::Host as u32 && launcher(&self.pids, n.pid, n.tid)) {
            blocked.push((n.pid, Reasoned::new(n.start_ns, n.end_ns, "NCCL call")));
        }
        for (pid, iv) in blocked {
            // Long blocks came from the summary, in time.
            if iv.end_ns.saturating_sub(iv.start_ns) >= long {
                continue;
            }
            let Some(p) = self.pids.get_mut(&pid) else { continue };
            if iv.start_ns < swept_to {
                // Its time was swept already: left out, and counted.
                self.late_records += 1;
                continue;
            }
            p.incoming.push(iv);
        }
        self.newest = new_newest;
    }

    /// Keeps only what a sweep that has reached `t` still holds: records ending after it or
    /// starting at or after it (nothing has been swept yet: all are incoming).
    fn keep_unswept(&mut self, t: u64) {
        for d in self.devices.values_mut() {
            d.incoming.retain(|o| o.start >= t || o.end > t);
        }
        for p in self.pids.values_mut() {
            p.incoming.retain(|iv| iv.start_ns >= t || iv.end_ns > t);
        }
    }

    /// Sweeps every device from `swept_to` to `to`.
    fn advance(&mut self, to: u64) {
        let from = self.swept_to;
        let mut reasons_of: HashMap<u32, Blocked> = HashMap::new();
        for (pid, p) in self.pids.iter_mut() {
            let carry = &mut p.carry;
            p.incoming.retain(|iv| {
                let now = iv.start_ns < to;
                if now {
                    carry.push(*iv);
                }
                !now
            });
            // (the reason too: the order is the content's alone, however the intervals came in,
            // as a sweep in spans needs)
            p.carry.sort_unstable_by(|x, y| (x.start_ns, x.end_ns, x.reason).cmp(&(y.start_ns, y.end_ns, y.reason)));
            let merged = merge(p.carry.iter().map(|x| (x.start_ns, x.end_ns)));
            reasons_of.insert(*pid, Blocked { merged, reasons: p.carry.clone() });
            p.carry.retain(|iv| iv.end_ns > to);
        }
        let empty = Blocked { merged: Vec::new(), reasons: Vec::new() };
        for ((pid, _), d) in self.devices.iter_mut() {
            let carry = &mut d.carry;
            d.incoming.retain(|o| {
                let now = o.start < to;
                if now {
                    carry.push(*o);
                }
                !now
            });
            let b = reasons_of.get(pid).unwrap_or(&empty);
            d.sweep.feed(from, to, &mut d.carry, &b.merged, &b.reasons);
            d.carry.retain(|o| o.end > to);
        }
        self.swept_to = to;
    }
}
