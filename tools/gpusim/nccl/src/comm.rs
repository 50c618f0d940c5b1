//! Communicators and collectives: where a collective's kernel goes on the rank's simulated
//! timeline. The device lives in libcuda; this library reaches it through the private
//! `gpusim_*` symbols, as the real NCCL reaches the driver.

use std::ffi::c_void;

use gpusim_core::abi;
use gpusim_core::clock::now_ns;
use gpusim_core::record::{RecordKind, SimRecord};

use crate::profiler::{Coll, CommProfiler};
use crate::shm::{Segment, ShmError};

/// A communicator (`ncclComm_t` points at one).
pub struct Comm {
    /// This process's rank.
    pub rank: usize,
    /// Ranks in the communicator.
    pub nranks: usize,
    /// Next collective sequence number.
    pub sequence: u64,
    /// The shared segment.
    pub segment: Segment,
    /// The profiler plugin's view of this communicator (commHash, seqNumbers, context).
    pub profiler: CommProfiler,
}

/// The collective operations, with their bus-bytes factor (NCCL's "busBw" convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// ncclAllReduce
    AllReduce,
    /// ncclAllGather
    AllGather,
    /// ncclReduceScatter
    ReduceScatter,
    /// ncclBroadcast
    Broadcast,
    /// ncclReduce
    Reduce,
    /// ncclSend / ncclRecv
    SendRecv,
}

impl Op {
    /// Kernel name in the style of NCCL 2.2x device kernels.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Op::AllReduce => "ncclDevKernel_AllReduce_Sum_bf16_RING_LL",
            Op::AllGather => "ncclDevKernel_AllGather_RING_LL",
            Op::ReduceScatter => "ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL",
            Op::Broadcast => "ncclDevKernel_Broadcast_RING_LL",
            Op::Reduce => "ncclDevKernel_Reduce_Sum_bf16_RING_LL",
            Op::SendRecv => "ncclDevKernel_SendRecv",
        }
    }

    /// Bytes each rank moves over the bus for a payload of `bytes` (ring algorithms).
    pub fn bus_bytes(self, bytes: u64, nranks: usize) -> u64 {
        let n = nranks.max(1) as f64;
        let factor = match self {
            Op::AllReduce => 2.0 * (n - 1.0) / n,
            Op::AllGather | Op::ReduceScatter => (n - 1.0) / n,
            Op::Broadcast | Op::Reduce | Op::SendRecv => 1.0,
        };
        (bytes as f64 * factor) as u64
    }
}

/// Size in bytes of `ncclDataType_t` values 0..=11.
pub fn type_size(datatype: i32) -> Option<u64> {
    Some(match datatype {
        0 | 1 | 10 | 11 => 1,
        6 | 9 => 2,
        2 | 3 | 7 => 4,
        4 | 5 | 8 => 8,
        _ => return None,
    })
}

/// Fixed per-collective latency on top of the bandwidth term.
const COLLECTIVE_BASE_NS: u64 = 5_000;

fn bus_bytes_per_s() -> f64 {
    std::env::var("GPUSIM_NCCL_BUS_BYTES_PER_S")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .unwrap_or(100e9)
}

/// Why a collective could not run.
#[derive(Debug)]
pub enum CollectiveError {
    /// libcuda (with the gpusim symbols) is not loaded.
    NoDriver,
    /// The rendezvous failed.
    Shm(ShmError),
}

/// Run one collective of `bytes` payload (or a fused group of ops, `colls`) on `stream`.
pub fn run(
    comm: &mut Comm,
    op: Op,
    bytes: u64,
    transfer_bus_bytes: u64,
    stream: *mut c_void,
    colls: &[Coll],
) -> Result<(), CollectiveError> {
    let ready = abi::lookup(abi::STREAM_READY_NS).ok_or(CollectiveError::NoDriver)?;
    let enqueue = abi::lookup(abi::ENQUEUE_DEVICE_OP).ok_or(CollectiveError::NoDriver)?;
    let push_host = abi::lookup(abi::PUSH_HOST).ok_or(CollectiveError::NoDriver)?;
    // SAFETY: the symbols have the signatures documented in gpusim_core::abi.
    let (ready, enqueue, push_host): (abi::StreamReadyFn, abi::EnqueueDeviceOpFn, abi::PushHostFn) = unsafe {
        (
            std::mem::transmute::<*mut c_void, abi::StreamReadyFn>(ready),
            std::mem::transmute::<*mut c_void, abi::EnqueueDeviceOpFn>(enqueue),
            std::mem::transmute::<*mut c_void, abi::PushHostFn>(push_host),
        )
    };
    let enqueue_ns = now_ns();
    // NCCL starts the profiler events of a launch before the kernel is enqueued.
    let channels = (comm.nranks * 2).min(u8::MAX as usize) as u8;
    let events = comm.profiler.start(comm.rank, channels, colls);
    // SAFETY: a valid function pointer into libcuda.
    let arrival_ns = unsafe { ready(stream) };
    let sequence = comm.sequence;
    comm.sequence += 1;
    let last_arrival_ns = comm.segment.arrive(comm.rank, sequence, arrival_ns).map_err(CollectiveError::Shm)?;
    let waited_until = now_ns();
    // The host blocked for its peers: a real off-CPU interval ghostprof can see.
    if waited_until > enqueue_ns + 50_000 {
        let mut stall = SimRecord::new(RecordKind::HostStall);
        stall.set_name("nccl rendezvous");
        stall.start_ns = enqueue_ns;
        stall.transfer_start_ns = enqueue_ns;
        stall.enqueue_ns = enqueue_ns;
        stall.end_ns = waited_until;
        // SAFETY: valid function pointer and record.
        unsafe { push_host(&stall) };
    }
    let transfer_ns = COLLECTIVE_BASE_NS + (transfer_bus_bytes as f64 / bus_bytes_per_s() * 1e9) as u64;
    let mut rec = SimRecord::new(RecordKind::Collective);
    rec.set_name(op.kernel_name());
    rec.enqueue_ns = enqueue_ns;
    rec.start_ns = arrival_ns;
    rec.transfer_start_ns = last_arrival_ns.max(arrival_ns);
    rec.end_ns = rec.transfer_start_ns + transfer_ns;
    rec.bytes = bytes;
    rec.sequence = sequence as u32;
    rec.grid = [comm.nranks as u32 * 2, 1, 1];
    rec.block = [512, 1, 1];
    // The ground truth's algorithm and protocol (of the launch's first collective).
    if let Some(c) = colls.iter().find(|c| c.op != Op::SendRecv) {
        let (algo, proto) = comm.profiler.choice(c.op, c.bytes);
        rec.copy_kind = gpusim_core::record::collective_algo_code(algo as u32, proto as u32);
    }
    // SAFETY: valid function pointer and record.
    unsafe { enqueue(stream, &mut rec) };
    comm.profiler.stop(events);
    Ok(())
}
