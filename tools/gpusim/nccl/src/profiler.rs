//! NCCL's profiler plugin API, from NCCL's side, as NCCL 2.27 drives it: at the first
//! communicator's init, `dlopen($NCCL_PROFILER_PLUGIN)` ("none" or unset: no plugin) and look up
//! `ncclProfiler_v4`, then `_v3`, `_v2`, `_v1`; `init` per communicator (its context and the
//! event mask); around each collective a group event, then the collective's event with the
//! real descriptor layout (only when the group event got a handle, as NCCL 2.23 – 2.27 do),
//! both stopped once the kernel is enqueued; `finalize` at ncclCommDestroy.
//!
//! `GPUSIM_NCCL_PROFILER_MAX_VERSION=N` makes it look up versions ≤ N only (an older NCCL:
//! 2.23 knew v1 only, 2.24 v2, 2.26 v3).
//!
//! The algorithm and protocol gpusim "chooses" ([`choose`]) are what the collective's event
//! carries; `NCCL_ALGO` / `NCCL_PROTO` (one name each) force them, like the real variables.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::OnceLock;

use crate::comm::Op;

const PROFILE_GROUP: u8 = 1 << 0;
const PROFILE_COLL: u8 = 1 << 1;

// The descriptors up to the end of the union's `coll` member (NCCL's profiler_v1.h … v4.h).
// NCCL zero-fills the whole descriptor; these structs are what it hands the plugin.

#[repr(C)]
#[derive(Default)]
struct DescrV1 {
    kind: u8,
    parent: usize,
    rank: c_int,
    name: usize,
    comm_hash: u64,
    seq: u64,
    func: u8,
    send: usize,
    recv: usize,
    count: usize,
    root: c_int,
    datatype: u8,
    op: u32,
    traffic_bytes: usize,
    n_max_channels: u8,
    n_warps: u8,
    algo: u8,
    proto: u8,
    is_collnet: c_int,
    is_nvls: c_int,
    // the rest of the union (proxy events are larger than `coll` in no version; padding)
    _tail: [u64; 4],
}

#[repr(C)]
struct DescrV2 {
    kind: u8,
    parent: usize,
    rank: c_int,
    name: *const c_char,
    comm_hash: u64,
    seq: u64,
    func: *const c_char,
    send: usize,
    recv: usize,
    count: usize,
    root: c_int,
    datatype: *const c_char,
    traffic_bytes: usize,
    n_max_channels: u8,
    n_warps: u8,
    algo: *const c_char,
    proto: *const c_char,
    _tail: [u64; 4],
}

#[repr(C)]
struct DescrV3 {
    kind: u8,
    parent: usize,
    rank: c_int,
    name: *const c_char,
    comm_hash: u64,
    seq: u64,
    func: *const c_char,
    send: usize,
    recv: usize,
    count: usize,
    root: c_int,
    datatype: *const c_char,
    n_max_channels: u8,
    n_warps: u8,
    algo: *const c_char,
    proto: *const c_char,
    _tail: [u64; 4],
}

#[repr(C)]
struct DescrV4 {
    kind: u8,
    parent: usize,
    rank: c_int,
    seq: u64,
    func: *const c_char,
    send: usize,
    recv: usize,
    count: usize,
    root: c_int,
    datatype: *const c_char,
    n_channels: u8,
    n_warps: u8,
    algo: *const c_char,
    proto: *const c_char,
    _tail: [u64; 4],
}

type InitV1 = unsafe extern "C" fn(*mut *mut c_void, *mut c_int) -> c_int;
type InitV4 =
    unsafe extern "C" fn(*mut *mut c_void, *mut c_int, *const c_char, u64, c_int, c_int, c_int, *const c_void) -> c_int;
type StartEvent = unsafe extern "C" fn(*mut c_void, *mut *mut c_void, *mut c_void) -> c_int;
type StopEvent = unsafe extern "C" fn(*mut c_void) -> c_int;
type Finalize = unsafe extern "C" fn(*mut c_void) -> c_int;

/// `ncclProfiler_vN_t` (same shape in v1 … v4; `init`'s signature differs from v4 on).
#[repr(C)]
struct Table {
    name: *const c_char,
    init: *const c_void,
    start_event: StartEvent,
    stop_event: StopEvent,
    record_event_state: *const c_void,
    finalize: Finalize,
}

/// The loaded plugin.
struct Plugin {
    table: &'static Table,
    version: u8,
}

// SAFETY: the table is the plugin's immutable static; the library stays loaded.
unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

static PLUGIN: OnceLock<Option<Plugin>> = OnceLock::new();

