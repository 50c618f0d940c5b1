//! Host stalls from the `sched` eBPF program: off-CPU intervals of the traced threads with
//! their reason (the syscall in progress, the task state; time between wakeup and running is
//! run-queue delay), and every read/write/fsync on a regular file with its bytes. The program
//! shares the `targets` map of the cuda program, so it follows the same processes.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder};

use super::bpf::sched::{types, SchedSkel, SchedSkelBuilder};
use crate::pipeline::Producer;
use crate::trace::{DropCause, FileIo, HostStall, Record, StallReason};

/// Why a collector could not run.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The kernel refused to load or attach an eBPF program: ghostprof lacks the capabilities.
    #[error("{what}: permission denied: eBPF needs CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on older kernels): run ghostprof as root, e.g. with sudo")]
    Permission {
        /// What was being loaded or attached.
        what: String,
    },
    /// libbpf failed for another reason.
    #[error("{what}: {source}")]
    Bpf {
        /// What was being loaded or attached.
        what: String,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// A library to probe could not be read (its metadata or its ELF symbols).
    #[error("{path}: {what}")]
    Library {
        /// The library file.
        path: std::path::PathBuf,
        /// The error.
        what: String,
    },
    /// The pid to attach to does not exist.
    #[error("process {pid} does not exist (it may have exited): check the pid with `ps -p {pid}`")]
    NoSuchProcess {
        /// The pid given.
        pid: u32,
    },
    /// The process to attach to maps neither libcuda nor libnccl.
    #[error("process {pid} has no CUDA or NCCL library mapped (found: {found}); is it a GPU job, and has it initialized CUDA yet?")]
    NoGpuLibrary {
        /// The pid given.
        pid: u32,
        /// The shared libraries it does map (names, comma-separated).
        found: String,
    },
    /// Attaching to pid 1 (the whole machine) is refused.
    #[error("refusing to attach to pid 1: its process tree is the whole machine; give the pid of the job or of its launcher (e.g. torchrun)")]
    WholeMachine,
    /// The kernel has no BTF, which the eBPF programs need.
    #[error("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): ghostprof needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.8)")]
    NoBtf,
    /// The kernel has no uprobe support.
    #[error("this kernel has no uprobe support (/sys/bus/event_source/devices/uprobe is missing): ghostprof needs CONFIG_UPROBE_EVENTS=y")]
    NoUprobes,
}

pub(crate) fn bpf_err(what: &str) -> impl FnOnce(libbpf_rs::Error) -> CollectError + '_ {
    move |source| {
        if source.kind() == libbpf_rs::ErrorKind::PermissionDenied {
            CollectError::Permission { what: what.to_string() }
        } else {
            CollectError::Bpf { what: what.to_string(), source }
        }
    }
}

/// Index of the ring-buffer drop counter (enum gp_counter).
const GP_CNT_RB_DROPS: u32 = 2;

/// Totals of one collector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffCpuStats {
    /// Off-CPU interval records written (an interval split at its wakeup counts twice).
    pub intervals: u64,
    /// File I/O records written.
    pub file_io: u64,
    /// Events the eBPF side dropped because its ring buffer was full.
    pub ringbuf_drops: u64,
    /// Ring-buffer events too short, of an unknown kind, or ending before they start.
    pub malformed: u64,
}

