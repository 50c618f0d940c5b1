//! `probe`: what ghostprof's host collector costs a CUDA program per `cuLaunchKernel`, against
//! the cheapest possible uprobe at the same address.
//!
//! A tight loop of gpusim's `cuLaunchKernel` (`gpusim-train launch-loop`, its own process: the
//! collector never traces ghostprof's own pid) runs in three modes per round: untraced; under
//! a bare uprobe (`ebpf/bench_bare.bpf.c`, `return 0`); under the real [`HostCollector`], drained
//! on a timer into a real [`Pipeline`] and trace file. The loop process times itself between a
//! go-ahead line and its last call, so probe attachment and process start are outside the
//! figure. Every launch of the traced loop must be in the trace or counted as dropped.
//!
//! `ratio_vs_bare` = (ghostprof − untraced) / (bare − untraced): the probe cost ghostprof adds
//! over the kernel's own uprobe cost (trap + instruction emulation + BPF entry), which no
//! uprobe-based tool can avoid.

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use ghostprof::collect::bpf::bench_bare::BenchBareSkelBuilder;
use ghostprof::collect::elf::probe_points;
use ghostprof::collect::host::{HostCollector, UprobeLinks};
use ghostprof::pipeline::{Pipeline, PipelineOptions};
use ghostprof::trace::{Source, TraceInfo, TraceReader};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::gpusim_build::{build_gpusim, stage, LoopProcess, LoopRun};
use crate::{clock_gettime, cpu_model, flag, libc_timespec, thread_cpu_s, Spread};

/// What to run, from the command line.
struct ProbeConfig {
    /// Timed `cuLaunchKernel` calls per loop.
    calls: u64,
    /// Threads of the loop process the calls are split over (1: the per-call figure; more:
    /// more events per second at the collector).
    threads: u64,
    /// Rounds of (untraced, bare, ghostprof); medians are reported.
    rounds: usize,
    /// Loop processes run at once, all traced, for the sustained-rate figure.
    rate_procs: u64,
    /// How often the collector's ring buffer is drained.
    drain_interval: Duration,
    /// Scratch space: staged libraries and the trace file.
    dir: PathBuf,
    /// Also read the kernel's run-time statistics of the two probes' BPF programs
    /// (`BPF_ENABLE_STATS`): ns per run of the body alone. They add a clock read pair to every
    /// run, so the per-call figures of such a run are not the headline's.
    bpf_stats: bool,
    /// How both the bare uprobe and ghostprof's are placed (`--uprobe-links multi|per-function`;
    /// default: as `ghostprof` places them on this kernel).
    links: UprobeLinks,
}

impl ProbeConfig {
    fn parse(args: &[String]) -> Result<Self> {
        let parsed = |name: &str| -> Result<Option<u64>> {
            flag(args, name).map(|s| s.parse::<u64>().with_context(|| format!("{name} {s:?}"))).transpose()
        };
        let dir = flag(args, "--dir").map_or_else(std::env::temp_dir, PathBuf::from);
        Ok(ProbeConfig {
            calls: parsed("--calls")?.unwrap_or(1_000_000),
            threads: parsed("--threads")?.unwrap_or(1).max(1),
            rounds: parsed("--rounds")?.unwrap_or(5).max(1) as usize,
            rate_procs: parsed("--rate-procs")?.unwrap_or(2).max(1),
            drain_interval: Duration::from_millis(parsed("--drain-ms")?.unwrap_or(5)),
            dir: dir.join(format!("ghostprof-bench-probe-{}", std::process::id())),
            bpf_stats: args.iter().any(|a| a == "--bpf-stats"),
            links: match flag(args, "--uprobe-links").as_deref() {
                None => UprobeLinks::detect(),
                Some("multi") => UprobeLinks::Multi,
                Some("per-function") => UprobeLinks::PerFunction,
                Some(other) => bail!("--uprobe-links {other:?}: multi or per-function"),
            },
        })
    }
}

/// The ghostprof mode's extra figures.
struct TracedRun {
    timing: LoopRun,
    /// `gp_launch`'s kernel statistics over the run (with `--bpf-stats`).
    body: Option<BodyStats>,
    launches_written: u64,
    ringbuf_drops: u64,
    drops: u64,
    /// CPU of the draining thread (ring buffer → records → producer).
    drain_cpu_s: f64,
    /// CPU of this whole process during the loop: drain + pipeline writer thread.
    collector_cpu_s: f64,
    trace_bytes: u64,
}

