//! `report --jobs N`: files analyzed side by side and chunks decoded ahead of the sweep give the
//! report of one thread, byte for byte — many chunks, several files, a damaged chunk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ghostprof::analyze::{analyze_files, DetailOptions, ReportOptions};
use ghostprof::report::render_json;
use ghostprof::trace::synth::TrainingStream;
use ghostprof::trace::{Interner, TraceInfo, TraceWriter, WriterOptions};

use crate::util::*;

/// A synthetic training trace of `events` records in chunks of `chunk_records`.
fn synthetic(path: &std::path::Path, seed: u64, events: usize, chunk_records: usize) {
    let interner = Arc::new(Interner::new());
    let stream = TrainingStream::new(seed, &interner).with_collective_kernels(&interner).take(events);
    let info = TraceInfo { command: vec!["test".into()], ..Default::default() };
    let options = WriterOptions { chunk_records, ..Default::default() };
    let mut w = TraceWriter::create(path, false, &info, interner, options).unwrap();
    w.append_all(stream).unwrap();
    w.finish().unwrap();
}

/// [`synthetic`] with PM sampling: each tensor-activity sample (random, 0–40 %) also gets its
/// 1 ms interval, so kernels get fractional useful rates (the PM FLOP source).
fn synthetic_pm(path: &std::path::Path, seed: u64, events: usize, chunk_records: usize) {
    use ghostprof::trace::{Metric, Record};
    let interner = Arc::new(Interner::new());
    let stream = TrainingStream::new(seed, &interner).with_collective_kernels(&interner).take(events);
    let records = stream.flat_map(|r| {
        let interval = match r {
            Record::DeviceSample(mut s) if s.metric == Metric::TensorActive as u32 => {
                s.metric = Metric::SampleIntervalNs as u32;
                s.value = 1_000_000.0;
                Some(Record::DeviceSample(s))
            }
            _ => None,
        };
        std::iter::once(r).chain(interval)
    });
    let info = TraceInfo { command: vec!["test".into()], ..Default::default() };
    let options = WriterOptions { chunk_records, ..Default::default() };
    let mut w = TraceWriter::create(path, false, &info, interner, options).unwrap();
    w.append_all(records).unwrap();
    w.finish().unwrap();
}

fn report_json(files: &[PathBuf], jobs: usize, detail: DetailOptions) -> String {
    let opts = ReportOptions { detail, jobs, ..Default::default() };
    serde_json::to_string_pretty(&render_json(&analyze_files(files, &opts).unwrap())).unwrap()
}

#[test]
fn report_is_byte_identical_with_any_number_of_jobs() {
    let dir = tmpdir();
    let (a, b) = (dir.path().join("a.gptrace"), dir.path().join("b.gptrace"));
    synthetic(&a, 1, 120_000, 1_500);
    synthetic(&b, 2, 60_000, 4_000);
    // a damaged chunk in a third file: skipped and named alike
    let c = dir.path().join("c.gptrace");
    synthetic(&c, 3, 40_000, 2_000);
    let mut bytes = std::fs::read(&c).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&c, bytes).unwrap();
    for (files, detail) in [
        (vec![a.clone()], DetailOptions::default()),
        (vec![a.clone()], DetailOptions { bin_ns: Some(1_000_000), ..Default::default() }),
        (vec![a.clone(), b.clone(), c.clone()], DetailOptions::default()),
    ] {
        let one = report_json(&files, 1, detail.clone());
        assert!(one.contains("\"categories_ns\""), "a report with devices");
        for jobs in [2, 3, 8] {
            assert!(
                one == report_json(&files, jobs, detail.clone()),
                "--jobs {jobs} differs from --jobs 1 on {files:?}"
            );
        }
    }
    let damaged = report_json(std::slice::from_ref(&c), 1, DetailOptions::default());
    assert!(damaged.contains("\"damaged_chunks\": [\n    {"), "the flipped byte damaged a chunk");
}

