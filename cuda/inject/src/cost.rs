//! What the library costs the job, measured inside it and sent through the ring
//! ([`wire::COST`], cumulative since collection started):
//!
//! - time in ghostprof's CUPTI callbacks on the job's own threads (the launch callbacks): one
//!   call in [`SAMPLE_EVERY`] (17) per thread is timed with CLOCK_MONOTONIC (vDSO, ~20 ns; the
//!   thread CPU clock is a syscall, ~600 ns on the 2-core test VM, whose entry and exit also
//!   slowed the callback it timed), the clock's own cost calibrated and subtracted, a sample
//!   longer than [`PREEMPTED_NS`] (or 4× the test burn) left out as preempted; the calls are
//!   counted, and the sum is calls × the sampled mean. This is the launch callback's only
//!   sampler: `GHOSTPROF_SELF_TIME` (`tools/bench cupti`) reports these samples too
//!   ([`samples`]);
//! - CPU time of CUPTI's buffer-completion callbacks (the walk and forwarding of each activity
//!   buffer, on whichever thread CUPTI runs them), each timed whole;
//! - CPU time of the library's own control thread (clock pairs, PM decode, forced flushes), and
//!   of the start (under `record`) and the exit handler.
//!
//! The job's CPU time over the same interval is `CLOCK_PROCESS_CPUTIME_ID`, read here because
//! the last report is sent from the exit handler, when `/proc/PID` is about to go.
//!
//! `GHOSTPROF_TEST_BURN_NS=N` (**test only**): each launch callback spins for N ns, so a test
//! can check the reported cost against calls × N.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ghostprof_ring::wire;

/// One launch callback in this many (per thread) is timed (~2.5 ns per callback on average).
/// Odd: a thread's callbacks come as entry, exit, entry, exit…, and an even period would time
/// only the cheap entries, never the exits that do the work.
pub const SAMPLE_EVERY: u64 = 17;
/// A timed callback longer than this was preempted, not slow: the body takes ~50 ns on gpusim
/// and about a microsecond with a real CUPTI (one sample in 17 of a 50 ns callback stretched by
/// a preemption of 1 ms would double the mean).
pub const PREEMPTED_NS: u64 = 20_000;

static CALLBACKS: AtomicU64 = AtomicU64::new(0);
static SAMPLED: AtomicU64 = AtomicU64::new(0);
/// The kept samples' raw sum, each with its one clock read ([`CLOCK_NS`], taken off in
/// [`payload`]).
static SAMPLED_NS: AtomicU64 = AtomicU64::new(0);
static BUFFER_NS: AtomicU64 = AtomicU64::new(0);
/// Start and exit handler CPU.
static OTHER_NS: AtomicU64 = AtomicU64::new(0);
/// The control thread's CPU since collection started (updated by each tick).
static CONTROL_NS: AtomicU64 = AtomicU64::new(0);
static CONTROL_BASE_NS: AtomicU64 = AtomicU64::new(0);
static PROCESS_BASE_NS: AtomicU64 = AtomicU64::new(0);
/// The monotonic clock's cost, read twice back to back (subtracted from each timed sample).
static CLOCK_NS: AtomicU64 = AtomicU64::new(0);
static BURN_NS: AtomicU64 = AtomicU64::new(0);
static STARTUP_NS: AtomicU64 = AtomicU64::new(0);
/// Whether collection began inside the start (`record`): its CPU is then the job's cost too.
static STARTED_COLLECTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Launch callbacks on this thread (for the 1-in-N sample).
    static TICK: Cell<u64> = const { Cell::new(0) };
    /// Inside a region whose CPU is already counted (the control thread, a timed region): a
    /// nested region is not counted twice.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// This thread's CPU time, ns.