/// A probe program's run count and run time (the kernel's `BPF_ENABLE_STATS` figures).
#[derive(Clone, Copy)]
struct BodyStats {
    runs: u64,
    run_time_ns: u64,
}

impl BodyStats {
    fn ns_per_run(&self) -> f64 {
        self.run_time_ns as f64 / self.runs.max(1) as f64
    }
}

/// Turns the kernel's BPF run-time statistics on for as long as the returned fd is open.
fn enable_bpf_stats() -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain bpf(BPF_ENABLE_STATS) call; it returns a new fd or a negative error.
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_enable_stats(libbpf_rs::libbpf_sys::BPF_STATS_RUN_TIME) };
    ensure!(fd >= 0, "BPF_ENABLE_STATS failed ({fd}): run as root");
    // SAFETY: the kernel just handed us this fd.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The statistics of the loaded program `name` with the highest id above `after` (the one this
/// bench loaded, not an older copy another tool keeps loaded).
fn body_stats(name: &str, after: u32) -> Option<BodyStats> {
    libbpf_rs::query::ProgInfoIter::default()
        .filter(|p| p.id > after && p.name.to_str() == Some(name))
        .max_by_key(|p| p.id)
        .map(|p| BodyStats { runs: p.run_cnt, run_time_ns: p.run_time_ns })
}

/// The highest id of any loaded BPF program (0 if none).
fn last_prog_id() -> u32 {
    libbpf_rs::query::ProgInfoIter::default().map(|p| p.id).max().unwrap_or(0)
}

/// `tools/bench probe [--calls N] [--threads T] [--rounds R] [--drain-ms MS] [--dir D] [--bpf-stats] [--uprobe-links multi|per-function]` (root).
pub fn bench_probe(args: &[String]) -> Result<()> {
    let cfg = ProbeConfig::parse(args)?;
    let bin_dir = build_gpusim(&[])?;
    let lib_dir = cfg.dir.join("lib");
    stage(&bin_dir, &lib_dir)?;
    let gpusim_train = bin_dir.join("gpusim-train");
    let libcuda = lib_dir.join("libcuda.so.1");
    let result = measure(&cfg, &gpusim_train, &lib_dir, &libcuda);
    let _ = std::fs::remove_dir_all(&cfg.dir);
    result
}

