//! `analyze [--events N] [--small N] [--dir D]`: the streaming analysis (`ghostprof report`'s
//! engine) on synthetic training-step traces. For each size: write the trace, read it back
//! with the bare reader (the baseline: decoding alone, one core), then analyze it in a child
//! process (so its peak RSS is the analysis's own) on one core, `--rounds R` times (5 by
//! default; median and spread reported); the small trace is also
//! analyzed in memory (every record loaded, then the same sweep) for the memory comparison.
//! `--hta N` (default 250 000, 0 to skip; HTA takes minutes per million): a trace of N events is also exported to Chrome trace JSON
//! (one file per rank) and Holistic Trace Analysis' load + temporal breakdown (`tools/hta-compare`)
//! is timed against ghostprof's analysis of the same trace (wall seconds, same run).
//! `--jobs N`: also the wall-clock events/s with N analysis threads and with 1, alternately,
//! `--rounds` runs each: medians, spreads and the ratio of the medians, for one file and for N
//! ranks' files together.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ghostprof::analyze::{analyze_batch, analyze_files, load, ReportOptions};
use ghostprof::export::{export_chrome, ChromeOptions};
use ghostprof::trace::synth::TrainingStream;
use ghostprof::trace::{Interner, TraceInfo, TraceReader, TraceWriter, WriterOptions};

use crate::{flag, thread_cpu_s, Spread};

/// Peak resident set of this process (VmHWM), bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn write_synthetic(path: &Path, events: u64) -> Result<()> {
    write_synthetic_seed(path, events, 42)
}

fn write_synthetic_seed(path: &Path, events: u64, seed: u64) -> Result<()> {
    let interner = Arc::new(Interner::new());
    let stream = TrainingStream::new(seed, &interner).with_collective_kernels(&interner).take(events as usize);
    let info = TraceInfo { command: vec!["tools/bench".into(), "analyze".into()], ..Default::default() };
    let mut w = TraceWriter::create(path, true, &info, interner.clone(), WriterOptions::default())?;
    w.append_all(stream)?;
    w.finish()?;
    Ok(())
}

/// The bare reader over the file: decode every chunk, one thread; events/s (by CPU time) of
/// each of `rounds` runs.
fn read_rates(path: &Path, rounds: usize) -> Result<(u64, Vec<f64>)> {
    let mut rates = Vec::new();
    let mut n = 0u64;
    for _ in 0..rounds {
        let cpu0 = thread_cpu_s();
        let reader = TraceReader::open(path)?;
        n = 0;
        reader.for_each_chunk(|c| n += c.records.len() as u64)?;
        rates.push(n as f64 / (thread_cpu_s() - cpu0).max(1e-9));
    }
    Ok((n, rates))
}

/// Runs `analyze-child` on `path` in a child process (one analysis thread) and returns its JSON line.
fn child(path: &Path, mode: &str) -> Result<serde_json::Value> {
    child_jobs(path, mode, 1)
}