/// The plugin, loaded on first use.
fn plugin() -> Option<&'static Plugin> {
    PLUGIN.get_or_init(load).as_ref()
}

fn load() -> Option<Plugin> {
    let path = std::env::var("NCCL_PROFILER_PLUGIN").ok().filter(|p| !p.is_empty())?;
    if path.eq_ignore_ascii_case("none") {
        return None;
    }
    let max: u8 =
        std::env::var("GPUSIM_NCCL_PROFILER_MAX_VERSION").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(4);
    let cpath = CString::new(path.clone()).ok()?;
    // SAFETY: dlopen of the path the user named, as NCCL does.
    let lib = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if lib.is_null() {
        eprintln!("gpusim libnccl: cannot load NCCL_PROFILER_PLUGIN {path}: no profiler plugin");
        return None;
    }
    for version in (1..=max.min(4)).rev() {
        let sym = CString::new(format!("ncclProfiler_v{version}")).ok()?;
        // SAFETY: dlsym on a live handle.
        let table = unsafe { libc::dlsym(lib, sym.as_ptr()) };
        if !table.is_null() {
            // SAFETY: the symbol is an `ncclProfiler_vN_t` static of the plugin, never unloaded.
            return Some(Plugin { table: unsafe { &*(table as *const Table) }, version });
        }
    }
    eprintln!("gpusim libnccl: {path} has no ncclProfiler_v1..v{max}: no profiler plugin");
    None
}

/// One communicator's profiler state.
pub struct CommProfiler {
    context: *mut c_void,
    mask: c_int,
    /// NCCL's commHash: a hash of the unique id, the same on every rank.
    pub comm_hash: u64,
    /// NCCL's `comm->seqNumber[func]`: per function, from 0.
    seq_numbers: [u64; 8],
    forced: (Option<Algo>, Option<Proto>),
}

/// The profiler state of a new communicator (the plugin's `init` called, when there is one).
pub fn comm_init(comm_hash: u64, nranks: usize, rank: usize) -> CommProfiler {
    let forced = (
        std::env::var("NCCL_ALGO").ok().and_then(|v| Algo::parse(&v)),
        std::env::var("NCCL_PROTO").ok().and_then(|v| Proto::parse(&v)),
    );
    let mut p = CommProfiler { context: std::ptr::null_mut(), mask: 0, comm_hash, seq_numbers: [0; 8], forced };
    if let Some(plugin) = plugin() {
        let rc = if plugin.version >= 4 {
            // SAFETY: the v4 init signature; valid out-pointers.
            unsafe {
                let init: InitV4 = std::mem::transmute::<*const c_void, InitV4>(plugin.table.init);
                init(
                    &mut p.context,
                    &mut p.mask,
                    std::ptr::null(),
                    comm_hash,
                    1,
                    nranks as c_int,
                    rank as c_int,
                    std::ptr::null(),
                )
            }
        } else {
            // SAFETY: the v1–v3 init signature; valid out-pointers.
            unsafe {
                let init: InitV1 = std::mem::transmute::<*const c_void, InitV1>(plugin.table.init);
                init(&mut p.context, &mut p.mask)
            }
        };
        if rc != 0 {
            p.mask = 0;
        }
    }
    p
}

/// NCCL's algorithms (`NCCL_ALGO_*` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// `NCCL_ALGO_TREE`.
    Tree = 0,
    /// `NCCL_ALGO_RING`.
    Ring = 1,
}

impl Algo {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "TREE" => Some(Algo::Tree),
            "RING" => Some(Algo::Ring),
            _ => None,
        }
    }
    /// NCCL's name of the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Tree => "TREE",
            Algo::Ring => "RING",
        }
    }
}

/// NCCL's protocols (`NCCL_PROTO_*` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// `NCCL_PROTO_LL`.
    Ll = 0,
    /// `NCCL_PROTO_LL128`.
    Ll128 = 1,
    /// `NCCL_PROTO_SIMPLE`.
    Simple = 2,
}

impl Proto {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "LL" => Some(Proto::Ll),
            "LL128" => Some(Proto::Ll128),
            "SIMPLE" => Some(Proto::Simple),
            _ => None,
        }
    }
    /// NCCL's name of the protocol.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Ll => "LL",
            Proto::Ll128 => "LL128",
            Proto::Simple => "SIMPLE",
        }
    }
}

/// gpusim's tuner: a tree for all-reduces up to 256 KiB, a ring otherwise; LL up to 64 KiB,
/// LL128 up to 4 MiB, SIMPLE above.
pub fn choose(op: Op, bytes: u64) -> (Algo, Proto) {
    let algo = if op == Op::AllReduce && bytes <= 256 << 10 { Algo::Tree } else { Algo::Ring };
    let proto = match bytes {
        b if b <= 64 << 10 => Proto::Ll,
        b if b <= 4 << 20 => Proto::Ll128,
        _ => Proto::Simple,
    };
    (algo, proto)
}