/// The sweep of `path` in spans starting at `starts` (chunk indices), and in one pass; both
/// as text (every number of every device, host figures, records left out).
fn spans_and_one_pass(path: &std::path::Path, starts: &[usize], detail: &DetailOptions) -> (String, String) {
    use ghostprof::analyze::stream::{summarize, sweep_file_in_spans, sweep_file_with_host, StreamOptions};
    let reader = ghostprof::trace::TraceReader::open(path).unwrap();
    let mut opts = StreamOptions { detail: detail.clone(), ..StreamOptions::default() };
    let sk = summarize(&reader, &opts).unwrap();
    opts.account.windows = sk.windows.clone();
    let (late, waits) = (Default::default(), Default::default());
    let one = sweep_file_with_host(&reader, &sk, &opts, &late, &waits).unwrap();
    opts.span_starts = Some(starts.to_vec());
    let spans = sweep_file_in_spans(&reader, &sk, &opts, &late, &waits)
        .unwrap()
        .unwrap_or_else(|| panic!("{path:?} at {starts:?}: swept in one pass, not in spans"));
    (format!("{spans:?}"), format!("{one:?}"))
}

/// A hand-made job whose records cross the chunks at awkward places: a long kernel and a
/// collective running across many chunk boundaries, steps spanning them, an idle gap (with a
/// host stall) spanning several chunks, short kernels around them. Chunks of 3 records.
fn awkward(path: &std::path::Path) {
    awkward_with(path, false)
}

/// [`awkward`]; `pm`: with PM samples (tensor activity every 10 µs), so that the kernels'
/// useful fractions are not whole (the sums' fractional part is what the cuts must keep).
fn awkward_with(path: &std::path::Path, pm: bool) {
    use ghostprof::trace::{HostStall, KernelExec, KernelLaunch, NcclColl, NcclPhase, Record, StallReason};
    use ghostprof::trace::{StepMarker, StepSource};
    const PID: u32 = 7;
    let kernel = |s: u64, e: u64, name_id: u32| -> Record {
        KernelExec { start_ns: s, end_ns: e, name_id, pid: PID, device: 0, ..Default::default() }.into()
    };
    let step = |i: u64, s: u64, e: u64| -> Record {
        StepMarker { start_ns: s, end_ns: e, step: i, pid: PID, name_id: 4, source: StepSource::Nvtx as u32, device: 0 }
            .into()
    };
    let mut v: Vec<Record> = vec![
        KernelLaunch { time_ns: 1_000, pid: PID, tid: PID, ..Default::default() }.into(),
        step(0, 1_000, 60_000),
        // runs across the first ten chunk boundaries
        kernel(1_000, 50_000, 1),
    ];
    for i in 0..12u64 {
        let s = 2_000 + i * 3_000;
        v.push(kernel(s, s + 1_500, 2));
        v.push(KernelLaunch { time_ns: s, pid: PID, tid: PID, ..Default::default() }.into());
    }
    // a collective across boundaries, its host call
    v.push(kernel(40_000, 58_000, 3));
    v.push(
        NcclColl {
            start_ns: 39_000,
            end_ns: 58_500,
            comm: 1,
            seq: 0,
            pid: PID,
            tid: PID,
            nranks: 1,
            phase: NcclPhase::Host as u32,
            device: u32::MAX,
            ..Default::default()
        }
        .into(),
    );
    v.push(step(1, 60_000, 200_000));
    // idle from 60,000 to 150,000 (a stall inside it), across several chunks of launches
    v.push(
        HostStall {
            start_ns: 70_000,
            end_ns: 110_000,
            pid: PID,
            tid: PID,
            reason: StallReason::Futex as u32,
            syscall: 202,
        }
        .into(),
    );
    for i in 0..10u64 {
        v.push(KernelLaunch { time_ns: 61_000 + i * 8_000, pid: PID, tid: PID, ..Default::default() }.into());
    }
    for i in 0..6u64 {
        let s = 150_000 + i * 5_000;
        v.push(kernel(s, s + 4_000, 2 + (i % 2) as u32));
    }
    if pm {
        use ghostprof::trace::{DeviceSample, Metric};
        let sample = |t: u64, metric: Metric, value: f64| -> Record {
            DeviceSample { time_ns: t, value, device: 0, metric: metric as u32, pid: PID, reserved: 0 }.into()
        };
        // tensor activity as if big_gemm were 60 % useful and small_kernel 35 %
        let fraction = |name: u32| match name {
            1 => 0.6,
            2 => 0.35,
            _ => 0.0,
        };
        let kernels: Vec<(u64, u64, u32)> = v
            .iter()
            .filter_map(|r| match r {
                Record::KernelExec(k) => Some((k.start_ns, k.end_ns, k.name_id)),
                _ => None,
            })
            .collect();
        for i in 0..20u64 {
            let t = i * 10_000;
            let active: f64 = kernels
                .iter()
                .map(|&(s, e, name)| e.min(t + 10_000).saturating_sub(s.max(t)) as f64 * fraction(name))
                .sum();
            v.push(sample(t, Metric::SampleIntervalNs, 10_000.0));
            v.push(sample(t, Metric::TensorActive, active / 10_000.0));
        }
        v.sort_by_key(|r| r.time_ns());
    }
    write_trace(path, &v, &["big_gemm", "small_kernel", "ncclDevKernel_AllReduce_Sum_bf16", "step"], 3);
}

