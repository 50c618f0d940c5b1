//! NCCL's profiler plugin API (NCCL ≥ 2.23): NCCL dlopens the library named by
//! `NCCL_PROFILER_PLUGIN` (`ghostprof record` names this one) and looks up `ncclProfiler_vN`,
//! newest first. Which versions a release looks for (NVIDIA/nccl `src/plugin/profiler.cc`):
//!
//! | NCCL        | looks up, in order |
//! |-------------|--------------------|
//! | 2.23        | v1                 |
//! | 2.24, 2.25  | v2, v1             |
//! | 2.26        | v3, v2, v1         |
//! | 2.27        | v4 … v1            |
//! | 2.28        | v5 … v1 (v5 absent here: v4 is used) |
//! | ≥ 2.29      | v6 … v1 (v6, v5 absent here: v4 is used) |
//!
//! We ask for collective events only (`ncclProfileColl`) and turn the start of each into one
//! [`wire::NCCL_COLL`] ring record: commHash, seqNumber, function, datatype, count, algorithm,
//! protocol, channels. Nothing else is kept: stopEvent and recordEventState do nothing.
//!
//! The descriptor layouts below are those of NCCL's `profiler_v1.h` … `profiler_v4.h`, written
//! out again here (a test pins every offset). Every entry point catches panics and returns
//! `ncclSuccess`: a profiler must never fail or stall NCCL. Records are sent only while the
//! ring is collecting; otherwise an event costs one atomic load.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::catch_unwind;

use ghostprof_ring::wire;

/// `ncclSuccess`.
const NCCL_SUCCESS: c_int = 0;
/// `ncclProfileGroup`.
const PROFILE_GROUP: u8 = 1 << 0;
/// `ncclProfileColl`.
const PROFILE_COLL: u8 = 1 << 1;

/// `ncclProfilerEventDescr_v1_t` up to and including the `coll` member of its union.
#[repr(C)]
pub struct DescrV1 {
    pub kind: u8,
    pub parent: *mut c_void,
    pub rank: c_int,
    pub name: *const c_char,
    pub comm_hash: u64,
    pub seq: u64,
    pub func: u8,
    pub send: *const c_void,
    pub recv: *mut c_void,
    pub count: usize,
    pub root: c_int,
    pub datatype: u8,
    pub op: u32,
    pub traffic_bytes: usize,
    pub n_max_channels: u8,
    pub n_warps: u8,
    pub algo: u8,
    pub proto: u8,
    pub is_collnet: c_int,
    pub is_nvls: c_int,
}

/// `ncclProfilerEventDescr_v2_t` up to the end of `coll`.
#[repr(C)]
pub struct DescrV2 {
    pub kind: u8,
    pub parent: *mut c_void,
    pub rank: c_int,
    pub name: *const c_char,
    pub comm_hash: u64,
    pub seq: u64,
    pub func: *const c_char,
    pub send: *const c_void,
    pub recv: *mut c_void,
    pub count: usize,
    pub root: c_int,
    pub datatype: *const c_char,
    pub traffic_bytes: usize,
    pub n_max_channels: u8,
    pub n_warps: u8,
    pub algo: *const c_char,
    pub proto: *const c_char,
}

/// `ncclProfilerEventDescr_v3_t` up to the end of `coll` (v2 without trafficBytes).
#[repr(C)]
pub struct DescrV3 {
    pub kind: u8,
    pub parent: *mut c_void,
    pub rank: c_int,
    pub name: *const c_char,
    pub comm_hash: u64,
    pub seq: u64,
    pub func: *const c_char,
    pub send: *const c_void,
    pub recv: *mut c_void,
    pub count: usize,
    pub root: c_int,
    pub datatype: *const c_char,
    pub n_max_channels: u8,
    pub n_warps: u8,
    pub algo: *const c_char,
    pub proto: *const c_char,
}

/// `ncclProfilerEventDescr_v4_t` up to the end of `coll` (no name or commHash: the
/// communicator is the context `init` made, which got the commHash).
#[repr(C)]
pub struct DescrV4 {
    pub kind: u8,
    pub parent: *mut c_void,
    pub rank: c_int,
    pub seq: u64,
    pub func: *const c_char,
    pub send: *const c_void,
    pub recv: *mut c_void,
    pub count: usize,
    pub root: c_int,
    pub datatype: *const c_char,
    pub n_channels: u8,
    pub n_warps: u8,
    pub algo: *const c_char,
    pub proto: *const c_char,
}