fn read<T: Copy>(data: &[u8]) -> Option<T> {
    if data.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; the types are plain integers, valid for any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

/// Ring-buffer record → trace records (an off-CPU interval splits at its wakeup).
fn parse(data: &[u8], out: &mut Vec<Record>) -> bool {
    let Some(hdr) = read::<types::gp_event_hdr>(data) else { return false };
    match hdr.kind {
        1 => {
            let Some(e) = read::<types::gp_offcpu_event>(data) else { return false };
            if e.end_ns < e.start_ns {
                return false;
            }
            let stall = HostStall {
                start_ns: e.start_ns,
                end_ns: e.end_ns,
                pid: e.pid,
                tid: e.tid,
                reason: e.reason,
                syscall: e.syscall_nr,
            };
            let preempted = e.reason == StallReason::Preempted as u32;
            if !preempted && e.wakeup_ns > e.start_ns && e.wakeup_ns < e.end_ns {
                out.push(Record::HostStall(HostStall { end_ns: e.wakeup_ns, ..stall }));
                out.push(Record::HostStall(HostStall {
                    start_ns: e.wakeup_ns,
                    reason: StallReason::RunQueue as u32,
                    ..stall
                }));
            } else {
                out.push(Record::HostStall(stall));
            }
            true
        }
        7 => {
            let Some(e) = read::<types::gp_io_event>(data) else { return false };
            out.push(Record::FileIo(FileIo {
                start_ns: e.start_ns,
                end_ns: e.end_ns.max(e.start_ns),
                bytes: e.bytes,
                pid: e.pid,
                tid: e.tid,
                fd: e.fd,
                syscall: e.syscall_nr,
            }));
            true
        }
        _ => false,
    }
}

/// The off-CPU collector: the `sched` eBPF program (scheduler and syscall tracepoints) on the
/// traced processes, drained into host-stall and file-I/O records.
pub struct SchedCollector {
    skel: SchedSkel<'static>,
    _links: Vec<Link>,
    ring: RingBuffer<'static>,
    pending: Rc<RefCell<Vec<Record>>>,
    malformed: Rc<RefCell<u64>>,
    /// Totals so far.
    pub stats: OffCpuStats,
    /// Optional parts that could not be used, with the reason.
    pub notes: Vec<String>,
    /// Pids of [`SchedCollector::hold`].
    held: Vec<u32>,
}

fn open_sched(
    target_tgid: u32,
    targets: Option<&libbpf_rs::MapHandle>,
    with_wakeup: bool,
) -> Result<SchedSkel<'static>, CollectError> {
    // The skeleton borrows its object storage for its whole life: one small leak per load.
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = SchedSkelBuilder::default().open(storage).map_err(bpf_err("opening the sched eBPF program"))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.target_tgid = target_tgid;
        ro.self_tgid = std::process::id();
    }
    if let Some(map) = targets {
        open.maps.target_words.reuse_fd(map.as_fd()).map_err(bpf_err("sharing the target_words map"))?;
    }
    if !with_wakeup {
        open.progs.gp_sched_wakeup.set_autoload(false);
    }
    open.load().map_err(bpf_err("loading the sched eBPF program"))
}

