//! What `ghostprof info` shows: a trace's header, time span, counts, drops and sizes, computed
//! from the index (or from a scan of a file that was cut short).

use serde::Serialize;
use std::collections::BTreeMap;

use super::error::TraceError;
use super::reader::{DamagedChunk, TraceReader};
use super::records::{DropCause, Kind, Source};

/// Records lost at one (source, cause).
#[derive(Debug, Clone, Serialize)]
pub struct DropEntry {
    /// The [`Source`] name.
    pub source: String,
    /// The [`DropCause`] name.
    pub cause: String,
    /// Records lost (cumulative).
    pub count: u64,
}

/// The facts about one trace file.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    /// The trace file's path.
    pub path: String,
    /// The file's format version, `major.minor`.
    pub format_version: String,
    /// The recording ghostprof's version, from the header.
    pub ghostprof_version: Option<String>,
    /// The recording host's name, from the header.
    pub hostname: Option<String>,
    /// The recorded command line, from the header.
    pub command: Vec<String>,
    /// the file has its index and seek table (recording ended cleanly)
    pub finalized: bool,
    /// earliest record start, CLOCK_MONOTONIC ns (0 when there are no records)
    pub start_ns: u64,
    /// latest record end
    pub end_ns: u64,
    /// `end_ns - start_ns`.
    pub duration_ns: u64,
    /// Chunks in the file.
    pub chunks: usize,
    /// kind → records
    pub records: BTreeMap<String, u64>,
    /// Records of every kind together.
    pub total_records: u64,
    /// source → records lost (all causes)
    pub drops: BTreeMap<String, u64>,
    /// Records lost per (source, cause).
    pub drops_detail: Vec<DropEntry>,
    /// records as fixed in-memory rows
    pub raw_bytes: u64,
    /// decompressed chunk bytes (columnar, delta-coded)
    pub decoded_bytes: u64,
    /// size of the file
    pub compressed_bytes: u64,
    /// File bytes per record.
    pub bytes_per_record: f64,
    /// What the reader found wrong with the file (a missing index, damage).
    pub warnings: Vec<String>,
    /// Bytes after the last whole chunk that were not read: a cut, or the zeros or junk a
    /// crash can leave (0 when none).
    pub skipped_bytes: u64,
    /// File offset of the first of them (null when none).
    pub skipped_from: Option<u64>,
    /// Chunks found damaged (and left out): those read to answer (drops, notes), or, after
    /// `info --verify`, all of them.
    pub damaged_chunks: Vec<DamagedChunk>,
    /// Whether every chunk was decompressed and decoded (`info --verify`).
    pub verified: bool,
    /// The recording session's notes stored in the trace (a collector off, CUPTI held, …).
    pub notes: Vec<String>,
}

/// The summary `ghostprof info` shows, from the reader's index (or scan).
pub fn summarize(reader: &TraceReader) -> Result<TraceSummary, TraceError> {
    let meta = &reader.header().meta;
    let counts = reader.counts();
    let mut records = BTreeMap::new();
    let mut raw_bytes = 0u64;
    for (k, n) in Kind::ALL.iter().zip(&counts) {
        records.insert(k.key().to_string(), *n);
        raw_bytes += n * k.record_size() as u64;
    }
    let total_records: u64 = counts.iter().sum();
    let with_records = || reader.chunks().iter().filter(|c| c.counts.iter().any(|n| *n > 0));
    let start_ns = with_records().map(|c| c.min_ts).min().unwrap_or(0);
    let end_ns = with_records().map(|c| c.max_ts).max().unwrap_or(0);
    let mut drops = BTreeMap::new();
    let mut drops_detail = Vec::new();
    for (s, c, n) in reader.drops()? {
        let source = Source::name_of(s);
        // Saturating: a trace is untrusted input and its counters may be anything.
        let e = drops.entry(source.clone()).or_insert(0u64);
        *e = e.saturating_add(n);
        drops_detail.push(DropEntry { source, cause: DropCause::name_of(c), count: n });
    }
    let compressed_bytes = reader.file_len();
    let notes = reader.notes()?;
    Ok(TraceSummary {
        path: reader.path().display().to_string(),
        format_version: format!("{}.{}", reader.header().major, reader.header().minor),
        ghostprof_version: meta.get("ghostprof_version").and_then(|v| v.as_str()).map(String::from),
        hostname: meta.get("hostname").and_then(|v| v.as_str()).map(String::from),
        command: meta
            .get("command")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default(),
        finalized: reader.is_finalized(),
        start_ns,
        end_ns,
        duration_ns: end_ns.saturating_sub(start_ns),
        chunks: reader.chunks().len(),
        records,
        total_records,
        drops,
        drops_detail,
        raw_bytes,
        decoded_bytes: reader.chunks().iter().map(|c| c.raw_len).sum(),
        compressed_bytes,
        bytes_per_record: if total_records > 0 { compressed_bytes as f64 / total_records as f64 } else { 0.0 },
        warnings: reader.warnings(),
        skipped_bytes: reader.skipped_bytes().map_or(0, |s| s.1),
        skipped_from: reader.skipped_bytes().map(|s| s.0),
        damaged_chunks: reader.damaged_chunks(),
        verified: false,
        notes,
    })
}
