//! The simulated device. One `Mutex<Device>` per process holds per-stream "free at" times on
//! CLOCK_MONOTONIC, events, loaded kernels and the append-only record log.
//!
//! Timeline rule (issue 3): an op enqueued at host time `t` on stream `s` starts at
//! `max(t + launch latency, free[s])` and runs its duration; `free[s]` becomes its end. Waiting
//! calls compute their deadline under the lock and then sleep without it, so other threads (and
//! libnccl's collectives) keep enqueueing.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Mutex, MutexGuard, OnceLock};

use gpusim_core::clock::now_ns;
use gpusim_core::record::{RecordKind, SimRecord};

use crate::config;

/// A kernel a module defines: its name and the cost of one launch.
pub struct Function {
    /// NUL-terminated name, kept alive for `cuFuncGetName`.
    pub name: CString,
    /// Duration of one launch before the slowdown factor.
    pub duration_ns: u64,
    /// FLOPs of one launch.
    pub flops: u64,
}

/// Process-wide simulated device state.
#[derive(Default)]
pub struct Device {
    /// Append-only log read by libcupti and the workload's ground truth.
    pub records: Vec<SimRecord>,
    /// Stream id → time the stream finishes its last enqueued op.
    pub stream_free_ns: HashMap<u32, u64>,
    /// Last stream id handed out.
    pub last_stream_id: u32,
    /// Event handle → completion time of its last record (None: never recorded).
    pub events: HashMap<usize, Option<u64>>,
    /// Last event handle handed out.
    pub last_event: usize,
    /// Kernels, indexed by `CUfunction` handle − 1.
    pub functions: Vec<Function>,
    /// Module handle → indices into `functions`.
    pub modules: Vec<Vec<usize>>,
    /// Last correlation id handed out.
    pub last_correlation_id: u32,
    /// Live allocations: device pointer → bytes.
    pub allocations: HashMap<u64, usize>,
    /// Next device pointer to hand out.
    pub next_device_ptr: u64,
}

/// Lock the process's device (a poisoned lock is recovered: the state stays consistent because
/// every mutation is a single push or insert). When the main thread (the workload's launching
/// thread) finds the lock held by another thread (the CUPTI buffer thread, an injected
/// library's), its wait is a real host block inside a CUDA call, which a profiler sees as
/// off-CPU time: it is logged as a `device_lock` host stall, so the ground truth counts it too.
pub fn lock() -> MutexGuard<'static, Device> {
    static DEVICE: OnceLock<Mutex<Device>> = OnceLock::new();
    let mutex = DEVICE.get_or_init(|| Mutex::new(Device { next_device_ptr: 0x7f00_0000_0000, ..Device::default() }));
    match mutex.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            let start_ns = now_ns();
            let mut guard = mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // SAFETY: getpid has no arguments and cannot fail.
            if thread_id() == unsafe { libc::getpid() } as u32 {
                let mut rec = SimRecord::new(RecordKind::HostStall);
                rec.set_name("device_lock");
                rec.start_ns = start_ns;
                rec.transfer_start_ns = start_ns;
                rec.enqueue_ns = start_ns;
                rec.end_ns = now_ns();
                guard.records.push(rec);
            }
            guard
        }
    }
}

