//! `bench host`: what ghostprof's host-wide eBPF programs cost the processes it does **not**
//! trace. The scheduler program runs on every system call (`sys_enter`/`sys_exit`), context
//! switch and wakeup of the host, and the cuda program on every fork and exit, whoever makes
//! them; a per-host service (`watch`) leaves them on all the time.
//!
//! A child process (this binary, `host-child`) measures two loops in thread CPU time: `getppid`
//! system calls (ns per call) and a pipe ping-pong between two threads pinned to one CPU (ns per
//! round trip: two writes, two reads, two context switches and wakeups). Rounds alternate
//! between **off** (no ghostprof program loaded) and **on** (the cuda and scheduler programs
//! loaded and attached as `attach`/`watch` load them, following one unrelated sleeping process),
//! `--rounds R` each (default 5); the figures are the medians with min and max, and the cost
//! added per call (on − off). Root.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ghostprof::collect::host::HostCollector;
use ghostprof::collect::sched::SchedCollector;

use crate::{flag, thread_cpu_s, Spread};

/// The child's two measurements: ns per `getppid`, ns per pipe round trip.
fn run_child(calls: u64, trips: u64) -> Result<(f64, f64)> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["host-child", &calls.to_string(), &trips.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running the host-child loop")?;
    if !out.status.success() {
        bail!("host-child failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
        _ => bail!("host-child printed {text:?}"),
    }
}

/// `host-child CALLS TRIPS`: prints ns per `getppid` and ns per pipe round trip (thread CPU
/// time of the measuring threads).
pub fn bench_host_child(args: &[String]) -> Result<()> {
    let calls: u64 = args.first().context("calls")?.parse()?;
    let trips: u64 = args.get(1).context("trips")?.parse()?;
    pin_to_cpu0();
    for _ in 0..calls / 10 {
        // SAFETY: a system call without arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let t0 = thread_cpu_s();
    for _ in 0..calls {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let per_call = (thread_cpu_s() - t0) * 1e9 / calls as f64;
    let per_trip = ping_pong(trips)?;
    println!("{per_call:.1} {per_trip:.1}");
    Ok(())
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with CPU 0 set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Two threads on CPU 0 pass one byte back and forth through two pipes, `trips` times: wall
/// ns per round trip (both threads share the CPU, so wall time is their CPU time).
fn ping_pong(trips: u64) -> Result<f64> {
    let pipe = || -> Result<(i32, i32)> {
        let mut fds = [0i32; 2];
        // SAFETY: a valid two-int array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        Ok((fds[0], fds[1]))
    };
    let (a_read, a_write) = pipe()?;
    let (b_read, b_write) = pipe()?;
    let echo = std::thread::spawn(move || {
        pin_to_cpu0();
        let mut byte = [0u8; 1];
        for _ in 0..trips {
            // SAFETY: valid fds and a one-byte buffer.
            unsafe {
                libc::read(a_read, byte.as_mut_ptr().cast(), 1);
                libc::write(b_write, byte.as_ptr().cast(), 1);
            }
        }
    });
    let t0 = std::time::Instant::now();
    let mut byte = [7u8; 1];
    for _ in 0..trips {
        // SAFETY: as above.
        unsafe {
            libc::write(a_write, byte.as_ptr().cast(), 1);
            libc::read(b_read, byte.as_mut_ptr().cast(), 1);
        }
    }
    let ns = t0.elapsed().as_nanos() as f64 / trips as f64;
    let _ = echo.join();
    for fd in [a_read, a_write, b_read, b_write] {
        // SAFETY: fds this function opened.
        unsafe { libc::close(fd) };
    }
    Ok(ns)
}

/// `host [--calls N] [--trips N] [--rounds R]`.
pub fn bench_host(args: &[String]) -> Result<()> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench host loads eBPF programs: run it as root");
    }
    let num = |name: &str, default: u64| -> Result<u64> {
        flag(args, name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name} {v}")))
    };
    let calls = num("--calls", 5_000_000)?;
    let trips = num("--trips", 200_000)?;
    let rounds = num("--rounds", 5)? as usize;
    // The process the programs follow: not the measured one.
    let mut followed = Command::new("sleep").arg("3600").spawn().context("starting sleep")?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternating, the first mode rotated by the round.
        for loaded in [round % 2 == 1, round % 2 == 0] {
            let programs = if loaded {
                let mut host = HostCollector::load(true)?;
                host.add_target(followed.id())?;
                let sched = SchedCollector::load(0, Some(&host.targets_map()?))?;
                std::thread::sleep(Duration::from_millis(100));
                Some((host, sched))
            } else {
                None
            };
            let (call, trip) = run_child(calls, trips)?;
            eprintln!(
                "round {round} {}: getppid {call:.1} ns, pipe round trip {trip:.1} ns",
                if loaded { "on " } else { "off" }
            );
            if loaded { &mut on } else { &mut off }.push((call, trip));
            drop(programs);
        }
    }
    let _ = followed.kill();
    let _ = followed.wait();
    let spread = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| Spread::of(&v.iter().map(f).collect::<Vec<_>>());
    let (call_off, call_on) = (spread(&off, |x| x.0), spread(&on, |x| x.0));
    let (trip_off, trip_on) = (spread(&off, |x| x.1), spread(&on, |x| x.1));
    println!(
        "getppid: off {:.1} ns ({:.1}-{:.1}), on {:.1} ns ({:.1}-{:.1}): +{:.1} ns per system call",
        call_off.median,
        call_off.min,
        call_off.max,
        call_on.median,
        call_on.min,
        call_on.max,
        call_on.median - call_off.median
    );
    println!(
        "pipe round trip: off {:.1} ns ({:.1}-{:.1}), on {:.1} ns ({:.1}-{:.1}): +{:.1} ns per round trip",
        trip_off.median,
        trip_off.min,
        trip_off.max,
        trip_on.median,
        trip_on.min,
        trip_on.max,
        trip_on.median - trip_off.median
    );
    let json = serde_json::json!({
        "bench": "host",
        "machine": crate::probe::machine(),
        "rounds": rounds,
        "calls": calls,
        "trips": trips,
        "getppid_ns": {"off": call_off.median, "on": call_on.median},
        "getppid_ns_spread": {"off": [call_off.min, call_off.max], "on": [call_on.min, call_on.max]},
        "added_ns_per_syscall": call_on.median - call_off.median,
        "pipe_round_trip_ns": {"off": trip_off.median, "on": trip_on.median},
        "pipe_round_trip_ns_spread": {"off": [trip_off.min, trip_off.max], "on": [trip_on.min, trip_on.max]},
        "added_ns_per_round_trip": trip_on.median - trip_off.median,
    });
    println!("{json}");
    Ok(())
}
