//! Chrome trace event JSON in the shape PyTorch's profiler (Kineto) writes, so Perfetto UI,
//! chrome://tracing and Holistic Trace Analysis (HTA) open a ghostprof trace (docs/export.md).
//!
//! - GPU work (`kernel`, `gpu_memcpy`, `gpu_memset`) has `pid` = device and `tid` = stream, with
//!   Kineto's `args` (`device`, `stream`, `correlation`, `External id`, `grid`, `block`, ...);
//!   CUPTI's API records are `cuda_driver` / `cuda_runtime` events on the process and thread
//!   that made the call; an `ac2g` flow links each launch or copy call to its device work.
//! - Steps become `user_annotation` + `gpu_user_annotation` events named `ProfilerStep#N`; a
//!   step's device work is that of the CUDA calls made inside it (by correlation id, as Kineto).
//! - Timestamps are microseconds (3 decimals) since `baseTimeNanoseconds`, which is Unix time
//!   in ns of the first exported event (Kineto's convention); `ghostprof.monotonic_base_ns` is
//!   the same instant on the trace's CLOCK_MONOTONIC.
//! - ghostprof's own host records (off-CPU stalls, file I/O, eBPF launch probes) are events of
//!   categories `ghostprof_host` / `ghostprof_launch`, which Kineto consumers ignore.
//!
//! The trace is read chunk by chunk: a first pass finds processes, ranks, steps and the time
//! base (and, when there are steps, a second the correlation ids of each step's calls); the last
//! writes events through buffered writers as it decodes. Nothing holds all records.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::trace::*;

/// What to export and where.
#[derive(Debug, Clone, Default)]
pub struct ChromeOptions {
    /// Only this process (its CPU events and its devices).
    pub pid: Option<u32>,
    /// One file per process with device work in the directory `out` (HTA's layout: one file
    /// per rank) instead of one file with every process.
    pub per_process: bool,
    /// Replace existing output files (never a symlink, device or directory: [`crate::outfile`]).
    pub force: bool,
    /// Give the files (and a directory made for them) to this (uid, gid): the user under sudo.
    pub owner: Option<crate::outfile::Owner>,
}

/// One written file.
#[derive(Debug, Clone)]
pub struct ExportedFile {
    /// Where it was written.
    pub path: PathBuf,
    /// The processes in it.
    pub pids: Vec<u32>,
    /// `distributedInfo.rank`: the lowest rank in the file (0 when it holds none).
    pub rank: u32,
    /// Every rank in the file, ascending (several only when one file holds several ranks).
    pub ranks: Vec<u32>,
    /// `distributedInfo.world_size`.
    pub world_size: u32,
    /// Events in `traceEvents`.
    pub events: u64,
}

/// What the first pass learns about one process.
#[derive(Debug, Default, Clone)]
struct Proc {
    devices: BTreeSet<u32>,
    /// (rank, ranks) in the process's largest NCCL communicator, from its NCCL calls
    nccl_rank: Option<(u32, u32)>,
    /// the rank its ncclCommInitRank call returned (the communicator's size is not recorded)
    init_rank: Option<u32>,
    /// (start, end, step number), sorted by start
    steps: Vec<(u64, u64, u64)>,
    /// (lowest, highest correlation id of the CUDA calls made inside a step, the step's index),
    /// in step order (CUPTI numbers calls in order, so the ranges ascend)
    step_corr: Vec<(u32, u32, usize)>,
    has_events: bool,
}

struct Scan {
    procs: BTreeMap<u32, Proc>,
    /// earliest exported timestamp (CLOCK_MONOTONIC ns)
    t0: u64,
    /// (monotonic, unix) ns from a realtime clock sync
    realtime: Option<(u64, u64)>,
}

