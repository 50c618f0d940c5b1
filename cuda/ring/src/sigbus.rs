//! Surviving a producer that shrinks its ring file under the consumer's mapping.
//!
//! Reading a page of a shared file mapping past the file's end raises SIGBUS, which would kill
//! root ghostprof (exit 135) and leave an unfinalized trace. A process-wide SIGBUS handler
//! looks the faulting address up in a fixed table of registered ring mappings; inside one, it
//! maps anonymous zero pages over the rest of that mapping, marks the ring poisoned and
//! returns, so the access retries and reads zeros. `Consumer::drain` then throws that batch
//! away and reports [`crate::ConsumerError::Shrunk`]. Faults anywhere else go to the handler
//! that was there before (Rust's stack-overflow handler) or, if that was the default, re-raise
//! with the default action.
//!
//! Everything the handler touches is a static atomic: no allocation, no locks, only `mmap` and
//! `sigaction`, both async-signal-safe.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// Rings one process can have mapped at once (one per traced process).
pub const SLOTS: usize = 1024;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const NO: AtomicBool = AtomicBool::new(false);

/// Start address of each registered mapping (0: slot free); written last on register, first on
/// unregister, so the handler never sees a start with a stale length.
static START: [AtomicUsize; SLOTS] = [ZERO; SLOTS];
static LEN: [AtomicUsize; SLOTS] = [ZERO; SLOTS];
static CLAIMED: [AtomicBool; SLOTS] = [NO; SLOTS];
static POISONED: [AtomicBool; SLOTS] = [NO; SLOTS];

/// The handler that was installed before ours, and its flags.
static PREV_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_FLAGS: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process). False when `sigaction` failed.
fn install() -> bool {
    INSTALL.call_once(|| {
        // SAFETY: plain sigaction calls on zero-initialized structs.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return;
            }
            PREV_HANDLER.store(old.sa_sigaction, Ordering::Release);
            PREV_FLAGS.store(old.sa_flags as usize, Ordering::Release);
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            // SA_ONSTACK: Rust gives threads an alternate signal stack; without one the flag is ignored.
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) == 0 {
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
    INSTALLED.load(Ordering::Acquire)
}

/// A registered mapping; unregisters when dropped (before the mapping is unmapped).
pub struct Guard {
    slot: usize,
}

impl Guard {
    /// Registers the mapping `[start, start + len)`. None when the handler could not be
    /// installed or every slot is taken.
    pub fn register(start: *const u8, len: usize) -> Option<Guard> {
        if !install() || len == 0 {
            return None;
        }
        let slot = (0..SLOTS)
            .find(|&i| CLAIMED[i].compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
        POISONED[slot].store(false, Ordering::Release);
        LEN[slot].store(len, Ordering::Release);
        START[slot].store(start as usize, Ordering::Release);
        Some(Guard { slot })
    }

    /// True once a fault inside the mapping was patched with zero pages.
    pub fn poisoned(&self) -> bool {
        POISONED[self.slot].load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        START[self.slot].store(0, Ordering::Release);
        LEN[self.slot].store(0, Ordering::Release);
        CLAIMED[self.slot].store(false, Ordering::Release);
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
    let addr = if info.is_null() { 0 } else { (unsafe { (*info).si_addr() }) as usize };
    if addr != 0 {
        for i in 0..SLOTS {
            let start = START[i].load(Ordering::Acquire);
            if start == 0 || addr < start {
                continue;
            }
            let len = LEN[i].load(Ordering::Acquire);
            if addr - start >= len {
                continue;
            }
            // SAFETY: sysconf is async-signal-safe.
            let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize).max(4096);
            let from = addr & !(page - 1);
            let end = start + len;
            // Every page from the fault to the mapping's end lies past the file's new end: one
            // mmap covers them all, rather than a fault per page.
            // SAFETY: replaces pages of our own registered mapping only; async-signal-safe.
            let p = unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    end - from,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                POISONED[i].store(true, Ordering::Release);
                return;
            }
            break;
        }
    }
    // Not ours: whoever handled SIGBUS before us.
    let prev = PREV_HANDLER.load(Ordering::Acquire);
    let flags = PREV_FLAGS.load(Ordering::Acquire) as libc::c_int;
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        // Back to the default action; returning re-runs the access, which faults again and
        // ends the process as it would have without us.
        // SAFETY: async-signal-safe calls on a zeroed struct.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut dfl.sa_mask);
            libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        }
        return;
    }
    // SAFETY: `prev` was a handler installed with these flags.
    unsafe {
        if flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(prev);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev);
            f(sig);
        }
    }
}
