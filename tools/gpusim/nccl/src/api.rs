//! The exported `nccl*` entry points. Calls inside `ncclGroupStart/End` are queued and run at
//! `ncclGroupEnd` as one fused collective per communicator (one kernel, one rendezvous), which is
//! how NCCL aggregates a group into one launch. Outside a group, a send or a receive is a
//! rendezvous of the whole communicator (exact for 2 ranks; documented in docs/gpusim.md).

use std::cell::RefCell;
use std::ffi::{c_char, c_void};

use gpusim_core::ffi::guard;

use crate::comm::{self, Comm, Op};
use crate::profiler::Coll;
use crate::shm::Segment;

/// `ncclResult_t` values.
pub type NcclResult = i32;
const NCCL_SUCCESS: NcclResult = 0;
const NCCL_UNHANDLED_CUDA_ERROR: NcclResult = 1;
const NCCL_SYSTEM_ERROR: NcclResult = 2;
const NCCL_INTERNAL_ERROR: NcclResult = 3;
const NCCL_INVALID_ARGUMENT: NcclResult = 4;
const NCCL_INVALID_USAGE: NcclResult = 5;

/// `NCCL_UNIQUE_ID_BYTES`.
const UNIQUE_ID_BYTES: usize = 128;

/// `ncclUniqueId` (`struct { char internal[128]; }`), passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NcclUniqueId {
    /// NUL-terminated shm segment name.
    pub internal: [c_char; UNIQUE_ID_BYTES],
}

/// A queued group member.
struct Pending {
    comm: *mut Comm,
    op: Op,
    count: usize,
    datatype: i32,
    bytes: u64,
    stream: *mut c_void,
}

thread_local! {
    static GROUP_DEPTH: RefCell<u32> = const { RefCell::new(0) };
    static GROUP_OPS: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
}

/// `ncclResult_t ncclGetVersion(int *version)`: 2.32.3.
#[no_mangle]
pub extern "C" fn ncclGetVersion(version: *mut i32) -> NcclResult {
    guard(NCCL_INTERNAL_ERROR, || {
        if version.is_null() {
            return NCCL_INVALID_ARGUMENT;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *version = 23203 };
        NCCL_SUCCESS
    })
}

/// `ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId)`: a fresh shm segment name.
#[no_mangle]
pub extern "C" fn ncclGetUniqueId(id: *mut NcclUniqueId) -> NcclResult {
    guard(NCCL_INTERNAL_ERROR, || {
        if id.is_null() {
            return NCCL_INVALID_ARGUMENT;
        }
        let mut random = [0u8; 8];
        // SAFETY: getrandom into a local buffer.
        let n = unsafe { libc::getrandom(random.as_mut_ptr() as *mut c_void, 8, 0) };
        if n != 8 {
            return NCCL_SYSTEM_ERROR;
        }
        let name = format!("/gpusim-nccl-{}-{:016x}", std::process::id(), u64::from_le_bytes(random));
        let mut out = NcclUniqueId { internal: [0; UNIQUE_ID_BYTES] };
        for (dst, src) in out.internal.iter_mut().zip(name.bytes()) {
            *dst = src as c_char;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *id = out };
        NCCL_SUCCESS
    })
}

/// `ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)`:
/// blocks until all ranks joined, like the real one.
#[no_mangle]
pub extern "C" fn ncclCommInitRank(comm: *mut *mut Comm, nranks: i32, id: NcclUniqueId, rank: i32) -> NcclResult {
    guard(NCCL_INTERNAL_ERROR, || {
        if comm.is_null() || nranks < 1 || nranks as usize > crate::shm::MAX_RANKS || rank < 0 || rank >= nranks {
            return NCCL_INVALID_ARGUMENT;
        }
        let bytes: Vec<u8> = id.internal.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        let Ok(name) = String::from_utf8(bytes) else {
            return NCCL_INVALID_ARGUMENT;
        };
        if !name.starts_with("/gpusim-nccl-") {
            return NCCL_INVALID_ARGUMENT;
        }
        match Segment::join(&name, nranks as usize) {
            Ok(segment) => {
                let hash = crate::profiler::comm_hash(&id.internal.map(|c| c as u8));
                let profiler = crate::profiler::comm_init(hash, nranks as usize, rank as usize);
                let made = Comm { rank: rank as usize, nranks: nranks as usize, sequence: 0, segment, profiler };
                let ptr = match fixed_comm_address() {
                    Some(at) => match place_at(at, made) {
                        Ok(p) => p,
                        Err(err) => {
                            eprintln!("gpusim libnccl: GPUSIM_COMM_ADDR={at:#x}: {err}");
                            return NCCL_SYSTEM_ERROR;
                        }
                    },
                    None => Box::into_raw(Box::new(made)),
                };
                // SAFETY: non-null out-pointer.
                unsafe { *comm = ptr };
                NCCL_SUCCESS
            }
            Err(err) => {
                eprintln!("gpusim libnccl: ncclCommInitRank rank {rank}/{nranks} failed: {err:?}");
                NCCL_SYSTEM_ERROR
            }
        }
    })
}

