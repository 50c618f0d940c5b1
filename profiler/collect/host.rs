//! The host collector: the `cuda` eBPF program's uprobes on libcuda and libnccl, attached to
//! library files (so a library is probed before the process maps it), limited to the traced
//! processes by the `targets` map, drained on a timer into trace records.
//!
//! The per-launch probes (`cuLaunchKernel` and its kin) can be removed and placed again while
//! the others stay ([`HostCollector::set_launch_probes`]): `watch` places them only for its
//! sample windows.
//!
//! Libraries are found three ways: by path for a process about to be launched
//! ([`procmaps::find_libraries`]), in `/proc/PID/maps` of every traced process, and again on
//! every rescan, which catches libraries loaded later with dlopen.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::mem::MaybeUninit;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder, UprobeOpts};

use super::bpf::cuda::{types, CudaSkel, CudaSkelBuilder};
use super::elf::{probe_points, ProbePoint};
use super::procmaps::{self, classify, MappedLib};
use super::sched::{bpf_err, read_counter, CollectError};
use crate::pipeline::Producer;
use crate::trace::{
    ApiCall, ApiDomain, DropCause, FunctionName, KernelLaunch, LibKind, LibraryInfo, NcclColl, NcclDtype, NcclPhase,
    ProbedApi, Record, SourceBudgets,
};

/// Which eBPF program a probed function uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// (f, grid xyz, block xyz, shared, stream, ...)
    Launch,
    /// (const CUlaunchConfig*, f, ...)
    LaunchEx,
    /// (CUgraphExec, CUstream)
    GraphLaunch,
    /// entry + return
    Bracketed,
}

impl Shape {
    /// Whether the probe fires once per kernel launch (or graph launch).
    fn per_launch(self) -> bool {
        !matches!(self, Shape::Bracketed)
    }
}

/// Every function the collector probes: (symbol, api, shape, library).
const PROBES: &[(&str, ProbedApi, Shape, LibKind)] = &[
    ("cuLaunchKernel", ProbedApi::LaunchKernel, Shape::Launch, LibKind::Cuda),
    ("cuLaunchKernel_ptsz", ProbedApi::LaunchKernelPtsz, Shape::Launch, LibKind::Cuda),
    ("cuLaunchCooperativeKernel", ProbedApi::LaunchCooperativeKernel, Shape::Launch, LibKind::Cuda),
    ("cuLaunchKernelEx", ProbedApi::LaunchKernelEx, Shape::LaunchEx, LibKind::Cuda),
    ("cuLaunchKernelEx_ptsz", ProbedApi::LaunchKernelExPtsz, Shape::LaunchEx, LibKind::Cuda),
    ("cuGraphLaunch", ProbedApi::GraphLaunch, Shape::GraphLaunch, LibKind::Cuda),
    ("cuGraphLaunch_ptsz", ProbedApi::GraphLaunchPtsz, Shape::GraphLaunch, LibKind::Cuda),
    ("cuStreamSynchronize", ProbedApi::StreamSynchronize, Shape::Bracketed, LibKind::Cuda),
    ("cuCtxSynchronize", ProbedApi::CtxSynchronize, Shape::Bracketed, LibKind::Cuda),
    ("cuEventSynchronize", ProbedApi::EventSynchronize, Shape::Bracketed, LibKind::Cuda),
    ("cuMemcpyHtoD_v2", ProbedApi::MemcpyHtoD, Shape::Bracketed, LibKind::Cuda),
    ("cuMemcpyDtoH_v2", ProbedApi::MemcpyDtoH, Shape::Bracketed, LibKind::Cuda),
    ("cuMemcpyDtoD_v2", ProbedApi::MemcpyDtoD, Shape::Bracketed, LibKind::Cuda),
    ("cuMemcpy", ProbedApi::Memcpy, Shape::Bracketed, LibKind::Cuda),
    ("cuModuleGetFunction", ProbedApi::ModuleGetFunction, Shape::Bracketed, LibKind::Cuda),
    ("cuFuncGetName", ProbedApi::FuncGetName, Shape::Bracketed, LibKind::Cuda),
    ("ncclAllReduce", ProbedApi::NcclAllReduce, Shape::Bracketed, LibKind::Nccl),
    ("ncclAllGather", ProbedApi::NcclAllGather, Shape::Bracketed, LibKind::Nccl),
    ("ncclReduceScatter", ProbedApi::NcclReduceScatter, Shape::Bracketed, LibKind::Nccl),
    ("ncclBroadcast", ProbedApi::NcclBroadcast, Shape::Bracketed, LibKind::Nccl),
    ("ncclReduce", ProbedApi::NcclReduce, Shape::Bracketed, LibKind::Nccl),
    ("ncclSend", ProbedApi::NcclSend, Shape::Bracketed, LibKind::Nccl),
    ("ncclRecv", ProbedApi::NcclRecv, Shape::Bracketed, LibKind::Nccl),
    ("ncclGroupStart", ProbedApi::NcclGroupStart, Shape::Bracketed, LibKind::Nccl),
    ("ncclGroupEnd", ProbedApi::NcclGroupEnd, Shape::Bracketed, LibKind::Nccl),
    ("ncclCommInitRank", ProbedApi::NcclCommInitRank, Shape::Bracketed, LibKind::Nccl),
];