fn measure(cfg: &ProbeConfig, gpusim_train: &Path, lib_dir: &Path, libcuda: &Path) -> Result<()> {
    // The same file offset ghostprof's loader picks (past an endbr64, if any).
    let points = probe_points(libcuda, &["cuLaunchKernel"])?;
    let point = points.get("cuLaunchKernel").context("the staged libcuda.so.1 has no cuLaunchKernel")?;
    let n = cfg.calls;
    let _stats = cfg.bpf_stats.then(enable_bpf_stats).transpose()?;
    let (mut untraced, mut bare, mut traced) = (Vec::new(), Vec::new(), Vec::new());
    let mut bare_bodies = Vec::new();
    let (mut rates, mut round_ratios) = (Vec::new(), Vec::new());
    for round in 1..=cfg.rounds {
        // The order of the modes rotates, so a drift of the machine over a run (another job
        // starting, memory filling up) does not always land on the same mode.
        for mode in (0..3).map(|i| (i + round - 1) % 3) {
            // No simulated driver CPU: the loop measures the call and the probe, nothing else.
            let env = [("GPUSIM_LAUNCH_CPU_NS", "0".to_string())];
            let run = LoopProcess::spawn(gpusim_train, lib_dir, n, cfg.threads, &env)?;
            match mode {
                0 => untraced.push(run_untraced(run, n)?),
                1 => {
                    let (timing, body) =
                        run_bare(run, n, libcuda, point.file_offset as usize, cfg.bpf_stats, cfg.links)?;
                    bare.push(timing);
                    bare_bodies.extend(body);
                }
                _ => traced.push(run_ghostprof(
                    run,
                    n,
                    libcuda,
                    &cfg.dir.join("probe.gptrace"),
                    cfg.drain_interval,
                    cfg.bpf_stats,
                    cfg.links,
                )?),
            }
        }
        // The sustained rate (several loops at once), once per round too.
        rates.push(rate_phase(cfg, gpusim_train, lib_dir, libcuda)?);
        let (u, b, t) = (&untraced[round - 1], &bare[round - 1], &traced[round - 1]);
        let (un, bn, gn) = (u.cpu_ns as f64 / n as f64, b.cpu_ns as f64 / n as f64, t.timing.cpu_ns as f64 / n as f64);
        // Each round's own ratio: its three runs are close in time, so a drift of the machine
        // between rounds cancels.
        round_ratios.push((gn - un) / (bn - un));
        if let (Some(bb), Some(gb)) = (bare_bodies.get(round - 1), t.body) {
            eprintln!(
                "round {round}: BPF body ns per run: bare {:.1} ({} runs), gp_launch {:.1} ({} runs)",
                bb.ns_per_run(),
                bb.runs,
                gb.ns_per_run(),
                gb.runs
            );
        }
        let r = &rates[round - 1];
        eprintln!(
            "round {round}: CPU per call untraced {un:.1} ns, bare uprobe {bn:.1}, ghostprof {gn:.1} (ratio {:.3}); {} launches written, {} dropped; sustained {:.0} events/s",
            round_ratios[round - 1],
            t.launches_written,
            t.drops,
            r.0 as f64 / r.2
        );
    }

    // The loop thread's CPU time is the headline: on a shared 2-core VM its wall time also
    // counts whatever else was scheduled on its core (a build, our own writer thread).
    let per_call = |runs: &[&LoopRun], wall: bool| -> (f64, Vec<f64>) {
        let mut v: Vec<f64> =
            runs.iter().map(|r| (if wall { r.elapsed_ns } else { r.cpu_ns }) as f64 / n.max(1) as f64).collect();
        let samples = v.iter().map(|x| round1(*x)).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], samples)
    };
    let traced_runs: Vec<&LoopRun> = traced.iter().map(|t| &t.timing).collect();
    let (untraced_runs, bare_runs): (Vec<&LoopRun>, Vec<&LoopRun>) = (untraced.iter().collect(), bare.iter().collect());
    let (untraced_ns, untraced_samples) = per_call(&untraced_runs, false);
    let (bare_ns, bare_samples) = per_call(&bare_runs, false);
    let (ghostprof_ns, ghostprof_samples) = per_call(&traced_runs, false);
    let (untraced_wall, _) = per_call(&untraced_runs, true);
    let (bare_wall, _) = per_call(&bare_runs, true);
    let (ghostprof_wall, _) = per_call(&traced_runs, true);
    let samples = serde_json::json!({
        "untraced": untraced_samples, "bare_uprobe": bare_samples, "ghostprof": ghostprof_samples,
    });
    if bare_ns <= untraced_ns {
        bail!("the bare uprobe cost nothing ({bare_ns:.1} vs {untraced_ns:.1} ns/call untraced): did it attach?");
    }
    // The headline ratio is the median of the rounds' own ratios.
    let ratio_spread = Spread::of(&round_ratios);
    let ratio = ratio_spread.median;
    let wall_ratio = (ghostprof_wall - untraced_wall) / (bare_wall - untraced_wall);

    // The sustained rate: one loop thread is capped near 1 / (call + uprobe) ≈ 0.8 M calls/s
    // here, so several loop processes (separate gpusim devices: no shared lock) ran at once.
    let rate_values: Vec<f64> = rates.iter().map(|r| r.0 as f64 / r.2).collect();
    let rate_spread = Spread::of(&rate_values);
    let rate = (rates.iter().map(|r| r.0).sum::<u64>(), rates.iter().map(|r| r.1).sum::<u64>());
    eprintln!(
        "sustained: {} loop processes per round, {} launches written over {} rounds, {} dropped",
        cfg.rate_procs,
        rate.0,
        rates.len(),
        rate.1
    );
    rate_spread.print("sustained events/s", "", rates.len());
    ratio_spread.print("ratio vs the bare uprobe (per round)", "", round_ratios.len());
    let (untraced_spread, bare_spread, ghostprof_spread) = (
        Spread::of(&untraced_runs.iter().map(|r| r.cpu_ns as f64 / n as f64).collect::<Vec<_>>()),
        Spread::of(&bare_runs.iter().map(|r| r.cpu_ns as f64 / n as f64).collect::<Vec<_>>()),
        Spread::of(&traced_runs.iter().map(|r| r.cpu_ns as f64 / n as f64).collect::<Vec<_>>()),
    );
    let written: u64 = traced.iter().map(|t| t.launches_written).sum();
    let drops: u64 = traced.iter().map(|t| t.drops).sum();
    let ringbuf_drops: u64 = traced.iter().map(|t| t.ringbuf_drops).sum();
    let loop_s: f64 = traced.iter().map(|t| t.timing.elapsed_ns as f64 / 1e9).sum();
    let events_per_s = written as f64 / loop_s;
    let drain_cpu_s: f64 = traced.iter().map(|t| t.drain_cpu_s).sum();
    let collector_cpu_s: f64 = traced.iter().map(|t| t.collector_cpu_s).sum();
    let trace_bytes = traced.last().map_or(0, |t| t.trace_bytes);

    eprintln!("loop thread CPU per call, median of {} rounds of {n} calls (wall time in brackets):", cfg.rounds);
    eprintln!("untraced     {untraced_ns:8.1} ns/call [{untraced_wall:.1}]");
    eprintln!("bare uprobe  {bare_ns:8.1} ns/call [{bare_wall:.1}] (+{:.1})", bare_ns - untraced_ns);
    eprintln!(
        "ghostprof    {ghostprof_ns:8.1} ns/call [{ghostprof_wall:.1}] (+{:.1}): {ratio:.2}x the bare uprobe's cost",
        ghostprof_ns - untraced_ns
    );
    eprintln!(
        "collector: {written} launches written at {:.0} events/s sustained, {drops} dropped ({ringbuf_drops} in the ring buffer); {:.0} ns CPU per event in the drain thread, {:.0} ns in drain + writer",
        events_per_s,
        drain_cpu_s * 1e9 / written.max(1) as f64,
        collector_cpu_s * 1e9 / written.max(1) as f64
    );
    let bodies = |b: &[BodyStats]| Spread::of(&b.iter().map(BodyStats::ns_per_run).collect::<Vec<_>>());
    let traced_bodies: Vec<BodyStats> = traced.iter().filter_map(|t| t.body).collect();
    let bpf_stats = cfg.bpf_stats.then(|| {
        let (b, g) = (bodies(&bare_bodies), bodies(&traced_bodies));
        eprintln!(
            "BPF body ns per run (kernel statistics, median of {}): bare {:.1} ({:.1}-{:.1}), gp_launch {:.1} ({:.1}-{:.1})",
            traced_bodies.len(),
            b.median,
            b.min,
            b.max,
            g.median,
            g.min,
            g.max
        );
        serde_json::json!({
            "bare_ns_per_run": b.json(1),
            "gp_launch_ns_per_run": g.json(1),
            "runs": traced_bodies.iter().map(|x| x.runs).sum::<u64>(),
        })
    });
    let json = serde_json::json!({
        "bench": "probe",
        "bpf_stats": bpf_stats,
        "calls": n,
        "threads": cfg.threads,
        "uprobe_links": format!("{:?}", cfg.links),
        "rounds": cfg.rounds,
        "untraced_ns_per_call": round1(untraced_ns),
        "bare_uprobe_ns_per_call": round1(bare_ns),
        "ghostprof_ns_per_call": round1(ghostprof_ns),
        "bare_uprobe_cost_ns": round1(bare_ns - untraced_ns),
        "ghostprof_cost_ns": round1(ghostprof_ns - untraced_ns),
        "ratio_vs_bare": (ratio * 1000.0).round() / 1000.0,
        "ratio_vs_bare_spread": ratio_spread.json(3),
        "ns_per_call_spread": {
            "untraced": untraced_spread.json(1), "bare_uprobe": bare_spread.json(1), "ghostprof": ghostprof_spread.json(1),
        },
        "wall_ns_per_call": {
            "untraced": round1(untraced_wall), "bare_uprobe": round1(bare_wall), "ghostprof": round1(ghostprof_wall),
        },
        "wall_ratio_vs_bare": (wall_ratio * 1000.0).round() / 1000.0,
        "events_per_s_sustained": rate_spread.median.round(),
        "events_per_s_sustained_spread": rate_spread.json(0),
        "sustained_loop_processes": cfg.rate_procs,
        "sustained_launches_written": rate.0,
        "events_per_s_one_loop": events_per_s.round(),
        "launches_written": written,
        "drops": drops + rate.1,
        "ringbuf_drops": ringbuf_drops,
        "drain_interval_ms": cfg.drain_interval.as_millis() as u64,
        "drain_cpu_ns_per_event": (drain_cpu_s * 1e9 / written.max(1) as f64).round(),
        "collector_cpu_ns_per_event": (collector_cpu_s * 1e9 / written.max(1) as f64).round(),
        // What one core of collector CPU could absorb if the traced program produced faster.
        "collector_events_per_cpu_s": (written as f64 / collector_cpu_s.max(1e-9)).round(),
        "trace_bytes_per_event": ((trace_bytes as f64 / n as f64) * 100.0).round() / 100.0,
        "probe_file_offset": point.file_offset,
        "probe_past_endbr64": point.skipped_endbr64,
        "samples_ns_per_call": samples,
        "machine": machine(),
    });
    println!("{json}");
    Ok(())
}

