//! The on-disk layout (spec: docs/trace-format.md). A trace is a zstd *seekable* file:
//!
//! ```text
//! [header frame][chunk frame]...[chunk frame][index frame][seek-table skippable frame]
//! ```
//!
//! Every frame is an ordinary zstd frame (content size and checksum included), so `zstd -d`
//! decompresses the whole file; the seek table lets seekable readers jump to any frame. The
//! index frame and the seek table are written last: a file cut short has neither, and the
//! reader then finds the chunks by walking zstd block headers.

use super::columns::{put_varint, Cursor};
use super::error::DecodeError;
use super::records::{Kind, RecordBatch};

/// Major format version: a reader reads only files of its own major version.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version: minor versions only add record kinds, sections or header keys, which
/// readers skip (1.1: the chunk digest; 1.2: the header's `host_id`).
pub const FORMAT_MINOR: u16 = 2;

/// Magic at the start of the header frame's content.
pub const HEADER_MAGIC: &[u8; 8] = b"GHSTPROF";
/// Magic at the start of each chunk frame's content.
pub const CHUNK_MAGIC: &[u8; 8] = b"GPCHUNK1";
/// Magic at the start of the index frame's content.
pub const INDEX_MAGIC: &[u8; 8] = b"GPINDEX1";

/// Magic of an ordinary zstd frame (little-endian).
pub const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Lowest magic of a zstd skippable frame.
pub const SKIPPABLE_MAGIC_MIN: u32 = 0x184D_2A50;
/// Highest magic of a zstd skippable frame.
pub const SKIPPABLE_MAGIC_MAX: u32 = 0x184D_2A5F;
/// Magic of the skippable frame that holds the seek table.
pub const SEEK_TABLE_SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// Magic at the end of the seek table's footer.
pub const SEEKABLE_FOOTER_MAGIC: u32 = 0x8F92_EAB1;
/// Bytes of the seek table's footer: frame count u32, descriptor u8, magic u32.
pub const SEEK_FOOTER_BYTES: u64 = 9;

/// Largest decompressed frame a reader accepts; the writer stays far below.
pub const MAX_FRAME_BYTES: u64 = 16 << 20;
/// Largest header JSON accepted.
pub const MAX_HEADER_JSON: usize = 1 << 20;
/// Section header: kind u16, column count u16, rows u32, byte length u32.
pub const SECTION_HEADER_BYTES: usize = 12;
/// Chunk header: magic, seq u32, section count u32, min ts u64, max ts u64.
pub const CHUNK_HEADER_BYTES: usize = 32;
/// Section kind id of the string table.
pub const STRINGS_SECTION: u16 = 0;
/// Section kind id of a chunk's digest (`trace::digest`; record kinds are small numbers).
pub const DIGEST_SECTION: u16 = 0xFFF0;

/// A decoded chunk: its records and the strings they refer to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Chunk {
    /// The chunk's sequence number in the file.
    pub seq: u32,
    /// Earliest record start in the chunk, CLOCK_MONOTONIC ns.
    pub min_ts: u64,
    /// Latest record end in the chunk, CLOCK_MONOTONIC ns.
    pub max_ts: u64,
    /// The strings (id, text) the chunk's records refer to (each chunk carries its own).
    pub strings: Vec<(u32, String)>,
    /// The chunk's records, by kind.
    pub records: RecordBatch,
}

/// Where a chunk is and what it holds (from the index, or from a scan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMeta {
    /// The chunk's sequence number in the file.
    pub seq: u32,
    /// file offset of the chunk's zstd frame
    pub offset: u64,
    /// Length of the chunk's zstd frame, bytes.
    pub compressed_len: u64,
    /// Decompressed length of the chunk, bytes.
    pub raw_len: u64,
    /// Earliest record start in the chunk, CLOCK_MONOTONIC ns.
    pub min_ts: u64,
    /// Latest record end in the chunk, CLOCK_MONOTONIC ns.
    pub max_ts: u64,
    /// rows per kind, in [`Kind::ALL`] order
    pub counts: Vec<u64>,
}

