//! The ptrace steps (x86-64). One thread is seized (PTRACE_SEIZE + PTRACE_INTERRUPT: the other
//! threads run on) and followed system call by system call until it enters a blocking one
//! (a futex wait, read, poll, sleep...): a point where it holds no loader or malloc lock of its
//! own. That call is cancelled at its entry and the thread, with every signal blocked, runs
//! ghostprof's steps: mmap of a two-page scratch area, memfd_create (the library's bytes are
//! written into it from here through /proc/PID/fd), dlopen("/proc/self/fd/N"), close, the entry
//! point, munmap. Each function call returns into a 13-byte trampoline that ends in a system
//! call, so the thread stops without any signal. Then its registers (general, FP/xstate), its
//! signal mask and its instruction pointer (back on the `syscall` instruction, rax = the call's
//! number) are put back, and the detach replays the cancelled call exactly.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::{InjectError, Injected, Plan, MEMFD_NAME};

const PTRACE_GETREGS: libc::c_uint = 12;
const PTRACE_SETREGS: libc::c_uint = 13;
const PTRACE_GETFPREGS: libc::c_uint = 14;
const PTRACE_SETFPREGS: libc::c_uint = 15;
const PTRACE_SYSCALL: libc::c_uint = 24;
const PTRACE_DETACH: libc::c_uint = 17;
const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_GETREGSET: libc::c_uint = 0x4204;
const PTRACE_SETREGSET: libc::c_uint = 0x4205;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_SYSCALL_INFO: libc::c_uint = 0x420e;
const PTRACE_O_TRACESYSGOOD: libc::c_ulong = 1;
const PTRACE_EVENT_STOP: i32 = 128;
const NT_X86_XSTATE: libc::c_ulong = 0x202;
const SYSCALL_INFO_ENTRY: u8 = 1;
const SYSCALL_INFO_EXIT: u8 = 2;

const SYS_MMAP: u64 = 9;
const SYS_MUNMAP: u64 = 11;
const SYS_CLOSE: u64 = 3;
const SYS_GETPID: u64 = 39;
const SYS_MEMFD_CREATE: u64 = 319;
const SYS_FUTEX: u64 = 202;

/// System calls a thread blocks in outside any loader or malloc critical section: waiting for
/// input, a timer, a child, a signal or a futex (wait operations only).
const BLOCKING: [u64; 26] = [
    0,   // read
    7,   // poll
    17,  // pread64
    19,  // readv
    23,  // select
    34,  // pause
    35,  // nanosleep
    43,  // accept
    45,  // recvfrom
    47,  // recvmsg
    61,  // wait4
    70,  // msgrcv
    128, // rt_sigtimedwait
    130, // rt_sigsuspend
    202, // futex (wait operations: checked below)
    219, // restart_syscall (a sleep or poll resumed)
    220, // semtimedop
    230, // clock_nanosleep
    232, // epoll_wait
    247, // waitid
    270, // pselect6
    271, // ppoll
    281, // epoll_pwait
    288, // accept4
    441, // epoll_pwait2
    449, // futex_waitv
];

/// `call *%rax; mov %rax,%rdi; mov $39,%eax; syscall; int3`: a called function returns into
/// the `mov`, and the thread stops at the getpid's entry with the result in rdi.
const TRAMPOLINE: [u8; 13] = [0xff, 0xd0, 0x48, 0x89, 0xc7, 0xb8, 0x27, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xcc];
/// Offset of the instruction after the trampoline's `syscall`.
const TRAMPOLINE_AFTER_SYSCALL: u64 = 12;
/// The scratch area: the trampoline in its first page, strings in the second.
const SCRATCH: u64 = 8192;

type Regs = libc::user_regs_struct;

/// One seized thread.
struct Tracee {
    pid: u32,
    tid: i32,
    mem: Option<File>,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A stop reported by waitpid.
enum Stop {
    /// A system-call stop: entry (true) or exit.
    Syscall { entry: bool },
    /// PTRACE_INTERRUPT's stop, or another ptrace event.
    Event,
    /// A signal about to be delivered.
    Signal(i32),
    /// The thread or process is gone.
    Gone,
}

impl Tracee {
    fn ptrace(&self, req: libc::c_uint, addr: usize, data: usize) -> Result<libc::c_long, i32> {
        // SAFETY: ptrace requests with pointers to buffers that live across the call.
        let r = unsafe { libc::ptrace(req, self.tid, addr as *mut libc::c_void, data as *mut libc::c_void) };
        if r == -1 {
            let e = errno();
            if e != 0 {
                return Err(e);
            }
        }
        Ok(r)
    }