/// `gpu_only`: keep only processes with device work (HTA wants a GPU in every rank's file).
fn scan(reader: &TraceReader, only: Option<u32>, gpu_only: bool) -> Result<Scan, TraceError> {
    let mut procs: BTreeMap<u32, Proc> = BTreeMap::new();
    let mut t0 = u64::MAX;
    let mut realtime = None;
    let want = |pid: u32| only.is_none_or(|p| p == pid);
    reader.for_each_chunk(|c| {
        let r = &c.records;
        let mut touch = |pid: u32, t: u64| {
            if want(pid) {
                procs.entry(pid).or_default().has_events = true;
                t0 = t0.min(t);
            }
        };
        for k in &r.kernels {
            touch(k.pid, k.start_ns);
        }
        for m in &r.memops {
            touch(m.pid, m.start_ns);
        }
        for a in &r.api_calls {
            touch(a.pid, a.start_ns);
        }
        for n in &r.nccl {
            touch(n.pid, n.start_ns);
        }
        for s in &r.stalls {
            touch(s.pid, s.start_ns);
        }
        for f in &r.file_io {
            touch(f.pid, f.start_ns);
        }
        for l in &r.launches {
            touch(l.pid, l.time_ns);
        }
        for s in &r.steps {
            touch(s.pid, s.start_ns);
        }
        for k in r.kernels.iter().filter(|k| want(k.pid)) {
            procs.entry(k.pid).or_default().devices.insert(k.device);
        }
        for m in r.memops.iter().filter(|m| want(m.pid)) {
            procs.entry(m.pid).or_default().devices.insert(m.device);
        }
        for n in r.nccl.iter().filter(|n| want(n.pid) && n.phase == NcclPhase::Host as u32 && n.nranks > 0) {
            let p = procs.entry(n.pid).or_default();
            if p.nccl_rank.is_none_or(|r| n.nranks > r.1) {
                p.nccl_rank = Some((n.rank, n.nranks));
            }
        }
        for a in &r.api_calls {
            if want(a.pid)
                && a.domain == ApiDomain::Probe as u32
                && a.call_id == ProbedApi::NcclCommInitRank as u32
                && a.status == 0
            {
                procs.entry(a.pid).or_default().init_rank.get_or_insert(a.correlation_id);
            }
        }
        for s in r.steps.iter().filter(|s| want(s.pid)) {
            procs.entry(s.pid).or_default().steps.push((s.start_ns, s.end_ns.max(s.start_ns), s.step));
        }
        for s in &r.clock_syncs {
            if s.domain == ClockDomain::Realtime as u32 && realtime.is_none() {
                realtime = Some((s.monotonic_ns, s.other_ns));
            }
        }
    })?;
    procs.retain(|_, p| p.has_events && (!gpu_only || !p.devices.is_empty()));
    for p in procs.values_mut() {
        p.steps.sort_unstable();
    }
    // Which CUDA calls each step made, by correlation id (CUPTI numbers calls in order): the
    // device work a step queued is the work of those calls, as Kineto attributes it.
    if procs.values().any(|p| !p.steps.is_empty()) {
        let mut ranges: HashMap<u32, Vec<Option<(u32, u32)>>> =
            procs.iter().map(|(pid, p)| (*pid, vec![None; p.steps.len()])).collect();
        reader.for_each_chunk(|c| {
            for a in &c.records.api_calls {
                let cuda = a.domain == ApiDomain::CudaDriver as u32 || a.domain == ApiDomain::CudaRuntime as u32;
                if !cuda || a.correlation_id == 0 || a.call_id >= crate::collect::cupti::SYNC_CALL_BASE {
                    continue;
                }
                let (Some(p), Some(r)) = (procs.get(&a.pid), ranges.get_mut(&a.pid)) else { continue };
                let i = p.steps.partition_point(|s| s.0 <= a.start_ns);
                if i == 0 || a.start_ns > p.steps[i - 1].1 {
                    continue;
                }
                let r = r[i - 1].get_or_insert((a.correlation_id, a.correlation_id));
                r.0 = r.0.min(a.correlation_id);
                r.1 = r.1.max(a.correlation_id);
            }
        })?;
        for (pid, r) in ranges {
            if let Some(p) = procs.get_mut(&pid) {
                p.step_corr = r.into_iter().enumerate().filter_map(|(i, r)| r.map(|(lo, hi)| (lo, hi, i))).collect();
            }
        }
    }
    Ok(Scan { procs, t0: if t0 == u64::MAX { 0 } else { t0 }, realtime })
}

/// CUPTI driver callback ids ghostprof names (the rest are `cuda driver call (cbid N)`), and
/// whether the call puts work on a device (a launch or a copy: the start of an `ac2g` flow).
fn driver_api(cbid: u32) -> (Option<&'static str>, bool) {
    match cbid {
        1 => (Some("cuInit"), false),
        17 => (Some("cuCtxSynchronize"), false),
        19 => (Some("cuModuleLoadData"), false),
        23 => (Some("cuModuleGetFunction"), false),
        118 => (Some("cuEventCreate"), false),
        119 => (Some("cuEventRecord"), false),
        121 => (Some("cuEventSynchronize"), false),
        124 => (Some("cuStreamCreate"), false),
        126 => (Some("cuStreamSynchronize"), false),
        235 => (Some("cuCtxCreate_v2"), false),
        243 => (Some("cuMemAlloc_v2"), false),
        245 => (Some("cuMemFree_v2"), false),
        276 => (Some("cuMemcpyHtoD_v2"), true),
        277 => (Some("cuMemcpyHtoDAsync_v2"), true),
        278 => (Some("cuMemcpyDtoH_v2"), true),
        279 => (Some("cuMemcpyDtoHAsync_v2"), true),
        295 => (Some("cuStreamWaitEvent"), false),
        307 => (Some("cuLaunchKernel"), true),
        386 => (Some("cuDevicePrimaryCtxRetain"), false),
        442 => (Some("cuLaunchKernel_ptsz"), true),
        477 => (Some("cuLaunchCooperativeKernel"), true),
        514 => (Some("cuGraphLaunch"), true),
        652 => (Some("cuLaunchKernelEx"), true),
        653 => (Some("cuLaunchKernelEx_ptsz"), true),
        _ => (None, false),
    }
}

fn runtime_api(cbid: u32) -> (Option<&'static str>, bool) {
    match cbid {
        211 => (Some("cudaLaunchKernel"), true),
        _ => (None, false),
    }
}

/// Kineto's names for CUPTI synchronization records.
fn sync_name(kind: u32) -> &'static str {
    match kind {
        1 => "Event Sync",
        2 => "Stream Wait Event",
        3 => "Stream Sync",
        4 => "Context Sync",
        _ => "Sync",
    }
}