/// `ncclFunc_t` of a collective (None: send/receive, which are p2p events).
fn func(op: Op) -> Option<(u8, &'static std::ffi::CStr)> {
    Some(match op {
        Op::Broadcast => (0, c"Broadcast"),
        Op::Reduce => (1, c"Reduce"),
        Op::AllGather => (2, c"AllGather"),
        Op::ReduceScatter => (3, c"ReduceScatter"),
        Op::AllReduce => (4, c"AllReduce"),
        Op::SendRecv => return None,
    })
}

/// `ncclDatatypeToString` of an `ncclDataType_t`.
fn datatype_name(t: i32) -> &'static std::ffi::CStr {
    match t {
        0 => c"ncclInt8",
        1 => c"ncclUint8",
        2 => c"ncclInt32",
        3 => c"ncclUint32",
        4 => c"ncclInt64",
        5 => c"ncclUint64",
        6 => c"ncclFloat16",
        7 => c"ncclFloat32",
        8 => c"ncclFloat64",
        9 => c"ncclBfloat16",
        10 => c"ncclFloat8e4m3",
        11 => c"ncclFloat8e5m2",
        _ => c"Unknown",
    }
}

fn algo_name(a: Algo) -> &'static std::ffi::CStr {
    match a {
        Algo::Tree => c"TREE",
        Algo::Ring => c"RING",
    }
}

fn proto_name(p: Proto) -> &'static std::ffi::CStr {
    match p {
        Proto::Ll => c"LL",
        Proto::Ll128 => c"LL128",
        Proto::Simple => c"SIMPLE",
    }
}

/// One collective of a launch: what its profiler event describes.
pub struct Coll {
    /// The collective's function.
    pub op: Op,
    /// Elements.
    pub count: usize,
    /// `ncclDataType_t` value.
    pub datatype: i32,
    /// Bytes moved per rank.
    pub bytes: u64,
}

/// The started events of one launch, to stop once the kernel is enqueued.
pub struct Started {
    handles: Vec<*mut c_void>,
}

impl CommProfiler {
    /// The algorithm and protocol of a collective of `bytes`.
    pub fn choice(&self, op: Op, bytes: u64) -> (Algo, Proto) {
        let (a, p) = choose(op, bytes);
        (self.forced.0.unwrap_or(a), self.forced.1.unwrap_or(p))
    }