    fn failed(&self, what: impl Into<String>) -> InjectError {
        InjectError::Failed { pid: self.pid, what: what.into() }
    }

    /// Waits for the next stop, at most until `deadline`.
    fn wait(&self, deadline: Instant) -> Result<Option<Stop>, InjectError> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status.
            let r = unsafe { libc::waitpid(self.tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if r == self.tid {
                if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                    return Ok(Some(Stop::Gone));
                }
                let sig = libc::WSTOPSIG(status);
                if sig == libc::SIGTRAP | 0x80 {
                    let mut info = [0u8; 88];
                    self.ptrace(PTRACE_GET_SYSCALL_INFO, info.len(), info.as_mut_ptr() as usize)
                        .map_err(|e| self.failed(format!("PTRACE_GET_SYSCALL_INFO: errno {e}")))?;
                    return Ok(Some(match info[0] {
                        SYSCALL_INFO_ENTRY => Stop::Syscall { entry: true },
                        SYSCALL_INFO_EXIT => Stop::Syscall { entry: false },
                        _ => Stop::Event,
                    }));
                }
                if status >> 16 != 0 {
                    // PTRACE_EVENT_STOP (our interrupt; a group stop is refused by the caller).
                    return Ok(Some(if status >> 16 == PTRACE_EVENT_STOP && sig != libc::SIGTRAP {
                        Stop::Signal(sig)
                    } else {
                        Stop::Event
                    }));
                }
                return Ok(Some(Stop::Signal(sig)));
            }
            if r == -1 && errno() != libc::EINTR {
                return Ok(Some(Stop::Gone));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn regs(&self) -> Result<Regs, InjectError> {
        // SAFETY: user_regs_struct is plain data.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        self.ptrace(PTRACE_GETREGS, 0, &mut r as *mut Regs as usize)
            .map_err(|e| self.failed(format!("PTRACE_GETREGS: errno {e}")))?;
        Ok(r)
    }

    fn set_regs(&self, r: &Regs) -> Result<(), InjectError> {
        self.ptrace(PTRACE_SETREGS, 0, r as *const Regs as usize)
            .map_err(|e| self.failed(format!("PTRACE_SETREGS: errno {e}")))?;
        Ok(())
    }

    /// Resumes to the next system-call stop (signals pass through untouched).
    fn next_syscall(&self, deadline: Instant) -> Result<bool, InjectError> {
        let mut sig = 0;
        loop {
            self.ptrace(PTRACE_SYSCALL, 0, sig as usize).map_err(|_| InjectError::Gone { pid: self.pid })?;
            sig = 0;
            match self.wait(deadline)? {
                Some(Stop::Syscall { entry }) => return Ok(entry),
                Some(Stop::Event) => {}
                Some(Stop::Signal(s)) => return Err(self.failed(format!("signal {s} during the injection"))),
                Some(Stop::Gone) => return Err(InjectError::Gone { pid: self.pid }),
                None => return Err(self.failed("the thread did not come back in time")),
            }
        }
    }

    /// A system call in the target through its own `syscall` instruction at `insn`, from a
    /// syscall-exit stop back to one.
    fn syscall(&self, base: &Regs, insn: u64, nr: u64, args: [u64; 6]) -> Result<i64, InjectError> {
        let mut r = *base;
        r.rip = insn;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (args[0], args[1], args[2], args[3], args[4], args[5]);
        self.set_regs(&r)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        if !self.next_syscall(deadline)? {
            return Err(self.failed("a system call did not start"));
        }
        if self.next_syscall(deadline)? {
            return Err(self.failed("a system call did not end"));
        }
        Ok(self.regs()?.rax as i64)
    }

    /// Calls the function at `func` with up to two arguments on the thread's own stack (below
    /// its red zone, 16-byte aligned), returning through the trampoline at `tramp`.
    fn call(&self, base: &Regs, tramp: u64, func: u64, a0: u64, a1: u64) -> Result<u64, InjectError> {
        let mut r = *base;
        r.rip = tramp;
        r.rax = func;
        r.orig_rax = u64::MAX;
        r.rdi = a0;
        r.rsi = a1;
        // 128 bytes of red zone below the interrupted code's stack pointer, then 16-aligned for
        // the `call` (the callee then sees rsp ≡ 8 mod 16, as the ABI says).
        r.rsp = (base.rsp - 128 - 256) & !0xf;
        self.set_regs(&r)?;
        // The library's constructors and dlopen make their own system calls: followed until
        // the trampoline's getpid.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.next_syscall(deadline)? {
                let at = self.regs()?;
                if at.rip == tramp + TRAMPOLINE_AFTER_SYSCALL && at.orig_rax == SYS_GETPID {
                    let result = at.rdi;
                    if self.next_syscall(deadline)? {
                        return Err(self.failed("the trampoline's system call did not end"));
                    }
                    return Ok(result);
                }
            }
        }
    }

