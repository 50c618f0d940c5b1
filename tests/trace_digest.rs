//! Chunk digests (profiler/trace/digest.rs): the summary pass reads a chunk's digest instead of
//! the whole chunk. The report must be the same, to the byte, with and without digests, on
//! every fixture and option; a digest round-trips; a damaged one is an error, never a panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ghostprof::analyze::stream::{summarize, StreamOptions};
use ghostprof::analyze::DetailOptions;
use ghostprof::analyze::{analyze_files, ReportOptions};
use ghostprof::report::render_json;
use ghostprof::trace::digest::{ChunkDigest, DIGEST_VERSION};
use ghostprof::trace::synth::Rng;
use ghostprof::trace::*;

use crate::util::{tmpdir, training_records};

fn write(path: &Path, records: &[Record], names: &[String], chunk_records: usize, digest: bool) {
    let interner = Arc::new(Interner::new());
    for n in names {
        interner.intern(n);
    }
    let options = WriterOptions { chunk_records, digest, ..Default::default() };
    let info = TraceInfo { command: vec!["test".into()], ..Default::default() };
    let mut w = TraceWriter::create(path, false, &info, interner, options).unwrap();
    w.append_all(records.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// The synthetic training stream with PM sampling (an interval sample beside each tensor
/// activity sample: the PM FLOP source), one kernel written 6 s late (past the 5 s reorder
/// window), and a 3 s futex block of the launching thread written when it ends (longer than half
/// the window: the summary keeps it).
fn fixture(n: usize) -> (Vec<Record>, Vec<String>) {
    let (mut records, mut names) = training_records(n);
    // The collectives' kernels (the stream has their NCCL device records only).
    names.push("ncclDevKernel_AllReduce_Sum_bf16".into());
    let nccl_name = names.len() as u32;
    let mut extra = Vec::new();
    for r in &records {
        if let Record::NcclColl(c) = r {
            if c.phase == NcclPhase::Device as u32 {
                let k = KernelExec {
                    start_ns: c.start_ns,
                    end_ns: c.end_ns,
                    pid: c.pid,
                    device: c.device,
                    name_id: nccl_name,
                    ..Default::default()
                };
                extra.push(Record::KernelExec(k));
            }
        }
        if let Record::DeviceSample(s) = r {
            if s.metric == Metric::TensorActive as u32 {
                let mut i = *s;
                (i.metric, i.value) = (Metric::SampleIntervalNs as u32, 1e6);
                extra.push(Record::DeviceSample(i));
            }
        }
    }
    records.extend(extra);
    records.sort_by_key(|r| r.time_ns());
    let (first, last) = (records[0].time_ns(), records[records.len() - 1].time_ns());
    assert!(last - first > 14_000_000_000, "the fixture spans more than 14 s");
    // A kernel starting at +1 s, written after everything up to +7 s.
    let at = records.iter().position(|r| matches!(r, Record::KernelExec(k) if k.start_ns > first + 1_000_000_000));
    let late = records.remove(at.unwrap());
    let to = records.iter().position(|r| r.time_ns() > late.time_ns() + 6_000_000_000).unwrap();
    records.insert(to, late);
    let (pid, tid) = records
        .iter()
        .find_map(|r| match r {
            Record::HostStall(s) => Some((s.pid, s.tid)),
            _ => None,
        })
        .unwrap();
    let block = HostStall {
        start_ns: first + 9_000_000_000,
        end_ns: first + 12_000_000_000,
        pid,
        tid,
        reason: StallReason::Futex as u32,
        syscall: 202,
    };
    let to = records.iter().position(|r| r.time_ns() > block.end_ns).unwrap();
    records.insert(to, block.into());
    // The session's note, written at its end.
    names.push("PM sampling is off: CUPTI held by another subscriber".into());
    let text_id = names.len() as u32;
    records.push(SessionNote { time_ns: last, pid: 0, text_id }.into());
    (records, names)
}

fn report_text(path: &Path, detail: DetailOptions) -> String {
    let r = analyze_files(&[path.to_path_buf()], &ReportOptions { detail, ..Default::default() }).unwrap();
    render_json(&r).to_string().replace(&path.display().to_string(), "FILE")
}

fn pair(dir: &Path, name: &str, records: &[Record], names: &[String], chunk: usize) -> (PathBuf, PathBuf) {
    let (with, without) = (dir.join(format!("{name}-digest.gptrace")), dir.join(format!("{name}-plain.gptrace")));
    write(&with, records, names, chunk, true);
    write(&without, records, names, chunk, false);
    (with, without)
}

#[test]
fn reports_are_identical_with_and_without_digests() {
    let dir = tmpdir();
    let (records, names) = fixture(250_000);
    let (with, without) = pair(dir.path(), "train", &records, &names, 8192);
    let sk = |p: &Path| summarize(&TraceReader::open(p).unwrap(), &StreamOptions::default()).unwrap();
    let (a, b) = (sk(&with), sk(&without));
    let chunks = TraceReader::open(&with).unwrap().chunks().len() as u64;
    assert_eq!(b.chunks_from_digest, 0);
    // The first chunks feed the periodicity probe (50 000 compute kernels, about half of this
    // trace's) and one holds the late kernel: those are decoded whole; the others come from
    // their digests.
    assert!(a.chunks_from_digest >= chunks * 2 / 5, "{} of {chunks} chunks from digests", a.chunks_from_digest);
    assert!(a.chunks_from_digest < chunks);
    assert_eq!(a.records, b.records);
    assert_eq!(a.windows, b.windows);
    assert_eq!(a.small, b.small);
    let plain = report_text(&without, DetailOptions::default());
    let v: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(v["devices"][0]["flop_source"], "pm_sampling", "{}", &plain[..plain.len().min(400)]);
    assert_eq!(
        v["warnings"].as_array().map(|w| w.len()),
        Some(0),
        "the late kernel is swept in time: {}",
        v["warnings"]
    );
    assert_eq!(v["recording_notes"][0]["note"], "PM sampling is off: CUPTI held by another subscriber");
    assert_eq!(TraceReader::open(&with).unwrap().notes().unwrap(), vec![names[names.len() - 1].clone()]);
    for detail in [
        DetailOptions::default(),
        DetailOptions { bin_ns: Some(1_000_000), ..Default::default() },
        DetailOptions { step_regex: Some(regex::Regex::new("gemm").unwrap()), ..Default::default() },
        DetailOptions { detect_periodicity: false, ..Default::default() },
    ] {
        let what = format!("{detail:?}");
        assert_eq!(report_text(&with, detail.clone()), report_text(&without, detail), "{what}");
    }
}

#[test]
fn a_digest_round_trips() {
    let (records, names) = fixture(250_000);
    let mut batch = RecordBatch::default();
    for r in &records {
        batch.push(*r);
    }
    let strings: Vec<(u32, &str)> = names.iter().enumerate().map(|(i, s)| (i as u32 + 1, s.as_str())).collect();
    let d = ChunkDigest::build(&batch, &strings, &mut Default::default());
    assert_eq!(d.version, DIGEST_VERSION);
    // Collective kernels whole, the others as per-name totals.
    let comm = batch.kernels.iter().filter(|k| names[k.name_id as usize - 1].starts_with("nccl")).count();
    assert!(comm > 0);
    assert_eq!(d.records.kernels.len(), comm);
    let total: u64 = batch.kernels.iter().map(|k| k.end_ns - k.start_ns).sum::<u64>()
        - d.records.kernels.iter().map(|k| k.end_ns - k.start_ns).sum::<u64>();
    assert_eq!(d.name_times.iter().map(|n| n.ns).sum::<u64>(), total);
    assert_eq!(d.records.nccl.len(), batch.nccl.len());
    assert_eq!(d.records.stalls.len(), 1, "only the 3 s block");
    let mut out = Vec::new();
    d.encode(&mut out, &mut Vec::new());
    assert_eq!(ChunkDigest::decode(&out, 0, false).unwrap(), d);
    // Every cut and every byte flip of it is an error or a digest, never a panic.
    let mut rng = Rng::new(3);
    for cut in (0..out.len()).step_by(out.len() / 2000 + 1) {
        assert!(ChunkDigest::decode(&out[..cut], 0, false).is_err(), "cut at {cut}");
    }
    for _ in 0..3000 {
        let mut bad = out.clone();
        let i = rng.below(bad.len() as u64) as usize;
        bad[i] ^= 1 << rng.below(8);
        let _ = ChunkDigest::decode(&bad, 0, true);
    }
}

#[test]
fn a_damaged_chunk_head_is_skipped_and_named() {
    let dir = tmpdir();
    let (records, names) = training_records(100_000);
    let path = dir.path().join("t.gptrace");
    write(&path, &records, &names, 8192, true);
    let reader = TraceReader::open(&path).unwrap();
    let meta = reader.chunks()[3].clone();
    let clean = std::fs::read(&path).unwrap();
    let mut rng = Rng::new(5);
    let mut skipped = 0;
    // Flip bytes early in chunk 3's frame (its head: strings and digest).
    for _ in 0..200 {
        let mut bad = clean.clone();
        let i = meta.offset as usize + 20 + rng.below(meta.compressed_len.min(4096) - 20) as usize;
        bad[i] ^= 1 << rng.below(8);
        let p = dir.path().join("bad.gptrace");
        std::fs::write(&p, &bad).unwrap();
        // The report runs on the other chunks and names the damaged one.
        let report = analyze_files(&[p], &ReportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let damaged = &report[0].damaged_chunks;
        if !damaged.is_empty() {
            skipped += 1;
            assert_eq!(damaged.len(), 1, "{damaged:?}");
            assert_eq!((damaged[0].chunk, damaged[0].offset, damaged[0].records_lost), (3, meta.offset, 8192));
            let w = report[0].warnings.join("\n");
            assert!(w.contains(&format!("chunk 3 (byte {})", meta.offset)) && w.contains("8192 records lost"), "{w}");
            assert!(report[0].warnings.iter().all(|w| !w.contains('\n')), "one line each: {w}");
        }
    }
    assert!(skipped > 150, "{skipped} of 200 damaged files had their damaged chunk skipped");
}