    /// Starts the events of one launch (a group event, then one event per collective, as
    /// NCCL's ncclProfilerStartGroupEvent / StartTaskEvents) and advances the per-function
    /// sequence numbers, plugin or not (NCCL counts them for RAS too).
    pub fn start(&mut self, rank: usize, channels: u8, colls: &[Coll]) -> Started {
        let mut started = Started { handles: Vec::new() };
        let active = self.mask & PROFILE_COLL as c_int != 0;
        let plugin = if active { plugin() } else { None };
        let mut group: *mut c_void = std::ptr::null_mut();
        if let Some(pl) = plugin {
            if colls.iter().any(|c| func(c.op).is_some()) {
                let mut d = DescrV1 { kind: PROFILE_GROUP, ..Default::default() };
                // SAFETY: a zero-filled descriptor as large as any version's; the plugin's entry point.
                unsafe { (pl.table.start_event)(self.context, &mut group, (&mut d as *mut DescrV1).cast()) };
                if !group.is_null() {
                    started.handles.push(group);
                }
            }
        }
        for c in colls {
            let Some((func_id, func_name)) = func(c.op) else { continue };
            let seq = self.seq_numbers[func_id as usize];
            self.seq_numbers[func_id as usize] += 1;
            let Some(pl) = plugin else { continue };
            if group.is_null() {
                continue;
            }
            let (algo, proto) = self.choice(c.op, c.bytes);
            let mut handle: *mut c_void = std::ptr::null_mut();
            let (rank, dt) = (rank as c_int, datatype_name(c.datatype));
            // SAFETY (each arm): a fully initialized descriptor of the version the plugin
            // exports, valid for the call; string pointers to statics.
            unsafe {
                match pl.version {
                    4 => {
                        let mut d = DescrV4 {
                            kind: PROFILE_COLL,
                            parent: group as usize,
                            rank,
                            seq,
                            func: func_name.as_ptr(),
                            send: 0,
                            recv: 0,
                            count: c.count,
                            root: 0,
                            datatype: dt.as_ptr(),
                            n_channels: channels,
                            n_warps: 16,
                            algo: algo_name(algo).as_ptr(),
                            proto: proto_name(proto).as_ptr(),
                            _tail: [0; 4],
                        };
                        (pl.table.start_event)(self.context, &mut handle, (&mut d as *mut DescrV4).cast());
                    }
                    3 => {
                        let mut d = DescrV3 {
                            kind: PROFILE_COLL,
                            parent: group as usize,
                            rank,
                            name: std::ptr::null(),
                            comm_hash: self.comm_hash,
                            seq,
                            func: func_name.as_ptr(),
                            send: 0,
                            recv: 0,
                            count: c.count,
                            root: 0,
                            datatype: dt.as_ptr(),
                            n_max_channels: channels,
                            n_warps: 16,
                            algo: algo_name(algo).as_ptr(),
                            proto: proto_name(proto).as_ptr(),
                            _tail: [0; 4],
                        };
                        (pl.table.start_event)(self.context, &mut handle, (&mut d as *mut DescrV3).cast());
                    }
                    2 => {
                        let mut d = DescrV2 {
                            kind: PROFILE_COLL,
                            parent: group as usize,
                            rank,
                            name: std::ptr::null(),
                            comm_hash: self.comm_hash,
                            seq,
                            func: func_name.as_ptr(),
                            send: 0,
                            recv: 0,
                            count: c.count,
                            root: 0,
                            datatype: dt.as_ptr(),
                            traffic_bytes: c.bytes as usize,
                            n_max_channels: channels,
                            n_warps: 16,
                            algo: algo_name(algo).as_ptr(),
                            proto: proto_name(proto).as_ptr(),
                            _tail: [0; 4],
                        };
                        (pl.table.start_event)(self.context, &mut handle, (&mut d as *mut DescrV2).cast());
                    }
                    _ => {
                        let mut d = DescrV1 {
                            kind: PROFILE_COLL,
                            parent: group as usize,
                            rank,
                            comm_hash: self.comm_hash,
                            seq,
                            func: func_id,
                            count: c.count,
                            datatype: c.datatype as u8,
                            traffic_bytes: c.bytes as usize,
                            n_max_channels: channels,
                            n_warps: 16,
                            algo: algo as u8,
                            proto: proto as u8,
                            ..Default::default()
                        };
                        (pl.table.start_event)(self.context, &mut handle, (&mut d as *mut DescrV1).cast());
                    }
                }
            }
            if !handle.is_null() {
                started.handles.push(handle);
            }
        }
        started
    }

    /// Stops a launch's events, collectives first, the group last.
    pub fn stop(&self, started: Started) {
        let Some(pl) = plugin() else { return };
        for &h in started.handles.iter().rev() {
            // SAFETY: a handle the plugin gave for this launch, stopped once.
            unsafe { (pl.table.stop_event)(h) };
        }
    }

    /// ncclCommDestroy: the plugin's finalize of this communicator's context.
    pub fn finalize(&mut self) {
        if let Some(pl) = plugin() {
            if !self.context.is_null() {
                // SAFETY: the context init made, finalized once.
                unsafe { (pl.table.finalize)(self.context) };
                self.context = std::ptr::null_mut();
            }
        }
    }
}

/// NCCL's `getHash` stand-in: FNV-1a of the unique id's bytes (the same on every rank).
pub fn comm_hash(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    /// The same offsets as NCCL's headers (and ghostprof's injection library's reading of them).
    #[test]
    fn descriptors_have_the_header_layouts() {
        assert_eq!(
            (offset_of!(DescrV1, func), offset_of!(DescrV1, datatype), offset_of!(DescrV1, algo)),
            (48, 84, 106)
        );
        assert_eq!((offset_of!(DescrV2, algo), offset_of!(DescrV2, proto)), (112, 120));
        assert_eq!((offset_of!(DescrV3, n_max_channels), offset_of!(DescrV3, proto)), (96, 112));
        assert_eq!(
            (offset_of!(DescrV4, seq), offset_of!(DescrV4, n_channels), offset_of!(DescrV4, proto)),
            (24, 80, 96)
        );
    }

    #[test]
    fn the_tuner_picks_by_size() {
        assert_eq!(choose(Op::AllReduce, 32 << 10), (Algo::Tree, Proto::Ll));
        assert_eq!(choose(Op::AllReduce, 1 << 20), (Algo::Ring, Proto::Ll128));
        assert_eq!(choose(Op::AllReduce, 64 << 20), (Algo::Ring, Proto::Simple));
        assert_eq!(choose(Op::AllGather, 32 << 10), (Algo::Ring, Proto::Ll));
    }
}