/// Bytes mapped for a communicator placed at `GPUSIM_COMM_ADDR`.
const COMM_PAGE: usize = 1 << 16;

/// `GPUSIM_COMM_ADDR=0x…` (tests): the communicator is placed at that address, so that the ranks'
/// `ncclComm_t` values are equal, as two processes' heap pointers often are (the test of
/// ghostprof's per-process communicator maps). Without it, a communicator is a heap allocation.
fn fixed_comm_address() -> Option<usize> {
    let v = std::env::var("GPUSIM_COMM_ADDR").ok()?;
    usize::from_str_radix(v.trim_start_matches("0x"), 16).ok().filter(|a| *a != 0 && a % 4096 == 0)
}

/// Maps one region at exactly `at` (never over an existing mapping) and moves `comm` there.
fn place_at(at: usize, comm: Comm) -> Result<*mut Comm, std::io::Error> {
    const _: () = assert!(std::mem::size_of::<Comm>() <= COMM_PAGE);
    // SAFETY: a new anonymous mapping at a hint that MAP_FIXED_NOREPLACE refuses to put over
    // anything already mapped.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            COMM_PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p as usize != at {
        return Err(std::io::Error::last_os_error());
    }
    let ptr = p as *mut Comm;
    // SAFETY: a fresh, writable, page-aligned region large enough for one Comm.
    unsafe { std::ptr::write(ptr, comm) };
    Ok(ptr)
}

/// `ncclResult_t ncclCommDestroy(ncclComm_t comm)`.
#[no_mangle]
pub extern "C" fn ncclCommDestroy(comm: *mut Comm) -> NcclResult {
    guard(NCCL_INTERNAL_ERROR, || {
        if comm.is_null() {
            return NCCL_INVALID_ARGUMENT;
        }
        let mut owned = if fixed_comm_address() == Some(comm as usize) {
            // SAFETY: placed by `place_at` in ncclCommInitRank: read out once, then unmapped.
            let c = unsafe { std::ptr::read(comm) };
            // SAFETY: the page `place_at` mapped for it.
            unsafe { libc::munmap(comm.cast(), COMM_PAGE) };
            Box::new(c)
        } else {
            // SAFETY: the pointer came from Box::into_raw in ncclCommInitRank.
            unsafe { Box::from_raw(comm) }
        };
        owned.profiler.finalize();
        drop(owned);
        NCCL_SUCCESS
    })
}

/// `ncclResult_t ncclCommCount(const ncclComm_t comm, int *count)`.
#[no_mangle]
pub extern "C" fn ncclCommCount(comm: *const Comm, count: *mut i32) -> NcclResult {
    guard(NCCL_INTERNAL_ERROR, || {
        if comm.is_null() || count.is_null() {
            return NCCL_INVALID_ARGUMENT;
        }
        // SAFETY: valid communicator and out-pointer.
        unsafe { *count = (*comm).nranks as i32 };
        NCCL_SUCCESS
    })
}

/// `ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank)`.
#[no_mangle]
pub extern "C" fn ncclCommUserRank(comm: *const Comm, rank: *mut i32) -> NcclResult {
    guard(NCCL_INTERNAL_ERROR, || {
        if comm.is_null() || rank.is_null() {
            return NCCL_INVALID_ARGUMENT;
        }
        // SAFETY: valid communicator and out-pointer.
        unsafe { *rank = (*comm).rank as i32 };
        NCCL_SUCCESS
    })
}

