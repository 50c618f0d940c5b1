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
    points: Vec<Probe>,
    links: Vec<Link>,
}

/// One function to probe in one library file.
struct Probe {
    symbol: &'static str,
    point: ProbePoint,
    api: ProbedApi,
    shape: Shape,
}

/// How the uprobes are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UprobeLinks {
    /// One `uprobe_multi` link per program and library file (kernel 6.6 or later): the
    /// kernel removes all of a link's probes after one grace period.
    Multi,
    /// One perf-event uprobe per function (any kernel): each one removed waits for its own
    /// grace period, under a lock that makes them wait one after another (~105 ms each on the
    /// development VM, kernel 6.18: 4.3 s for libcuda's and libnccl's 40 probes).
    PerFunction,
}

impl UprobeLinks {
    /// `Multi` where the kernel has `uprobe_multi` links, else `PerFunction`.
    pub fn detect() -> Self {
        static MULTI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *MULTI.get_or_init(kernel_has_uprobe_multi) {
            UprobeLinks::Multi
        } else {
            UprobeLinks::PerFunction
        }
    }
}

/// Whether the kernel makes `uprobe_multi` links: a two-instruction program of that attach
/// type is loaded and linked to offset 0 of `/`. A kernel with such links gets as far as
/// opening the path and refuses a directory with EBADF; one without them refuses the attach
/// type or the link type first (EINVAL and others). Nothing is ever attached.
fn kernel_has_uprobe_multi() -> bool {
    use libbpf_sys as sys;
    let mut insns = [sys::bpf_insn::default(), sys::bpf_insn::default()];
    insns[0].code = 0xb7; // r0 = 0 (BPF_ALU64 | BPF_MOV | BPF_K)
    insns[1].code = 0x95; // exit (BPF_JMP | BPF_EXIT)
    let mut load = sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<sys::bpf_prog_load_opts>() as _,
        expected_attach_type: sys::BPF_TRACE_UPROBE_MULTI,
        ..Default::default()
    };
    // SAFETY: valid instructions and options of the sizes given; the license is a C string.
    let prog = unsafe {
        sys::bpf_prog_load(sys::BPF_PROG_TYPE_KPROBE, std::ptr::null(), c"GPL".as_ptr(), insns.as_ptr(), 2, &mut load)
    };
    if prog < 0 {
        return false;
    }
    let offset: std::os::raw::c_ulong = 0;
    let mut opts =
        sys::bpf_link_create_opts { sz: std::mem::size_of::<sys::bpf_link_create_opts>() as _, ..Default::default() };
    opts.__bindgen_anon_1.uprobe_multi = sys::bpf_link_create_opts__bindgen_ty_1__bindgen_ty_3 {
        path: c"/".as_ptr(),
        offsets: &offset,
        cnt: 1,
        ..Default::default()
    };
    // SAFETY: `prog` is our program's fd; the options point at live locals.
    let link = unsafe { sys::bpf_link_create(prog, -1, sys::BPF_TRACE_UPROBE_MULTI, &opts) };
    let err = std::io::Error::last_os_error().raw_os_error();
    // SAFETY: fds this function opened, closed once.
    unsafe {
        if link >= 0 {
            libc::close(link);
        }
        libc::close(prog);
    }
    link < 0 && err == Some(libc::EBADF)
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
    /// How the uprobes are placed.
    links: UprobeLinks,
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

/// Drops eBPF links (uprobes, tracepoints) all at once and returns when every one is gone.
///
/// Removing a uprobe link makes the kernel wait for a grace period (`uprobe_unregister_sync`,
/// ~105 ms on the development VM). `uprobe_multi` links dropped at the same time share it (the
/// 9 links of libcuda and libnccl: all gone within 70 ms of each other, strace), so each link is
/// dropped on a thread of its own (at most [`MAX_DROPPERS`] at once); a thread that cannot be
/// started drops its link on the caller's. Perf-event uprobes gain little: the kernel removes
/// them under a lock, one grace period after another ([`UprobeLinks::PerFunction`]).
pub fn drop_links(links: Vec<Link>) {
    if links.len() < 2 {
        drop(links);
        return;
    }
    let mut rest = links;
    while !rest.is_empty() {
        let batch: Vec<Link> = rest.drain(..rest.len().min(MAX_DROPPERS)).collect();
        std::thread::scope(|s| {
            for link in batch {
                let spawned = std::thread::Builder::new()
                    .name("ghostprof-unprobe".into())
                    .stack_size(64 * 1024)
                    .spawn_scoped(s, move || drop(link));
                // On failure the closure, and with it the link, has been dropped here.
                drop(spawned);
            }
        });
    }
}