    fn write_mem(&mut self, addr: u64, bytes: &[u8]) -> Result<(), InjectError> {
        if self.mem.is_none() {
            let f = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{}/mem", self.tid));
            self.mem = Some(f.map_err(|e| self.failed(format!("/proc/{}/mem: {e}", self.tid)))?);
        }
        let Some(mem) = self.mem.as_ref() else { return Err(self.failed("/proc/PID/mem")) };
        mem.write_all_at(bytes, addr).map_err(|e| self.failed(format!("writing the scratch area: {e}")))
    }

    fn read_mem(&mut self, addr: u64, out: &mut [u8]) -> Result<(), InjectError> {
        let f = File::open(format!("/proc/{}/mem", self.tid))
            .map_err(|e| self.failed(format!("/proc/{}/mem: {e}", self.tid)))?;
        f.read_exact_at(out, addr).map_err(|e| self.failed(format!("reading the target's code: {e}")))
    }
}

/// The thread's state to put back.
struct Saved {
    /// Registers that replay the cancelled system call.
    replay: Regs,
    xstate: Vec<u8>,
    /// false: `xstate` is the 512-byte FXSAVE area (no XSAVE on this CPU).
    xsave: bool,
    sigmask: u64,
}

fn save(t: &Tracee, at_entry: &Regs) -> Result<Saved, InjectError> {
    let mut xstate = vec![0u8; 64 << 10];
    let mut iov = libc::iovec { iov_base: xstate.as_mut_ptr().cast(), iov_len: xstate.len() };
    let xsave = t.ptrace(PTRACE_GETREGSET, NT_X86_XSTATE as usize, &mut iov as *mut libc::iovec as usize).is_ok();
    if xsave {
        xstate.truncate(iov.iov_len);
    } else {
        xstate.truncate(512);
        t.ptrace(PTRACE_GETFPREGS, 0, xstate.as_mut_ptr() as usize)
            .map_err(|e| t.failed(format!("PTRACE_GETFPREGS: errno {e}")))?;
    }
    let mut sigmask = 0u64;
    t.ptrace(PTRACE_GETSIGMASK, 8, &mut sigmask as *mut u64 as usize)
        .map_err(|e| t.failed(format!("PTRACE_GETSIGMASK: errno {e}")))?;
    let mut replay = *at_entry;
    // Back on the `syscall` instruction with its number: resuming executes the call again.
    replay.rax = at_entry.orig_rax;
    replay.rip = at_entry.rip - 2;
    Ok(Saved { replay, xstate, xsave, sigmask })
}

fn restore(t: &Tracee, s: &mut Saved) -> Result<(), InjectError> {
    if t.regs().is_err() {
        // A step gave up while the thread ran (a call that never came back): stop it first.
        let _ = t.ptrace(PTRACE_INTERRUPT, 0, 0);
        let _ = t.wait(Instant::now() + Duration::from_secs(1));
    }
    t.set_regs(&s.replay)?;
    if s.xsave {
        let mut iov = libc::iovec { iov_base: s.xstate.as_mut_ptr().cast(), iov_len: s.xstate.len() };
        t.ptrace(PTRACE_SETREGSET, NT_X86_XSTATE as usize, &mut iov as *mut libc::iovec as usize)
            .map_err(|e| t.failed(format!("PTRACE_SETREGSET: errno {e}")))?;
    } else {
        t.ptrace(PTRACE_SETFPREGS, 0, s.xstate.as_ptr() as usize)
            .map_err(|e| t.failed(format!("PTRACE_SETFPREGS: errno {e}")))?;
    }
    t.ptrace(PTRACE_SETSIGMASK, 8, &s.sigmask as *const u64 as usize)
        .map_err(|e| t.failed(format!("PTRACE_SETSIGMASK: errno {e}")))?;
    Ok(())
}

/// The thread to borrow: one already blocked in a blocking system call if any (it comes back to
/// that call's entry at once), else the main thread.
fn pick_thread(pid: u32) -> i32 {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    tids.sort_unstable();
    for &tid in &tids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).unwrap_or_default();
        let mut f = text.split_whitespace();
        let Some(Ok(nr)) = f.next().map(str::parse::<u64>) else { continue };
        let op = f.nth(1).and_then(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok()).unwrap_or(0);
        if is_blocking(nr, op) {
            return tid;
        }
    }
    pid as i32
}

