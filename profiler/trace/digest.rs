//! The chunk digest: what the analysis's summary pass needs of a chunk, written by the writer
//! as a section right after the chunk's string table (spec: docs/trace-format.md, "Digest").
//!
//! The summary pass decompresses a chunk only up to the end of its digest (the first zstd
//! blocks of the frame) instead of the whole chunk, so a trace is decompressed once, by the
//! sweep, instead of twice. The digest holds:
//! - per (process, device): the first start, last start and last end of its kernels and copies,
//!   and the first start of its kernels that are not collectives;
//! - per (process, thread) that launched kernels: its first and last launch;
//! - per (process, device, kernel name) that is not a collective: total kernel time;
//! - whole records, filtered: collective kernels, NCCL records, synchronizing probed calls,
//!   NVTX step markers, clock syncs, PM sample intervals and the tensor activity of devices
//!   with intervals (in this chunk or before), checkpoint file
//!   I/O, host stalls and file I/O of at least [`DIGEST_LONG_NS`], session notes, and NCCL's
//!   algorithm records (`nccl_algo`).
//!
//! A reader whose [`DIGEST_VERSION`] differs (another collective-name rule, other filters)
//! ignores the digest and decodes the chunk whole. Records are those of the chunk, in its
//! order; nothing is derived from other chunks.

use std::collections::{HashMap, HashSet};

use super::classify::{is_checkpoint_syscall, is_collective_name};
use super::columns::{put_varint, Cursor};
use super::dense::DenseMap;
use super::error::DecodeError;
use super::format::{decode_sections, encode_record_sections};
use super::records::*;

pub use super::format::DIGEST_SECTION;
/// Bumped whenever what a digest holds, or the collective-name rule, changes (2: launch spans
/// take CUPTI's launch records too).
pub const DIGEST_VERSION: u64 = 2;
/// Host stalls and file I/O at least this long are in the digest (the summary keeps blocks of
/// at least half the reorder window: a reader with a window under twice this ignores digests).
pub const DIGEST_LONG_NS: u64 = 100_000_000;

/// Kernels and copies of one (process, device) in a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpan {
    /// Process id.
    pub pid: u32,
    /// CUDA device id.
    pub device: u32,
    /// First start of its kernels and copies, CLOCK_MONOTONIC ns.
    pub min_start: u64,
    /// Last start of its kernels and copies, CLOCK_MONOTONIC ns.
    pub max_start: u64,
    /// Last end of its kernels and copies, CLOCK_MONOTONIC ns.
    pub max_end: u64,
    /// first start of a kernel that is not a collective (`u64::MAX`: none)
    pub min_compute_start: u64,
}

/// Every launch of `batch` as (pid, tid, time, by CUPTI): the eBPF uprobe's [`KernelLaunch`]
/// records (false) and CUPTI's launch records ([`ApiCall::is_launch`], true; `record` leaves the
/// launch uprobes off for a process whose CUPTI sees its launches). Where both saw a launch it
/// counts twice, which changes neither a window's edges nor the set of launching threads.
///
/// A CUPTI launch can open a window but never end one: CUPTI keeps reporting launches after
/// the uprobes stop (`attach` detaches the host side first), and the last of them may have no
/// kernel record (CUPTI was switched off before they ran), so a window ended by them would
/// hold launched work it never recorded. Every launch whose kernel was recorded ends before
/// that kernel does, so nothing else is lost.
pub fn launch_times(batch: &RecordBatch) -> impl Iterator<Item = (u32, u32, u64, bool)> + '_ {
    batch
        .launches
        .iter()
        .map(|l| (l.pid, l.tid, l.time_ns, false))
        .chain(batch.api_calls.iter().filter(|a| a.is_launch()).map(|a| (a.pid, a.tid, a.start_ns, true)))
}

/// Launches of one (process, thread) in a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchSpan {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Its first launch in the chunk, CLOCK_MONOTONIC ns.
    pub first: u64,
    /// Its last launch in the chunk, CLOCK_MONOTONIC ns.
    pub last: u64,
    /// CUPTI's launch records, not the uprobe's: they open a window, never end one
    /// ([`launch_times`]). Stored as bit 32 of the tid.
    pub cupti: bool,
}

/// Total time of one kernel name (not a collective) on one (process, device) in a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameTime {
    /// Process id.
    pub pid: u32,
    /// CUDA device id.
    pub device: u32,
    /// Kernel name (string id).
    pub name_id: u32,
    /// Total kernel time, ns.
    pub ns: u64,
}

