//! Off-CPU intervals of a target process from the `sched` eBPF program (sched_switch plus the
//! syscall in progress), turned into [`HostStall`] records. The seed of the host-stall
//! collector: loads, attaches, drains the ring buffer on a timer (no wakeups) and reports the
//! ring buffer's losses as drops.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, RingBufferBuilder};

use super::bpf::sched::{types, SchedSkelBuilder};
use crate::record::Producer;
use crate::trace::{DropCause, HostStall};

/// Why the collector could not run.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{what}: permission denied: eBPF needs CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on older kernels): run ghostprof as root, e.g. with sudo")]
    Permission { what: String },
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{path}: {what}")]
    Library { path: std::path::PathBuf, what: String },
    #[error("process {pid} does not exist (it may have exited): check the pid with `ps -p {pid}`")]
    NoSuchProcess { pid: u32 },
    #[error("process {pid} has no CUDA or NCCL library mapped (found: {found}); is it a GPU job, and has it initialized CUDA yet?")]
    NoGpuLibrary { pid: u32, found: String },
}

fn bpf_err(what: &str) -> impl FnOnce(libbpf_rs::Error) -> CollectError + '_ {
    move |source| {
        if source.kind() == libbpf_rs::ErrorKind::PermissionDenied {
            CollectError::Permission { what: what.to_string() }
        } else {
            CollectError::Bpf { what: what.to_string(), source }
        }
    }
}

#[derive(Debug, Clone)]
pub struct OffCpuConfig {
    /// Process (tgid) to follow; 0 follows every process but ghostprof.
    pub target_tgid: u32,
    /// How often the ring buffer is drained.
    pub drain_interval: Duration,
}

/// Totals of one run of the collector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffCpuStats {
    pub intervals: u64,
    pub ringbuf_drops: u64,
    pub malformed: u64,
}

const OFFCPU_BYTES: usize = std::mem::size_of::<types::gp_offcpu_event>();

fn parse(data: &[u8]) -> Option<HostStall> {
    if data.len() < OFFCPU_BYTES {
        return None;
    }
    // SAFETY: the length was checked; the type is plain integers, any bit pattern is valid.
    let e: types::gp_offcpu_event = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    if e.end_ns < e.start_ns {
        return None;
    }
    Some(HostStall {
        start_ns: e.start_ns,
        end_ns: e.end_ns,
        pid: e.pid,
        tid: e.tid,
        reason: e.reason,
        syscall: e.syscall_nr,
    })
}

/// Loads and attaches the program, then drains it into `producer` until `stop` is set.
/// `ready` (if given) is told once the probes are attached.
pub fn run_offcpu(
    cfg: &OffCpuConfig,
    stop: &AtomicBool,
    producer: &mut Producer,
    ready: Option<Sender<()>>,
) -> Result<OffCpuStats, CollectError> {
    let mut storage = MaybeUninit::uninit();
    let mut open = SchedSkelBuilder::default().open(&mut storage).map_err(bpf_err("opening the sched eBPF program"))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.target_tgid = cfg.target_tgid;
        ro.self_tgid = std::process::id();
    }
    let mut skel = open.load().map_err(bpf_err("loading the sched eBPF program"))?;
    skel.attach().map_err(bpf_err("attaching the sched_switch and sys_enter/sys_exit BTF tracepoints"))?;

    let pending: Rc<RefCell<Vec<HostStall>>> = Rc::default();
    let malformed = Rc::new(RefCell::new(0u64));
    let mut builder = RingBufferBuilder::new();
    let (p, m) = (pending.clone(), malformed.clone());
    builder
        .add(&skel.maps.events, move |data: &[u8]| {
            match parse(data) {
                Some(s) => p.borrow_mut().push(s),
                None => *m.borrow_mut() += 1,
            }
            0
        })
        .map_err(bpf_err("registering the ring buffer"))?;
    let ring = builder.build().map_err(bpf_err("creating the ring buffer reader"))?;
    if let Some(r) = ready {
        let _ = r.send(());
    }
    let mut stats = OffCpuStats::default();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        ring.consume().map_err(bpf_err("draining the ring buffer"))?;
        for s in pending.borrow_mut().drain(..) {
            producer.push(s);
            stats.intervals += 1;
        }
        stats.ringbuf_drops = read_counter(&skel.maps.counters, 2);
        stats.malformed = *malformed.borrow();
        producer.set_drops(DropCause::RingbufFull, stats.ringbuf_drops);
        producer.set_drops(DropCause::Malformed, stats.malformed);
        producer.flush();
        if stopping {
            break;
        }
        std::thread::sleep(cfg.drain_interval);
    }
    Ok(stats)
}

/// Sum over CPUs of one per-CPU counter.
fn read_counter(map: &impl MapCore, idx: u32) -> u64 {
    match map.lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY) {
        Ok(Some(per_cpu)) => {
            per_cpu.iter().filter_map(|v| v.get(..8)).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]))).sum()
        }
        _ => 0,
    }
}