fn is_blocking(nr: u64, futex_op: u64) -> bool {
    if nr == SYS_FUTEX {
        // FUTEX_WAIT, FUTEX_WAIT_BITSET (private and clock flags masked off).
        return matches!(futex_op & 0x7f, 0 | 9);
    }
    BLOCKING.contains(&nr)
}

/// Seizes a thread of `plan.pid`, runs the plan, puts the thread back, detaches.
pub(super) fn run(plan: &Plan<'_>) -> Result<Injected, InjectError> {
    let pid = plan.pid;
    let tid = pick_thread(pid);
    let mut t = Tracee { pid, tid, mem: None };
    seize(&t)?;
    let result = run_seized(&mut t, plan);
    // SAFETY: detaching our own tracee; it runs on from the state restored above.
    unsafe {
        libc::ptrace(PTRACE_DETACH, tid, std::ptr::null_mut::<libc::c_void>(), std::ptr::null_mut::<libc::c_void>())
    };
    result
}

/// PTRACE_SEIZE of the chosen thread. The kernel refuses a thread that has exited (a zombie)
/// with EPERM, as it refuses a forbidden one: a process ending as its injection starts is gone,
/// not a denial (`watch` met it at the end of a job).
fn seize(t: &Tracee) -> Result<(), InjectError> {
    let pid = t.pid;
    t.ptrace(PTRACE_SEIZE, 0, PTRACE_O_TRACESYSGOOD as usize).map(|_| ()).map_err(|e| match e {
        libc::ESRCH => InjectError::Gone { pid },
        _ if has_exited(pid, t.tid) => InjectError::Gone { pid },
        _ => InjectError::PtraceDenied { pid, why: denied_because(pid, e) },
    })
}

/// Whether thread `tid` of `pid`, or the whole process, has exited or is exiting.
fn has_exited(pid: u32, tid: i32) -> bool {
    exiting(&format!("/proc/{pid}/task/{tid}/stat")) || exiting(&format!("/proc/{pid}/stat"))
}

/// Whether the task of a `stat` file is gone, a zombie or dead, or exiting (the kernel's
/// PF_EXITING flag: set before the process lets go of its memory, when its maps read empty).
pub(super) fn exiting(stat_path: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(stat_path) else { return true };
    // The fields after the command's closing parenthesis: state, ppid, pgrp, session, tty,
    // tpgid, flags, …
    let Some((_, rest)) = stat.rsplit_once(')') else { return false };
    let mut f = rest.split_whitespace();
    let state = f.next().and_then(|s| s.chars().next());
    let flags = f.nth(5).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    matches!(state, Some('Z' | 'X')) || flags & PF_EXITING != 0
}

/// Why PTRACE_SEIZE failed with `errno`: Yama, seccomp, or the errno.
pub(super) fn denied_because(pid: u32, errno: i32) -> String {
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok().and_then(|s| s.trim().parse().ok());
    let seccomp = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(|v| v.trim() != "0"));
    super::target::tracer_of(pid)
        .map(|(p, n)| format!("process {p} ({n}) already traces it"))
        .unwrap_or_else(|| denied_text(errno, yama, seccomp.unwrap_or(false)))
}