/// A chunk's digest section: spans, launches, kernel-name times and the filtered records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkDigest {
    /// The [`DIGEST_VERSION`] it was written with.
    pub version: u64,
    /// Kernels and copies per (process, device).
    pub spans: Vec<DeviceSpan>,
    /// Launches per (process, thread).
    pub launches: Vec<LaunchSpan>,
    /// Kernel time per (process, device, kernel name), collectives excepted.
    pub name_times: Vec<NameTime>,
    /// The records the summary pass needs whole (see the module docs).
    pub records: RecordBatch,
}

/// Whether the digest keeps this file I/O record (checkpoint writes, long blocks).
fn keeps_file_io(f: &FileIo) -> bool {
    is_checkpoint_syscall(f.syscall) || f.end_ns.saturating_sub(f.start_ns) >= DIGEST_LONG_NS
}

impl ChunkDigest {
    /// The digest of `batch`, whose kernel names are among `strings` (a chunk carries every
    /// string its records refer to). `pm_devices`: the (process, device) pairs with PM sample
    /// intervals in this chunk or an earlier one (updated here): only their tensor-activity
    /// samples are kept (NVML-like samples without intervals make no FLOP source).
    pub fn build(batch: &RecordBatch, strings: &[(u32, &str)], pm_devices: &mut HashSet<(u32, u32)>) -> ChunkDigest {
        // Name ids are small and dense: flags and slots indexed by id (DenseMap).
        let mut collective: DenseMap<()> = DenseMap::new();
        for (id, _) in strings.iter().filter(|(_, s)| is_collective_name(s)) {
            collective.insert(*id, ());
        }
        let is_comm = |id: u32| collective.contains(id);
        let mut d = ChunkDigest { version: DIGEST_VERSION, ..Default::default() };
        let mut span_at: HashMap<(u32, u32), usize> = HashMap::new();
        let mut span_of = |spans: &mut Vec<DeviceSpan>, pid: u32, device: u32, s: u64, e: u64| {
            *span_at.entry((pid, device)).or_insert_with(|| {
                spans.push(DeviceSpan {
                    pid,
                    device,
                    min_start: s,
                    max_start: s,
                    max_end: e,
                    min_compute_start: u64::MAX,
                });
                spans.len() - 1
            })
        };
        // per span: name id → index in name_times
        let mut name_slots: Vec<DenseMap<u32>> = Vec::new();
        // Kernels come in runs of one (process, device): one span lookup per run.
        for run in batch.kernels.chunk_by(|a, b| a.pid == b.pid && a.device == b.device) {
            let (pid, device) = (run[0].pid, run[0].device);
            let si = span_of(&mut d.spans, pid, device, run[0].start_ns, run[0].end_ns);
            if name_slots.len() <= si {
                name_slots.resize_with(si + 1, DenseMap::new);
            }
            let slots = &mut name_slots[si];
            let x = &mut d.spans[si];
            for k in run {
                x.min_start = x.min_start.min(k.start_ns);
                x.max_start = x.max_start.max(k.start_ns);
                x.max_end = x.max_end.max(k.end_ns);
                if is_comm(k.name_id) {
                    d.records.kernels.push(*k);
                    continue;
                }
                x.min_compute_start = x.min_compute_start.min(k.start_ns);
                let ns = k.end_ns.saturating_sub(k.start_ns);
                let names = &mut d.name_times;
                let at = *slots.get_or_insert_with(k.name_id, || {
                    names.push(NameTime { pid, device, name_id: k.name_id, ns: 0 });
                    names.len() as u32 - 1
                }) as usize;
                d.name_times[at].ns += ns;
            }
        }
        for m in &batch.memops {
            let si = span_of(&mut d.spans, m.pid, m.device, m.start_ns, m.end_ns);
            let x = &mut d.spans[si];
            x.min_start = x.min_start.min(m.start_ns);
            x.max_start = x.max_start.max(m.start_ns);
            x.max_end = x.max_end.max(m.end_ns);
        }
        let mut launch_at: HashMap<(u32, u32, bool), usize> = HashMap::new();
        for (pid, tid, t, cupti) in launch_times(batch) {
            let i = *launch_at.entry((pid, tid, cupti)).or_insert_with(|| {
                d.launches.push(LaunchSpan { pid, tid, first: t, last: t, cupti });
                d.launches.len() - 1
            });
            let x = &mut d.launches[i];
            x.first = x.first.min(t);
            x.last = x.last.max(t);
        }
        let r = &mut d.records;
        r.nccl.extend_from_slice(&batch.nccl);
        r.api_calls.extend(batch.api_calls.iter().filter(|a| {
            a.domain == ApiDomain::Probe as u32 && ProbedApi::from_u32(a.call_id).is_some_and(|x| x.is_sync())
        }));
        r.steps.extend(batch.steps.iter().filter(|s| s.source == StepSource::Nvtx as u32));
        r.clock_syncs.extend_from_slice(&batch.clock_syncs);
        r.notes.extend_from_slice(&batch.notes);
        r.nccl_algos.extend_from_slice(&batch.nccl_algos);
        r.costs.extend_from_slice(&batch.costs);
        for s in batch.samples.iter().filter(|s| s.metric == Metric::SampleIntervalNs as u32) {
            pm_devices.insert((s.pid, s.device));
        }
        r.samples.extend(batch.samples.iter().filter(|s| match Metric::from_u32(s.metric) {
            Some(Metric::SampleIntervalNs) => true,
            Some(Metric::TensorActive) => pm_devices.contains(&(s.pid, s.device)),
            _ => false,
        }));
        r.file_io.extend(batch.file_io.iter().filter(|f| keeps_file_io(f)));
        r.stalls.extend(batch.stalls.iter().filter(|s| s.end_ns.saturating_sub(s.start_ns) >= DIGEST_LONG_NS));
        d
    }