/// The most links [`drop_links`] drops at once (one thread each).
const MAX_DROPPERS: usize = 64;

/// Opens and loads the cuda program; `with_forks` = false leaves the fork/exit programs out.
fn open_cuda(follow_forks: bool, with_forks: bool, links: UprobeLinks) -> Result<CudaSkel<'static>, CollectError> {
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
    if links == UprobeLinks::Multi {
        let p = &mut open.progs;
        for prog in
            [&mut p.gp_launch, &mut p.gp_launch_ex, &mut p.gp_graph_launch, &mut p.gp_call_enter, &mut p.gp_call_exit]
        {
            prog.set_attach_type(libbpf_rs::ProgramAttachType::TraceUprobeMulti);
        }
    }
    open.load().map_err(bpf_err("loading the cuda eBPF program"))
}

impl Drop for HostCollector {
    fn drop(&mut self) {
        let mut links = std::mem::take(&mut self._forks);
        links.extend(self.lib_links.drain().flat_map(|(_, l)| l));
        links.extend(self.lib_launch.drain().flat_map(|(_, l)| l.links));
        drop_links(links);
    }
}

impl HostCollector {
    /// Loads the program and attaches the fork/exit tracepoints. No process is traced until
    /// [`HostCollector::add_target`].
    pub fn load(follow_forks: bool) -> Result<Self, CollectError> {
        Self::load_with(follow_forks, UprobeLinks::detect())
    }