/// [`child`] with `jobs` analysis threads (`report --jobs`).
fn child_jobs(path: &Path, mode: &str, jobs: usize) -> Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).args(["analyze-child", mode]).arg(path).arg(jobs.to_string()).output()?;
    if !out.status.success() {
        bail!("analyze-child {mode} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("analyze-child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// `analyze-child {stream|memory} FILE [JOBS]`: one analysis (JOBS threads, default 1); prints
/// seconds, CPU seconds (of this thread), peak RSS. `stream` takes several files joined by
/// commas (the ranks of one job, analyzed together).
pub fn bench_analyze_child(args: &[String]) -> Result<()> {
    let (mode, path) = match args {
        [m, p, ..] => (m.as_str(), PathBuf::from(p)),
        _ => bail!("usage: analyze-child {{stream|memory}} FILE [JOBS]"),
    };
    let jobs = args.get(2).map(|j| j.parse()).transpose().context("JOBS")?.unwrap_or(1);
    let opts = ReportOptions { jobs, ..ReportOptions::default() };
    let rss_before = peak_rss_bytes();
    let t = Instant::now();
    let cpu0 = thread_cpu_s();
    let devices = match mode {
        "stream" => {
            let paths: Vec<PathBuf> = args[1].split(',').map(PathBuf::from).collect();
            analyze_files(&paths, &opts)?.iter().map(|r| r.accounts.len()).sum::<usize>()
        }
        "memory" => {
            let l = load(&path)?;
            analyze_batch(path.display().to_string(), &l.batch, &l.names, l.warnings, &opts).accounts.len()
        }
        _ => bail!("mode is stream or memory"),
    };
    let seconds = t.elapsed().as_secs_f64();
    let cpu = thread_cpu_s() - cpu0;
    println!(
        "{}",
        serde_json::json!({
            "seconds": seconds,
            "cpu_seconds": cpu,
            "peak_rss_bytes": peak_rss_bytes(),
            "rss_before_bytes": rss_before,
            "devices": devices,
        })
    );
    Ok(())
}

/// HTA against ghostprof on one trace of `events` events: `hta_seconds` (HTA's load + temporal
/// breakdown, as tools/hta-compare reports it), `ghostprof_seconds` (the streaming analysis, wall
/// seconds, in a child process) and their ratio. Without HTA's virtual environment (or when HTA
/// fails) the HTA fields are null and `hta_note` says why.
fn hta_vs_ghostprof(dir: &Path, events: u64) -> Result<serde_json::Value> {
    let path = dir.join("bench-analyze-hta.gptrace");
    eprintln!("writing {events} synthetic records to {} for the HTA comparison ...", path.display());
    write_synthetic(&path, events)?;
    let gp = child(&path, "stream")?;
    let ghostprof_seconds = gp["seconds"].as_f64().unwrap_or(f64::NAN);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = std::env::var_os("GHOSTPROF_HTA_VENV").map_or_else(|| root.join("target/hta-venv"), PathBuf::from);
    let mut out = serde_json::json!({
        "events": events,
        "ghostprof_seconds": ghostprof_seconds,
        "hta_seconds": null,
        "hta_over_ghostprof": null,
    });
    let note = if !venv.join("bin/python").exists() {
        Some(format!("no HTA virtual environment at {} (run tools/setup)", venv.display()))
    } else {
        let export_dir = dir.join("bench-analyze-hta-json");
        let _ = std::fs::remove_dir_all(&export_dir);
        let exported =
            export_chrome(&path, &export_dir, &ChromeOptions { per_process: true, force: true, ..Default::default() })?;
        let json_events: u64 = exported.files.iter().map(|f| f.events).sum();
        out["exported_events"] = json_events.into();
        out["exported_files"] = exported.files.len().into();
        eprintln!("exported {json_events} Chrome trace events in {} file(s); running HTA ...", exported.files.len());
        let run = Command::new(root.join("tools/hta-compare")).arg(&export_dir).output()?;
        let _ = std::fs::remove_dir_all(&export_dir);
        let text = String::from_utf8_lossy(&run.stdout);
        let hta = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["hta_seconds"].as_f64())
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))));
        match hta {
            Some(h) if run.status.success() => {
                out["hta_seconds"] = h.into();
                out["hta_over_ghostprof"] = (h / ghostprof_seconds).into();
                eprintln!(
                    "HTA load + temporal breakdown {h:.1} s; ghostprof analysis {ghostprof_seconds:.3} s wall: HTA/ghostprof = {:.0}",
                    h / ghostprof_seconds
                );
                None
            }
            _ => Some(format!(
                "tools/hta-compare failed ({}): {}",
                run.status,
                String::from_utf8_lossy(&run.stderr).lines().last().unwrap_or("")
            )),
        }
    };
    if let Some(n) = note {
        eprintln!("HTA comparison skipped: {n}");
        out["hta_note"] = n.into();
    }
    let _ = std::fs::remove_file(&path);
    Ok(out)
}