    /// Appends the digest's body (the section's bytes after its header).
    pub fn encode(&self, out: &mut Vec<u8>, scratch: &mut Vec<Vec<u8>>) {
        put_varint(out, self.version);
        put_varint(out, self.spans.len() as u64);
        for s in &self.spans {
            for v in [
                s.pid as u64,
                s.device as u64,
                s.min_start,
                s.max_start - s.min_start,
                s.max_end.wrapping_sub(s.min_start),
                s.min_compute_start.wrapping_sub(s.min_start),
            ] {
                put_varint(out, v);
            }
        }
        put_varint(out, self.launches.len() as u64);
        for l in &self.launches {
            for v in [l.pid as u64, l.tid as u64 | (l.cupti as u64) << 32, l.first, l.last - l.first] {
                put_varint(out, v);
            }
        }
        put_varint(out, self.name_times.len() as u64);
        for n in &self.name_times {
            for v in [n.pid as u64, n.device as u64, n.name_id as u64, n.ns] {
                put_varint(out, v);
            }
        }
        let count_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        let n = encode_record_sections(&self.records, out, scratch);
        out[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
    }

    /// Reads a digest body (`base`: its offset in the chunk, for error messages); `lean`: its
    /// kernels and API calls with only the columns the analysis reads
    /// ([`super::format::decode_chunk_lean_into`]). A digest of another version comes back with
    /// only its version set.
    pub fn decode(body: &[u8], base: usize, lean: bool) -> Result<ChunkDigest, DecodeError> {
        let mut cur = Cursor::with_base(body, base);
        let version = cur.varint()?;
        let mut d = ChunkDigest { version, ..Default::default() };
        if version != DIGEST_VERSION {
            return Ok(d);
        }
        let at = cur.offset();
        let narrow = |v: u64| u32::try_from(v).map_err(|_| DecodeError::new(at, "digest value out of range"));
        for [pid, device, min_start, a, b, c] in table::<6>(&mut cur)? {
            d.spans.push(DeviceSpan {
                pid: narrow(pid)?,
                device: narrow(device)?,
                min_start,
                max_start: min_start.wrapping_add(a),
                max_end: min_start.wrapping_add(b),
                min_compute_start: min_start.wrapping_add(c),
            });
        }
        for [pid, tid, first, len] in table::<4>(&mut cur)? {
            d.launches.push(LaunchSpan {
                pid: narrow(pid)?,
                tid: narrow(tid & 0xffff_ffff)?,
                first,
                last: first.wrapping_add(len),
                cupti: match tid >> 32 {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::new(at, "digest launch tid out of range")),
                },
            });
        }
        for [pid, device, name, ns] in table::<4>(&mut cur)? {
            d.name_times.push(NameTime { pid: narrow(pid)?, device: narrow(device)?, name_id: narrow(name)?, ns });
        }
        let sections = cur.u32_le()?;
        decode_sections(&mut cur, sections, &mut d.records, None, &|_| true, lean)?;
        if cur.remaining() != 0 {
            return Err(DecodeError::new(cur.offset(), "trailing bytes after the digest"));
        }
        Ok(d)
    }
}

/// A count, then that many entries of `N` varints (each at least one byte: the count is checked
/// against what is left before anything is allocated).
fn table<const N: usize>(cur: &mut Cursor<'_>) -> Result<Vec<[u64; N]>, DecodeError> {
    let n = cur.varint()? as usize;
    if n.saturating_mul(N) > cur.remaining() {
        return Err(DecodeError::new(cur.offset(), format!("digest claims {n} entries past its end")));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let mut e = [0u64; N];
        for x in e.iter_mut() {
            *x = cur.varint()?;
        }
        v.push(e);
    }
    Ok(v)
}