/// Queue (inside a group) or run one operation of `count` elements of `datatype` (the call's
/// count argument, which NCCL's profiler events carry) whose payload is `payload_count` elements.
fn submit(
    comm: *mut Comm,
    op: Op,
    count: usize,
    payload_count: usize,
    datatype: i32,
    stream: *mut c_void,
) -> NcclResult {
    guard(NCCL_INTERNAL_ERROR, || {
        if comm.is_null() {
            return NCCL_INVALID_ARGUMENT;
        }
        let Some(size) = comm::type_size(datatype) else {
            return NCCL_INVALID_ARGUMENT;
        };
        let pending = Pending { comm, op, count, datatype, bytes: payload_count as u64 * size, stream };
        if GROUP_DEPTH.with(|d| *d.borrow()) > 0 {
            GROUP_OPS.with(|ops| ops.borrow_mut().push(pending));
            return NCCL_SUCCESS;
        }
        run_fused(&[pending])
    })
}

/// Run queued ops of one communicator as one collective kernel.
fn run_fused(ops: &[Pending]) -> NcclResult {
    let Some(first) = ops.first() else {
        return NCCL_SUCCESS;
    };
    // SAFETY: the communicator pointer was validated when the op was submitted and is owned
    // by the caller until ncclCommDestroy.
    let comm = unsafe { &mut *first.comm };
    let bytes: u64 = ops.iter().map(|p| p.bytes).sum();
    let bus_bytes: u64 = ops.iter().map(|p| p.op.bus_bytes(p.bytes, comm.nranks)).sum();
    let op = if ops.iter().all(|p| p.op == first.op) { first.op } else { Op::SendRecv };
    let colls: Vec<Coll> =
        ops.iter().map(|p| Coll { op: p.op, count: p.count, datatype: p.datatype, bytes: p.bytes }).collect();
    match comm::run(comm, op, bytes, bus_bytes, first.stream, &colls) {
        Ok(()) => NCCL_SUCCESS,
        Err(comm::CollectiveError::NoDriver) => {
            eprintln!("gpusim libnccl: libcuda.so.1 (gpusim) is not loaded");
            NCCL_UNHANDLED_CUDA_ERROR
        }
        Err(err) => {
            eprintln!("gpusim libnccl: collective failed: {err:?}");
            NCCL_SYSTEM_ERROR
        }
    }
}