fn memcpy_name(kind: u32) -> &'static str {
    match MemOpKind::from_u32(kind) {
        Some(MemOpKind::HtoD) => "Memcpy HtoD (Host -> Device)",
        Some(MemOpKind::DtoH) => "Memcpy DtoH (Device -> Host)",
        Some(MemOpKind::DtoD) => "Memcpy DtoD (Device -> Device)",
        Some(MemOpKind::HtoH) => "Memcpy HtoH (Host -> Host)",
        Some(MemOpKind::PtoP) => "Memcpy PtoP (Device -> Device)",
        Some(MemOpKind::Memset) => "Memset (Device)",
        _ => "Memcpy Unknown",
    }
}

/// The event name of a file-I/O syscall (x86_64 numbers, as the sched program records them).
fn file_io_label(syscall: i32) -> &'static str {
    match syscall {
        74 => "fsync",
        75 => "fdatasync",
        277 => "sync_file_range",
        2 | 257 | 85 => "open (truncating)",
        77 => "ftruncate",
        285 => "fallocate",
        nr if WRITE_SYSCALLS.contains(&nr) => "file write",
        _ => "file read",
    }
}

/// A JSON string literal (quotes included): names are untrusted input.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"?\"".into())
}

/// One output file being written.
struct Sink {
    path: PathBuf,
    /// Its temporary file, renamed into place when complete (removed if dropped before).
    pending: crate::outfile::PendingOutput,
    w: BufWriter<File>,
    events: u64,
    pids: Vec<u32>,
    rank: u32,
    ranks: Vec<u32>,
    world_size: u32,
    /// (pid, tid) pairs whose thread_name metadata is written
    named: HashSet<(u64, u64)>,
}

impl Sink {
    /// Writes one event object (the text between its braces).
    fn event(&mut self, body: std::fmt::Arguments<'_>) -> std::io::Result<()> {
        let sep = if self.events == 0 { "\n  " } else { ",\n  " };
        self.w.write_all(sep.as_bytes())?;
        self.w.write_all(b"{")?;
        self.w.write_fmt(body)?;
        self.w.write_all(b"}")?;
        self.events += 1;
        Ok(())
    }
}

/// Formats nanoseconds after the base as Kineto does: microseconds with 3 decimals.
struct Us(u64);

impl std::fmt::Display for Us {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

struct Exporter<'a> {
    scan: &'a Scan,
    sinks: Vec<Sink>,
    /// pid → (sink index, process index within that sink)
    route: HashMap<u32, (usize, u64)>,
    /// (pid, device) → the GPU's `pid` in the file
    gpu_pid: HashMap<(u32, u32), u64>,
    strings: HashMap<u32, String>,
    functions: HashMap<(u32, u64), u32>,
    /// (pid, step index in `Proc::steps`, device) → device work span
    step_spans: BTreeMap<StepKey, (u64, u64)>,
}

/// (pid, step index in `Proc::steps`, device).
type StepKey = (u32, usize, u32);

/// The tid of the GPU track that holds step annotations.
const STEP_TID: u64 = 1 << 31;

/// Added to every CUPTI correlation id written (`correlation`, `External id`, flow ids), on the
/// calls' and the device work's side alike. HTA stores a file's correlation column in the
/// smallest integer type that holds its values and then writes event indices into a column of
/// that type: with CUPTI's small ids (a few thousand) that is int16, and a file of more than
/// 32,767 events fails to load. From 2^16 up, the column is at least int32.
pub const CORRELATION_OFFSET: u64 = 1 << 16;

/// A CUPTI correlation id as written (0, none, stays 0).
fn corr_id(corr: u32) -> u64 {
    if corr == 0 {
        0
    } else {
        corr as u64 + CORRELATION_OFFSET
    }
}