#[test]
fn a_sweep_in_spans_is_the_one_pass_sweep_wherever_the_file_is_cut() {
    let dir = tmpdir();
    let path = dir.path().join("awkward.gptrace");
    awkward(&path);
    let chunks = ghostprof::trace::TraceReader::open(&path).unwrap().chunks().len();
    assert!(chunks >= 15, "small chunks: {chunks}");
    let bins = DetailOptions { bin_ns: Some(7_000), ..Default::default() };
    let mut cuts: Vec<Vec<usize>> = (1..chunks).map(|c| vec![0, c]).collect();
    cuts.push((0..chunks).collect()); // every chunk its own span
    cuts.push(vec![0, 2, 5, 11]);
    let mut seen = 0;
    for detail in [DetailOptions::default(), bins] {
        for starts in &cuts {
            let (spans, one) = spans_and_one_pass(&path, starts, &detail);
            assert_eq!(spans, one, "spans at {starts:?}");
            seen += 1;
        }
    }
    assert_eq!(seen, 2 * (chunks + 1));
    // The numbers the cuts had to keep: the long kernel counted once with all its time; the
    // gap from 60,000 (the collective's end is 58,000; the step's start 60,000 is a cut) to
    // 150,000, host-stalled 40,000 ns of it (futex); every ns of the window in one category.
    let report = analyze_files(std::slice::from_ref(&path), &ReportOptions { jobs: 2, ..Default::default() }).unwrap();
    let d = &report[0].details[0];
    let big = d.top_kernels.iter().find(|k| k.name_id == 1).unwrap();
    assert_eq!((big.count, big.total_ns), (1, 49_000));
    let small = d.top_kernels.iter().find(|k| k.name_id == 2).unwrap();
    assert_eq!((small.count, small.total_ns), (12 + 3, 12 * 1_500 + 3 * 4_000));
    let gap = &d.top_idle_gaps[0];
    assert_eq!((gap.start_ns, gap.end_ns), (58_000, 150_000), "{:?}", d.top_idle_gaps);
    let a = &report[0].accounts[0];
    assert_eq!(a.categories.ns.iter().sum::<u64>(), a.window_end_ns - a.window_start_ns);
}

/// The one-thread analysis of `path` takes its FLOPs from PM sampling and splits compute time
/// between useful and inefficient (the fractional case the spans must keep exact).
fn assert_fractional_pm_split(path: &Path) {
    let report =
        analyze_files(std::slice::from_ref(&path.to_path_buf()), &ReportOptions { jobs: 1, ..Default::default() })
            .unwrap();
    let a = &report[0].accounts[0];
    assert_eq!(a.flop_source.name(), "pm_sampling");
    let useful = a.categories.ns[ghostprof::analyze::Category::ComputeUseful.index()];
    let inefficient = a.categories.ns[ghostprof::analyze::Category::ComputeInefficient.index()];
    assert!(useful > 0 && inefficient > 0, "a fractional split: useful {useful}, inefficient {inefficient}: {a:?}");
}