/// `ncclResult_t ncclAllReduce(const void*, void*, size_t count, ncclDataType_t, ncclRedOp_t,
/// ncclComm_t, cudaStream_t)`.
#[no_mangle]
pub extern "C" fn ncclAllReduce(
    _send: *const c_void,
    _recv: *mut c_void,
    count: usize,
    datatype: i32,
    _op: i32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> NcclResult {
    submit(comm, Op::AllReduce, count, count, datatype, stream)
}

/// `ncclResult_t ncclAllGather(const void*, void*, size_t sendcount, ncclDataType_t, ncclComm_t,
/// cudaStream_t)`: the payload is the gathered output (sendcount × nranks).
#[no_mangle]
pub extern "C" fn ncclAllGather(
    _send: *const c_void,
    _recv: *mut c_void,
    sendcount: usize,
    datatype: i32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> NcclResult {
    // SAFETY: checked for null; a valid communicator otherwise.
    let nranks = if comm.is_null() { 1 } else { unsafe { (*comm).nranks } };
    submit(comm, Op::AllGather, sendcount, sendcount * nranks, datatype, stream)
}

/// `ncclResult_t ncclReduceScatter(const void*, void*, size_t recvcount, ncclDataType_t,
/// ncclRedOp_t, ncclComm_t, cudaStream_t)`: the payload is the input (recvcount × nranks).
#[no_mangle]
pub extern "C" fn ncclReduceScatter(
    _send: *const c_void,
    _recv: *mut c_void,
    recvcount: usize,
    datatype: i32,
    _op: i32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> NcclResult {
    // SAFETY: checked for null; a valid communicator otherwise.
    let nranks = if comm.is_null() { 1 } else { unsafe { (*comm).nranks } };
    submit(comm, Op::ReduceScatter, recvcount, recvcount * nranks, datatype, stream)
}

/// `ncclResult_t ncclBroadcast(const void*, void*, size_t count, ncclDataType_t, int root,
/// ncclComm_t, cudaStream_t)`.
#[no_mangle]
pub extern "C" fn ncclBroadcast(
    _send: *const c_void,
    _recv: *mut c_void,
    count: usize,
    datatype: i32,
    _root: i32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> NcclResult {
    submit(comm, Op::Broadcast, count, count, datatype, stream)
}

/// `ncclResult_t ncclReduce(const void*, void*, size_t count, ncclDataType_t, ncclRedOp_t,
/// int root, ncclComm_t, cudaStream_t)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn ncclReduce(
    _send: *const c_void,
    _recv: *mut c_void,
    count: usize,
    datatype: i32,
    _op: i32,
    _root: i32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> NcclResult {
    submit(comm, Op::Reduce, count, count, datatype, stream)
}

/// `ncclResult_t ncclSend(const void*, size_t count, ncclDataType_t, int peer, ncclComm_t,
/// cudaStream_t)`.
#[no_mangle]
pub extern "C" fn ncclSend(
    _send: *const c_void,
    count: usize,
    datatype: i32,
    _peer: i32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> NcclResult {
    submit(comm, Op::SendRecv, count, count, datatype, stream)
}

/// `ncclResult_t ncclRecv(void*, size_t count, ncclDataType_t, int peer, ncclComm_t,
/// cudaStream_t)`.
#[no_mangle]
pub extern "C" fn ncclRecv(
    _recv: *mut c_void,
    count: usize,
    datatype: i32,
    _peer: i32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> NcclResult {
    submit(comm, Op::SendRecv, count, count, datatype, stream)
}

/// `ncclResult_t ncclGroupStart()`.
#[no_mangle]
pub extern "C" fn ncclGroupStart() -> NcclResult {
    guard(NCCL_INTERNAL_ERROR, || {
        GROUP_DEPTH.with(|d| *d.borrow_mut() += 1);
        NCCL_SUCCESS
    })
}

/// `ncclResult_t ncclGroupEnd()`: the outermost end runs the queued ops, one fused collective
/// per communicator in first-use order.
#[no_mangle]
pub extern "C" fn ncclGroupEnd() -> NcclResult {
    guard(NCCL_INTERNAL_ERROR, || {
        let depth = GROUP_DEPTH.with(|d| {
            let mut d = d.borrow_mut();
            *d = d.saturating_sub(1);
            *d
        });
        let was_open = GROUP_OPS.with(|ops| !ops.borrow().is_empty());
        if depth > 0 || !was_open {
            return NCCL_SUCCESS;
        }
        let ops = GROUP_OPS.with(|ops| std::mem::take(&mut *ops.borrow_mut()));
        let mut comms: Vec<*mut Comm> = Vec::new();
        for p in &ops {
            if !comms.contains(&p.comm) {
                comms.push(p.comm);
            }
        }
        for c in comms {
            let batch: Vec<Pending> = ops
                .iter()
                .filter(|p| p.comm == c)
                .map(|p| Pending {
                    comm: p.comm,
                    op: p.op,
                    count: p.count,
                    datatype: p.datatype,
                    bytes: p.bytes,
                    stream: p.stream,
                })
                .collect();
            let rc = run_fused(&batch);
            if rc != NCCL_SUCCESS {
                return rc;
            }
        }
        NCCL_SUCCESS
    })
}

/// `const char* ncclGetErrorString(ncclResult_t result)`.
#[no_mangle]
pub extern "C" fn ncclGetErrorString(result: NcclResult) -> *const c_char {
    guard(c"internal error".as_ptr(), || error_text(result).as_ptr())
}

fn error_text(result: NcclResult) -> &'static std::ffi::CStr {
    match result {
        NCCL_SUCCESS => c"no error",
        NCCL_UNHANDLED_CUDA_ERROR => c"unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
        NCCL_SYSTEM_ERROR => c"unhandled system error (run with NCCL_DEBUG=INFO for details)",
        NCCL_INTERNAL_ERROR => c"internal error - please report this issue to the NCCL developers",
        NCCL_INVALID_ARGUMENT => c"invalid argument (run with NCCL_DEBUG=WARN for details)",
        NCCL_INVALID_USAGE => c"invalid usage (run with NCCL_DEBUG=WARN for details)",
        _ => c"unknown result code",
    }
}