impl Exporter<'_> {
    fn ts(&self, t: u64) -> Us {
        Us(t.saturating_sub(self.scan.t0))
    }

    fn name(&self, id: u32) -> String {
        match self.strings.get(&id) {
            Some(s) => q(s),
            None => q(&format!("unnamed ({id})")),
        }
    }

    /// Flow ids are the written correlation ids, made unique per process when one file holds
    /// several.
    fn flow_id(&self, pid: u32, corr: u32) -> u64 {
        let k = self.route.get(&pid).map_or(0, |r| r.1);
        (k << 33) | corr_id(corr)
    }

    /// The file and GPU `pid` of `pid`'s `device`.
    fn gpu(&self, pid: u32, device: u32) -> Option<(usize, u64)> {
        let &(si, _) = self.route.get(&pid)?;
        Some((si, self.gpu_pid.get(&(pid, device)).copied().unwrap_or(device as u64)))
    }

    fn thread_name(&mut self, si: usize, pid: u64, tid: u64, name: &str) -> std::io::Result<()> {
        if self.sinks[si].named.insert((pid, tid)) {
            let n = q(name);
            self.sinks[si].event(format_args!(
                r#""name": "thread_name", "ph": "M", "ts": 0.000, "pid": {pid}, "tid": {tid}, "args": {{"name": {n}}}"#
            ))?;
        }
        Ok(())
    }

    /// Device work belongs to the step that made its launch call (found by correlation id);
    /// work without one, to the step whose host range it starts in.
    fn note_step_span(&mut self, pid: u32, device: u32, corr: u32, start: u64, end: u64) {
        let Some(p) = self.scan.procs.get(&pid) else { return };
        let by_corr = (corr != 0)
            .then(|| {
                let j = p.step_corr.partition_point(|r| r.1 < corr);
                p.step_corr.get(j).filter(|r| r.0 <= corr).map(|r| r.2)
            })
            .flatten();
        let step = by_corr.or_else(|| {
            let i = p.steps.partition_point(|s| s.0 <= start);
            (i > 0 && start <= p.steps[i - 1].1).then(|| i - 1)
        });
        let Some(i) = step else { return };
        let e = self.step_spans.entry((pid, i, device)).or_insert((start, end));
        e.0 = e.0.min(start);
        e.1 = e.1.max(end);
    }

    fn chunk(&mut self, c: &Chunk) -> std::io::Result<()> {
        self.strings.extend(c.strings.iter().cloned());
        let r = &c.records;
        for f in &r.functions {
            self.functions.insert((f.pid, f.func), f.name_id);
        }
        for p in &r.processes {
            if let Some(&(si, _)) = self.route.get(&p.pid) {
                let name = self.strings.get(&p.name_id).cloned().unwrap_or_default();
                if !name.is_empty() && self.sinks[si].named.insert((p.pid as u64, u64::MAX)) {
                    let n = q(&format!("{name} ({})", p.pid));
                    self.sinks[si].event(format_args!(
                        r#""name": "process_name", "ph": "M", "ts": 0.000, "pid": {}, "tid": 0, "args": {{"name": {n}}}"#,
                        p.pid
                    ))?;
                }
                self.thread_name(si, p.pid as u64, p.pid as u64, &format!("thread {} ({name})", p.pid))?;
            }
        }
        for t in &r.threads {
            if let Some(&(si, _)) = self.route.get(&t.pid) {
                let name = self.strings.get(&t.name_id).cloned().unwrap_or_default();
                self.thread_name(si, t.pid as u64, t.tid as u64, &format!("thread {} ({name})", t.tid))?;
            }
        }
        for k in &r.kernels {
            let Some((si, gp)) = self.gpu(k.pid, k.device) else { continue };
            self.note_step_span(k.pid, k.device, k.correlation_id, k.start_ns, k.end_ns);
            self.thread_name(si, gp, k.stream, &format!("stream {}", k.stream))?;
            let (ts, dur, name) = (self.ts(k.start_ns), Us(k.end_ns.saturating_sub(k.start_ns)), self.name(k.name_id));
            let corr = if k.correlation_id != 0 {
                format!(r#""External id": {0}, "correlation": {0}, "#, corr_id(k.correlation_id))
            } else {
                String::new()
            };
            let flags = if k.flags != 0 { format!(r#", "ghostprof flags": {}"#, k.flags) } else { String::new() };
            self.sinks[si].event(format_args!(
                r#""ph": "X", "cat": "kernel", "name": {name}, "pid": {gp}, "tid": {tid}, "ts": {ts}, "dur": {dur}, "args": {{{corr}"device": {dev}, "stream": {tid}, "registers per thread": {regs}, "shared memory": {shm}, "grid": [{gx}, {gy}, {gz}], "block": [{bx}, {by}, {bz}]{flags}}}"#,
                tid = k.stream,
                dev = k.device,
                regs = k.registers_per_thread,
                shm = k.shared_mem_bytes,
                gx = k.grid_x,
                gy = k.grid_y,
                gz = k.grid_z,
                bx = k.block_x,
                by = k.block_y,
                bz = k.block_z,
            ))?;
            if k.correlation_id != 0 {
                let id = self.flow_id(k.pid, k.correlation_id);
                self.sinks[si].event(format_args!(
                    r#""ph": "f", "id": {id}, "pid": {gp}, "tid": {tid}, "ts": {ts}, "cat": "ac2g", "name": "ac2g", "bp": "e""#,
                    tid = k.stream
                ))?;
            }
        }
        for m in &r.memops {
            let Some((si, gp)) = self.gpu(m.pid, m.device) else { continue };
            self.note_step_span(m.pid, m.device, m.correlation_id, m.start_ns, m.end_ns);
            self.thread_name(si, gp, m.stream, &format!("stream {}", m.stream))?;
            let d = m.end_ns.saturating_sub(m.start_ns);
            let (ts, dur) = (self.ts(m.start_ns), Us(d));
            let cat = if m.kind == MemOpKind::Memset as u32 { "gpu_memset" } else { "gpu_memcpy" };
            let bw = if d > 0 { m.bytes as f64 / d as f64 } else { 0.0 };
            let corr = if m.correlation_id != 0 {
                format!(r#""External id": {0}, "correlation": {0}, "#, corr_id(m.correlation_id))
            } else {
                String::new()
            };
            self.sinks[si].event(format_args!(
                r#""ph": "X", "cat": "{cat}", "name": "{name}", "pid": {gp}, "tid": {tid}, "ts": {ts}, "dur": {dur}, "args": {{{corr}"device": {dev}, "stream": {tid}, "bytes": {bytes}, "memory bandwidth (GB/s)": {bw:.3}}}"#,
                name = memcpy_name(m.kind),
                tid = m.stream,
                dev = m.device,
                bytes = m.bytes,
            ))?;
            if m.correlation_id != 0 {
                let id = self.flow_id(m.pid, m.correlation_id);
                self.sinks[si].event(format_args!(
                    r#""ph": "f", "id": {id}, "pid": {gp}, "tid": {tid}, "ts": {ts}, "cat": "ac2g", "name": "ac2g", "bp": "e""#,
                    tid = m.stream
                ))?;
            }
        }
        for a in &r.api_calls {
            let Some(&(si, _)) = self.route.get(&a.pid) else { continue };
            let (ts, dur) = (self.ts(a.start_ns), Us(a.end_ns.saturating_sub(a.start_ns)));
            let domain = ApiDomain::from_u32(a.domain);
            if domain == Some(crate::collect::cupti::SYNC_DOMAIN) && a.call_id >= crate::collect::cupti::SYNC_CALL_BASE
            {
                // A CUPTI synchronization record: no thread; shown on the process, without a
                // `stream` arg so HTA does not count it as device work.
                let name = sync_name(a.call_id - crate::collect::cupti::SYNC_CALL_BASE);
                self.sinks[si].event(format_args!(
                    r#""ph": "X", "cat": "cuda_sync", "name": "{name}", "pid": {pid}, "tid": {pid}, "ts": {ts}, "dur": {dur}, "args": {{"correlation": {corr}, "wait_on_stream": {stream}}}"#,
                    pid = a.pid,
                    corr = corr_id(a.correlation_id),
                    stream = a.stream,
                ))?;
                continue;
            }
            let (cat, name, device_work) = match domain {
                Some(ApiDomain::CudaDriver) => {
                    let (n, w) = driver_api(a.call_id);
                    (
                        "cuda_driver",
                        n.map_or_else(|| format!("cuda driver call (cbid {})", a.call_id), str::to_string),
                        w,
                    )
                }
                Some(ApiDomain::CudaRuntime) => {
                    let (n, w) = runtime_api(a.call_id);
                    (
                        "cuda_runtime",
                        n.map_or_else(|| format!("cuda runtime call (cbid {})", a.call_id), str::to_string),
                        w,
                    )
                }
                Some(ApiDomain::Probe) => (
                    "ghostprof_host",
                    format!("probe: {}", ProbedApi::from_u32(a.call_id).map_or("unknown", |p| p.name())),
                    false,
                ),
                _ => ("ghostprof_host", format!("{} call {}", ApiDomain::name_of(a.domain), a.call_id), false),
            };
            let args = if matches!(domain, Some(ApiDomain::CudaDriver | ApiDomain::CudaRuntime)) {
                if a.correlation_id != 0 {
                    format!(
                        r#""External id": {0}, "cbid": {1}, "correlation": {0}"#,
                        corr_id(a.correlation_id),
                        a.call_id
                    )
                } else {
                    format!(r#""cbid": {}"#, a.call_id)
                }
            } else {
                format!(r#""status": {}"#, a.status)
            };
            self.sinks[si].event(format_args!(
                r#""ph": "X", "cat": "{cat}", "name": {name}, "pid": {pid}, "tid": {tid}, "ts": {ts}, "dur": {dur}, "args": {{{args}}}"#,
                name = q(&name),
                pid = a.pid,
                tid = a.tid,
            ))?;
            if device_work && a.correlation_id != 0 {
                let id = self.flow_id(a.pid, a.correlation_id);
                self.sinks[si].event(format_args!(
                    r#""ph": "s", "id": {id}, "pid": {pid}, "tid": {tid}, "ts": {ts}, "cat": "ac2g", "name": "ac2g""#,
                    pid = a.pid,
                    tid = a.tid,
                ))?;
            }
        }
        for n in &r.nccl {
            let op = CollOp::name_of(n.op);
            let dtype = NcclDtype::name_of(n.dtype);
            let (ts, dur) = (self.ts(n.start_ns), Us(n.end_ns.saturating_sub(n.start_ns)));
            if n.phase == NcclPhase::Host as u32 {
                let Some(&(si, _)) = self.route.get(&n.pid) else { continue };
                self.sinks[si].event(format_args!(
                    r#""ph": "X", "cat": "user_annotation", "name": "nccl:{op}", "pid": {pid}, "tid": {tid}, "ts": {ts}, "dur": {dur}, "args": {{"Collective name": "{op}", "In msg nelems": {count}, "Out msg nelems": {count}, "Group size": {nranks}, "dtype": "{dtype}", "Rank": {rank}, "Seq": {seq}, "bytes": {bytes}}}"#,
                    pid = n.pid,
                    tid = n.tid,
                    count = n.count,
                    nranks = n.nranks,
                    rank = n.rank,
                    seq = n.seq,
                    bytes = n.bytes,
                ))?;
            } else {
                // The collective's span on the device, as an annotation (not device work: the
                // device work is the NCCL kernel's own record).
                let Some((si, gp)) = self.gpu(n.pid, n.device) else { continue };
                self.sinks[si].event(format_args!(
                    r#""ph": "X", "cat": "gpu_user_annotation", "name": "nccl:{op}", "pid": {gp}, "tid": {tid}, "ts": {ts}, "dur": {dur}, "args": {{"Seq": {seq}, "bytes": {bytes}}}"#,
                    tid = STEP_TID + 1,
                    seq = n.seq,
                    bytes = n.bytes,
                ))?;
            }
        }
        for s in &r.steps {
            let Some(&(si, _)) = self.route.get(&s.pid) else { continue };
            let (ts, dur) = (self.ts(s.start_ns), Us(s.end_ns.saturating_sub(s.start_ns)));
            let label = self.name(s.name_id);
            self.sinks[si].event(format_args!(
                r#""ph": "X", "cat": "user_annotation", "name": "ProfilerStep#{step}", "pid": {pid}, "tid": {pid}, "ts": {ts}, "dur": {dur}, "args": {{"ghostprof step source": "{src}", "ghostprof step name": {label}}}"#,
                step = s.step,
                pid = s.pid,
                src = StepSource::name_of(s.source),
            ))?;
        }
        for st in &r.stalls {
            let Some(&(si, _)) = self.route.get(&st.pid) else { continue };
            let (ts, dur) = (self.ts(st.start_ns), Us(st.end_ns.saturating_sub(st.start_ns)));
            self.sinks[si].event(format_args!(
                r#""ph": "X", "cat": "ghostprof_host", "name": "off-CPU: {reason}", "pid": {pid}, "tid": {tid}, "ts": {ts}, "dur": {dur}, "args": {{"syscall": {sc}}}"#,
                reason = StallReason::name_of(st.reason),
                pid = st.pid,
                tid = st.tid,
                sc = st.syscall,
            ))?;
        }
        for f in &r.file_io {
            let Some(&(si, _)) = self.route.get(&f.pid) else { continue };
            let (ts, dur) = (self.ts(f.start_ns), Us(f.end_ns.saturating_sub(f.start_ns)));
            let what = file_io_label(f.syscall);
            self.sinks[si].event(format_args!(
                r#""ph": "X", "cat": "ghostprof_host", "name": "{what}", "pid": {pid}, "tid": {tid}, "ts": {ts}, "dur": {dur}, "args": {{"bytes": {bytes}, "fd": {fd}, "syscall": {sc}}}"#,
                pid = f.pid,
                tid = f.tid,
                bytes = f.bytes,
                fd = f.fd,
                sc = f.syscall,
            ))?;
        }
        for l in &r.launches {
            let Some(&(si, _)) = self.route.get(&l.pid) else { continue };
            let ts = self.ts(l.time_ns);
            let func = match self.functions.get(&(l.pid, l.func)) {
                Some(id) => self.name(*id),
                None => q(&format!("{:#x}", l.func)),
            };
            self.sinks[si].event(format_args!(
                r#""ph": "i", "s": "t", "cat": "ghostprof_launch", "name": "{api}", "pid": {pid}, "tid": {tid}, "ts": {ts}, "args": {{"function": {func}, "stream": "{stream:#x}", "grid": [{gx}, {gy}, {gz}], "block": [{bx}, {by}, {bz}]}}"#,
                api = ProbedApi::name_of(l.api),
                pid = l.pid,
                tid = l.tid,
                stream = l.stream,
                gx = l.grid_x,
                gy = l.grid_y,
                gz = l.grid_z,
                bx = l.block_x,
                by = l.block_y,
                bz = l.block_z,
            ))?;
        }
        // One counter event per sample instant of a device (Kineto writes a counter's series
        // as the args of one `C` event): its metrics are the args.
        let mut i = 0;
        while i < r.samples.len() {
            let s0 = &r.samples[i];
            let mut j = i;
            let mut args = String::new();
            let mut seen: Vec<u32> = Vec::new();
            while let Some(s) = r.samples.get(j) {
                if (s.pid, s.device, s.time_ns) != (s0.pid, s0.device, s0.time_ns) || seen.contains(&s.metric) {
                    break;
                }
                seen.push(s.metric);
                let value = if s.value.is_finite() { s.value } else { 0.0 };
                if !args.is_empty() {
                    args.push_str(", ");
                }
                args.push_str(&format!(r#""{}": {value}"#, Metric::name_of(s.metric)));
                j += 1;
            }
            i = j;
            let targets: Vec<(usize, u64)> = if s0.pid != 0 {
                self.gpu(s0.pid, s0.device).into_iter().collect()
            } else {
                // Host-wide (NVML) samples go to every file with a process on that device.
                let mut v: Vec<(usize, u64)> = self
                    .gpu_pid
                    .iter()
                    .filter(|((_, d), _)| *d == s0.device)
                    .filter_map(|((p, _), gp)| self.route.get(p).map(|r| (r.0, *gp)))
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let ts = self.ts(s0.time_ns);
            let name = if s0.pid != 0 { "device samples (CUPTI)" } else { "device samples (NVML)" };
            for (si, gp) in targets {
                self.sinks[si].event(format_args!(
                    r#""ph": "C", "cat": "ghostprof_sample", "name": "{name}", "pid": {gp}, "tid": 0, "ts": {ts}, "args": {{{args}}}"#
                ))?;
            }
        }
        Ok(())
    }

    /// Step annotations on the GPU tracks: each step's device work (of kernels and copies that
    /// started inside the step), clipped so consecutive steps do not overlap.
    fn finish_steps(&mut self) -> std::io::Result<()> {
        let spans: Vec<(StepKey, (u64, u64))> = self.step_spans.iter().map(|(k, v)| (*k, *v)).collect();
        let mut prev_end: HashMap<(u32, u32), u64> = HashMap::new();
        for ((pid, i, device), (s, e)) in spans {
            let Some((si, gp)) = self.gpu(pid, device) else { continue };
            let step = self.scan.procs[&pid].steps[i].2;
            let s = s.max(prev_end.get(&(pid, device)).copied().unwrap_or(0));
            prev_end.insert((pid, device), e.max(s));
            let (ts, dur) = (self.ts(s), Us(e.saturating_sub(s)));
            self.thread_name(si, gp, STEP_TID, "steps")?;
            self.sinks[si].event(format_args!(
                r#""ph": "X", "cat": "gpu_user_annotation", "name": "ProfilerStep#{step}", "pid": {gp}, "tid": {STEP_TID}, "ts": {ts}, "dur": {dur}, "args": {{"device": {device}}}"#
            ))?;
        }
        Ok(())
    }
}

/// Ranks are NCCL's: a process's rank in its largest communicator (from its NCCL calls, else
/// from its ncclCommInitRank), the world size that communicator's; a process without NCCL is
/// not a rank (a launcher). Without NCCL ranks (or with two processes claiming one), the
/// processes with device work are the ranks, in pid order. Processes with device work but no
/// NCCL rank beside NCCL ranks (each needs a file and a rank for HTA) follow the last one.
/// Returns the rank of each ranked pid and the world size.
fn ranks(procs: &BTreeMap<u32, Proc>) -> (HashMap<u32, u32>, u32) {
    let nccl: Vec<(u32, u32, u32)> = procs
        .iter()
        .filter_map(|(pid, p)| match (p.nccl_rank, p.init_rank) {
            (Some((r, n)), _) => Some((*pid, r, n)),
            (None, Some(r)) => Some((*pid, r, 0)),
            (None, None) => None,
        })
        .collect();
    let distinct: BTreeSet<u32> = nccl.iter().map(|r| r.1).collect();
    if !nccl.is_empty() && distinct.len() == nccl.len() {
        let mut rank: HashMap<u32, u32> = nccl.iter().map(|(pid, r, _)| (*pid, *r)).collect();
        let mut world = nccl.iter().map(|r| r.2.max(r.1 + 1)).max().unwrap_or(1);
        for (pid, p) in procs {
            if !p.devices.is_empty() && !rank.contains_key(pid) {
                rank.insert(*pid, world);
                world += 1;
            }
        }
        return (rank, world);
    }
    let gpu: Vec<u32> = procs.iter().filter(|(_, p)| !p.devices.is_empty()).map(|(pid, _)| *pid).collect();
    let world = (gpu.len() as u32).max(1);
    (gpu.into_iter().zip(0..).collect(), world)
}

/// The path of the file for `pid` in per-process mode.
fn per_process_path(dir: &Path, trace: &Path, rank: u32, pid: u32) -> PathBuf {
    let stem = trace.file_stem().and_then(|s| s.to_str()).unwrap_or("trace");
    dir.join(format!("{stem}.rank{rank}.pid{pid}.pt.trace.json"))
}

/// What an export wrote, and the reader's warnings (a file cut short, a damaged index).
#[derive(Debug, Clone, Default)]
pub struct ExportSummary {
    /// The files written: one per process with device work, in pid order (a directory), or the one file.
    pub files: Vec<ExportedFile>,
    /// The reader's warnings and the export's own (several ranks in one file).
    pub warnings: Vec<String>,
}

/// Exports `trace` to `out` (a file, or a directory with `per_process`).
pub fn export_chrome(trace: &Path, out: &Path, opts: &ChromeOptions) -> anyhow::Result<ExportSummary> {
    let reader = TraceReader::open(trace)?;
    let scan = scan(&reader, opts.pid, opts.per_process)?;
    if scan.procs.is_empty() {
        let what = if opts.per_process { "device activity" } else { "events" };
        match opts.pid {
            Some(p) => bail!("process {p} has no {what} in {}", trace.display()),
            None => bail!("{} has no {what} to export", trace.display()),
        }
    }
    let pids: Vec<u32> = scan.procs.keys().copied().collect();
    let (rank_of, world_all) = ranks(&scan.procs);
    let mut warnings = Vec::new();

    let base_unix_ns = match scan.realtime {
        Some((mono, unix)) => (unix as i128 + scan.t0 as i128 - mono as i128).max(0) as u64,
        None => reader.header().meta["created_unix_ns"].as_u64().unwrap_or(0),
    };

    // GPU pids: the device, as Kineto; where one file has several processes on one device
    // number, the later ones get `1000 * k + device`.
    let mut gpu_pid = HashMap::new();
    let groups: Vec<Vec<u32>> =
        if opts.per_process { pids.iter().map(|p| vec![*p]).collect() } else { vec![pids.clone()] };
    let mut route = HashMap::new();
    let mut sinks = Vec::new();
    if opts.per_process {
        crate::outfile::create_output_dir(out, opts.owner)?;
    }
    for (si, group) in groups.iter().enumerate() {
        let mut used: HashSet<u32> = HashSet::new();
        for (k, pid) in group.iter().enumerate() {
            route.insert(*pid, (si, k as u64));
            for d in &scan.procs[pid].devices {
                let gp = if used.insert(*d) { *d } else { 1000 * (k as u32 + 1) + d };
                gpu_pid.insert((*pid, *d), gp as u64);
            }
        }
        let file_ranks: BTreeSet<u32> = group.iter().filter_map(|p| rank_of.get(p).copied()).collect();
        let rank = file_ranks.first().copied().unwrap_or(0);
        let world = if file_ranks.is_empty() { 1 } else { world_all };
        if file_ranks.len() > 1 {
            warnings.push(format!(
                "{} holds {} ranks (its distributedInfo names rank {rank}); HTA reads one file per rank: export to a directory (-o DIR/)",
                out.display(),
                file_ranks.len()
            ));
        }
        let path = if opts.per_process { per_process_path(out, trace, rank, group[0]) } else { out.to_path_buf() };
        let (file, pending) = crate::outfile::create_output(&path, opts.force, opts.owner)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let devices: BTreeSet<(u64, u32)> = group
            .iter()
            .flat_map(|p| scan.procs[p].devices.iter().map(move |d| (p, d)))
            .map(|(p, d)| (gpu_pid[&(*p, *d)], *d))
            .collect();
        let props: Vec<String> =
            devices.iter().map(|(gp, d)| format!(r#"{{"id": {gp}, "name": "GPU {d}"}}"#)).collect();
        // distributedInfo comes first: HTA finds a file's rank with the first `"rank": N` line.
        writeln!(w, "{{")?;
        writeln!(w, r#"  "distributedInfo": {{"backend": "nccl", "rank": {rank}, "world_size": {world}}},"#)?;
        writeln!(w, r#"  "schemaVersion": 1,"#)?;
        writeln!(w, r#"  "deviceProperties": [{}],"#, props.join(", "))?;
        writeln!(w, r#"  "displayTimeUnit": "ms","#)?;
        writeln!(w, r#"  "baseTimeNanoseconds": {base_unix_ns},"#)?;
        writeln!(
            w,
            r#"  "ghostprof": {{"version": "{}", "trace": {}, "pids": {:?}, "monotonic_base_ns": {}, "unix_base_from": "{}"}},"#,
            env!("CARGO_PKG_VERSION"),
            q(&trace.display().to_string()),
            group,
            scan.t0,
            if scan.realtime.is_some() { "clock_sync" } else { "trace_header" }
        )?;
        write!(w, r#"  "traceEvents": ["#)?;
        sinks.push(Sink {
            path,
            pending,
            w,
            events: 0,
            pids: group.clone(),
            rank,
            ranks: file_ranks.into_iter().collect(),
            world_size: world,
            named: HashSet::new(),
        });
    }
    let mut ex = Exporter {
        scan: &scan,
        sinks,
        route,
        gpu_pid,
        strings: HashMap::new(),
        functions: HashMap::new(),
        step_spans: BTreeMap::new(),
    };
    let result = (|| -> anyhow::Result<()> {
        // Process and GPU track names first.
        let mut procs: Vec<(u32, usize)> = ex.route.iter().map(|(p, r)| (*p, r.0)).collect();
        procs.sort_unstable();
        for (pid, si) in procs {
            ex.sinks[si].event(format_args!(
                r#""name": "process_name", "ph": "M", "ts": 0.000, "pid": {pid}, "tid": 0, "args": {{"name": "process {pid}"}}"#
            ))?;
            ex.sinks[si].event(format_args!(
                r#""name": "process_labels", "ph": "M", "ts": 0.000, "pid": {pid}, "tid": 0, "args": {{"labels": "CPU"}}"#
            ))?;
        }
        let mut gpus: Vec<((u32, u32), u64)> = ex.gpu_pid.iter().map(|(k, v)| (*k, *v)).collect();
        gpus.sort_unstable();
        for ((pid, d), gp) in gpus {
            let Some(&(si, _)) = ex.route.get(&pid) else { continue };
            ex.sinks[si].event(format_args!(
                r#""name": "process_name", "ph": "M", "ts": 0.000, "pid": {gp}, "tid": 0, "args": {{"name": "GPU {d}"}}"#
            ))?;
            ex.sinks[si].event(format_args!(
                r#""name": "process_labels", "ph": "M", "ts": 0.000, "pid": {gp}, "tid": 0, "args": {{"labels": "GPU {d}"}}"#
            ))?;
            ex.sinks[si].event(format_args!(
                r#""name": "process_sort_index", "ph": "M", "ts": 0.000, "pid": {gp}, "tid": 0, "args": {{"sort_index": {}}}"#,
                0x100_0000u64 + gp
            ))?;
        }
        let mut io_err = None;
        reader.for_each_chunk(|c| {
            if io_err.is_none() {
                if let Err(e) = ex.chunk(c) {
                    io_err = Some(e);
                }
            }
        })?;
        if let Some(e) = io_err {
            return Err(e.into());
        }
        ex.finish_steps()?;
        for s in &mut ex.sinks {
            s.w.write_all(b"\n  ]\n}\n")?;
            s.w.flush()?;
        }
        Ok(())
    })();
    let sinks = std::mem::take(&mut ex.sinks);
    if let Err(e) = result {
        // Dropping the sinks removes their temporary files.
        return Err(e.context(format!("exporting {}", trace.display())));
    }
    let mut files = Vec::new();
    for s in sinks {
        drop(s.w);
        s.pending.commit()?;
        files.push(ExportedFile {
            path: s.path,
            pids: s.pids,
            rank: s.rank,
            ranks: s.ranks,
            world_size: s.world_size,
            events: s.events,
        });
    }
    warnings.extend(reader.warnings().iter().cloned());
    Ok(ExportSummary { files, warnings })
}