/// A section body's encoder: writes into `out` with reusable column buffers.
pub type EncodeSection<'a> = &'a dyn Fn(&mut Vec<u8>, &mut Vec<Vec<u8>>);

/// Encodes a chunk body (decompressed bytes) into `out`: its strings, its digest section (when
/// given: `digest` writes the body, see `trace::digest`, which builds on this module), then its
/// records; `scratch` holds reusable column buffers.
pub fn encode_chunk(
    seq: u32,
    batch: &RecordBatch,
    strings: &[(u32, &str)],
    digest: Option<EncodeSection<'_>>,
    out: &mut Vec<u8>,
    scratch: &mut Vec<Vec<u8>>,
) {
    let (min_ts, max_ts) = batch.time_range().unwrap_or((0, 0));
    out.clear();
    out.extend_from_slice(CHUNK_MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&min_ts.to_le_bytes());
    out.extend_from_slice(&max_ts.to_le_bytes());
    let mut sections = 0u32;
    if !strings.is_empty() {
        let at = begin_section(out, STRINGS_SECTION, 0, strings.len());
        for (id, s) in strings {
            put_varint(out, *id as u64);
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        end_section(out, at);
        sections += 1;
    }
    if let Some(digest) = digest {
        let at = begin_section(out, DIGEST_SECTION, 0, 1);
        digest(out, scratch);
        end_section(out, at);
        sections += 1;
    }
    sections += encode_record_sections(batch, out, scratch);
    out[count_at..count_at + 4].copy_from_slice(&sections.to_le_bytes());
}

/// Appends one section per non-empty record kind of `batch`; returns how many.
pub(crate) fn encode_record_sections(batch: &RecordBatch, out: &mut Vec<u8>, scratch: &mut Vec<Vec<u8>>) -> u32 {
    let mut sections = 0u32;
    batch.encode_sections(|kind, rows, encode| {
        let ncols = kind.columns().len();
        if scratch.len() < ncols {
            scratch.resize_with(ncols, Vec::new);
        }
        let cols = &mut scratch[..ncols];
        cols.iter_mut().for_each(Vec::clear);
        encode(cols);
        let at = begin_section(out, kind as u16, ncols, rows);
        for c in cols.iter() {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        }
        for c in cols.iter() {
            out.extend_from_slice(c);
        }
        end_section(out, at);
        sections += 1;
    });
    sections
}

fn begin_section(out: &mut Vec<u8>, kind: u16, columns: usize, rows: usize) -> usize {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(columns as u16).to_le_bytes());
    out.extend_from_slice(&(rows as u32).to_le_bytes());
    let at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    at
}