fn run_untraced(mut run: LoopProcess, calls: u64) -> Result<LoopRun> {
    run.go()?;
    run.finish(calls)
}

fn run_bare(
    mut run: LoopProcess,
    calls: u64,
    libcuda: &Path,
    offset: usize,
    stats: bool,
    links: UprobeLinks,
) -> Result<(LoopRun, Option<BodyStats>)> {
    let before = last_prog_id();
    let mut storage = MaybeUninit::uninit();
    let mut open = BenchBareSkelBuilder::default().open(&mut storage).context("opening bench_bare")?;
    if links == UprobeLinks::Multi {
        open.progs.bare_hit.set_attach_type(libbpf_rs::ProgramAttachType::TraceUprobeMulti);
    }
    let skel = open.load().context("loading bench_bare: run as root (CAP_BPF, CAP_PERFMON)")?;
    let link = match links {
        UprobeLinks::Multi => skel.progs.bare_hit.attach_uprobe_multi_with_opts(
            -1,
            libcuda,
            "",
            libbpf_rs::UprobeMultiOpts { offsets: vec![offset], ..Default::default() },
        ),
        UprobeLinks::PerFunction => skel.progs.bare_hit.attach_uprobe(false, -1, libcuda, offset),
    }
    .with_context(|| format!("attaching the bare uprobe ({links:?}) to {}+{offset:#x}", libcuda.display()))?;
    run.go()?;
    let timing = run.finish(calls)?;
    let body = if stats { body_stats("bare_hit", before) } else { None };
    drop(link);
    Ok((timing, body))
}