type InitV1 = unsafe extern "C" fn(*mut *mut c_void, *mut c_int) -> c_int;
type InitV4 =
    unsafe extern "C" fn(*mut *mut c_void, *mut c_int, *const c_char, u64, c_int, c_int, c_int, *const c_void) -> c_int;
type StartEvent<D> = unsafe extern "C" fn(*mut c_void, *mut *mut c_void, *mut D) -> c_int;
type StopEvent = unsafe extern "C" fn(*mut c_void) -> c_int;
type RecordEventState = unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int;
type Finalize = unsafe extern "C" fn(*mut c_void) -> c_int;

/// `ncclProfiler_vN_t`: the plugin's table of entry points.
#[repr(C)]
pub struct Profiler<I, D> {
    pub name: *const c_char,
    pub init: I,
    pub start_event: StartEvent<D>,
    pub stop_event: StopEvent,
    pub record_event_state: RecordEventState,
    pub finalize: Finalize,
}

// SAFETY: immutable tables of a static string and function pointers.
unsafe impl<I, D> Sync for Profiler<I, D> {}

const NAME: *const c_char = c"ghostprof".as_ptr();

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclProfiler_v4: Profiler<InitV4, DescrV4> =
    Profiler { name: NAME, init: init_v4, start_event: start_v4, stop_event, record_event_state, finalize };

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclProfiler_v3: Profiler<InitV1, DescrV3> =
    Profiler { name: NAME, init: init_v3, start_event: start_v3, stop_event, record_event_state, finalize };

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclProfiler_v2: Profiler<InitV1, DescrV2> =
    Profiler { name: NAME, init: init_v2, start_event: start_v2, stop_event, record_event_state, finalize };

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclProfiler_v1: Profiler<InitV1, DescrV1> =
    Profiler { name: NAME, init: init_v1, start_event: start_v1, stop_event, record_event_state, finalize };

/// What `init` keeps per communicator (the context NCCL hands back to startEvent).
struct Context {
    /// From v4's init (0 before v4: the descriptors carry it).
    comm_hash: u64,
    /// -1 unknown (before v4).
    nranks: c_int,
    version: u8,
}

/// The handle of every group and collective event: NCCL (2.23 – 2.27) starts a group's
/// collective events only when the group's event got a non-null handle. Never dereferenced.
static HANDLE: u8 = 0;

fn handle() -> *mut c_void {
    std::ptr::addr_of!(HANDLE) as *mut c_void
}

/// Common init: a context for the communicator, collective events only.
///
/// # Safety
/// `context` and `mask` are NCCL's out-pointers (checked for null).
unsafe fn init(context: *mut *mut c_void, mask: *mut c_int, comm_hash: u64, nranks: c_int, version: u8) -> c_int {
    let _ = catch_unwind(|| {
        if context.is_null() || mask.is_null() {
            return;
        }
        let ctx = Box::new(Context { comm_hash, nranks, version });
        // SAFETY: non-null out-pointers from NCCL.
        unsafe {
            *context = Box::into_raw(ctx).cast();
            *mask = PROFILE_COLL as c_int;
        }
    });
    NCCL_SUCCESS
}

unsafe extern "C" fn init_v1(context: *mut *mut c_void, mask: *mut c_int) -> c_int {
    // SAFETY: per init's contract.
    unsafe { init(context, mask, 0, -1, 1) }
}

unsafe extern "C" fn init_v2(context: *mut *mut c_void, mask: *mut c_int) -> c_int {
    // SAFETY: per init's contract.
    unsafe { init(context, mask, 0, -1, 2) }
}

