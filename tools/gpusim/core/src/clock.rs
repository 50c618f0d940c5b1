//! CLOCK_MONOTONIC time and real waiting. The simulated device timeline is laid on the same clock
//! ghostprof reads (`bpf_ktime_get_ns`), so simulated timestamps and probe timestamps compare
//! directly.

/// Current CLOCK_MONOTONIC time in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Block the calling thread (off-CPU, like a driver waiting on an interrupt) until `deadline_ns`.
pub fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: valid timespec; a null remainder is allowed with TIMER_ABSTIME.
        let rc =
            unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Burn real CPU for `duration_ns` (on-CPU host overhead such as launch cost or Python dispatch).
pub fn spin_for(duration_ns: u64) {
    if duration_ns == 0 {
        return;
    }
    let end = now_ns() + duration_ns;
    while now_ns() < end {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_until_really_waits() {
        let start = now_ns();
        sleep_until(start + 2_000_000);
        assert!(now_ns() - start >= 2_000_000);
    }

    #[test]
    fn spin_for_burns_at_least_the_duration() {
        let start = now_ns();
        spin_for(500_000);
        assert!(now_ns() - start >= 500_000);
    }
}