/// The message for a refused PTRACE_SEIZE.
pub(super) fn denied_text(errno: i32, yama: Option<u32>, seccomp: bool) -> String {
    match (yama, seccomp) {
        (Some(3), _) => "Yama's kernel.yama.ptrace_scope is 3 (no ptrace at all, until reboot)".into(),
        (Some(2), _) => "Yama's kernel.yama.ptrace_scope is 2 (CAP_SYS_PTRACE needed)".into(),
        (_, true) => format!("ghostprof runs under a seccomp filter (errno {errno})"),
        _ => format!("{} (errno {errno})", std::io::Error::from_raw_os_error(errno)),
    }
}

fn run_seized(t: &mut Tracee, plan: &Plan<'_>) -> Result<Injected, InjectError> {
    let pid = t.pid;
    t.ptrace(PTRACE_INTERRUPT, 0, 0).map_err(|_| InjectError::Gone { pid })?;
    let deadline = Instant::now() + plan.wait;
    // The interrupt's stop.
    match t.wait(deadline)? {
        Some(Stop::Event) | Some(Stop::Syscall { .. }) => {}
        Some(Stop::Signal(sig)) if sig == libc::SIGSTOP || sig == libc::SIGTSTP => {
            return Err(t.failed("the process is stopped (SIGSTOP): continue it first"))
        }
        Some(Stop::Signal(_)) => {}
        Some(Stop::Gone) => return Err(InjectError::Gone { pid }),
        None => return Err(t.failed("the thread did not stop")),
    }
    // Follow the thread to the entry of a blocking system call.
    let at_entry = loop {
        let mut sig = 0usize;
        let stop = loop {
            if t.ptrace(PTRACE_SYSCALL, 0, sig).is_err() {
                return Err(InjectError::Gone { pid });
            }
            sig = 0;
            match t.wait(deadline)? {
                Some(Stop::Syscall { entry }) => break entry,
                Some(Stop::Event) => {}
                // A signal for the job: delivered as it would have been.
                Some(Stop::Signal(s)) => sig = s as usize,
                Some(Stop::Gone) => return Err(InjectError::Gone { pid }),
                None => {
                    // Stop it where it is and let it go untouched.
                    let _ = t.ptrace(PTRACE_INTERRUPT, 0, 0);
                    let _ = t.wait(Instant::now() + Duration::from_secs(1));
                    return Err(InjectError::NoSafeMoment { pid, secs: plan.wait.as_secs_f64() });
                }
            }
        };
        if stop {
            let r = t.regs()?;
            if is_blocking(r.orig_rax, r.rsi) {
                break r;
            }
        }
    };
    let mut insn = [0u8; 2];
    t.read_mem(at_entry.rip - 2, &mut insn)?;
    if insn != [0x0f, 0x05] {
        return Err(t.failed("the thread's system call was not made by a `syscall` instruction"));
    }
    let mut saved = save(t, &at_entry)?;
    // Cancel the call (it is replayed at the end) and run to its exit stop, every signal
    // blocked so that none runs a handler on our frames.
    let mut cancel = at_entry;
    cancel.orig_rax = u64::MAX;
    t.set_regs(&cancel)?;
    let all: u64 = !0;
    t.ptrace(PTRACE_SETSIGMASK, 8, &all as *const u64 as usize)
        .map_err(|e| t.failed(format!("PTRACE_SETSIGMASK: errno {e}")))?;
    let steps = (|| {
        if t.next_syscall(Instant::now() + Duration::from_secs(5))? {
            return Err(t.failed("the cancelled system call did not return"));
        }
        let base = t.regs()?;
        steps(t, plan, &base, saved.replay.rip)
    })();
    let restored = restore(t, &mut saved);
    let outcome = steps?;
    restored?;
    Ok(outcome)
}