unsafe extern "C" fn init_v3(context: *mut *mut c_void, mask: *mut c_int) -> c_int {
    // SAFETY: per init's contract.
    unsafe { init(context, mask, 0, -1, 3) }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn init_v4(
    context: *mut *mut c_void,
    mask: *mut c_int,
    _comm_name: *const c_char,
    comm_hash: u64,
    _n_nodes: c_int,
    nranks: c_int,
    _rank: c_int,
    _logfn: *const c_void,
) -> c_int {
    // SAFETY: per init's contract.
    unsafe { init(context, mask, comm_hash, nranks, 4) }
}

unsafe extern "C" fn finalize(context: *mut c_void) -> c_int {
    let _ = catch_unwind(|| {
        if !context.is_null() {
            // SAFETY: the Box init made for this communicator; NCCL finalizes a context once.
            drop(unsafe { Box::from_raw(context.cast::<Context>()) });
        }
    });
    NCCL_SUCCESS
}

unsafe extern "C" fn stop_event(_handle: *mut c_void) -> c_int {
    NCCL_SUCCESS
}

unsafe extern "C" fn record_event_state(_handle: *mut c_void, _state: c_int, _args: *mut c_void) -> c_int {
    NCCL_SUCCESS
}

/// The bytes of a C string NCCL passed (empty for null), at most the wire's limit.
///
/// # Safety
/// `p` is null or a NUL-terminated string (NCCL's names are static strings).
unsafe fn c_bytes<'a>(p: *const c_char) -> &'a [u8] {
    if p.is_null() {
        return &[];
    }
    // SAFETY: per the contract.
    unsafe { CStr::from_ptr(p) }.to_bytes()
}

/// One collective's start: the event handle, and the record when collecting.
///
/// # Safety
/// `handle` is NCCL's out-pointer (checked for null); `context` is null or one of ours.
unsafe fn started(context: *mut c_void, handle_out: *mut *mut c_void, kind: u8, coll: impl FnOnce(&Context) -> Coll) {
    let _ = catch_unwind(std::panic::AssertUnwindSafe(|| {
        if handle_out.is_null() {
            return;
        }
        // SAFETY: non-null out-pointer.
        unsafe {
            *handle_out = if kind == PROFILE_GROUP || kind == PROFILE_COLL { handle() } else { std::ptr::null_mut() }
        };
        if kind != PROFILE_COLL || context.is_null() {
            return;
        }
        // SAFETY: NCCL passes back the context our init made.
        let ctx = unsafe { &*context.cast::<Context>() };
        let c = coll(ctx);
        let rec = wire::NcclColl {
            time_ns: monotonic_ns(),
            comm_hash: c.comm_hash,
            seq: c.seq,
            count: c.count as u64,
            tid: gettid(),
            rank: c.rank,
            nranks: ctx.nranks,
            n_channels: c.n_channels,
            n_warps: c.n_warps,
            api_version: ctx.version,
            func: c.func,
            datatype: c.datatype,
            algo: c.algo,
            proto: c.proto,
        };
        let mut buf = [0u8; wire::NCCL_COLL_MAX];
        let n = rec.encode(&mut buf);
        crate::cupti::push_if_collecting(wire::NCCL_COLL, &buf[..n]);
    }));
}

/// The fields of one collective descriptor, whatever its version.
struct Coll {
    comm_hash: u64,
    seq: u64,
    count: usize,
    rank: c_int,
    n_channels: u8,
    n_warps: u8,
    func: &'static [u8],
    datatype: &'static [u8],
    algo: &'static [u8],
    proto: &'static [u8],
}

unsafe extern "C" fn start_v4(context: *mut c_void, handle_out: *mut *mut c_void, d: *mut DescrV4) -> c_int {
    if d.is_null() {
        return NCCL_SUCCESS;
    }
    // SAFETY: NCCL's descriptor, valid for the call; the union is read as `coll` only when
    // `type` says it is a collective (inside `started`).
    unsafe {
        let d = &*d;
        started(context, handle_out, d.kind, |ctx| Coll {
            comm_hash: ctx.comm_hash,
            seq: d.seq,
            count: d.count,
            rank: d.rank,
            n_channels: d.n_channels,
            n_warps: d.n_warps,
            func: c_bytes(d.func),
            datatype: c_bytes(d.datatype),
            algo: c_bytes(d.algo),
            proto: c_bytes(d.proto),
        })
    };
    NCCL_SUCCESS
}

/// `startEvent` of plugin API v2 and v3: their collective descriptors name the same fields.
macro_rules! start_v2_v3 {
    ($name:ident, $descr:ty) => {
        unsafe extern "C" fn $name(context: *mut c_void, handle_out: *mut *mut c_void, d: *mut $descr) -> c_int {
            if d.is_null() {
                return NCCL_SUCCESS;
            }
            // SAFETY: as start_v4.
            unsafe {
                let d = &*d;
                started(context, handle_out, d.kind, |ctx| Coll {
                    comm_hash: if d.comm_hash != 0 { d.comm_hash } else { ctx.comm_hash },
                    seq: d.seq,
                    count: d.count,
                    rank: d.rank,
                    n_channels: d.n_max_channels,
                    n_warps: d.n_warps,
                    func: c_bytes(d.func),
                    datatype: c_bytes(d.datatype),
                    algo: c_bytes(d.algo),
                    proto: c_bytes(d.proto),
                })
            };
            NCCL_SUCCESS
        }
    };
}
start_v2_v3!(start_v3, DescrV3);
start_v2_v3!(start_v2, DescrV2);

unsafe extern "C" fn start_v1(context: *mut c_void, handle_out: *mut *mut c_void, d: *mut DescrV1) -> c_int {
    if d.is_null() {
        return NCCL_SUCCESS;
    }
    // SAFETY: as start_v4.
    unsafe {
        let d = &*d;
        started(context, handle_out, d.kind, |ctx| Coll {
            comm_hash: if d.comm_hash != 0 { d.comm_hash } else { ctx.comm_hash },
            seq: d.seq,
            count: d.count,
            rank: d.rank,
            n_channels: d.n_max_channels,
            n_warps: d.n_warps,
            func: v1_func(d.func),
            datatype: v1_datatype(d.datatype),
            algo: v1_algo(d.algo),
            proto: v1_proto(d.proto),
        })
    };
    NCCL_SUCCESS
}

/// v1 gives `ncclFunc_t` values; the names are those of later versions (`ncclFuncToString`).
fn v1_func(f: u8) -> &'static [u8] {
    match f {
        0 => b"Broadcast",
        1 => b"Reduce",
        2 => b"AllGather",
        3 => b"ReduceScatter",
        4 => b"AllReduce",
        5 => b"SendRecv",
        6 => b"Send",
        7 => b"Recv",
        _ => b"Unknown",
    }
}