fn run_ghostprof(
    mut run: LoopProcess,
    calls: u64,
    libcuda: &Path,
    trace: &Path,
    drain_interval: Duration,
    bpf_stats: bool,
    links: UprobeLinks,
) -> Result<TracedRun> {
    let before = last_prog_id();
    let mut collector = HostCollector::load_with(true, links)?;
    let report = collector.attach_library(libcuda)?;
    ensure!(
        report.attached.iter().any(|f| f == "cuLaunchKernel"),
        "ghostprof did not probe cuLaunchKernel in {}: {report:?}",
        libcuda.display()
    );
    let info = TraceInfo { command: vec!["tools/bench".into(), "probe".into()], ..Default::default() };
    let pipeline = Pipeline::create(trace, true, &info, PipelineOptions::default())?;
    let mut producer = pipeline.producer(Source::Ebpf);
    collector.add_target(run.pid)?;

    // As `ghostprof record` does: drain on a timer while the job runs, then once more after.
    let (thread_cpu0, process_cpu0) = (thread_cpu_s(), process_cpu_s());
    run.go()?;
    loop {
        collector.drain(&mut producer)?;
        if run.child.try_wait().context("polling the loop process")?.is_some() {
            break;
        }
        std::thread::sleep(drain_interval);
    }
    collector.drain(&mut producer)?;
    let drain_cpu_s = thread_cpu_s() - thread_cpu0;
    drop(producer);
    let (summary, stats) = pipeline.finish()?;
    let collector_cpu_s = process_cpu_s() - process_cpu0;
    if let Some(e) = &stats.writer_error {
        bail!("the trace writer failed: {e}");
    }
    let pid = run.pid;
    let timing = run.finish(calls)?;
    let body = if bpf_stats { body_stats("gp_launch", before) } else { None };

    let batch = TraceReader::open(trace)?.read_all()?;
    let launches_written = batch.launches.len() as u64;
    let foreign = batch.launches.iter().filter(|l| l.pid != pid).count();
    ensure!(foreign == 0, "{foreign} launch records are not from the loop process {pid}");
    let drops: u64 = stats.drops.iter().map(|d| d.2).sum();
    let ringbuf_drops = collector.stats.ringbuf_drops;
    // Nothing may go missing silently: every call is a record or a counted drop.
    ensure!(
        launches_written + drops == calls,
        "{calls} launches, but {launches_written} written + {drops} dropped ({:?})",
        stats.drops
    );
    Ok(TracedRun {
        timing,
        body,
        launches_written,
        ringbuf_drops,
        drops,
        drain_cpu_s,
        collector_cpu_s,
        trace_bytes: summary.compressed_bytes,
    })
}

