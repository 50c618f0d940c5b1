//! The one clock of ghostprof: CLOCK_MONOTONIC in nanoseconds, the clock of
//! `bpf_ktime_get_ns()`, onto which every other timestamp is mapped.

/// A simultaneous reading of CLOCK_MONOTONIC and CLOCK_REALTIME, ns: (monotonic, realtime,
/// uncertainty): the realtime reading between two monotonic ones, paired with their midpoint;
/// the uncertainty is half their distance.
pub fn realtime_pair() -> (u64, u64, u64) {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let before = monotonic_ns();
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let after = monotonic_ns();
    let real = (ts.tv_sec.max(0) as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec.max(0) as u64);
    (before + (after - before) / 2, real, (after - before).div_ceil(2))
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