/// Indexes of the `counters` map (enum cuda_counter in cuda.bpf.c).
const CNT_RB_DROPS: u32 = 4;

/// What attaching to one library did.
#[derive(Debug, Clone, Default)]
pub struct AttachReport {
    /// The library file.
    pub path: PathBuf,
    /// Which GPU library it is (libcuda, libnccl), if recognized.
    pub kind: Option<LibKind>,
    /// Functions probed.
    pub attached: Vec<String>,
    /// Probed functions that start with endbr64 (probe moved 4 bytes in).
    pub past_endbr64: Vec<String>,
    /// Functions this library does not export (normal: not every version has every entry point).
    pub missing: Vec<String>,
    /// Functions found but not attached, with the reason.
    pub failed: Vec<(String, String)>,
}

/// A decoded ring-buffer record.
enum HostEvent {
    Launch(types::gp_launch_event),
    Call(types::gp_call_event),
    Nccl(types::gp_nccl_event),
    Name(types::gp_func_name_event),
    Comm(types::gp_comm_event),
}

fn read<T: Copy>(data: &[u8]) -> Option<T> {
    if data.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; the types are plain integers and byte arrays, valid for any bits.
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

fn parse(data: &[u8]) -> Option<HostEvent> {
    let hdr: types::gp_event_hdr = read(data)?;
    match hdr.kind {
        2 => read(data).map(HostEvent::Launch),
        3 => read(data).map(HostEvent::Call),
        4 => read(data).map(HostEvent::Nccl),
        5 => read(data).map(HostEvent::Name),
        6 => read(data).map(HostEvent::Comm),
        _ => None,
    }
}

/// Totals of a collector run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Events read from the eBPF ring buffer.
    pub events: u64,
    /// Events the eBPF side dropped because its ring buffer was full.
    pub ringbuf_drops: u64,
    /// Ring-buffer events too short or of an unknown kind.
    pub malformed: u64,
    /// Kernel names refused by a string-table cap (each became `<name limit>`).
    pub name_limit: u64,
}

/// One library file's per-launch probe points (`cuLaunchKernel` and its kin: the probes that
/// fire once per kernel, and so cost a launch-bound job the most), kept so that they can be
/// removed and placed again.
struct LaunchProbes {
    path: PathBuf,
    points: Vec<(ProbePoint, ProbedApi, Shape)>,
    links: Vec<Link>,
}