    /// [`HostCollector::load`] with the uprobes placed as `links` says (tests compare both).
    pub fn load_with(follow_forks: bool, links: UprobeLinks) -> Result<Self, CollectError> {
        let mut notes = Vec::new();
        // Following forks needs the sched_process_fork/exit BTF tracepoints; a kernel that
        // cannot load them still gets the uprobes, tracing exactly the pids it is given.
        let (skel, forks) = match open_cuda(follow_forks, true, links) {
            Ok(skel) => (skel, follow_forks),
            Err(CollectError::Bpf { source, .. }) if follow_forks => {
                notes.push(format!(
                    "following child processes is off: the fork/exit tracepoints did not load ({source})"
                ));
                (open_cuda(false, false, links)?, false)
            }
            Err(e) => return Err(e),
        };
        let mut fork_links = Vec::new();
        if forks {
            for (prog, what) in
                [(&skel.progs.gp_fork, "sched_process_fork"), (&skel.progs.gp_exit, "sched_process_exit")]
            {
                fork_links.push(prog.attach().map_err(bpf_err(what))?);
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
            _forks: fork_links,
            ring,
            pending,
            malformed,
            probed: HashSet::new(),
            lib_links: HashMap::new(),
            launch_probes: true,
            links,
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
        let mut launch = LaunchProbes { path: path.to_path_buf(), points: Vec::new(), links: Vec::new() };
        let mut others = Vec::new();
        for (symbol, api, shape, _) in PROBES.iter().filter(|p| p.3 == kind) {
            let Some(point) = points.get(*symbol) else {
                report.missing.push(symbol.to_string());
                continue;
            };
            let probe = Probe { symbol, point: point.clone(), api: *api, shape: *shape };
            if shape.per_launch() {
                launch.points.push(probe);
            } else {
                others.push(probe);
            }
        }
        // Per-launch probes switched off are placed when they are switched on again.
        let (launch_links, mut failed) = if self.launch_probes {
            place_all(&self.skel, path, &launch.points, self.links)
        } else {
            Default::default()
        };
        launch.links = launch_links;
        let (links, failed_others) = place_all(&self.skel, path, &others, self.links);
        failed.extend(failed_others);
        // In PROBES order: its per-launch functions come first.
        for probe in launch.points.iter().chain(&others) {
            if let Some((_, e)) = failed.iter().find(|(s, _)| *s == probe.symbol) {
                report.failed.push((probe.symbol.to_string(), e.clone()));
                continue;
            }
            report.attached.push(probe.symbol.to_string());
            if probe.point.skipped_endbr64 && (self.launch_probes || !probe.shape.per_launch()) {
                report.past_endbr64.push(probe.symbol.to_string());
            }
        }
        self.lib_links.insert((meta.dev(), meta.ino()), links);
        self.lib_launch.insert((meta.dev(), meta.ino()), launch);
        self.reports.push(report.clone());
        Ok(report)
    }

    /// The kernel's type of each uprobe link held (`link_type` in its fdinfo: `uprobe_multi` or
    /// `uretprobe_multi`, or `perf` for a perf-event uprobe; empty where the kernel does not say): what
    /// removing them will cost (see [`UprobeLinks`]).
    pub fn uprobe_link_types(&self) -> Vec<String> {
        let held = self.lib_links.values().flatten().chain(self.lib_launch.values().flat_map(|l| &l.links));
        held.map(|link| {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(link));
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            let kind = info.lines().find_map(|l| l.strip_prefix("link_type:")).unwrap_or_default();
            kind.trim().to_string()
        })
        .collect()
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
            let (placed, refused) = place_all(&self.skel, &lib.path, &lib.points, self.links);
            lib.links = placed;
            failed.extend(refused.into_iter().map(|(s, e)| format!("cannot probe {s} in {}: {e}", lib.path.display())));
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

/// Places `probes` in the library file at `path`; returns their links and each function that
/// could not be probed, with the reason. With `uprobe_multi` links, one link per program holds
/// the functions of a shape; if the kernel refuses one, its functions are placed one by one so
/// that the others are still probed and the refused one is named.
fn place_all(
    skel: &CudaSkel<'static>,
    path: &Path,
    probes: &[Probe],
    links: UprobeLinks,
) -> (Vec<Link>, Vec<(&'static str, String)>) {
    let mut placed = Vec::new();
    let mut failed = Vec::new();
    if links == UprobeLinks::PerFunction {
        for p in probes {
            match place(skel, path, p) {
                Ok(l) => placed.extend(l),
                Err(e) => failed.push((p.symbol, e.to_string())),
            }
        }
        return (placed, failed);
    }
    for shape in [Shape::Launch, Shape::LaunchEx, Shape::GraphLaunch, Shape::Bracketed] {
        let group: Vec<&Probe> = probes.iter().filter(|p| p.shape == shape).collect();
        if group.is_empty() {
            continue;
        }
        match place_multi(skel, path, shape, &group) {
            Ok(l) => placed.extend(l),
            Err(_) => {
                for p in group {
                    match place_multi(skel, path, shape, &[p]) {
                        Ok(l) => placed.extend(l),
                        Err(e) => failed.push((p.symbol, e.to_string())),
                    }
                }
            }
        }
    }
    (placed, failed)
}

/// The programs a function of `shape` is probed with, each with whether it is a return probe:
/// one for the launch shapes, entry and return for the bracketed calls.
fn shape_programs<'a>(skel: &'a CudaSkel<'static>, shape: Shape) -> Vec<(&'a libbpf_rs::ProgramMut<'static>, bool)> {
    let p = &skel.progs;
    match shape {
        Shape::Launch => vec![(&p.gp_launch, false)],
        Shape::LaunchEx => vec![(&p.gp_launch_ex, false)],
        Shape::GraphLaunch => vec![(&p.gp_graph_launch, false)],
        Shape::Bracketed => vec![(&p.gp_call_enter, false), (&p.gp_call_exit, true)],
    }
}

/// Places the functions of one shape with one `uprobe_multi` link per program; each
/// function's api is its probe's cookie.
fn place_multi(skel: &CudaSkel<'static>, path: &Path, shape: Shape, probes: &[&Probe]) -> libbpf_rs::Result<Vec<Link>> {
    let offsets: Vec<usize> = probes.iter().map(|p| p.point.file_offset as usize).collect();
    let cookies: Vec<u64> = probes.iter().map(|p| p.api as u64).collect();
    shape_programs(skel, shape)
        .into_iter()
        .map(|(prog, retprobe)| {
            let opts = libbpf_rs::UprobeMultiOpts {
                offsets: offsets.clone(),
                cookies: cookies.clone(),
                retprobe,
                ..Default::default()
            };
            prog.attach_uprobe_multi_with_opts(-1, path, "", opts)
        })
        .collect()
}

/// Places one function's probes (a perf-event uprobe each); returns their links.
fn place(skel: &CudaSkel<'static>, path: &Path, probe: &Probe) -> libbpf_rs::Result<Vec<Link>> {
    let offset = probe.point.file_offset as usize;
    shape_programs(skel, probe.shape)
        .into_iter()
        .map(|(prog, retprobe)| {
            let opts = UprobeOpts { cookie: probe.api as u64, retprobe, ..Default::default() };
            prog.attach_uprobe_with_opts(-1, path, offset, opts)
        })
        .collect()
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