impl SchedCollector {
    /// Loads and attaches the program. With `targets` (the cuda program's `target_words`), it
    /// follows the processes traced there; `target_tgid` (non-zero) is followed in any case.
    pub fn load(target_tgid: u32, targets: Option<&libbpf_rs::MapHandle>) -> Result<Self, CollectError> {
        let mut notes = Vec::new();
        // Run-queue delay needs sched_wakeup; without it off-CPU intervals stay whole.
        let (skel, wakeups) = match open_sched(target_tgid, targets, true) {
            Ok(skel) => (skel, true),
            Err(CollectError::Bpf { source, .. }) => {
                notes.push(format!("run-queue delay is off: the sched_wakeup tracepoint did not load ({source})"));
                (open_sched(target_tgid, targets, false)?, false)
            }
            Err(e) => return Err(e),
        };
        let progs = &skel.progs;
        let mut links = Vec::new();
        for (prog, what) in [
            (&progs.gp_sched_switch, "sched_switch"),
            (&progs.gp_sys_enter, "sys_enter"),
            (&progs.gp_sys_exit, "sys_exit"),
        ] {
            links.push(prog.attach().map_err(bpf_err(what))?);
        }
        if wakeups {
            links.push(progs.gp_sched_wakeup.attach().map_err(bpf_err("sched_wakeup"))?);
        }
        let pending: Rc<RefCell<Vec<Record>>> = Rc::default();
        let malformed = Rc::new(RefCell::new(0u64));
        let (p, m) = (pending.clone(), malformed.clone());
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.events, move |data: &[u8]| {
                if !parse(data, &mut p.borrow_mut()) {
                    *m.borrow_mut() += 1;
                }
                0
            })
            .map_err(bpf_err("registering the ring buffer"))?;
        let ring = builder.build().map_err(bpf_err("creating the ring buffer reader"))?;
        Ok(SchedCollector {
            skel,
            _links: links,
            ring,
            pending,
            malformed,
            stats: OffCpuStats::default(),
            notes,
            held: Vec::new(),
        })
    }

    /// Books the threads of `pids` that are blocked right now (state S or D in
    /// /proc/PID/task/TID/stat) as off-CPU from now, with the system call they sit in: a
    /// thread that left the CPU before the probes went on makes no switch-out, so without this
    /// its stall would never be seen (an attach lands in a running job). The switch-in or the
    /// system call's exit ends the interval as for any other. Called after the pids are in the
    /// targets map; an entry the program made meanwhile is kept. Returns how many were booked.
    pub fn seed_blocked(&self, pids: &[u32]) -> usize {
        let now = crate::clock::monotonic_ns();
        let mut booked = 0;
        for &pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            for tid in tasks.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
                let dir = format!("/proc/{pid}/task/{tid}");
                let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
                let Some(state) = blocked_state(&stat) else { continue };
                let sys = std::fs::read_to_string(format!("{dir}/syscall")).unwrap_or_default();
                let (nr, args) = syscall_of(&sys);
                let key = tid.to_ne_bytes();
                // struct switch_out: ts_ns, state, syscall_nr, pad, wakeup_ns.
                let mut out = [0u8; 32];
                out[0..8].copy_from_slice(&now.to_ne_bytes());
                out[8..16].copy_from_slice(&state.to_ne_bytes());
                out[16..20].copy_from_slice(&nr.to_ne_bytes());
                if self.skel.maps.off_since.update(&key, &out, MapFlags::NO_EXIST).is_ok() {
                    booked += 1;
                }
                if nr >= 0 {
                    // struct syscall_in: start_ns, nr, fd, open_flags (a read of a file in
                    // progress gets its file-I/O record at its exit, from now).
                    let flags = match nr {
                        2 => args[1],
                        257 => args[2],
                        _ => 0,
                    };
                    let mut sin = [0u8; 24];
                    sin[0..8].copy_from_slice(&now.to_ne_bytes());
                    sin[8..12].copy_from_slice(&nr.to_ne_bytes());
                    sin[12..16].copy_from_slice(&(args[0] as i32).to_ne_bytes());
                    sin[16..24].copy_from_slice(&flags.to_ne_bytes());
                    let _ = self.skel.maps.in_syscall.update(&key, &sin, MapFlags::NO_EXIST);
                }
            }
        }
        booked
    }

    /// Keeps following `pids` after they leave the shared targets map (`attach`'s detach: the
    /// launch probes stop first, the device timeline a little later, and stalls up to its end
    /// are still wanted) until [`Self::release`].
    pub fn hold(&mut self, pids: &[u32]) {
        for &pid in pids {
            self.set_held(pid, true);
            self.held.push(pid);
        }
    }

    /// Stops following the processes of [`Self::hold`].
    pub fn release(&mut self) {
        for pid in std::mem::take(&mut self.held) {
            self.set_held(pid, false);
        }
    }

    /// `pid`'s bit in `held_bits` (ebpf/sched.bpf.c), in the program's mmapped .bss.
    fn set_held(&mut self, pid: u32, on: bool) {
        let Some(bss) = self.skel.maps.bss_data.as_deref_mut() else { return };
        let Some(word) = bss.held_bits.get_mut((pid >> 6) as usize) else { return };
        // SAFETY: an aligned u64 of the mmapped .bss, which only user space writes; atomic, as
        // the program reads it concurrently.
        let word = unsafe { std::sync::atomic::AtomicU64::from_ptr(word) };
        let bit = 1u64 << (pid & 63);
        if on {
            word.fetch_or(bit, std::sync::atomic::Ordering::SeqCst);
        } else {
            word.fetch_and(!bit, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Moves everything in the ring buffer into `producer`.
    pub fn drain(&mut self, producer: &mut Producer) -> Result<(), CollectError> {
        self.ring.consume().map_err(bpf_err("draining the sched ring buffer"))?;
        for r in self.pending.borrow_mut().drain(..) {
            match r {
                Record::FileIo(_) => self.stats.file_io += 1,
                _ => self.stats.intervals += 1,
            }
            producer.push(r);
        }
        self.stats.malformed = *self.malformed.borrow();
        self.stats.ringbuf_drops = read_counter(&self.skel.maps.counters, GP_CNT_RB_DROPS);
        producer.set_drops(DropCause::RingbufFull, self.stats.ringbuf_drops);
        producer.set_drops(DropCause::Malformed, self.stats.malformed);
        producer.flush();
        Ok(())
    }
}

/// The kernel task state of a blocked thread from its /proc stat line (S: interruptible 1,
/// D: uninterruptible 2); None for any other state.
fn blocked_state(stat: &str) -> Option<u64> {
    // "tid (comm) state ...": comm may contain spaces and parentheses.
    match stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) {
        Some("S") => Some(1),
        Some("D") => Some(2),
        _ => None,
    }
}

/// The system call number and first three arguments from /proc/PID/task/TID/syscall
/// ("nr a1 … a6 sp pc"; "-1 sp pc" when blocked outside a system call; "running").
fn syscall_of(text: &str) -> (i32, [u64; 3]) {
    let mut f = text.split_whitespace();
    let Some(Ok(nr)) = f.next().map(str::parse::<i32>) else { return (-1, [0; 3]) };
    let mut args = [0u64; 3];
    if nr >= 0 {
        for a in &mut args {
            *a = f.next().and_then(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok()).unwrap_or(0);
        }
    }
    (nr, args)
}

/// Which process the off-CPU collector follows, and how often it drains.
#[derive(Debug, Clone)]
pub struct OffCpuConfig {
    /// Process (tgid) to follow.
    pub target_tgid: u32,
    /// How often the ring buffer is drained.
    pub drain_interval: Duration,
}

/// Loads the program for one process and drains it into `producer` until `stop` is set.
/// `ready` (if given) is told once the tracepoints are attached.
pub fn run_offcpu(
    cfg: &OffCpuConfig,
    stop: &AtomicBool,
    producer: &mut Producer,
    ready: Option<Sender<()>>,
) -> Result<OffCpuStats, CollectError> {
    let mut collector = SchedCollector::load(cfg.target_tgid, None)?;
    if let Some(r) = ready {
        let _ = r.send(());
    }
    loop {
        let stopping = stop.load(Ordering::Acquire);
        collector.drain(producer)?;
        if stopping {
            break;
        }
        std::thread::sleep(cfg.drain_interval);
    }
    Ok(collector.stats)
}

/// Sum over CPUs of one per-CPU counter.
pub(crate) fn read_counter(map: &impl MapCore, idx: u32) -> u64 {
    match map.lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY) {
        Ok(Some(per_cpu)) => {
            per_cpu.iter().filter_map(|v| v.get(..8)).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]))).sum()
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_threads_are_read_from_proc() {
        assert_eq!(blocked_state("12 (python (x) y) S 1 2"), Some(1));
        assert_eq!(blocked_state("12 (pt_main_thread) D 1 2"), Some(2));
        assert_eq!(blocked_state("12 (a) R 1 2"), None);
        assert_eq!(syscall_of("0 0x5 0x7f00 0x800000 0x0 0x0 0x0 0x7ffd 0x7f12\n"), (0, [5, 0x7f00, 0x800000]));
        assert_eq!(syscall_of("-1 0x7ffd 0x7f12\n"), (-1, [0; 3]));
        assert_eq!(syscall_of("running\n"), (-1, [0; 3]));
    }
}
