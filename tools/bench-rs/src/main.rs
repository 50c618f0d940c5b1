//! Benchmarks behind `tools/bench`. Each prints human-readable lines and, as its last line,
//! one JSON object with its figures; baselines run in the same invocation.
//!
//! - `trace [--events N] [--rounds R] [--dir D]`: a realistic training-step stream through the real
//!   pipeline into a trace file and back, against plain zstd -1 over raw rows.
//!
//! Every bench prints the CPU model first and runs 5 rounds by default (`--rounds R`): each
//! figure is the median of the rounds, printed with its min and max, and its final JSON line
//! has the median and a `…_spread` object (min, median, max, spread = (max − min) / median).
//! - `probe [--calls N] [--threads T] [--rounds R] [--drain-ms MS] [--bpf-stats] [--uprobe-links multi|per-function]` ([`probe`]): per-call cost of
//!   ghostprof's uprobes on gpusim's cuLaunchKernel against a bare uprobe (root).
//! - `analyze [--events N] [--small N] [--hta N] [--rounds R] [--dir D]` ([`analyze`]): the streaming analysis behind
//!   `ghostprof report`: events/s on one core against the bare reader, and its peak RSS.
//! - `cupti [--calls N] [--rounds R] [--drain-ms MS] [--rate RECORDS_PER_S]` ([`cupti`]): CPU the
//!   CUPTI injection library adds to a CUDA program per activity record, and losses at 1 M
//!   records/s, on gpusim's libcupti.
//! - `sort [--events N] [--rounds R] [--dir D] [FILE…]` ([`sort`]): the sweep's run-merging
//!   stable sort against the library's sorts, on the ops of a synthetic trace and of FILEs.
//! - `overhead [--reps N] [--steps K] [--scenarios A,B] [--modes M,…]` ([`overhead`]): a gpusim
//!   job's step time under plain, dormant, eBPF-only, bare-CUPTI, full and full-without-PM modes,
//!   interleaved, with ratios of medians and 95% bootstrap intervals ([`stats`]) (root).
//! - `host [--calls N] [--trips N] [--rounds R]` ([`host`]): what the host-wide eBPF programs cost
//!   processes ghostprof does not trace, per system call and per context-switching round trip,
//!   programs off and on alternating (root).

use std::path::PathBuf;
use std::time::Instant;

mod analyze;
mod cupti;
mod gpusim_build;
mod host;
mod overhead;
mod probe;
mod sort;
mod stats;

use anyhow::{bail, Context, Result};
use ghostprof::pipeline::{Pipeline, PipelineOptions};
use ghostprof::trace::synth::TrainingStream;
use ghostprof::trace::{Interner, Kind, Record, Source, TraceInfo, TraceReader, TraceWriter, WriterOptions};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !matches!(args.first().map(String::as_str), Some("analyze-child" | "host-child") | None) {
        eprintln!("CPU: {} ({} CPUs)", cpu_model(), std::thread::available_parallelism().map_or(0, |n| n.get()));
    }
    match args.first().map(String::as_str) {
        Some("trace") => bench_trace(&args[1..]),
        Some("read") => bench_read(&args[1..]),
        Some("probe") => probe::bench_probe(&args[1..]),
        Some("cupti") => cupti::bench_cupti(&args[1..]),
        Some("analyze") => analyze::bench_analyze(&args[1..]),
        Some("analyze-child") => analyze::bench_analyze_child(&args[1..]),
        Some("sort") => sort::bench_sort(&args[1..]),
        Some("overhead") => overhead::bench_overhead(&args[1..]),
        Some("host") => host::bench_host(&args[1..]),
        Some("host-child") => host::bench_host_child(&args[1..]),
        _ => bail!(
            "usage: bench trace [--events N] [--rounds R] [--dir DIR] | sort [--events N] [--rounds R] [--dir DIR] [FILE...] | analyze [--events N] [--small N] [--hta N] [--rounds R] [--dir DIR] | probe [--calls N] [--threads T] [--rounds R] [--drain-ms MS] [--bpf-stats] [--uprobe-links multi|per-function] \
             | cupti [--calls N] [--rounds R] [--drain-ms MS] [--rate RECORDS_PER_S] [--pm-interval-ns NS] [--inject LIB] \
             | overhead [--reps N] [--steps K] [--scenarios A,B] [--modes M,...] [--resamples R] [--dir DIR] \
             | host [--calls N] [--trips N] [--rounds R]"
        ),
    }
}