pub fn thread_cpu_ns() -> u64 {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn monotonic_ns() -> u64 {
    clock(libc::CLOCK_MONOTONIC)
}

/// From `InitializeInjection`, on the thread that called cuInit (the only one that may read
/// the environment): the test knob, the clock's own cost, the start's first instant.
pub fn init() -> u64 {
    let t0 = thread_cpu_ns();
    BURN_NS.store(
        std::env::var("GHOSTPROF_TEST_BURN_NS").ok().and_then(|v| v.parse().ok()).unwrap_or(0).min(1_000_000_000),
        Ordering::Relaxed,
    );
    let mut best = u64::MAX;
    for _ in 0..16 {
        let a = monotonic_ns();
        best = best.min(monotonic_ns().saturating_sub(a));
    }
    CLOCK_NS.store(best, Ordering::Relaxed);
    t0
}

/// The start (from [`init`]'s reading) is over: its CPU counts when collection began in it.
pub fn started(t0: u64) {
    STARTUP_NS.store(thread_cpu_ns().saturating_sub(t0), Ordering::Relaxed);
}

/// Collection starts (again): counts from zero. On the control thread (an attach) its CPU so
/// far is the base; elsewhere (the start under `record`) the start's CPU is included.
pub fn reset() {
    for c in [&CALLBACKS, &SAMPLED, &SAMPLED_NS, &BUFFER_NS, &OTHER_NS, &CONTROL_NS] {
        c.store(0, Ordering::Relaxed);
    }
    let on_control = COUNTED.with(Cell::get);
    CONTROL_BASE_NS.store(if on_control { thread_cpu_ns() } else { 0 }, Ordering::Relaxed);
    STARTED_COLLECTING.store(!on_control, Ordering::Relaxed);
    PROCESS_BASE_NS.store(clock(libc::CLOCK_PROCESS_CPUTIME_ID), Ordering::Relaxed);
}

/// At the top of a launch callback: spins for the test knob's time, and starts a sample one call in
/// [`SAMPLE_EVERY`].
#[inline]
pub fn callback_enter() -> Option<u64> {
    let n = TICK.with(|t| {
        let n = t.get().wrapping_add(1);
        t.set(n);
        n
    });
    let t0 = (n % SAMPLE_EVERY == 0).then(monotonic_ns);
    let burn = BURN_NS.load(Ordering::Relaxed);
    if burn > 0 {
        // Spun on the clock the samples use: a preemption inside the spin does not lengthen it.
        let start = monotonic_ns();
        while monotonic_ns().saturating_sub(start) < burn {
            std::hint::spin_loop();
        }
    }
    t0
}

/// At the end of a launch callback, with what [`callback_enter`] returned.
#[inline]
pub fn callback_exit(t0: Option<u64>) {
    if let Some(t0) = t0 {
        let ns = monotonic_ns().saturating_sub(t0);
        if ns <= PREEMPTED_NS.max(BURN_NS.load(Ordering::Relaxed).saturating_mul(4)) {
            SAMPLED_NS.fetch_add(ns, Ordering::Relaxed);
            SAMPLED.fetch_add(1, Ordering::Relaxed);
        }
        CALLBACKS.fetch_add(SAMPLE_EVERY, Ordering::Relaxed);
    }
}

/// Runs `f` and adds its thread CPU time to the buffer (`exit == false`) or exit figure, unless
/// this thread's time is already counted (the control thread, a nested region).
pub fn timed<R>(exit: bool, f: impl FnOnce() -> R) -> R {
    if COUNTED.with(Cell::get) {
        return f();
    }
    COUNTED.with(|c| c.set(true));
    let t0 = thread_cpu_ns();
    let r = f();
    let ns = thread_cpu_ns().saturating_sub(t0);
    COUNTED.with(|c| c.set(false));
    if exit { &OTHER_NS } else { &BUFFER_NS }.fetch_add(ns, Ordering::Relaxed);
    r
}

/// Marks the calling thread as the control thread (all its CPU is the library's) and records
/// its CPU so far.
pub fn control_tick() {
    COUNTED.with(|c| c.set(true));
    CONTROL_NS.store(thread_cpu_ns().saturating_sub(CONTROL_BASE_NS.load(Ordering::Relaxed)), Ordering::Relaxed);
}

/// The launch callbacks' samples so far (what `GHOSTPROF_SELF_TIME` reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Samples {
    /// Launch callbacks counted (in steps of [`SAMPLE_EVERY`] per thread).
    pub callbacks: u64,
    /// Samples kept (not preempted).
    pub sampled: u64,
    /// Their raw sum, ns, one clock read in each.
    pub raw_ns: u64,
}

/// The launch callbacks' samples so far.
pub fn samples() -> Samples {
    Samples {
        callbacks: CALLBACKS.load(Ordering::Relaxed),
        sampled: SAMPLED.load(Ordering::Relaxed),
        raw_ns: SAMPLED_NS.load(Ordering::Relaxed),
    }
}

/// Time in the launch callbacks: the samples' mean, less one clock read, times the calls.
fn callback_ns(s: Samples, clock_ns: u64) -> u64 {
    if s.sampled == 0 {
        return 0;
    }
    let net = s.raw_ns.saturating_sub(s.sampled.saturating_mul(clock_ns));
    (net as u128 * s.callbacks as u128 / s.sampled as u128).min(u64::MAX as u128) as u64
}

/// The [`wire::COST`] payload: the figures since collection started.
pub fn payload() -> [u8; wire::COST_BYTES] {
    let s = samples();
    let calls = s.callbacks;
    let callback_ns = callback_ns(s, CLOCK_NS.load(Ordering::Relaxed));
    let startup = if STARTED_COLLECTING.load(Ordering::Relaxed) { STARTUP_NS.load(Ordering::Relaxed) } else { 0 };
    let cost = wire::Cost {
        callbacks: calls,
        callback_ns,
        buffer_ns: BUFFER_NS.load(Ordering::Relaxed),
        thread_ns: CONTROL_NS
            .load(Ordering::Relaxed)
            .saturating_add(OTHER_NS.load(Ordering::Relaxed))
            .saturating_add(startup),
        process_cpu_ns: clock(libc::CLOCK_PROCESS_CPUTIME_ID)
            .saturating_sub(PROCESS_BASE_NS.load(Ordering::Relaxed))
            .saturating_add(startup),
    };
    cost.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timed_callbacks_are_entries_and_exits_alike() {
        // Callbacks come as entry, exit, entry, exit…: count which sites the period picks.
        let (mut entries, mut exits) = (0u32, 0u32);
        for n in 1..=100_000u64 {
            if n % SAMPLE_EVERY == 0 {
                if n % 2 == 0 {
                    entries += 1;
                } else {
                    exits += 1;
                }
            }
        }
        let total = entries + exits;
        assert!(total > 5_000, "{total} samples");
        // within 1 % of half each
        assert!(exits.abs_diff(entries) * 100 <= total, "{entries} entries, {exits} exits timed");
    }

    #[test]
    fn callback_time_is_the_sampled_mean_less_one_clock_read_times_the_calls() {
        // 100 samples of 70 ns raw with a 20 ns clock read: 50 ns each, over 1,700 calls.
        let s = Samples { callbacks: 1_700, sampled: 100, raw_ns: 7_000 };
        assert_eq!(callback_ns(s, 20), 85_000);
        assert_eq!(callback_ns(Samples { sampled: 0, ..s }, 20), 0);
        // A clock read longer than the samples takes them to zero, never below.
        assert_eq!(callback_ns(s, 100), 0);
    }
}
