//! `report --jobs N`: files analyzed side by side and chunks decoded ahead of the sweep give the
//! report of one thread, byte for byte — many chunks, several files, a damaged chunk.

use std::path::PathBuf;
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