/// One figure over a bench's rounds: its minimum, median and maximum (issue 13: a target must
/// hold in the median of 5 runs, stated with its spread).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `samples` (NaN for all three when there are none). The median of an even
    /// count is the mean of the middle two.
    pub fn of(samples: &[f64]) -> Spread {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Spread { min: f64::NAN, median: f64::NAN, max: f64::NAN };
        }
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 };
        Spread { min: v[0], median, max: v[v.len() - 1] }
    }

    /// `{"min", "median", "max", "spread"}`, `spread` being (max − min) / median, rounded to
    /// `digits` decimals (the spread to 3).
    pub fn json(&self, digits: i32) -> serde_json::Value {
        let r = |x: f64| {
            let k = 10f64.powi(digits);
            (x * k).round() / k
        };
        let spread = if self.median != 0.0 { (self.max - self.min) / self.median.abs() } else { f64::NAN };
        serde_json::json!({
            "min": r(self.min), "median": r(self.median), "max": r(self.max),
            "spread": (spread * 1000.0).round() / 1000.0,
        })
    }

    /// Prints `name: median (min–max, ±x% spread) unit over N rounds` to stderr.
    pub fn print(&self, name: &str, unit: &str, rounds: usize) {
        let spread = if self.median != 0.0 { (self.max - self.min) / self.median.abs() * 100.0 } else { f64::NAN };
        eprintln!(
            "{name}: median {} {unit} (min {}, max {}; spread {spread:.1}% of the median) over {rounds} rounds",
            fmt3(self.median),
            fmt3(self.min),
            fmt3(self.max)
        );
    }
}

/// Three significant figures at least, without exponent noise for big rates.
fn fmt3(x: f64) -> String {
    if x.abs() >= 1e5 {
        format!("{:.3} M", x / 1e6)
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// The CPU model (`/proc/cpuinfo`'s first `model name`), printed by every bench first: the
/// figures differ between CPU vendors (docs/performance.md, "AMD vs Intel").
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

/// `--rounds R` (default 5: the figures are medians of 5 runs).
pub(crate) fn rounds_flag(args: &[String]) -> Result<usize> {
    Ok(flag(args, "--rounds").map(|s| s.parse::<usize>()).transpose().context("--rounds")?.unwrap_or(5).max(1))
}

/// Minor page faults of this process so far (`/proc/self/stat` field 10): first touches of
/// fresh memory, which cost far more on some hosts than others.
pub(crate) fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(7)?.parse().ok()).unwrap_or(0)
}

pub(crate) fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

pub(crate) fn thread_cpu_s() -> f64 {
    let mut ts = libc_timespec::default();
    // SAFETY: clock_gettime fills the struct; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    unsafe { clock_gettime(3, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 / 1e9
}

#[repr(C)]
#[derive(Default)]
struct libc_timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clk: i32, ts: *mut libc_timespec) -> i32;
}