pub fn bench_analyze(args: &[String]) -> Result<()> {
    let events: u64 = flag(args, "--events").map(|s| s.parse()).transpose().context("--events")?.unwrap_or(100_000_000);
    let small: u64 = flag(args, "--small").map(|s| s.parse()).transpose().context("--small")?.unwrap_or(10_000_000);
    let dir = PathBuf::from(flag(args, "--dir").unwrap_or_else(|| std::env::temp_dir().display().to_string()));
    // --keep: leave the trace files in --dir (for profiling the analysis on them).
    let keep = args.iter().any(|a| a == "--keep");
    let hta_events: u64 = flag(args, "--hta").map(|s| s.parse()).transpose().context("--hta")?.unwrap_or(250_000);
    let rounds = crate::rounds_flag(args)?;
    // --jobs N: also the wall-clock rate with N analysis threads against 1, in the same run.
    let jobs: usize = flag(args, "--jobs").map(|s| s.parse()).transpose().context("--jobs")?.unwrap_or(1);
    std::fs::create_dir_all(&dir)?;
    let mut sizes = Vec::new();
    for (label, n) in [("small", small), ("large", events)] {
        let path = dir.join(format!("bench-analyze-{label}.gptrace"));
        eprintln!("writing {n} synthetic training-step records to {} ...", path.display());
        write_synthetic(&path, n)?;
        let file_bytes = std::fs::metadata(&path)?.len();
        let (read_n, read_rates) = read_rates(&path, rounds)?;
        // One thread: its CPU time is the time of one core (wall time shares the core with
        // whatever else runs on the machine). `rounds` runs (5 by default), median and spread
        // reported: this VM's rate moves by ±25 % from run to run with its neighbours (the bare
        // reader's too).
        let mut runs = Vec::new();
        for _ in 0..rounds {
            runs.push(child(&path, "stream")?);
        }
        let rates: Vec<f64> =
            runs.iter().map(|r| read_n as f64 / r["cpu_seconds"].as_f64().unwrap_or(f64::NAN)).collect();
        let (rate, read) = (Spread::of(&rates), Spread::of(&read_rates));
        // the run whose rate is the median (or nearest it) gives the other figures
        let stream = runs
            .iter()
            .zip(&rates)
            .min_by(|a, b| (a.1 - rate.median).abs().total_cmp(&(b.1 - rate.median).abs()))
            .map(|(r, _)| r.clone())
            .context("no analysis run")?;
        let stream_s = read_n as f64 / rate.median;
        let mut row = serde_json::json!({
            "events": read_n,
            "file_bytes": file_bytes,
            "read_events_per_s": read.median.round(),
            "read_events_per_s_spread": read.json(0),
            "events_per_s": rate.median.round(),
            "events_per_s_spread": rate.json(0),
            "analysis_cpu_seconds": stream_s,
            "analysis_wall_seconds": stream["seconds"],
            "peak_rss_bytes": stream["peak_rss_bytes"],
        });
        eprintln!(
            "{label}: {read_n} events, {:.1} MiB; peak RSS {:.0} MiB",
            file_bytes as f64 / (1 << 20) as f64,
            stream["peak_rss_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
        );
        read.print(&format!("{label}: bare reader (events/s CPU)"), "", rounds);
        rate.print(&format!("{label}: analysis (events/s CPU)"), "", rounds);
        if jobs > 1 {
            // Wall time, 1 thread and `jobs` threads alternately in the same run, `rounds` runs
            // each (5 by default), median and spread (the machine's neighbours weigh on both
            // alike): this file alone (swept in `jobs` time spans when its sums are whole ns,
            // else its chunks decoded ahead), then `jobs` ranks' files of this size together
            // (side by side). The speedup is of the medians.
            let ranks: Vec<PathBuf> =
                (0..jobs).map(|r| dir.join(format!("bench-analyze-{label}-rank{r}.gptrace"))).collect();
            for (r, p) in ranks.iter().enumerate().skip(1) {
                write_synthetic_seed(p, n, 42 + r as u64)?;
            }
            std::fs::copy(&path, &ranks[0])?;
            let joined = ranks.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",");
            for (what, arg, events) in
                [("one file", path.clone(), read_n), ("ranks", PathBuf::from(joined), read_n * jobs as u64)]
            {
                let (mut one, mut many) = (Vec::new(), Vec::new());
                let mut rss = 0f64;
                for _ in 0..rounds {
                    let s = child_jobs(&arg, "stream", 1)?["seconds"].as_f64().unwrap_or(f64::NAN);
                    one.push(events as f64 / s);
                    let m = child_jobs(&arg, "stream", jobs)?;
                    many.push(events as f64 / m["seconds"].as_f64().unwrap_or(f64::NAN));
                    rss = rss.max(m["peak_rss_bytes"].as_f64().unwrap_or(0.0));
                }
                let (one, many) = (Spread::of(&one), Spread::of(&many));
                let speedup = many.median / one.median;
                one.print(&format!("{label}, {what}: wall events/s, 1 thread"), "", rounds);
                many.print(&format!("{label}, {what}: wall events/s, {jobs} threads"), "", rounds);
                eprintln!(
                    "{label}, {what} ({events} events): {jobs} threads / 1 thread = {speedup:.2}x (medians of {rounds}), peak RSS {:.0} MiB",
                    rss / (1 << 20) as f64
                );
                let key = if what == "ranks" { "jobs_ranks" } else { "jobs_one_file" };
                row[key] = serde_json::json!({
                    "jobs": jobs,
                    "events": events,
                    "rounds": rounds,
                    "wall_events_per_s_1_thread": one.median.round(),
                    "wall_events_per_s_1_thread_spread": one.json(0),
                    "wall_events_per_s_jobs": many.median.round(),
                    "wall_events_per_s_jobs_spread": many.json(0),
                    "speedup": speedup,
                    "peak_rss_bytes_jobs": rss,
                });
            }
            for p in &ranks {
                let _ = std::fs::remove_file(p);
            }
        }
        if label == "small" {
            let memory = child(&path, "memory")?;
            eprintln!(
                "small, in memory: {:.2} s CPU, peak RSS {:.0} MiB",
                memory["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
                memory["peak_rss_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
            );
            row["in_memory_cpu_seconds"] = memory["cpu_seconds"].clone();
            row["in_memory_peak_rss_bytes"] = memory["peak_rss_bytes"].clone();
        }
        if !keep {
            let _ = std::fs::remove_file(&path);
        }
        sizes.push((label, row));
    }
    let hta = if hta_events > 0 { Some(hta_vs_ghostprof(&dir, hta_events)?) } else { None };
    let field = |k: &str| hta.as_ref().map_or(serde_json::Value::Null, |h| h[k].clone());
    let large = &sizes[1].1;
    let json = serde_json::json!({
        "bench": "analyze",
        "events": large["events"],
        "rounds": rounds,
        "events_per_s": large["events_per_s"],
        "events_per_s_spread": large["events_per_s_spread"],
        "peak_rss_bytes": large["peak_rss_bytes"],
        "read_events_per_s": large["read_events_per_s"],
        "cpu": crate::cpu_model(),
        "hta_seconds": field("hta_seconds"),
        "ghostprof_seconds": field("ghostprof_seconds"),
        "hta_over_ghostprof": field("hta_over_ghostprof"),
        "small": sizes[0].1,
        "large": sizes[1].1,
        "hta": hta,
    });
    println!("{json}");
    Ok(())
}