/// The host collector: the `cuda` eBPF program, its uprobes on the GPU libraries and its ring
/// buffer, drained into trace records.
pub struct HostCollector {
    skel: CudaSkel<'static>,
    /// The fork/exit tracepoints, held for as long as the collector lives.
    _forks: Vec<Link>,
    ring: RingBuffer<'static>,
    pending: Rc<RefCell<Vec<HostEvent>>>,
    malformed: Rc<RefCell<u64>>,
    /// (dev, inode) of library files already probed
    probed: HashSet<(u64, u64)>,
    /// The uprobe links of each probed library file, so that `watch` can remove them.
    lib_links: HashMap<(u64, u64), Vec<Link>>,
    /// Whether the per-launch probes are placed ([`HostCollector::set_launch_probes`]).
    launch_probes: bool,
    /// The per-launch probe points of each probed library file, and their links while placed.
    lib_launch: HashMap<(u64, u64), LaunchProbes>,
    /// Pids seen making a probed CUDA or NCCL call (a launch, a synchronization, a copy, a
    /// collective): processes using the GPU, whatever their CUPTI ring says.
    cuda_pids: HashSet<u32>,
    /// per traced pid, inodes of its mappings already reported
    seen_maps: BTreeMap<u32, HashSet<u64>>,
    /// Totals so far.
    pub stats: HostStats,
    /// What attaching to each library did.
    pub reports: Vec<AttachReport>,
    /// Optional parts that could not be used, with the reason (for the session log).
    pub notes: Vec<String>,
    /// Kernel names read from each process's memory, capped per process (the job is untrusted).
    names: SourceBudgets,
    /// The programs' traced set, one bit per tgid (`target_words`, ebpf/targets.h), mapped.
    bits: TargetBits,
}

/// The mmapped value of a `target_words` map (ebpf/targets.h): one bit per tgid, which the
/// kernel side changes with atomic ORs and ANDs (fork/exit), so this side only uses the words
/// atomically too.
pub struct TargetBits {
    words: std::ptr::NonNull<u64>,
}

// SAFETY: the mapping is process-wide shared memory used only through atomics.
unsafe impl Send for TargetBits {}

impl TargetBits {
    /// Words in the map's value.
    const WORDS: usize = 1 << 16;

    /// Maps the value of the `target_words` map behind `fd` (created BPF_F_MMAPABLE).
    pub fn map(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let len = Self::WORDS * 8;
        // SAFETY: a fresh shared mapping of the map's value; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let words = std::ptr::NonNull::new(p.cast::<u64>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(TargetBits { words })
    }

    fn word(&self, pid: u32) -> Option<&std::sync::atomic::AtomicU64> {
        let i = (pid >> 6) as usize;
        // SAFETY: in bounds of the mapping, aligned, shared with the kernel, used atomically.
        (i < Self::WORDS).then(|| unsafe { std::sync::atomic::AtomicU64::from_ptr(self.words.as_ptr().add(i)) })
    }

    /// Whether `pid`'s bit is set.
    pub fn get(&self, pid: u32) -> bool {
        self.word(pid).is_some_and(|w| w.load(std::sync::atomic::Ordering::SeqCst) >> (pid & 63) & 1 == 1)
    }

    /// Sets or clears `pid`'s bit.
    pub fn set(&self, pid: u32, on: bool) {
        let Some(w) = self.word(pid) else { return };
        let bit = 1u64 << (pid & 63);
        if on {
            w.fetch_or(bit, std::sync::atomic::Ordering::SeqCst);
        } else {
            w.fetch_and(!bit, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for TargetBits {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.words.as_ptr().cast(), Self::WORDS * 8) };
    }
}

/// Opens and loads the cuda program; `with_forks` = false leaves the fork/exit programs out.
fn open_cuda(follow_forks: bool, with_forks: bool) -> Result<CudaSkel<'static>, CollectError> {
    // The skeleton borrows its object storage for its whole life: one small leak per load.
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = CudaSkelBuilder::default().open(storage).map_err(bpf_err("opening the cuda eBPF program"))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.self_tgid = std::process::id();
        ro.follow_forks = follow_forks as u32;
    }
    if !with_forks {
        open.progs.gp_fork.set_autoload(false);
        open.progs.gp_exit.set_autoload(false);
    }
    open.load().map_err(bpf_err("loading the cuda eBPF program"))
}