fn bench_trace(args: &[String]) -> Result<()> {
    let events: usize =
        flag(args, "--events").map(|s| s.parse()).transpose().context("--events")?.unwrap_or(10_000_000);
    let dir = PathBuf::from(flag(args, "--dir").unwrap_or_else(|| std::env::temp_dir().display().to_string()));
    std::fs::create_dir_all(&dir)?;
    let pipeline_path = dir.join("bench-pipeline.gptrace");
    let direct_path = dir.join("bench-direct.gptrace");

    eprintln!("generating {events} records of a training-step stream ...");
    let interner_for_gen = Interner::new();
    let records: Vec<Record> = TrainingStream::new(42, &interner_for_gen).take(events).collect();
    let names: Vec<String> =
        (1..interner_for_gen.len() as u32).filter_map(|i| interner_for_gen.get(i).map(|s| s.to_string())).collect();
    let mut written_counts = vec![0u64; Kind::ALL.len()];
    for r in &records {
        written_counts[Kind::ALL.iter().position(|k| *k == r.kind()).unwrap_or(0)] += 1;
    }
    let info = TraceInfo { command: vec!["tools/bench".into(), "trace".into()], ..Default::default() };

    let rounds = rounds_flag(args)?;
    // Every figure is taken `rounds` times (median and spread reported): one run on a shared
    // VM moves by ±20 %.
    let (mut pipeline_rates, mut writer_rates, mut plain_rates, mut read_rates) = (vec![], vec![], vec![], vec![]);
    let (mut summary, mut dropped, mut direct_bytes, mut plain_bytes) = (None, 0u64, 0u64, 0u64);
    let (mut pipeline_s, mut direct_s, mut direct_cpu_s, mut plain_cpu_s, mut read_s, mut read_cpu_s) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let n = events as f64;
    for round in 1..=rounds {
        // 1. Through the real pipeline: a producer thread (this one) and the writer thread.
        let _ = std::fs::remove_file(&pipeline_path);
        let faults0 = minor_faults();
        let t = Instant::now();
        // Queues deep enough for the whole run: the producer here pushes far faster than any
        // collector, and the figure wanted is the writer's sustained rate, not a drop count.
        let options = PipelineOptions { queue_batches: events / 1024 + 2, ..PipelineOptions::default() };
        let pipeline = Pipeline::create(&pipeline_path, true, &info, options)?;
        for n in &names {
            pipeline.interner().intern(n);
        }
        let mut producer = pipeline.producer(Source::Synthetic);
        for r in &records {
            producer.push(*r);
        }
        drop(producer);
        let pushed_s = t.elapsed().as_secs_f64();
        let (s, stats) = pipeline.finish()?;
        pipeline_s = t.elapsed().as_secs_f64();
        let faults = minor_faults() - faults0;
        eprintln!(
            "round {round}: pipeline pushes done at {pushed_s:.3} s, finished (drained, indexed, synced) at {pipeline_s:.3} s; {faults} minor page faults ({:.2} per 1000 records)",
            faults as f64 * 1000.0 / n
        );
        summary = Some(s);
        dropped = stats.drops.iter().map(|d| d.2).sum();

        // 2. The writer alone on this thread: encode + compress + write, one core.
        let _ = std::fs::remove_file(&direct_path);
        let interner = std::sync::Arc::new(Interner::new());
        for n in &names {
            interner.intern(n);
        }
        let cpu0 = thread_cpu_s();
        let t = Instant::now();
        let mut writer = TraceWriter::create(&direct_path, true, &info, interner, WriterOptions::default())?;
        writer.append_all(records.iter().copied())?;
        writer.finish()?;
        direct_s = t.elapsed().as_secs_f64();
        direct_cpu_s = thread_cpu_s() - cpu0;
        direct_bytes = std::fs::metadata(&direct_path)?.len();
        // 2b. The same without chunk digests (format 1.0's content): what the digests cost.
        let interner = std::sync::Arc::new(Interner::new());
        for n in &names {
            interner.intern(n);
        }
        let cpu0 = thread_cpu_s();
        let plain = WriterOptions { digest: false, ..WriterOptions::default() };
        let mut writer = TraceWriter::create(&direct_path, true, &info, interner, plain)?;
        writer.append_all(records.iter().copied())?;
        writer.finish()?;
        plain_cpu_s = thread_cpu_s() - cpu0;
        plain_bytes = std::fs::metadata(&direct_path)?.len();

        // 3. Read back: decode every chunk.
        let cpu0 = thread_cpu_s();
        let t = Instant::now();
        let reader = TraceReader::open(&pipeline_path)?;
        let mut read_counts = vec![0u64; Kind::ALL.len()];
        reader.for_each_chunk(|c: &ghostprof::trace::Chunk| {
            for (i, k) in Kind::ALL.iter().enumerate() {
                read_counts[i] += c.records.count(*k) as u64;
            }
        })?;
        read_s = t.elapsed().as_secs_f64();
        read_cpu_s = thread_cpu_s() - cpu0;
        if read_counts != written_counts {
            bail!("read back {read_counts:?}, wrote {written_counts:?}");
        }
        pipeline_rates.push(n / pipeline_s);
        writer_rates.push(n / direct_cpu_s.max(1e-9));
        plain_rates.push(n / plain_cpu_s.max(1e-9));
        read_rates.push(n / read_s);
        eprintln!(
            "round {round}: pipeline {:.2} M/s, writer alone {:.2} M/s CPU, without digests {:.2} M/s CPU, reader {:.2} M/s",
            n / pipeline_s / 1e6,
            n / direct_cpu_s.max(1e-9) / 1e6,
            n / plain_cpu_s.max(1e-9) / 1e6,
            n / read_s / 1e6
        );
    }
    let summary = summary.context("no round ran")?;
    let (pipeline_spread, writer_spread, plain_spread, read_spread) =
        (Spread::of(&pipeline_rates), Spread::of(&writer_rates), Spread::of(&plain_rates), Spread::of(&read_rates));
    let reader = TraceReader::open(&pipeline_path)?;
    // What `ghostprof info --json` reports for this file must be exactly what was written.
    let info_summary = ghostprof::trace::summary::summarize(&reader)?;
    let info_counts_match = Kind::ALL
        .iter()
        .zip(&written_counts)
        .all(|(k, n)| info_summary.records.get(k.key()).copied().unwrap_or(0) == *n)
        && info_summary.total_records == events as u64;
    if !info_counts_match {
        bail!("info reports {:?}, wrote {written_counts:?}", info_summary.records);
    }

    // 4. Baseline: the same records as raw rows (kind tag + struct bytes), zstd level 1, in
    // chunks of the same record count.
    let t = Instant::now();
    let mut baseline_bytes = 0u64;
    let mut raw = Vec::with_capacity(16 << 20);
    for chunk in records.chunks(WriterOptions::default().chunk_records) {
        raw.clear();
        for r in chunk {
            raw.extend_from_slice(&(r.kind() as u16).to_le_bytes());
            raw.extend_from_slice(r.as_bytes());
        }
        baseline_bytes += zstd::bulk::compress(&raw, 1)?.len() as u64;
    }
    let baseline_s = t.elapsed().as_secs_f64();

    let file_bytes = std::fs::metadata(&pipeline_path)?.len();
    let bytes_per_event = file_bytes as f64 / n;
    let zstd1 = baseline_bytes as f64 / n;
    let mut counts = serde_json::Map::new();
    for (k, c) in Kind::ALL.iter().zip(&written_counts) {
        if *c > 0 {
            counts.insert(k.key().into(), (*c).into());
        }
    }
    eprintln!("last round: pipeline {pipeline_s:.3} s, {dropped} dropped; writer alone {direct_s:.3} s wall, {direct_cpu_s:.3} s CPU; without digests {plain_cpu_s:.3} s CPU; reader {read_s:.3} s wall, {read_cpu_s:.3} s CPU");
    pipeline_spread.print("pipeline write (events/s)", "", rounds);
    writer_spread.print("writer alone, one core (events/s CPU)", "", rounds);
    plain_spread.print("writer without digests (events/s CPU)", "", rounds);
    read_spread.print("reader (events/s)", "", rounds);
    eprintln!(
        "digests cost {:+.1}% CPU (medians), {:+.1}% bytes",
        (plain_spread.median / writer_spread.median - 1.0) * 100.0,
        (direct_bytes as f64 / plain_bytes.max(1) as f64 - 1.0) * 100.0
    );
    eprintln!(
        "size: {bytes_per_event:.2} B/event vs zstd -1 raw rows {zstd1:.2} B/event ({:.2}x smaller); baseline took {baseline_s:.3} s",
        zstd1 / bytes_per_event
    );
    let json = serde_json::json!({
        "bench": "trace",
        "events": events,
        "chunks": summary.chunks,
        "file_bytes": file_bytes,
        "records": counts,
        "dropped": dropped,
        "info_counts_match": info_counts_match,
        "rounds": rounds,
        "write_events_per_s": pipeline_spread.median.round(),
        "write_events_per_s_spread": pipeline_spread.json(0),
        "writer_core_events_per_s": writer_spread.median.round(),
        "writer_core_events_per_s_spread": writer_spread.json(0),
        "writer_core_events_per_s_without_digests": plain_spread.median.round(),
        "digest_bytes_share": ((direct_bytes as f64 / plain_bytes.max(1) as f64 - 1.0) * 10000.0).round() / 10000.0,
        "read_events_per_s": read_spread.median.round(),
        "read_events_per_s_spread": read_spread.json(0),
        "bytes_per_event": (bytes_per_event * 1000.0).round() / 1000.0,
        "zstd1_raw_bytes_per_event": (zstd1 * 1000.0).round() / 1000.0,
        "size_ratio_vs_zstd1": (zstd1 / bytes_per_event * 100.0).round() / 100.0,
        "trace_file": pipeline_path.display().to_string(),
        "cpu": cpu_model(),
    });
    println!("{json}");
    let _ = std::fs::remove_file(&direct_path);
    Ok(())
}

/// `read FILE`: decode every chunk of an existing trace (for profiling the reader alone).
fn bench_read(args: &[String]) -> Result<()> {
    let path = PathBuf::from(args.first().context("usage: bench read FILE")?);
    let mut s = f64::MAX;
    let mut n = 0u64;
    for _ in 0..5 {
        let t = Instant::now();
        let reader = TraceReader::open(&path)?;
        n = 0;
        reader.for_each_chunk(|c: &ghostprof::trace::Chunk| n += c.records.len() as u64)?;
        s = s.min(t.elapsed().as_secs_f64());
    }
    eprintln!("read {n} records in {s:.3} s");
    println!("{}", serde_json::json!({"bench": "read", "events": n, "read_events_per_s": (n as f64 / s).round()}));
    Ok(())
}