/// `ncclDataType_t` values → `ncclDatatypeToString` names.
fn v1_datatype(t: u8) -> &'static [u8] {
    match t {
        0 => b"ncclInt8",
        1 => b"ncclUint8",
        2 => b"ncclInt32",
        3 => b"ncclUint32",
        4 => b"ncclInt64",
        5 => b"ncclUint64",
        6 => b"ncclFloat16",
        7 => b"ncclFloat32",
        8 => b"ncclFloat64",
        9 => b"ncclBfloat16",
        10 => b"ncclFloat8e4m3",
        11 => b"ncclFloat8e5m2",
        _ => b"Unknown",
    }
}

/// `NCCL_ALGO_*` values → `ncclAlgoToString` names.
fn v1_algo(a: u8) -> &'static [u8] {
    match a {
        0 => b"TREE",
        1 => b"RING",
        2 => b"COLLNET_DIRECT",
        3 => b"COLLNET_CHAIN",
        4 => b"NVLS",
        5 => b"NVLS_TREE",
        6 => b"PAT",
        _ => b"Unknown",
    }
}

/// `NCCL_PROTO_*` values → `ncclProtoToString` names.
fn v1_proto(p: u8) -> &'static [u8] {
    match p {
        0 => b"LL",
        1 => b"LL128",
        2 => b"SIMPLE",
        _ => b"Unknown",
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn gettid() -> u32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    /// Offsets of `profiler_v1.h` … `profiler_v4.h` on x86_64 / aarch64 (LP64), worked out
    /// from the headers' declarations by C's layout rules.
    #[test]
    fn descriptor_offsets_match_the_headers() {
        assert_eq!((offset_of!(DescrV1, parent), offset_of!(DescrV1, rank), offset_of!(DescrV1, name)), (8, 16, 24));
        assert_eq!((offset_of!(DescrV1, comm_hash), offset_of!(DescrV1, seq), offset_of!(DescrV1, func)), (32, 40, 48));
        assert_eq!((offset_of!(DescrV1, send), offset_of!(DescrV1, count), offset_of!(DescrV1, root)), (56, 72, 80));
        assert_eq!(
            (offset_of!(DescrV1, datatype), offset_of!(DescrV1, op), offset_of!(DescrV1, traffic_bytes)),
            (84, 88, 96)
        );
        assert_eq!(
            (offset_of!(DescrV1, n_max_channels), offset_of!(DescrV1, algo), offset_of!(DescrV1, proto)),
            (104, 106, 107)
        );
        assert_eq!((offset_of!(DescrV1, is_collnet), offset_of!(DescrV1, is_nvls)), (108, 112));

        assert_eq!(
            (offset_of!(DescrV2, func), offset_of!(DescrV2, count), offset_of!(DescrV2, datatype)),
            (48, 72, 88)
        );
        assert_eq!((offset_of!(DescrV2, traffic_bytes), offset_of!(DescrV2, n_max_channels)), (96, 104));
        assert_eq!((offset_of!(DescrV2, algo), offset_of!(DescrV2, proto)), (112, 120));

        assert_eq!(
            (offset_of!(DescrV3, datatype), offset_of!(DescrV3, n_max_channels), offset_of!(DescrV3, n_warps)),
            (88, 96, 97)
        );
        assert_eq!((offset_of!(DescrV3, algo), offset_of!(DescrV3, proto)), (104, 112));

        assert_eq!((offset_of!(DescrV4, rank), offset_of!(DescrV4, seq), offset_of!(DescrV4, func)), (16, 24, 32));
        assert_eq!(
            (offset_of!(DescrV4, count), offset_of!(DescrV4, root), offset_of!(DescrV4, datatype)),
            (56, 64, 72)
        );
        assert_eq!((offset_of!(DescrV4, n_channels), offset_of!(DescrV4, n_warps)), (80, 81));
        assert_eq!((offset_of!(DescrV4, algo), offset_of!(DescrV4, proto)), (88, 96));

        // The tables: name, then five function pointers.
        assert_eq!(size_of::<Profiler<InitV4, DescrV4>>(), 48);
        assert_eq!(offset_of!(Profiler<InitV4, DescrV4>, finalize), 40);
    }

    #[test]
    fn group_and_collective_events_get_a_handle_and_nothing_is_sent_without_a_ring() {
        let mut ctx: *mut c_void = std::ptr::null_mut();
        let mut mask: c_int = 0;
        // SAFETY: valid out-pointers, as NCCL passes them.
        let rc = unsafe { init_v4(&mut ctx, &mut mask, std::ptr::null(), 42, 1, 2, 0, std::ptr::null()) };
        assert_eq!((rc, mask), (NCCL_SUCCESS, PROFILE_COLL as c_int));
        assert!(!ctx.is_null());
        let mut d = DescrV4 {
            kind: PROFILE_GROUP,
            parent: std::ptr::null_mut(),
            rank: 1,
            seq: 0,
            func: c"AllReduce".as_ptr(),
            send: std::ptr::null(),
            recv: std::ptr::null_mut(),
            count: 4,
            root: 0,
            datatype: c"ncclFloat32".as_ptr(),
            n_channels: 2,
            n_warps: 16,
            algo: c"RING".as_ptr(),
            proto: c"SIMPLE".as_ptr(),
        };
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: our context and a valid descriptor.
        unsafe { start_v4(ctx, &mut h, &mut d) };
        assert!(!h.is_null(), "a group needs a handle or NCCL skips its collectives");
        d.kind = PROFILE_COLL;
        h = std::ptr::null_mut();
        // SAFETY: as above.
        unsafe { start_v4(ctx, &mut h, &mut d) };
        assert!(!h.is_null());
        d.kind = 1 << 3; // a proxy op: no handle
                         // SAFETY: as above.
        unsafe { start_v4(ctx, &mut h, &mut d) };
        assert!(h.is_null());
        // SAFETY: the context init made.
        assert_eq!(unsafe { finalize(ctx) }, NCCL_SUCCESS);
    }
}
