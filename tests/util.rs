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
    fn fill<T: bytemuck::Pod + Default>(rng: &mut Rng) -> T {
        let mut v = T::default();
        for b in bytemuck::bytes_of_mut(&mut v) {
            *b = rng.next_u64() as u8;
        }
        v
    }
    match kind {
        Kind::KernelExec => Record::KernelExec(fill(rng)),
        Kind::MemOp => Record::MemOp(fill(rng)),
        Kind::ApiCall => Record::ApiCall(fill(rng)),
        Kind::NcclColl => Record::NcclColl(fill(rng)),
        Kind::HostStall => Record::HostStall(fill(rng)),
        Kind::DeviceSample => Record::DeviceSample(fill(rng)),
        Kind::StepMarker => Record::StepMarker(fill(rng)),
        Kind::ProcessInfo => Record::ProcessInfo(fill(rng)),
        Kind::ThreadInfo => Record::ThreadInfo(fill(rng)),
        Kind::LibraryInfo => Record::LibraryInfo(fill(rng)),
        Kind::ClockSync => Record::ClockSync(fill(rng)),
        Kind::Drops => Record::Drops(fill(rng)),
    }
}

/// The bytes of a record (compares NaN payloads exactly, unlike `==`).
pub fn record_bytes(r: &Record) -> Vec<u8> {
    use bytemuck::bytes_of;
    let b: &[u8] = match r {
        Record::KernelExec(x) => bytes_of(x),
        Record::MemOp(x) => bytes_of(x),
        Record::ApiCall(x) => bytes_of(x),
        Record::NcclColl(x) => bytes_of(x),
        Record::HostStall(x) => bytes_of(x),
        Record::DeviceSample(x) => bytes_of(x),
        Record::StepMarker(x) => bytes_of(x),
        Record::ProcessInfo(x) => bytes_of(x),
        Record::ThreadInfo(x) => bytes_of(x),
        Record::LibraryInfo(x) => bytes_of(x),
        Record::ClockSync(x) => bytes_of(x),
        Record::Drops(x) => bytes_of(x),
    };
    let mut v = vec![r.kind() as u8];
    v.extend_from_slice(b);
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