#[test]
fn a_sweep_in_spans_keeps_fractional_useful_time_exact_wherever_the_file_is_cut() {
    let dir = tmpdir();
    let path = dir.path().join("pm.gptrace");
    awkward_with(&path, true);
    let chunks = ghostprof::trace::TraceReader::open(&path).unwrap().chunks().len();
    assert!(chunks >= 25, "small chunks: {chunks}");
    assert_fractional_pm_split(&path);
    let mut cuts: Vec<Vec<usize>> = (1..chunks).map(|c| vec![0, c]).collect();
    cuts.push((0..chunks).collect());
    for detail in [DetailOptions::default(), DetailOptions { bin_ns: Some(3_000), ..Default::default() }] {
        for starts in &cuts {
            let (spans, one) = spans_and_one_pass(&path, starts, &detail);
            assert_eq!(spans, one, "spans at {starts:?}");
        }
    }
}

/// `path` swept in 2, 3 and 8 spans of equal chunk counts, with and without 1 ms bins, gives
/// the one-pass sweep's results exactly.
fn assert_even_spans_are_the_one_pass(path: &Path) {
    let n = ghostprof::trace::TraceReader::open(path).unwrap().chunks().len();
    for k in [2usize, 3, 8] {
        let starts: Vec<usize> = (0..k).map(|i| i * n / k).collect();
        for detail in [DetailOptions::default(), DetailOptions { bin_ns: Some(1_000_000), ..Default::default() }] {
            let (spans, one) = spans_and_one_pass(path, &starts, &detail);
            assert_eq!(spans, one, "{k} spans");
        }
    }
}

#[test]
fn a_pm_sampled_job_swept_in_spans_is_the_one_pass_sweep_to_the_last_bit() {
    let dir = tmpdir();
    let path = dir.path().join("pm.gptrace");
    synthetic_pm(&path, 4, 150_000, 1_000);
    assert_fractional_pm_split(&path);
    assert_even_spans_are_the_one_pass(&path);
    let one = report_json(std::slice::from_ref(&path), 1, DetailOptions::default());
    assert!(one == report_json(std::slice::from_ref(&path), 2, DetailOptions::default()));
}

#[test]
fn a_file_of_fewer_chunks_than_threads_is_cut_into_as_many_spans_as_chunks() {
    let dir = tmpdir();
    let (one, three) = (dir.path().join("one.gptrace"), dir.path().join("three.gptrace"));
    synthetic(&one, 5, 2_000, 4_000);
    synthetic(&three, 6, 9_000, 4_000);
    for (path, chunks) in [(&one, 1), (&three, 3)] {
        let n = ghostprof::trace::TraceReader::open(path).unwrap().chunks().len();
        assert_eq!(n, chunks);
        let files = vec![path.clone()];
        let base = report_json(&files, 1, DetailOptions::default());
        for jobs in [2, 8] {
            assert!(base == report_json(&files, jobs, DetailOptions::default()), "--jobs {jobs}, {chunks} chunks");
        }
        if chunks > 1 {
            let (spans, one_pass) = spans_and_one_pass(path, &[0, 1, 2], &DetailOptions::default());
            assert_eq!(spans, one_pass);
        }
    }
}

#[test]
fn a_synthetic_job_swept_in_two_three_and_eight_spans_is_the_one_pass_sweep() {
    let dir = tmpdir();
    let path = dir.path().join("s.gptrace");
    synthetic(&path, 9, 150_000, 1_000);
    assert_even_spans_are_the_one_pass(&path);
}