fn end_section(out: &mut [u8], len_at: usize) {
    let len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Reads a chunk body. Unknown record kinds (from a newer minor version) are skipped.
pub fn decode_chunk(buf: &[u8]) -> Result<Chunk, DecodeError> {
    let mut chunk = Chunk::default();
    decode_chunk_into(buf, &mut chunk)?;
    Ok(chunk)
}

/// Like [`decode_chunk`], reusing `chunk`'s allocations (its contents are replaced).
pub fn decode_chunk_into(buf: &[u8], chunk: &mut Chunk) -> Result<(), DecodeError> {
    decode_chunk_kinds_into(buf, chunk, &|_| true)
}

/// [`decode_chunk_into`] decoding only the sections of the kinds `wanted` accepts (the others
/// are skipped by their length and stay empty); the string table is always decoded.
pub fn decode_chunk_kinds_into(
    buf: &[u8],
    chunk: &mut Chunk,
    wanted: &dyn Fn(Kind) -> bool,
) -> Result<(), DecodeError> {
    decode_chunk_sections(buf, chunk, wanted, false)
}

/// [`decode_chunk_kinds_into`] decoding only the columns the analysis reads of the two big
/// kinds ([`LEAN_KERNEL_COLUMNS`], [`LEAN_API_COLUMNS`]); their other fields stay 0, and the
/// skipped columns are passed over by their lengths (neither decoded nor checked). Other kinds
/// are decoded whole.
pub fn decode_chunk_lean_into(buf: &[u8], chunk: &mut Chunk, wanted: &dyn Fn(Kind) -> bool) -> Result<(), DecodeError> {
    decode_chunk_sections(buf, chunk, wanted, true)
}

fn decode_chunk_sections(
    buf: &[u8],
    chunk: &mut Chunk,
    wanted: &dyn Fn(Kind) -> bool,
    lean: bool,
) -> Result<(), DecodeError> {
    chunk.strings.clear();
    chunk.records.clear();
    let mut cur = Cursor::new(buf);
    let magic = cur.bytes(8)?;
    if magic != CHUNK_MAGIC {
        return Err(DecodeError::new(0, "chunk magic missing"));
    }
    let seq = cur.u32_le()?;
    let sections = cur.u32_le()?;
    let min_ts = cur.u64_le()?;
    let max_ts = cur.u64_le()?;
    (chunk.seq, chunk.min_ts, chunk.max_ts) = (seq, min_ts, max_ts);
    decode_sections(&mut cur, sections, &mut chunk.records, Some(&mut chunk.strings), wanted, lean)?;
    if cur.remaining() != 0 {
        return Err(DecodeError::new(cur.pos, "trailing bytes after the last section"));
    }
    Ok(())
}

/// Decodes `sections` sections from `cur` into `records` (and the string table into `strings`;
/// a string table is refused where `strings` is None: inside a digest).
pub(crate) fn decode_sections(
    cur: &mut Cursor<'_>,
    sections: u32,
    records: &mut RecordBatch,
    mut strings: Option<&mut Vec<(u32, String)>>,
    wanted: &dyn Fn(Kind) -> bool,
    lean: bool,
) -> Result<(), DecodeError> {
    for _ in 0..sections {
        let at = cur.offset();
        let kind_id = cur.u16_le()?;
        let columns = cur.u16_le()? as usize;
        let rows = cur.u32_le()? as usize;
        let len = cur.u32_le()? as usize;
        let body_at = cur.offset();
        let body = cur.bytes(len).map_err(|_| {
            DecodeError::new(at, format!("section of kind {kind_id} claims {len} bytes, past the end of the chunk"))
        })?;
        let rebase = |e: DecodeError| DecodeError::new(body_at + e.offset, e.what);
        if kind_id == STRINGS_SECTION {
            let Some(out) = strings.as_deref_mut() else {
                return Err(DecodeError::new(at, "a string table inside a digest"));
            };
            decode_strings(body, rows, out).map_err(rebase)?;
            continue;
        }
        if kind_id == DIGEST_SECTION {
            continue; // the chunk's digest: read by the summary pass alone (TraceReader::read_chunk_head)
        }
        let Some(kind) = Kind::from_id(kind_id) else {
            continue; // a kind from a newer writer: skip it, its length is known
        };
        if !wanted(kind) {
            continue;
        }
        let stored = kind.columns().iter().filter(|c| c.encoding.is_stored()).count();
        if columns != kind.columns().len() {
            return Err(DecodeError::new(
                at,
                format!("section {} has {columns} columns, expected {}", kind.key(), kind.columns().len()),
            ));
        }
        // Each row takes at least one byte per column: this bounds the allocation by the
        // section's real size, whatever the row count claims.
        if rows.saturating_mul(stored) > len {
            return Err(DecodeError::new(at, format!("section {} claims {rows} rows in {len} bytes", kind.key())));
        }
        let mut cursors = column_cursors(body, body_at, columns).map_err(rebase)?;
        if lean && decode_lean(kind, &mut cursors, rows, records)? {
            continue;
        }
        records.decode_section(kind, &mut cursors, rows)?;
        for c in &cursors {
            if c.remaining() != 0 {
                return Err(DecodeError::new(
                    c.offset(),
                    format!("{} unread bytes in a column of {}", c.remaining(), kind.key()),
                ));
            }
        }
    }
    Ok(())
}

/// Splits a section body into one cursor per column using its directory of column lengths.
fn column_cursors(body: &[u8], body_at: usize, columns: usize) -> Result<Vec<Cursor<'_>>, DecodeError> {
    let mut dir = Cursor::new(body);
    let mut lens = Vec::with_capacity(columns);
    for _ in 0..columns {
        lens.push(dir.u32_le()? as usize);
    }
    let mut cursors = Vec::with_capacity(columns);
    for len in lens {
        let at = dir.pos;
        let bytes =
            dir.bytes(len).map_err(|_| DecodeError::new(at, format!("column of {len} bytes runs past its section")))?;
        cursors.push(Cursor::with_base(bytes, body_at + at));
    }
    if dir.remaining() != 0 {
        return Err(DecodeError::new(dir.pos, "section has bytes after its last column"));
    }
    Ok(cursors)
}