/// The injection proper, from a syscall-exit stop; `insn` is the thread's `syscall` instruction.
fn steps(t: &mut Tracee, plan: &Plan<'_>, base: &Regs, insn: u64) -> Result<Injected, InjectError> {
    let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let area = t.syscall(base, insn, SYS_MMAP, [0, SCRATCH, prot, flags, u64::MAX, 0])?;
    if area < 0 && area > -4096 {
        return Err(t.failed(format!("mmap in the target: errno {}{}", -area, seccomp_hint(t.pid, -area))));
    }
    let area = area as u64;
    let result = (|| {
        // /proc/PID/mem writes through the page protection (we are its tracer): no page of the
        // target is ever writable and executable.
        t.write_mem(area, &TRAMPOLINE)?;
        let data = area + 4096;
        let (injected, base_addr) = match (plan.dlopen.as_ref(), plan.loaded_base) {
            (_, Some(b)) => (Injected::Reused, b),
            (Some(dl), None) => {
                t.write_mem(data, format!("{MEMFD_NAME}\0").as_bytes())?;
                let fd = t.syscall(base, insn, SYS_MEMFD_CREATE, [data, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0])?;
                if fd < 0 {
                    return Err(t.failed(format!(
                        "memfd_create in the target: errno {}{}",
                        -fd,
                        seccomp_hint(t.pid, -fd)
                    )));
                }
                let loaded = (|| {
                    fill_memfd(t, fd, plan.library)?;
                    t.write_mem(data, format!("/proc/self/fd/{fd}\0").as_bytes())?;
                    let handle = t.call(base, area, dl.addr, data, libc::RTLD_NOW as u64)?;
                    if handle == 0 {
                        return Err(t.failed(format!(
                            "dlopen of the library (from {}) returned NULL (is /proc mounted in the job's mount namespace?)",
                            dl.library
                        )));
                    }
                    Ok(())
                })();
                let _ = t.syscall(base, insn, SYS_CLOSE, [fd as u64, 0, 0, 0, 0, 0]);
                loaded?;
                let maps = super::target::Maps::read(t.pid).map_err(|_| InjectError::Gone { pid: t.pid })?;
                let b = maps.memfd_base(MEMFD_NAME).ok_or_else(|| t.failed("the loaded library is not in the maps"))?;
                (Injected::Loaded, b)
            }
            (None, None) => return Err(t.failed("no dlopen and no library")),
        };
        let arg = format!("{}\0", plan.arg);
        if arg.len() > 4000 {
            return Err(t.failed("the entry point's argument is too long"));
        }
        t.write_mem(data, arg.as_bytes())?;
        let code = t.call(base, area, base_addr + plan.entry_offset, data, 0)? as u32 as i32;
        match code {
            0 => Ok(injected),
            1 => Ok(Injected::Dormant),
            c => Err(InjectError::Refused { pid: t.pid, what: super::refusal_text(c) }),
        }
    })();
    let _ = t.syscall(base, insn, SYS_MUNMAP, [area, SCRATCH, 0, 0, 0, 0]);
    result
}

/// Why a system call made in the target was refused, when its seccomp filter is the likely
/// cause (EPERM, EACCES or ENOSYS under a filter: a container's profile).
fn seccomp_hint(pid: u32, errno: i64) -> &'static str {
    let refused = [libc::EPERM, libc::EACCES, libc::ENOSYS].map(i64::from).contains(&errno);
    if refused && super::target::under_seccomp_filter(pid) {
        " (the job's seccomp filter denies it: allow mmap and memfd_create in its profile)"
    } else {
        ""
    }
}

/// Copies the library into the target's memfd `fd`.
fn fill_memfd(t: &Tracee, fd: i64, library: &std::path::Path) -> Result<(), InjectError> {
    let bytes = super::target::read_library(library)?;
    let mut f = target_memfd(t.pid, fd).map_err(|e| t.failed(e))?;
    f.write_all(&bytes).map_err(|e| t.failed(format!("writing the library into the target's memfd: {e}")))
}