thread_local! {
    /// The caller's kernel thread id, read once (0: not yet).
    static TID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A forked child's only thread keeps its parent's cached id otherwise.
extern "C" fn forget_tid() {
    TID.with(|t| t.set(0));
}

/// Kernel thread id of the caller (what a uprobe reports as the pid/tid pair's tid). Cached
/// per thread, as the real driver does not make a `gettid` system call per launch: two per
/// launch here made a traced job pay the scheduler program's system-call tracepoints ~850
/// times a step on the `launch-bound` scenario, a cost real jobs do not have.
pub fn thread_id() -> u32 {
    TID.with(|t| {
        if t.get() == 0 {
            static AT_FORK: std::sync::Once = std::sync::Once::new();
            // SAFETY: registers a handler that only resets this thread-local.
            AT_FORK.call_once(|| unsafe {
                libc::pthread_atfork(None, None, Some(forget_tid));
            });
            // SAFETY: gettid has no arguments and cannot fail.
            t.set(unsafe { libc::syscall(libc::SYS_gettid) as u32 });
        }
        t.get()
    })
}

/// `pthread_self()` of the caller truncated to 32 bits (CUPTI's default `threadId`).
pub fn pthread_id() -> u32 {
    // SAFETY: pthread_self cannot fail.
    unsafe { libc::pthread_self() as u32 }
}

impl Device {
    /// Next CUPTI-style correlation id (starts at 1).
    pub fn next_correlation_id(&mut self) -> u32 {
        self.last_correlation_id += 1;
        self.last_correlation_id
    }

    /// When an op enqueued now on `stream_id` would start.
    pub fn ready_ns(&self, stream_id: u32, enqueue_ns: u64) -> u64 {
        let free = self.stream_free_ns.get(&stream_id).copied().unwrap_or(0);
        free.max(enqueue_ns + config::get().launch_latency_ns)
    }

    /// Latest end over all streams (what `cuCtxSynchronize` waits for).
    pub fn all_streams_free_ns(&self) -> u64 {
        self.stream_free_ns.values().copied().max().unwrap_or(0)
    }

    /// Place `rec` (kind, name, flops, bytes and sizes filled in) on `stream_id`'s timeline for
    /// `duration_ns`, log it and return its correlation id.
    pub fn enqueue(&mut self, mut rec: SimRecord, stream_id: u32, duration_ns: u64) -> u32 {
        let enqueue_ns = now_ns();
        let start_ns = self.ready_ns(stream_id, enqueue_ns);
        rec.stream_id = stream_id;
        rec.enqueue_ns = enqueue_ns;
        rec.start_ns = start_ns;
        rec.transfer_start_ns = start_ns;
        rec.end_ns = start_ns + duration_ns;
        self.push_device_op(rec)
    }

    /// Log a device op whose times are already set and advance its stream. A non-zero
    /// `rec.correlation_id` is kept; zero gets a fresh id.
    pub fn push_device_op(&mut self, mut rec: SimRecord) -> u32 {
        // A launch allocates its id at API entry (the callback API reports it there).
        let correlation_id = match rec.correlation_id {
            0 => self.next_correlation_id(),
            preset => preset,
        };
        rec.correlation_id = correlation_id;
        rec.thread_id = thread_id();
        rec.pthread_id = pthread_id();
        let free = self.stream_free_ns.entry(rec.stream_id).or_insert(0);
        *free = (*free).max(rec.end_ns);
        self.records.push(rec);
        correlation_id
    }

    /// Log a driver API interval.
    pub fn push_api(&mut self, name: &str, cbid: u32, start_ns: u64, correlation_id: u32) {
        let mut rec = SimRecord::new(RecordKind::Api);
        rec.set_name(name);
        rec.cbid = cbid;
        rec.start_ns = start_ns;
        rec.transfer_start_ns = start_ns;
        rec.enqueue_ns = start_ns;
        rec.end_ns = now_ns();
        rec.correlation_id = correlation_id;
        rec.thread_id = thread_id();
        rec.pthread_id = pthread_id();
        self.records.push(rec);
    }
}

/// Block the caller until `deadline_ns` and log the wait as a `SyncWait` of CUPTI type
/// `sync_type` (3 = stream, 4 = context, 1 = event synchronize), tagged with the API's cbid.
pub fn wait_until(deadline_ns: u64, sync_type: u32, stream_id: u32, api: (&str, u32)) {
    let start_ns = now_ns();
    let correlation_id = lock().next_correlation_id();
    let call = crate::hook::Call {
        cbid: api.1,
        name: api.0,
        symbol: std::ptr::null(),
        params: std::ptr::null(),
        correlation_id,
    };
    crate::hook::enter(&call);
    gpusim_core::clock::sleep_until(deadline_ns);
    let mut dev = lock();
    let mut rec = SimRecord::new(RecordKind::SyncWait);
    rec.set_name(api.0);
    rec.cbid = api.1;
    rec.copy_kind = sync_type;
    rec.stream_id = stream_id;
    rec.start_ns = start_ns;
    rec.transfer_start_ns = start_ns;
    rec.enqueue_ns = start_ns;
    rec.end_ns = now_ns();
    rec.correlation_id = correlation_id;
    rec.thread_id = thread_id();
    rec.pthread_id = pthread_id();
    dev.records.push(rec);
    dev.push_api(api.0, api.1, start_ns, correlation_id);
    drop(dev);
    crate::hook::exit(&call, 0);
}