impl HostCollector {
    /// Loads the program and attaches the fork/exit tracepoints. No process is traced until
    /// [`HostCollector::add_target`].
    pub fn load(follow_forks: bool) -> Result<Self, CollectError> {
        let mut notes = Vec::new();
        // Following forks needs the sched_process_fork/exit BTF tracepoints; a kernel that
        // cannot load them still gets the uprobes, tracing exactly the pids it is given.
        let (skel, forks) = match open_cuda(follow_forks, true) {
            Ok(skel) => (skel, follow_forks),
            Err(CollectError::Bpf { source, .. }) if follow_forks => {
                notes.push(format!(
                    "following child processes is off: the fork/exit tracepoints did not load ({source})"
                ));
                (open_cuda(false, false)?, false)
            }
            Err(e) => return Err(e),
        };
        let mut links = Vec::new();
        if forks {
            for (prog, what) in
                [(&skel.progs.gp_fork, "sched_process_fork"), (&skel.progs.gp_exit, "sched_process_exit")]
            {
                links.push(prog.attach().map_err(bpf_err(what))?);
            }
        }
        let pending: Rc<RefCell<Vec<HostEvent>>> = Rc::default();
        let malformed = Rc::new(RefCell::new(0u64));
        let (p, m) = (pending.clone(), malformed.clone());
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.events, move |data: &[u8]| {
                match parse(data) {
                    Some(e) => p.borrow_mut().push(e),
                    None => *m.borrow_mut() += 1,
                }
                0
            })
            .map_err(bpf_err("registering the ring buffer"))?;
        let ring = builder.build().map_err(bpf_err("creating the ring buffer reader"))?;
        let bits = TargetBits::map(std::os::fd::AsFd::as_fd(&skel.maps.target_words))
            .map_err(|e| CollectError::Bpf { what: "mapping the target_words map".into(), source: e.into() })?;
        Ok(HostCollector {
            bits,
            skel,
            _forks: links,
            ring,
            pending,
            malformed,
            probed: HashSet::new(),
            lib_links: HashMap::new(),
            launch_probes: true,
            lib_launch: HashMap::new(),
            cuda_pids: HashSet::new(),
            seen_maps: BTreeMap::new(),
            stats: HostStats::default(),
            reports: Vec::new(),
            notes,
            names: SourceBudgets::default(),
        })
    }

    /// Starts tracing `pid` (and, with fork following, every process it starts from now on).
    pub fn add_target(&mut self, pid: u32) -> Result<(), CollectError> {
        self.skel
            .maps
            .targets
            .update(&pid.to_ne_bytes(), &[1u8], MapFlags::ANY)
            .map_err(bpf_err("adding the target pid"))?;
        self.set_target_bit(pid, true);
        self.seen_maps.entry(pid).or_default();
        Ok(())
    }

    /// Stops tracing `pid` (its children already traced stay traced).
    pub fn remove_target(&mut self, pid: u32) {
        // Absent already (it exited, or was never added): nothing to undo.
        let _ = self.skel.maps.targets.delete(&pid.to_ne_bytes());
        self.set_target_bit(pid, false);
    }

    /// Whether the programs trace `pid` now: its bit in `target_words` (which fork and exit
    /// keep up to date in the kernel; tests check that it follows `targets`).
    pub fn probes_trace(&self, pid: u32) -> bool {
        self.bits.get(pid)
    }

    /// The programs' traced set (`target_words`, ebpf/targets.h: one bit per tgid, which they
    /// test instead of looking the `targets` hash map up).
    fn set_target_bit(&mut self, pid: u32, on: bool) {
        self.bits.set(pid, on);
    }

    /// Attaches to a running process: checks it exists and maps a CUDA or NCCL library, traces
    /// it (and its future children) and probes its GPU libraries. Returns what was probed.
    pub fn attach_pid(&mut self, pid: u32) -> Result<Vec<AttachReport>, CollectError> {
        let libs = super::gpu_libraries_of(pid)?;
        self.add_target(pid)?;
        let mut reports = Vec::new();
        for lib in libs {
            reports.push(self.attach_library(&procmaps::host_path(pid, &lib.path))?);
        }
        Ok(reports)
    }

    /// A handle on the `target_words` map (the traced set's bits), for other programs to follow
    /// the same processes.
    pub fn targets_map(&self) -> Result<libbpf_rs::MapHandle, CollectError> {
        libbpf_rs::MapHandle::try_from(&self.skel.maps.target_words).map_err(bpf_err("sharing the target_words map"))
    }

    /// Pids currently traced (the target and the descendants the kernel side added).
    pub fn targets(&self) -> Vec<u32> {
        self.skel
            .maps
            .targets
            .keys()
            .filter_map(|k| k.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])))
            .collect()
    }

    /// Probes the library file at `path` (its GPU library kind is taken from the file name).
    pub fn attach_library(&mut self, path: &Path) -> Result<AttachReport, CollectError> {
        let kind = classify(path);
        let mut report = AttachReport { path: path.to_path_buf(), kind: Some(kind), ..Default::default() };
        let wanted: Vec<&str> = PROBES.iter().filter(|p| p.3 == kind).map(|p| p.0).collect();
        if wanted.is_empty() {
            return Ok(report);
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| CollectError::Library { path: path.to_path_buf(), what: e.to_string() })?;
        if !self.probed.insert((meta.dev(), meta.ino())) {
            return Ok(report); // the same file under another name
        }
        let points = probe_points(path, &wanted)
            .map_err(|e| CollectError::Library { path: path.to_path_buf(), what: e.to_string() })?;
        let mut links = Vec::new();
        let mut launch = LaunchProbes { path: path.to_path_buf(), points: Vec::new(), links: Vec::new() };
        for (symbol, api, shape, _) in PROBES.iter().filter(|p| p.3 == kind) {
            let Some(point) = points.get(*symbol) else {
                report.missing.push(symbol.to_string());
                continue;
            };
            let per_launch = shape.per_launch();
            if per_launch {
                launch.points.push((point.clone(), *api, *shape));
                // Switched off: placed when they are switched on again.
                if !self.launch_probes {
                    report.attached.push(symbol.to_string());
                    continue;
                }
            }
            match place(&self.skel, path, point, *api, *shape) {
                Ok(placed) => {
                    if per_launch { &mut launch.links } else { &mut links }.extend(placed);
                    report.attached.push(symbol.to_string());
                    if point.skipped_endbr64 {
                        report.past_endbr64.push(symbol.to_string());
                    }
                }
                Err(e) => report.failed.push((symbol.to_string(), e.to_string())),
            }
        }
        self.lib_links.insert((meta.dev(), meta.ino()), links);
        self.lib_launch.insert((meta.dev(), meta.ino()), launch);
        self.reports.push(report.clone());
        Ok(report)
    }

    /// Lets go of every probed library file not in `in_use` ((dev, inode) of the files traced
    /// processes still map): a long-running `watch` must not keep the probes of each job's own
    /// copy of a library. Returns their links: dropping them removes the probes, which takes
    /// the kernel up to seconds, so the caller may drop them on a thread of its own.
    pub fn release_libraries(&mut self, in_use: &HashSet<(u64, u64)>) -> Vec<Link> {
        let gone: Vec<(u64, u64)> = self.lib_links.keys().filter(|k| !in_use.contains(k)).copied().collect();
        let mut links = Vec::new();
        for k in &gone {
            links.extend(self.lib_links.remove(k).unwrap_or_default());
            links.extend(self.lib_launch.remove(k).map(|l| l.links).unwrap_or_default());
            self.probed.remove(k);
        }
        links
    }

    /// Places (`on`) or removes the per-launch probes (`cuLaunchKernel` and its kin) of every
    /// probed library, and of libraries probed from now on; the other probes stay. `watch`
    /// places them only while a sample window collects the device timeline: between windows
    /// nothing uses them, and a uprobe costs each launch a kernel trap (docs/performance.md).
    /// Returns the links removed (dropping them takes the kernel a while, see
    /// [`HostCollector::release_libraries`]) and a note per probe that could not be placed.
    pub fn set_launch_probes(&mut self, on: bool) -> (Vec<Link>, Vec<String>) {
        self.launch_probes = on;
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for lib in self.lib_launch.values_mut() {
            if !on {
                removed.append(&mut lib.links);
                continue;
            }
            if !lib.links.is_empty() {
                continue;
            }
            for (point, api, shape) in &lib.points {
                match place(&self.skel, &lib.path, point, *api, *shape) {
                    Ok(placed) => lib.links.extend(placed),
                    Err(e) => failed.push(format!("cannot probe {api:?} in {}: {e}", lib.path.display())),
                }
            }
        }
        (removed, failed)
    }

    /// Pids seen making a probed CUDA or NCCL call so far (launches only while the per-launch
    /// probes are placed).
    pub fn cuda_pids(&self) -> &HashSet<u32> {
        &self.cuda_pids
    }

    /// Whether the per-launch probes are placed (see [`HostCollector::set_launch_probes`]).
    pub fn launch_probes(&self) -> bool {
        self.launch_probes
    }

    /// Reads the maps of every traced process, probes GPU libraries not seen before, and
    /// returns the new mappings as records.
    pub fn rescan(&mut self) -> Vec<LibraryInfo> {
        let mut out = Vec::new();
        for pid in self.targets() {
            let Ok(libs) = procmaps::mapped_libs(pid) else { continue };
            let seen = self.seen_maps.entry(pid).or_default();
            let fresh: Vec<MappedLib> = libs.into_iter().filter(|l| seen.insert(l.inode)).collect();
            for lib in fresh {
                let kind = classify(&lib.path);
                if kind == LibKind::Other {
                    continue;
                }
                let host = procmaps::host_path(pid, &lib.path);
                let _ = self.attach_library(&host);
                out.push(LibraryInfo {
                    time_ns: crate::clock::monotonic_ns(),
                    base: lib.base,
                    pid,
                    path_id: 0,
                    lib: kind as u32,
                    reserved: 0,
                });
            }
        }
        out
    }

    /// Moves everything in the ring buffer into `producer`.
    pub fn drain(&mut self, producer: &mut Producer) -> Result<(), CollectError> {
        self.ring.consume().map_err(bpf_err("draining the ring buffer"))?;
        let events: Vec<HostEvent> = std::mem::take(&mut *self.pending.borrow_mut());
        let mut last_pid = 0;
        for e in events {
            self.stats.events += 1;
            if let Some(r) = to_record(e, producer, &mut self.names) {
                let pid = match &r {
                    Record::KernelLaunch(l) => l.pid,
                    Record::ApiCall(a) => a.pid,
                    Record::NcclColl(n) => n.pid,
                    _ => 0,
                };
                if pid != 0 && pid != last_pid {
                    self.cuda_pids.insert(pid);
                    last_pid = pid;
                }
                producer.push(r);
            }
        }
        self.stats.name_limit = self.names.refused();
        self.stats.malformed = *self.malformed.borrow();
        self.stats.ringbuf_drops = read_counter(&self.skel.maps.counters, CNT_RB_DROPS);
        producer.set_drops(DropCause::RingbufFull, self.stats.ringbuf_drops);
        producer.set_drops(DropCause::Malformed, self.stats.malformed);
        producer.set_drops(DropCause::NameLimit, self.stats.name_limit);
        producer.flush();
        Ok(())
    }
}