#[test]
fn a_file_whose_every_chunk_reaches_its_end_is_swept_in_one_pass() {
    use ghostprof::analyze::stream::{summarize, sweep_file_in_spans, StreamOptions};
    use ghostprof::trace::{FileIo, Record};
    // Every 40 records, a read of a thread that launches nothing, from then to the end: each
    // chunk's latest record is the end, so a later span would read every earlier chunk again.
    let (records, names) = training_records(20_000);
    let end = records.iter().map(|r| r.time_ns()).max().unwrap() + 1;
    let mut v: Vec<Record> = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        if i % 40 == 0 {
            let t = r.time_ns();
            v.push(FileIo { start_ns: t, end_ns: end, pid: 1, tid: 999_999, fd: 3, ..Default::default() }.into());
        }
        v.push(r);
    }
    let dir = tmpdir();
    let path = dir.path().join("long.gptrace");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_trace(&path, &v, &names, 500);
    let reader = ghostprof::trace::TraceReader::open(&path).unwrap();
    assert!(reader.chunks().len() >= 30);
    let mut opts = StreamOptions { jobs: 4, ..StreamOptions::default() };
    let sk = summarize(&reader, &opts).unwrap();
    opts.account.windows = sk.windows.clone();
    let (late, waits) = (Default::default(), Default::default());
    assert!(sweep_file_in_spans(&reader, &sk, &opts, &late, &waits).unwrap().is_none(), "one pass");
    let one = report_json(std::slice::from_ref(&path), 1, DetailOptions::default());
    assert!(one == report_json(std::slice::from_ref(&path), 4, DetailOptions::default()));
    // the same job without those reads is split
    let plain = dir.path().join("plain.gptrace");
    let v: Vec<Record> = v.into_iter().filter(|r| !matches!(r, Record::FileIo(f) if f.tid == 999_999)).collect();
    write_trace(&plain, &v, &names, 500);
    let reader = ghostprof::trace::TraceReader::open(&plain).unwrap();
    let mut opts = StreamOptions { jobs: 4, ..StreamOptions::default() };
    let sk = summarize(&reader, &opts).unwrap();
    opts.account.windows = sk.windows.clone();
    assert!(sweep_file_in_spans(&reader, &sk, &opts, &late, &waits).unwrap().is_some(), "in spans");
}

/// The passes that decode chunks ahead of one consumer (the consumer decoding too while its
/// next chunk is not ready; `analyze::ahead`) give the report of one thread: a PM-sampled job
/// (its FLOP pass, and the one-pass sweep: fractional rates), and a job without NVTX markers
/// (steps by periodicity: the anchor pass and the steps' compute pass), with a digest per chunk
/// (the summary's heads read ahead) and without.
#[test]
fn passes_decoded_ahead_give_the_report_of_one_thread() {
    use ghostprof::trace::Record;
    let dir = tmpdir();
    let pm = dir.path().join("pm.gptrace");
    synthetic_pm(&pm, 7, 150_000, 1_000);
    for digest in [true, false] {
        let plain = dir.path().join(format!("plain-{digest}.gptrace"));
        let interner = Arc::new(Interner::new());
        let stream = TrainingStream::new(8, &interner).filter(|r| !matches!(r, Record::StepMarker(_))).take(150_000);
        let info = TraceInfo { command: vec!["test".into()], ..Default::default() };
        let options = WriterOptions { chunk_records: 1_000, digest, ..Default::default() };
        let mut w = TraceWriter::create(&plain, false, &info, interner, options).unwrap();
        w.append_all(stream).unwrap();
        w.finish().unwrap();
        for path in [&pm, &plain] {
            let files = vec![path.clone()];
            let detail = DetailOptions { bin_ns: Some(1_000_000), ..Default::default() };
            let one = report_json(&files, 1, detail.clone());
            let v: serde_json::Value = serde_json::from_str(&one).unwrap();
            let source = if path == &pm { "flop_source" } else { "step_source" };
            let want = if path == &pm { "pm_sampling" } else { "periodicity" };
            assert_eq!(v["devices"][0][source], want, "{}", path.display());
            assert!(v["devices"][0]["steps"].as_array().is_some_and(|s| s.len() > 10), "steps found");
            for jobs in [2, 3, 8] {
                assert!(
                    one == report_json(&files, jobs, detail.clone()),
                    "--jobs {jobs} differs on {}",
                    path.display()
                );
            }
        }
    }
}
