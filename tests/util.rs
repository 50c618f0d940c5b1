//! Helpers shared by the test modules.

use std::path::Path;
use std::sync::Arc;

use ghostprof::trace::synth::Rng;
use ghostprof::trace::*;

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// Writes `records` to `path` with chunks of `chunk_records`, interning `names` first.
pub fn write_trace(path: &Path, records: &[Record], names: &[&str], chunk_records: usize) -> WriteSummary {
    let interner = Arc::new(Interner::new());
    for n in names {
        interner.intern(n);
    }
    let options = WriterOptions { chunk_records, ..Default::default() };
    let info = TraceInfo { command: vec!["test".into()], ..Default::default() };
    let mut w = TraceWriter::create(path, false, &info, interner, options).expect("creating the trace");
    w.append_all(records.iter().copied()).expect("appending");
    w.finish().expect("finishing")
}

/// `n` records from the synthetic training stream (and the names it interned).
pub fn training_records(n: usize) -> (Vec<Record>, Vec<String>) {
    let interner = Interner::new();
    let records: Vec<Record> = synth::TrainingStream::new(11, &interner).take(n).collect();
    let names = (1..interner.len() as u32).filter_map(|i| interner.get(i)).map(|s| s.to_string()).collect();
    (records, names)
}

/// A record of `kind` whose bytes are all random (every bit pattern is a valid record).
pub fn random_record(kind: Kind, rng: &mut Rng) -> Record {
    let mut batch = RecordBatch::default();
    let raw: Vec<u8> = (0..kind.record_size()).map(|_| rng.next_u64() as u8).collect();
    batch.push_raw(kind, &raw).expect("a record's worth of bytes");
    let first = batch.iter().next().expect("one record");
    first
}

/// The kind and bytes of a record (compares NaN payloads exactly, unlike `==`).
pub fn record_bytes(r: &Record) -> Vec<u8> {
    let mut v = vec![r.kind() as u8];
    v.extend_from_slice(r.as_bytes());
    v
}

/// Records of a batch as comparable byte strings, kind by kind in write order.
pub fn batch_bytes(b: &RecordBatch) -> Vec<Vec<u8>> {
    b.iter().map(|r| record_bytes(&r)).collect()
}

/// `records` grouped by kind (the order a batch iterates in).
pub fn grouped_bytes(records: &[Record]) -> Vec<Vec<u8>> {
    let mut b = RecordBatch::default();
    for r in records {
        b.push(*r);
    }
    batch_bytes(&b)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Serializes the tests that run whole simulated jobs under the collectors: run in parallel on
/// a 2-core machine they preempt each other and the timing they measure.
pub fn heavy_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills `child` and every process under it, and reaps `child`. gpusim-train's launcher forks
/// its ranks: killing the launcher alone left them running (two 30,000-step ranks ran on for
/// half an hour beside the next tests, which then failed on timing).
pub fn kill_tree(child: &mut std::process::Child) {
    let tree = ghostprof::record::attach::process_tree(child.id());
    for pid in tree.iter().filter(|&&p| p != child.id()) {
        // SAFETY: kill has no memory preconditions; a pid that already exited is ESRCH.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}