/// Places one function's probes; returns their links.
fn place(
    skel: &CudaSkel<'static>,
    path: &Path,
    point: &ProbePoint,
    api: ProbedApi,
    shape: Shape,
) -> libbpf_rs::Result<Vec<Link>> {
    let opts = |retprobe| UprobeOpts { cookie: api as u64, retprobe, ..Default::default() };
    let offset = point.file_offset as usize;
    let progs = &skel.progs;
    Ok(match shape {
        Shape::Launch => vec![progs.gp_launch.attach_uprobe_with_opts(-1, path, offset, opts(false))?],
        Shape::LaunchEx => vec![progs.gp_launch_ex.attach_uprobe_with_opts(-1, path, offset, opts(false))?],
        Shape::GraphLaunch => vec![progs.gp_graph_launch.attach_uprobe_with_opts(-1, path, offset, opts(false))?],
        Shape::Bracketed => {
            let enter = progs.gp_call_enter.attach_uprobe_with_opts(-1, path, offset, opts(false))?;
            let exit = progs.gp_call_exit.attach_uprobe_with_opts(-1, path, offset, opts(true))?;
            vec![enter, exit]
        }
    })
}

fn to_record(e: HostEvent, producer: &Producer, names: &mut SourceBudgets) -> Option<Record> {
    Some(match e {
        HostEvent::Launch(l) => Record::KernelLaunch(KernelLaunch {
            time_ns: l.hdr.ts_ns,
            func: l.func,
            stream: l.stream,
            pid: l.pid,
            tid: l.tid,
            grid_x: l.grid[0],
            grid_y: l.grid[1],
            grid_z: l.grid[2],
            block_x: l.block[0],
            block_y: l.block[1],
            block_z: l.block[2],
            shared_mem_bytes: l.shared_mem_bytes,
            api: l.api,
        }),
        HostEvent::Call(c) => Record::ApiCall(ApiCall {
            start_ns: c.start_ns,
            end_ns: c.end_ns,
            stream: if matches!(ProbedApi::from_u32(c.api), Some(ProbedApi::StreamSynchronize)) { c.arg } else { 0 },
            arg: c.arg,
            pid: c.pid,
            tid: c.tid,
            correlation_id: 0,
            call_id: c.api,
            domain: ApiDomain::Probe as u32,
            status: c.ret,
        }),
        HostEvent::Nccl(n) => {
            let bytes = NcclDtype::from_u32(n.dtype).map(|d| d.size_bytes()).unwrap_or(0).saturating_mul(n.count);
            Record::NcclColl(NcclColl {
                start_ns: n.start_ns,
                end_ns: n.end_ns,
                comm: n.comm,
                seq: n.seq,
                count: n.count,
                bytes,
                stream: n.stream,
                pid: n.pid,
                tid: n.tid,
                rank: n.rank as u32,
                nranks: n.nranks as u32,
                op: n.op,
                dtype: n.dtype,
                phase: NcclPhase::Host as u32,
                device: u32::MAX,
            })
        }
        HostEvent::Name(n) => {
            let len = n.name.iter().position(|b| *b == 0).unwrap_or(n.name.len());
            let bytes: Vec<u8> = n.name[..len].iter().map(|c| *c as u8).collect();
            let name = String::from_utf8_lossy(&bytes);
            Record::FunctionName(FunctionName {
                time_ns: n.hdr.ts_ns,
                func: n.func,
                pid: n.pid,
                name_id: producer.intern_bounded(&name, names.of(n.pid)),
            })
        }
        HostEvent::Comm(c) => Record::ApiCall(ApiCall {
            start_ns: c.hdr.ts_ns,
            end_ns: c.hdr.ts_ns,
            stream: 0,
            arg: c.comm,
            pid: c.pid,
            tid: c.tid,
            correlation_id: c.rank as u32,
            call_id: ProbedApi::NcclCommInitRank as u32,
            domain: ApiDomain::Probe as u32,
            status: c.ret,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Pipeline, PipelineOptions};
    use crate::trace::{TraceInfo, NAME_LIMIT};

    /// A `gp_func_name_event` as the eBPF program sends it.
    fn name_event(pid: u32, name: &str) -> Vec<u8> {
        let mut b = vec![0u8; std::mem::size_of::<types::gp_func_name_event>()];
        let hdr = std::mem::size_of::<types::gp_event_hdr>();
        let kind_at = std::mem::offset_of!(types::gp_event_hdr, kind);
        b[kind_at..kind_at + 2].copy_from_slice(&5u16.to_le_bytes());
        b[hdr..hdr + 4].copy_from_slice(&pid.to_le_bytes());
        let at = std::mem::offset_of!(types::gp_func_name_event, name);
        let n = name.len().min(127);
        b[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
        b
    }

    /// Kernel names read from the job's memory by the uprobes are capped per process: 100,000
    /// distinct names from one pid keep 65,536 and the rest become `<name limit>`; another pid
    /// has its own budget.
    #[test]
    fn host_kernel_names_are_capped_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let pipeline =
            Pipeline::create(&dir.path().join("t.gptrace"), false, &TraceInfo::default(), PipelineOptions::default())
                .unwrap();
        let producer = pipeline.producer(crate::trace::Source::Ebpf);
        let mut names = SourceBudgets::default();
        let name_id =
            |data: Vec<u8>, names: &mut SourceBudgets| match to_record(parse(&data).unwrap(), &producer, names) {
                Some(Record::FunctionName(f)) => f.name_id,
                _ => panic!("not a name record"),
            };
        let long = "k".repeat(100);
        let mut last = 0;
        for i in 0..100_000 {
            last = name_id(name_event(7, &format!("{long}{i:06}")), &mut names);
        }
        let interner = pipeline.interner();
        assert_eq!(interner.get(last).as_deref(), Some(NAME_LIMIT));
        assert_eq!(names.refused(), 100_000 - crate::trace::strings::MAX_NAMES_PER_SOURCE as u64);
        assert_eq!(interner.len(), 1 + crate::trace::strings::MAX_NAMES_PER_SOURCE as usize + 1);
        let other = name_id(name_event(8, "ampere_sgemm"), &mut names);
        assert_eq!(interner.get(other).as_deref(), Some("ampere_sgemm"));
        drop(producer);
        pipeline.finish().unwrap();
    }
}