pub(crate) fn decode_strings(body: &[u8], n: usize, out: &mut Vec<(u32, String)>) -> Result<(), DecodeError> {
    if n > body.len() / 2 {
        return Err(DecodeError::new(0, format!("string table claims {n} strings in {} bytes", body.len())));
    }
    let mut cur = Cursor::new(body);
    out.reserve(n);
    for _ in 0..n {
        let id = cur.varint()?;
        let id = u32::try_from(id).map_err(|_| DecodeError::new(cur.pos, "string id exceeds u32"))?;
        let len = cur.varint()? as usize;
        let at = cur.pos;
        let bytes = cur.bytes(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::new(at, "string is not UTF-8"))?;
        out.push((id, s.to_string()));
    }
    if cur.remaining() != 0 {
        return Err(DecodeError::new(cur.pos, "trailing bytes after the string table"));
    }
    Ok(())
}

/// Final totals stored in the index frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexSummary {
    /// Every chunk of the file, in file order.
    pub chunks: Vec<ChunkMeta>,
    /// (source, cause) → cumulative records lost
    pub drops: Vec<(u32, u32, u64)>,
}

/// Encodes the index frame's content (chunk table and drop counters) into `out`.
pub fn encode_index(summary: &IndexSummary, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&(summary.chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(&(Kind::ALL.len() as u32).to_le_bytes());
    for k in Kind::ALL {
        out.extend_from_slice(&(*k as u16).to_le_bytes());
    }
    for c in &summary.chunks {
        for v in [c.offset, c.compressed_len, c.raw_len, c.min_ts, c.max_ts] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&c.seq.to_le_bytes());
        for v in &c.counts {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(&(summary.drops.len() as u32).to_le_bytes());
    for (s, c, n) in &summary.drops {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// Reads an index frame. Counts of kinds this build doesn't know are dropped.
pub fn decode_index(buf: &[u8]) -> Result<IndexSummary, DecodeError> {
    let mut cur = Cursor::new(buf);
    if cur.bytes(8)? != INDEX_MAGIC {
        return Err(DecodeError::new(0, "index magic missing"));
    }
    let n_chunks = cur.u32_le()? as usize;
    let n_kinds = cur.u32_le()? as usize;
    let entry = 5 * 8 + 4 + n_kinds.saturating_mul(8);
    if n_kinds > 1024 || n_chunks.saturating_mul(entry) > cur.remaining() {
        return Err(DecodeError::new(
            8,
            format!("index claims {n_chunks} chunks of {n_kinds} kinds, more than it holds"),
        ));
    }
    let mut slots = Vec::with_capacity(n_kinds);
    for _ in 0..n_kinds {
        let id = cur.u16_le()?;
        slots.push(Kind::from_id(id).and_then(|k| Kind::ALL.iter().position(|x| *x == k)));
    }
    let mut chunks = Vec::with_capacity(n_chunks);
    for _ in 0..n_chunks {
        let offset = cur.u64_le()?;
        let compressed_len = cur.u64_le()?;
        let raw_len = cur.u64_le()?;
        let min_ts = cur.u64_le()?;
        let max_ts = cur.u64_le()?;
        let seq = cur.u32_le()?;
        let mut counts = vec![0u64; Kind::ALL.len()];
        for slot in &slots {
            let v = cur.u64_le()?;
            if let Some(i) = slot {
                counts[*i] = v;
            }
        }
        chunks.push(ChunkMeta { seq, offset, compressed_len, raw_len, min_ts, max_ts, counts });
    }
    let n_drops = cur.u32_le()? as usize;
    if n_drops.saturating_mul(16) > cur.remaining() {
        return Err(DecodeError::new(cur.pos, "index claims more drop counters than it holds"));
    }
    let mut drops = Vec::with_capacity(n_drops);
    for _ in 0..n_drops {
        drops.push((cur.u32_le()?, cur.u32_le()?, cur.u64_le()?));
    }
    if cur.remaining() != 0 {
        return Err(DecodeError::new(cur.pos, "trailing bytes after the index"));
    }
    Ok(IndexSummary { chunks, drops })
}

/// Header body: magic, version, then JSON metadata (tool version, host, command, schema).
pub fn encode_header(json: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(HEADER_MAGIC);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
}

/// The schema every header carries, so a file describes its own columns.
pub fn schema_json() -> serde_json::Value {
    let mut kinds = serde_json::Map::new();
    for k in Kind::ALL {
        let cols: Vec<serde_json::Value> = k
            .columns()
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "type": c.ty, "encoding": c.encoding.describe()}))
            .collect();
        kinds.insert(
            k.key().to_string(),
            serde_json::json!({"id": *k as u16, "record_bytes": k.record_size(), "columns": cols}),
        );
    }
    serde_json::Value::Object(kinds)
}

/// The seek table frame of the zstd seekable format: one entry (compressed size,
/// decompressed size) per frame, no checksums.
pub fn encode_seek_table(frames: &[(u32, u32)], out: &mut Vec<u8>) {
    out.clear();
    let size = (frames.len() * 8) as u32 + SEEK_FOOTER_BYTES as u32;
    out.extend_from_slice(&SEEK_TABLE_SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    for (c, d) in frames {
        out.extend_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.push(0); // descriptor: no checksums
    out.extend_from_slice(&SEEKABLE_FOOTER_MAGIC.to_le_bytes());
}

/// The kernel columns a lean decode reads: start_ns/end_ns, device, name_id, pid.
pub const LEAN_KERNEL_COLUMNS: &[&str] = &["start_ns", "device", "name_id", "pid"];
/// The API call columns a lean decode reads: call_id and domain; start_ns, end_ns, pid and tid
/// only in sections holding a probed call ([`super::records::ApiDomain::Probe`]) or a launch
/// seen by CUPTI ([`super::records::ApiCall::is_launch`]): the only calls the analysis reads
/// whole.
pub const LEAN_API_COLUMNS: &[&str] = &["start_ns", "end_ns", "pid", "tid", "call_id", "domain"];

fn column_index(kind: Kind, name: &str, encoding: super::columns::Encoding) -> Option<usize> {
    kind.columns().iter().position(|c| c.name == name && c.encoding == encoding)
}

/// Checks that a decoded column was read to its end.
fn all_read(c: &Cursor<'_>, kind: Kind) -> Result<(), DecodeError> {
    if c.remaining() != 0 {
        return Err(DecodeError::new(
            c.offset(),
            format!("{} unread bytes in a column of {}", c.remaining(), kind.key()),
        ));
    }
    Ok(())
}

#[inline(always)]
fn lean_u32(cur: &mut Cursor<'_>, kind: Kind, what: &str) -> Result<u32, DecodeError> {
    let v = cur.varint()?;
    u32::try_from(v)
        .map_err(|_| DecodeError::new(cur.offset(), format!("value out of range for {}.{what}", kind.key())))
}

/// Decodes the lean columns of a kernel or API call section into `out`; false when the kind
/// has no lean form (or its columns are not coded as expected: then the caller decodes it
/// whole).
fn decode_lean(kind: Kind, cols: &mut [Cursor<'_>], n: usize, out: &mut RecordBatch) -> Result<bool, DecodeError> {
    use super::columns::{unzigzag, Encoding::*};
    use super::records::{ApiCall, ApiDomain, KernelExec};
    const BLOCK: usize = super::records::BLOCK_ROWS;
    match kind {
        Kind::KernelExec => {
            let idx = (
                column_index(kind, "start_ns", GapFrom("end_ns")),
                column_index(kind, "device", Raw),
                column_index(kind, "name_id", Raw),
                column_index(kind, "pid", Raw),
            );
            let (Some(ts), Some(dev), Some(name), Some(pid)) = idx else { return Ok(false) };
            out.kernels.reserve(n);
            let mut prev_end = 0u64;
            let (mut se, mut d, mut nm, mut p) = ([(0u64, 0u64); BLOCK], [0u32; BLOCK], [0u32; BLOCK], [0u32; BLOCK]);
            let mut left = n;
            while left > 0 {
                let b = left.min(BLOCK);
                left -= b;
                let cur = &mut cols[ts];
                for x in se[..b].iter_mut() {
                    let s = prev_end.wrapping_add(unzigzag(cur.varint()?) as u64);
                    let e = s.wrapping_add(unzigzag(cur.varint()?) as u64);
                    (*x, prev_end) = ((s, e), e);
                }
                for x in d[..b].iter_mut() {
                    *x = lean_u32(&mut cols[dev], kind, "device")?;
                }
                for x in nm[..b].iter_mut() {
                    *x = lean_u32(&mut cols[name], kind, "name_id")?;
                }
                for x in p[..b].iter_mut() {
                    *x = lean_u32(&mut cols[pid], kind, "pid")?;
                }
                out.kernels.extend((0..b).map(|i| KernelExec {
                    start_ns: se[i].0,
                    end_ns: se[i].1,
                    device: d[i],
                    name_id: nm[i],
                    pid: p[i],
                    ..KernelExec::default()
                }));
            }
            for i in [ts, dev, name, pid] {
                all_read(&cols[i], kind)?;
            }
            Ok(true)
        }
        Kind::ApiCall => {
            let idx = (
                column_index(kind, "start_ns", Delta),
                column_index(kind, "end_ns", From("start_ns")),
                column_index(kind, "pid", Raw),
                column_index(kind, "tid", Raw),
                column_index(kind, "call_id", Raw),
                column_index(kind, "domain", Raw),
            );
            let (Some(st), Some(en), Some(pid), Some(tid), Some(call), Some(dom)) = idx else { return Ok(false) };
            let start = out.api_calls.len();
            out.api_calls.resize(start + n, ApiCall::default());
            let rows = &mut out.api_calls[start..];
            for r in rows.iter_mut() {
                r.call_id = lean_u32(&mut cols[call], kind, "call_id")?;
            }
            let mut probed = false;
            for r in rows.iter_mut() {
                r.domain = lean_u32(&mut cols[dom], kind, "domain")?;
                probed |= r.domain == ApiDomain::Probe as u32 || r.is_launch();
            }
            if !probed {
                // Only probed calls and CUPTI's launches are used whole: the other columns of
                // this section are not read.
                for i in [call, dom] {
                    all_read(&cols[i], kind)?;
                }
                return Ok(true);
            }
            let mut prev = 0u64;
            for block in rows.chunks_mut(BLOCK) {
                for r in block.iter_mut() {
                    prev = prev.wrapping_add(unzigzag(cols[st].varint()?) as u64);
                    r.start_ns = prev;
                }
                for r in block.iter_mut() {
                    r.end_ns = r.start_ns.wrapping_add(unzigzag(cols[en].varint()?) as u64);
                }
                for r in block.iter_mut() {
                    r.pid = lean_u32(&mut cols[pid], kind, "pid")?;
                }
                for r in block.iter_mut() {
                    r.tid = lean_u32(&mut cols[tid], kind, "tid")?;
                }
            }
            for i in [st, en, pid, tid, call, dom] {
                all_read(&cols[i], kind)?;
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}