/// Runs `cfg.rate_procs` loops at once under one collector and pipeline: (launch records
/// written, drops, wall seconds from the first go to the last exit). Every call must be a
/// record or a counted drop.
fn rate_phase(cfg: &ProbeConfig, gpusim_train: &Path, lib_dir: &Path, libcuda: &Path) -> Result<(u64, u64, f64)> {
    let env = [("GPUSIM_LAUNCH_CPU_NS", "0".to_string())];
    let mut runs = Vec::new();
    for _ in 0..cfg.rate_procs {
        runs.push(LoopProcess::spawn(gpusim_train, lib_dir, cfg.calls, 1, &env)?);
    }
    let mut collector = HostCollector::load_with(true, cfg.links)?;
    collector.attach_library(libcuda)?;
    let trace = cfg.dir.join("probe-rate.gptrace");
    let info = TraceInfo { command: vec!["tools/bench".into(), "probe".into()], ..Default::default() };
    let pipeline = Pipeline::create(&trace, true, &info, PipelineOptions::default())?;
    let mut producer = pipeline.producer(Source::Ebpf);
    for r in &runs {
        collector.add_target(r.pid)?;
    }
    let t0 = std::time::Instant::now();
    for r in runs.iter_mut() {
        r.go()?;
    }
    loop {
        collector.drain(&mut producer)?;
        let mut running = false;
        for r in runs.iter_mut() {
            running |= r.child.try_wait().context("polling a loop process")?.is_none();
        }
        if !running {
            break;
        }
        std::thread::sleep(cfg.drain_interval);
    }
    let wall = t0.elapsed().as_secs_f64();
    collector.drain(&mut producer)?;
    drop(producer);
    let (_, stats) = pipeline.finish()?;
    for r in runs {
        r.finish(cfg.calls)?;
    }
    let written = TraceReader::open(&trace)?.read_all()?.launches.len() as u64;
    let drops: u64 = stats.drops.iter().map(|d| d.2).sum();
    let calls = cfg.calls * cfg.rate_procs;
    ensure!(written + drops == calls, "{calls} launches, but {written} written + {drops} dropped");
    Ok((written, drops, wall))
}

/// CPU time of this whole process (every thread), in seconds.
pub(crate) fn process_cpu_s() -> f64 {
    let mut ts = libc_timespec::default();
    // SAFETY: clock_gettime fills the struct; CLOCK_PROCESS_CPUTIME_ID (2) exists on Linux.
    unsafe { clock_gettime(2, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 / 1e9
}

pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// What the figures were measured on.
pub(crate) fn machine() -> serde_json::Value {
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    let virtualized = std::fs::read_to_string("/proc/cpuinfo").map(|s| s.contains(" hypervisor")).unwrap_or(false);
    // What makes a kernel entry, a helper call and a return cost more on one host than another
    // (docs/performance.md, "AMD vs Intel").
    let sys = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    let vuln = |name: &str| sys(&format!("/sys/devices/system/cpu/vulnerabilities/{name}"));
    serde_json::json!({
        "cpu": cpu_model(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
        "virtualized": virtualized,
        "clocksource": sys("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "mitigations": {
            "spectre_v2": vuln("spectre_v2"),
            "spec_rstack_overflow": vuln("spec_rstack_overflow"),
        },
    })
}