/// The target's descriptor `fd`, duplicated with `pidfd_getfd`, if it is still the memfd the
/// borrowed thread made. Only that thread is stopped: another thread of the job may have put any
/// file at that number meanwhile. Reopening `/proc/PID/fd/N` for writing would open that file
/// anew with root's rights (a world-readable file the job opened read-only, /etc/passwd, would
/// be overwritten with the library); the duplicate keeps the job's own access mode, and the
/// name and link count say whether it is our memfd at all.
fn target_memfd(pid: u32, fd: i64) -> Result<File, String> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain system calls; every returned descriptor is owned once below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return Err(format!("pidfd_open of the target: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor pidfd_open just returned, owned here.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
    use std::os::fd::AsRawFd;
    // SAFETY: as above.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as libc::c_int, 0) };
    if got < 0 {
        return Err(format!("pidfd_getfd of the target's memfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor pidfd_getfd just returned, owned by the File.
    let f = unsafe { File::from_raw_fd(got as i32) };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    use std::os::unix::fs::MetadataExt;
    if !link.to_string_lossy().starts_with(&format!("/memfd:{MEMFD_NAME}")) || !meta.is_file() || meta.nlink() != 0 {
        return Err(format!(
            "the target's descriptor {fd} is no longer the memfd made for the library ({}): refused",
            crate::units::escape_text(&link.to_string_lossy())
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job thread that swaps another file in at the memfd's number gets nothing written into
    /// it: the old code reopened /proc/PID/fd/N for writing and wrote the library into any file
    /// the job held, even one it had opened read-only.
    #[test]
    fn a_file_swapped_in_at_the_memfds_number_is_refused_and_left_alone() {
        let dir = std::env::temp_dir().join(format!("ghostprof-memfd-swap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious\n").unwrap();
        // A child holding the victim read-only at fd 7 (what a job's other thread would dup2 there).
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 7<'{}'; sleep 5", victim.display()))
            .spawn()
            .unwrap();
        let fd_path = format!("/proc/{}/fd/7", child.id());
        let t = Instant::now();
        while std::fs::read_link(&fd_path).is_err() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = target_memfd(child.id(), 7);
        let _ = child.kill();
        let _ = child.wait();
        let err = r.expect_err("refused");
        assert!(err.contains("no longer the memfd"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An exited process (a zombie: PTRACE_SEIZE answers EPERM, as for a forbidden one) is
    /// gone, not a ptrace denial.
    #[test]
    #[ignore = "root tier: needs root (CAP_SYS_PTRACE); tools/test runs it when root"]
    fn root_seizing_an_exited_process_is_gone_not_denied() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let t = Instant::now();
        // Not reaped: it stays a zombie until the wait below.
        while !has_exited(pid, pid as i32) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = seize(&Tracee { pid, tid: pid as i32, mem: None });
        // The whole injection too: its maps read empty ("no libcuda") and it is gone.
        let whole = super::super::inject(pid, &super::super::InjectOptions::new("/nonexistent/lib.so".into()));
        let _ = child.wait();
        assert!(matches!(r, Err(InjectError::Gone { .. })), "{r:?}");
        assert!(matches!(whole, Err(InjectError::Gone { .. })), "{whole:?}");
        // A live process is seized (and let go).
        let mut live = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let t = Tracee { pid: live.id(), tid: live.id() as i32, mem: None };
        let r = seize(&t);
        // SAFETY: detaching our own tracee.
        unsafe {
            libc::ptrace(
                PTRACE_DETACH,
                t.tid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        let _ = live.kill();
        let _ = live.wait();
        assert!(r.is_ok(), "{r:?}");
        assert!(!has_exited(std::process::id(), std::process::id() as i32));
    }

    #[test]
    fn refusal_names_yama_and_seccomp() {
        assert!(denied_text(libc::EPERM, Some(3), false).contains("ptrace_scope is 3"));
        assert!(denied_text(libc::EPERM, Some(2), false).contains("ptrace_scope is 2"));
        assert!(denied_text(libc::EPERM, None, true).contains("seccomp"));
        assert!(denied_text(libc::EPERM, Some(0), false).contains("errno 1"));
    }

    #[test]
    fn only_wait_operations_of_futex_are_blocking() {
        assert!(is_blocking(SYS_FUTEX, 0x80)); // FUTEX_WAIT_PRIVATE
        assert!(is_blocking(SYS_FUTEX, 0x189)); // FUTEX_WAIT_BITSET_PRIVATE | CLOCK_REALTIME
        assert!(!is_blocking(SYS_FUTEX, 0x81)); // FUTEX_WAKE_PRIVATE
        assert!(is_blocking(0, 0));
        assert!(!is_blocking(SYS_MMAP, 0));
    }
}
