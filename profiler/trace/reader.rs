//! The trace reader. The file is untrusted input: every length is checked against the file and
//! the format's limits before anything is allocated, every problem is an error naming the byte
//! offset, and a file cut short reads back every whole chunk before the cut, with a warning.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::columns::Cursor;
use super::digest::{ChunkDigest, DIGEST_SECTION};
use super::error::{DecodeError, TraceError};
use super::format::{
    self, Chunk, ChunkMeta, IndexSummary, CHUNK_HEADER_BYTES, CHUNK_MAGIC, FORMAT_MAJOR, HEADER_MAGIC, INDEX_MAGIC,
    MAX_FRAME_BYTES, MAX_HEADER_JSON, SEEKABLE_FOOTER_MAGIC, SEEK_FOOTER_BYTES, SEEK_TABLE_SKIPPABLE_MAGIC,
    STRINGS_SECTION,
};
use super::frames::{frame_at, FrameAt};
use super::records::{Kind, RecordBatch};

/// Largest compressed frame accepted (zstd's bound on a MAX_FRAME_BYTES input, rounded up).
const MAX_COMPRESSED_FRAME: u64 = MAX_FRAME_BYTES + (1 << 20);

/// Most distinct session notes [`TraceReader::notes`] returns (a recording keeps far fewer:
/// 32 per process, 256 in all); a crafted file's excess is summed up in one line.
pub const MAX_NOTES: usize = 1024;

/// A chunk that could not be read (its frame's checksum failed, it does not decompress or its
/// decoded body is malformed): readers that go through every chunk skip it and say so.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DamagedChunk {
    /// its place in the file's chunk table (0, 1, …)
    pub chunk: usize,
    /// file offset of its frame
    pub offset: u64,
    /// records it held, by the index (or by its own section headers in a file without one)
    pub records_lost: u64,
    /// what is wrong with it, one line
    pub error: String,
}

/// Buffers reused from one chunk to the next.
#[derive(Default)]
pub struct Scratch {
    compressed: Vec<u8>,
    body: Vec<u8>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    /// streaming context of [`TraceReader::read_chunk_head`]
    stream: Option<zstd::zstd_safe::DCtx<'static>>,
}

/// The decoded file header.
#[derive(Debug, Clone)]
pub struct TraceHeader {
    /// The file's major format version.
    pub major: u16,
    /// The file's minor format version.
    pub minor: u16,
    /// Metadata JSON: tool version, host, command, schema.
    pub meta: serde_json::Value,
}

/// Reads a trace file: its header, its chunk table (from the index, or by walking the frames of
/// a file cut short), and its chunks on demand.
pub struct TraceReader {
    file: File,
    path: PathBuf,
    len: u64,
    header: TraceHeader,
    chunks: Vec<ChunkMeta>,
    /// Present when the file was finalized (index frame found).
    index_drops: Option<Vec<(u32, u32, u64)>>,
    warnings: Vec<String>,
    /// Bytes at the end of the file that are not whole frames (a cut, zeros or junk after the
    /// last whole chunk): (file offset, length).
    skipped: Option<(u64, u64)>,
    /// Chunks found damaged so far, by chunk index (a reader of `&self` learns of them as it
    /// reads; every later pass skips them, so all passes see the same chunks).
    damaged: std::sync::Mutex<Vec<DamagedChunk>>,
}

impl TraceReader {
    /// Opens `path` and reads its header and chunk table (a file without an index is scanned).
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let file = crate::outfile::open_input(path).map_err(|e| TraceError::io(path, e))?;
        let len = file.metadata().map_err(|e| TraceError::io(path, e))?.len();
        if len == 0 {
            return Err(TraceError::Empty { path: path.to_path_buf() });
        }
        let mut r = TraceReader {
            file,
            path: path.to_path_buf(),
            len,
            header: TraceHeader { major: 0, minor: 0, meta: serde_json::Value::Null },
            chunks: Vec::new(),
            index_drops: None,
            warnings: Vec::new(),
            skipped: None,
            damaged: Default::default(),
        };
        let header_len = match frame_at(&r.file, 0, len).map_err(|e| TraceError::io(path, e))? {
            FrameAt::Zstd(n) => n,
            FrameAt::Truncated => {
                return Err(TraceError::NotATrace {
                    path: r.path.clone(),
                    why: format!("the file ({len} bytes) ends inside its header frame"),
                })
            }
            FrameAt::Skippable { .. } | FrameAt::Garbage { .. } => {
                return Err(TraceError::NotATrace {
                    path: r.path.clone(),
                    why: "it does not start with a zstd frame".into(),
                })
            }
        };
        let body = r.frame(0, header_len)?;
        r.header = parse_header(&body).map_err(|e| r.header_error(e))?;
        if r.header.major != FORMAT_MAJOR {
            return Err(TraceError::Version {
                path: r.path.clone(),
                found_major: r.header.major,
                found_minor: r.header.minor,
                supported_major: FORMAT_MAJOR,
            });
        }
        match r.try_seek_table(header_len) {
            Ok(Some(summary)) => {
                r.chunks = summary.chunks;
                r.index_drops = Some(summary.drops);
            }
            Ok(None) => {
                r.scan(header_len)?;
            }
            Err(why) => {
                r.warnings.push(format!("seek table or index is damaged ({why}); reading the chunks one by one"));
                r.scan(header_len)?;
            }
        }
        Ok(r)
    }

    fn header_error(&self, e: HeaderError) -> TraceError {
        match e {
            HeaderError::NotATrace(why) => TraceError::NotATrace { path: self.path.clone(), why },
            HeaderError::Corrupt(d) => self.corrupt(d.offset as u64, d.what),
        }
    }

    fn corrupt(&self, offset: u64, what: impl Into<String>) -> TraceError {
        TraceError::Corrupt { path: self.path.clone(), offset, what: what.into() }
    }

    /// The trace file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decoded file header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Every whole chunk, in file order.
    pub fn chunks(&self) -> &[ChunkMeta] {
        &self.chunks
    }

    /// True when the file has its index and seek table (the recording ended cleanly).
    pub fn is_finalized(&self) -> bool {
        self.index_drops.is_some()
    }

    /// Problems that did not stop reading (a file cut short, a damaged index, bytes skipped
    /// after the last whole chunk, each damaged chunk found so far), one line each.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.warnings.clone();
        for d in self.damaged_chunks() {
            out.push(format!(
                "chunk {} (byte {}) is damaged ({}): skipped it, {} records lost",
                d.chunk, d.offset, d.error, d.records_lost
            ));
        }
        out
    }

    /// Bytes after the last whole chunk that were not read (a cut, or zeros or junk after the
    /// last whole frame): (file offset, length).
    pub fn skipped_bytes(&self) -> Option<(u64, u64)> {
        self.skipped
    }

    /// The chunks found damaged so far, in chunk order. Only chunks that were read are checked:
    /// [`TraceReader::verify`] reads them all.
    pub fn damaged_chunks(&self) -> Vec<DamagedChunk> {
        lock(&self.damaged).clone()
    }

    fn is_damaged(&self, i: usize) -> bool {
        lock(&self.damaged).iter().any(|d| d.chunk == i)
    }

    /// Remembers chunk `i` as damaged when `e` says its bytes are bad (not for I/O errors).
    fn note_damage(&self, i: usize, e: &TraceError) {
        let TraceError::Corrupt { what, .. } = e else { return };
        let Some(meta) = self.chunks.get(i) else { return };
        let mut damaged = lock(&self.damaged);
        if let Err(at) = damaged.binary_search_by_key(&i, |d| d.chunk) {
            let records_lost = meta.counts.iter().fold(0u64, |a, n| a.saturating_add(*n));
            damaged.insert(at, DamagedChunk { chunk: i, offset: meta.offset, records_lost, error: what.clone() });
        }
    }

    /// Decompresses and decodes every chunk (checking every frame's checksum), recording the
    /// damaged ones ([`TraceReader::damaged_chunks`]). `Err` only for an I/O error.
    pub fn verify(&self) -> Result<Vec<DamagedChunk>, TraceError> {
        self.for_each_chunk(|_| {})?;
        Ok(self.damaged_chunks())
    }

    /// Indexes of the chunks whose records may fall in [t0, t1].
    pub fn chunks_overlapping(&self, t0: u64, t1: u64) -> impl Iterator<Item = usize> + '_ {
        self.chunks.iter().enumerate().filter(move |(_, c)| c.max_ts >= t0 && c.min_ts <= t1).map(|(i, _)| i)
    }

    /// Decodes chunk `i`.
    pub fn read_chunk(&self, i: usize) -> Result<Chunk, TraceError> {
        let mut chunk = Chunk::default();
        self.read_chunk_into(i, &mut Scratch::default(), &mut chunk)?;
        Ok(chunk)
    }

    /// Decodes chunk `i` into `chunk`, reusing its allocations and `scratch`'s buffers.
    pub fn read_chunk_into(&self, i: usize, scratch: &mut Scratch, chunk: &mut Chunk) -> Result<(), TraceError> {
        self.read_chunk_kinds_into(i, scratch, chunk, &|_| true)
    }

    /// [`TraceReader::read_chunk_into`] decoding only the record kinds `wanted` accepts (the
    /// others stay empty); for passes that need a few kinds of a large trace.
    pub fn read_chunk_kinds_into(
        &self,
        i: usize,
        scratch: &mut Scratch,
        chunk: &mut Chunk,
        wanted: &dyn Fn(Kind) -> bool,
    ) -> Result<(), TraceError> {
        self.read_chunk_decode(i, scratch, chunk, wanted, false)
    }

    /// [`TraceReader::read_chunk_kinds_into`], with the lean decode of
    /// [`TraceReader::for_each_chunk_lean`] when `lean`.
    pub fn read_chunk_decode(
        &self,
        i: usize,
        scratch: &mut Scratch,
        chunk: &mut Chunk,
        wanted: &dyn Fn(Kind) -> bool,
        lean: bool,
    ) -> Result<(), TraceError> {
        let r = self.decode_chunk_at(i, scratch, chunk, wanted, lean);
        if let Err(e) = &r {
            self.note_damage(i, e);
        }
        r
    }

    fn decode_chunk_at(
        &self,
        i: usize,
        scratch: &mut Scratch,
        chunk: &mut Chunk,
        wanted: &dyn Fn(Kind) -> bool,
        lean: bool,
    ) -> Result<(), TraceError> {
        let meta =
            self.chunks.get(i).ok_or_else(|| TraceError::Writer { what: format!("chunk {i} does not exist") })?;
        self.frame_into(meta.offset, meta.compressed_len, scratch)?;
        let decoded = if lean {
            format::decode_chunk_lean_into(&scratch.body, chunk, wanted)
        } else {
            format::decode_chunk_kinds_into(&scratch.body, chunk, wanted)
        };
        decoded.map_err(|e| {
            self.corrupt(meta.offset, format!("in chunk {} at decompressed byte {}: {}", meta.seq, e.offset, e.what))
        })?;
        let matches = chunk.seq == meta.seq
            && Kind::ALL.iter().zip(&meta.counts).all(|(k, n)| !wanted(*k) || chunk.records.count(*k) as u64 == *n);
        if !matches {
            return Err(self.corrupt(meta.offset, format!("chunk {} does not match its index entry", meta.seq)));
        }
        Ok(())
    }

    /// The head of chunk `i`: its string table and its digest ([`super::digest`], kernels and
    /// API calls decoded lean), reading and decompressing the frame only up to the digest's end
    /// (its compressed bytes in growing windows: the sweep reads the whole frame later). `Ok(false)`: the chunk has no digest (a writer
    /// without them); `strings` then holds its string table all the same. The frame's
    /// checksum is not verified here (the whole-chunk reads verify it).
    pub fn read_chunk_head(
        &self,
        i: usize,
        scratch: &mut Scratch,
        strings: &mut Vec<(u32, String)>,
        digest: &mut ChunkDigest,
    ) -> Result<bool, TraceError> {
        let r = self.chunk_head_at(i, scratch, strings, digest);
        if let Err(e) = &r {
            self.note_damage(i, e);
        }
        r
    }

    fn chunk_head_at(
        &self,
        i: usize,
        scratch: &mut Scratch,
        strings: &mut Vec<(u32, String)>,
        digest: &mut ChunkDigest,
    ) -> Result<bool, TraceError> {
        strings.clear();
        *digest = ChunkDigest::default();
        let meta =
            self.chunks.get(i).ok_or_else(|| TraceError::Writer { what: format!("chunk {i} does not exist") })?;
        let at = meta.offset;
        let corrupt = |what: String| self.corrupt(at, format!("in chunk {}: {what}", meta.seq));
        // Checks the frame's length against the file, as a whole read would.
        if meta.compressed_len > MAX_COMPRESSED_FRAME
            || meta.offset.checked_add(meta.compressed_len).is_none_or(|end| end > self.len)
        {
            return Err(corrupt(format!("frame of {} bytes does not fit the file", meta.compressed_len)));
        }
        let Scratch { compressed, body, stream, .. } = scratch;
        compressed.clear();
        let dctx = match stream {
            Some(d) => {
                d.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
                    .map_err(|e| corrupt(format!("zstd context: {}", zstd::zstd_safe::get_error_name(e))))?;
                d
            }
            None => stream.insert(zstd::zstd_safe::DCtx::create()),
        };
        // compressed bytes consumed by zstd so far
        let mut in_pos = 0usize;
        let (file, path, total) = (&self.file, &self.path, meta.compressed_len as usize);
        body.clear();
        let mut done = false;
        // Bytes of `body` decompressed so far (its length is the window zstd may fill: a
        // whole frame would be decompressed at once into a buffer large enough for it).
        let mut filled = 0usize;
        // Decompresses until `body` holds at least `n` bytes.
        let mut need = |body: &mut Vec<u8>, n: usize| -> Result<(), TraceError> {
            if n as u64 > MAX_FRAME_BYTES {
                return Err(corrupt(format!("chunk head claims {n} bytes")));
            }
            while filled < n {
                if done {
                    return Err(corrupt(format!("chunk ends at byte {filled} inside its head")));
                }
                let target = n.max(filled + (64 << 10));
                if body.len() < target {
                    body.resize(target, 0);
                }
                if in_pos == compressed.len() && compressed.len() < total {
                    // the next window of the frame: 64 KiB, then twice what was read
                    let from = compressed.len();
                    let to = total.min((from * 2).max(64 << 10));
                    compressed.resize(to, 0);
                    file.read_exact_at(&mut compressed[from..], meta.offset + from as u64)
                        .map_err(|e| TraceError::io(path, e))?;
                }
                let mut input = zstd::zstd_safe::InBuffer { src: compressed.as_slice(), pos: in_pos };
                let mut out = zstd::zstd_safe::OutBuffer::around_pos(&mut body[..target], filled);
                let hint = dctx.decompress_stream(&mut out, &mut input).map_err(|e| {
                    corrupt(format!("zstd frame does not decompress: {}", zstd::zstd_safe::get_error_name(e)))
                })?;
                let progressed = out.pos() > filled || input.pos > in_pos;
                filled = out.pos();
                in_pos = input.pos;
                done = hint == 0 || (in_pos == total && !progressed);
            }
            Ok(())
        };
        need(body, CHUNK_HEADER_BYTES)?;
        let mut cur = Cursor::new(&body[..CHUNK_HEADER_BYTES]);
        let head = (|| -> Result<(u32, u32), DecodeError> {
            if cur.bytes(8)? != CHUNK_MAGIC {
                return Err(DecodeError::new(0, "chunk magic missing"));
            }
            Ok((cur.u32_le()?, cur.u32_le()?))
        })();
        let (seq, sections) = head.map_err(|e| corrupt(e.what))?;
        if seq != meta.seq {
            return Err(corrupt(format!("chunk {seq} does not match its index entry")));
        }
        let mut pos = CHUNK_HEADER_BYTES;
        for _ in 0..sections {
            need(body, pos + format::SECTION_HEADER_BYTES)?;
            let h = &body[pos..pos + format::SECTION_HEADER_BYTES];
            let kind = u16::from_le_bytes([h[0], h[1]]);
            let rows = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
            let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
            let body_at = pos + format::SECTION_HEADER_BYTES;
            if kind != STRINGS_SECTION && kind != DIGEST_SECTION {
                return Ok(false);
            }
            need(body, body_at + len)?;
            let section = &body[body_at..body_at + len];
            let decoded = if kind == STRINGS_SECTION {
                format::decode_strings(section, rows, strings)
            } else {
                ChunkDigest::decode(section, body_at, true).map(|d| *digest = d)
            };
            decoded.map_err(|e| corrupt(format!("at decompressed byte {}: {}", e.offset, e.what)))?;
            if kind == DIGEST_SECTION {
                return Ok(true);
            }
            pos = body_at + len;
        }
        Ok(false)
    }

    /// [`TraceReader::for_each_chunk_kinds`] with the lean decode of kernels and API calls
    /// ([`format::decode_chunk_lean_into`]: only the columns the analysis reads; the other
    /// fields of those records are 0).
    pub fn for_each_chunk_lean(
        &self,
        wanted: &dyn Fn(Kind) -> bool,
        mut f: impl FnMut(&Chunk),
    ) -> Result<(), TraceError> {
        self.for_each_decoded(wanted, true, |_, c| f(c))
    }

    /// [`TraceReader::for_each_chunk_lean`] that also hands `f` each chunk's index in the
    /// chunk table (damaged chunks are skipped, so the n-th call need not be chunk n).
    pub fn for_each_chunk_lean_at(
        &self,
        wanted: &dyn Fn(Kind) -> bool,
        f: impl FnMut(usize, &Chunk),
    ) -> Result<(), TraceError> {
        self.for_each_decoded(wanted, true, f)
    }

    /// Decodes every chunk in order (the kinds `wanted` accepts, `lean` as in
    /// [`TraceReader::for_each_chunk_lean`]), handing each and its index to `f`; one buffer is
    /// reused. A damaged chunk is skipped and remembered ([`TraceReader::damaged_chunks`],
    /// [`TraceReader::warnings`]): one flipped byte must not cost the rest of the file.
    fn for_each_decoded(
        &self,
        wanted: &dyn Fn(Kind) -> bool,
        lean: bool,
        mut f: impl FnMut(usize, &Chunk),
    ) -> Result<(), TraceError> {
        let mut scratch = Scratch::default();
        let mut chunk = Chunk::default();
        for i in 0..self.chunks.len() {
            if self.is_damaged(i) {
                continue;
            }
            match self.read_chunk_decode(i, &mut scratch, &mut chunk, wanted, lean) {
                Ok(()) => f(i, &chunk),
                // remembered by read_chunk_decode
                Err(TraceError::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Decodes every chunk in order, handing each to `f` (one buffer is reused throughout);
    /// damaged chunks are skipped (see [`TraceReader::damaged_chunks`]).
    pub fn for_each_chunk(&self, mut f: impl FnMut(&Chunk)) -> Result<(), TraceError> {
        self.for_each_decoded(&|_| true, false, |_, c| f(c))
    }

    /// [`TraceReader::for_each_chunk`] decoding only the record kinds `wanted` accepts.
    pub fn for_each_chunk_kinds(
        &self,
        wanted: &dyn Fn(Kind) -> bool,
        mut f: impl FnMut(&Chunk),
    ) -> Result<(), TraceError> {
        self.for_each_decoded(wanted, false, |_, c| f(c))
    }

    /// Every record of the file in one batch (tests and small files; analysis streams chunks).
    pub fn read_all(&self) -> Result<RecordBatch, TraceError> {
        let mut all = RecordBatch::default();
        self.for_each_chunk(|c| all.append(c.records.clone()))?;
        Ok(all)
    }

    /// Total records per kind, in [`Kind::ALL`] order.
    pub fn counts(&self) -> Vec<u64> {
        let mut total = vec![0u64; Kind::ALL.len()];
        for c in &self.chunks {
            for (t, n) in total.iter_mut().zip(&c.counts) {
                *t += n;
            }
        }
        total
    }

    /// Final drop counters (source, cause, count): from the index of a finalized file, else
    /// the largest cumulative count seen in the chunks.
    pub fn drops(&self) -> Result<Vec<(u32, u32, u64)>, TraceError> {
        if let Some(d) = &self.index_drops {
            return Ok(d.clone());
        }
        let mut map = std::collections::BTreeMap::new();
        let drops_slot = Kind::ALL.iter().position(|k| *k == Kind::Drops).unwrap_or(0);
        for i in 0..self.chunks.len() {
            if self.chunks[i].counts.get(drops_slot).copied().unwrap_or(0) == 0 || self.is_damaged(i) {
                continue;
            }
            let chunk = match self.read_chunk(i) {
                Ok(c) => c,
                Err(TraceError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            for d in chunk.records.drops {
                let e = map.entry((d.source, d.cause)).or_insert(0u64);
                *e = (*e).max(d.count);
            }
        }
        Ok(map.into_iter().map(|((s, c), n)| (s, c, n)).collect())
    }

    /// The session's notes stored in the trace (`note` records), in order, each text once;
    /// only the chunks whose index entry counts notes are read.
    pub fn notes(&self) -> Result<Vec<String>, TraceError> {
        let slot = Kind::ALL.iter().position(|k| *k == Kind::SessionNote).unwrap_or(0);
        let mut out: Vec<String> = Vec::new();
        // A crafted file may hold millions of notes: look-ups are hashed (not a scan per note)
        // and at most MAX_NOTES distinct texts are kept, the rest counted in a last line.
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut more = 0u64;
        let (mut scratch, mut chunk) = (Scratch::default(), Chunk::default());
        for i in 0..self.chunks.len() {
            if self.chunks[i].counts.get(slot).copied().unwrap_or(0) == 0 || self.is_damaged(i) {
                continue;
            }
            match self.read_chunk_kinds_into(i, &mut scratch, &mut chunk, &|k| k == Kind::SessionNote) {
                Ok(()) => {}
                Err(TraceError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            }
            let strings: HashMap<u32, &String> = chunk.strings.iter().map(|s| (s.0, &s.1)).collect();
            for n in &chunk.records.notes {
                let text = strings.get(&n.text_id).map_or_else(|| format!("note #{}", n.text_id), |s| (*s).clone());
                if seen.contains(&text) {
                    continue;
                }
                if out.len() >= MAX_NOTES {
                    more += 1;
                    continue;
                }
                seen.insert(text.clone());
                out.push(text);
            }
        }
        if more > 0 {
            out.push(format!("{more} further distinct notes in this trace are not shown"));
        }
        Ok(out)
    }

    /// Reads and decompresses the frame at `offset`.
    fn frame(&self, offset: u64, compressed_len: u64) -> Result<Vec<u8>, TraceError> {
        let mut scratch = Scratch::default();
        self.frame_into(offset, compressed_len, &mut scratch)?;
        Ok(scratch.body)
    }

    /// Reads the compressed frame at `offset` into `scratch.compressed`, checking its length.
    fn read_compressed(&self, offset: u64, compressed_len: u64, scratch: &mut Scratch) -> Result<(), TraceError> {
        if compressed_len > MAX_COMPRESSED_FRAME || offset.checked_add(compressed_len).is_none_or(|end| end > self.len)
        {
            return Err(self.corrupt(
                offset,
                format!(
                    "frame of {compressed_len} bytes does not fit the file ({} bytes) or the format's limit",
                    self.len
                ),
            ));
        }
        let src = &mut scratch.compressed;
        src.resize(compressed_len as usize, 0);
        self.file.read_exact_at(src, offset).map_err(|e| TraceError::io(&self.path, e))
    }

    /// Reads and decompresses the frame at `offset` into `scratch.body`.
    fn frame_into(&self, offset: u64, compressed_len: u64, scratch: &mut Scratch) -> Result<(), TraceError> {
        self.read_compressed(offset, compressed_len, scratch)?;
        let src = &mut scratch.compressed;
        let size = match zstd::zstd_safe::get_frame_content_size(src) {
            Ok(Some(n)) if n <= MAX_FRAME_BYTES => n as usize,
            Ok(Some(n)) => {
                return Err(self.corrupt(
                    offset,
                    format!("frame declares {n} decompressed bytes, over the {MAX_FRAME_BYTES}-byte limit"),
                ))
            }
            _ => return Err(self.corrupt(offset, "zstd frame without a readable content size")),
        };
        let out = &mut scratch.body;
        out.clear();
        out.reserve(size);
        if scratch.decompressor.is_none() {
            scratch.decompressor =
                Some(zstd::bulk::Decompressor::new().map_err(|e| self.corrupt(offset, format!("zstd context: {e}")))?);
        }
        let d = scratch.decompressor.as_mut().expect("set above");
        let n = d
            .decompress_to_buffer(src.as_slice(), out)
            .map_err(|e| self.corrupt(offset, format!("zstd frame does not decompress: {e}")))?;
        if n != size {
            return Err(self.corrupt(offset, format!("frame decompressed to {n} bytes, declared {size}")));
        }
        Ok(())
    }

    /// Reads the seek table and index of a finalized file. `Ok(None)`: the file has no seek
    /// table (not finalized). `Err`: it has one, but it is inconsistent.
    fn try_seek_table(&self, header_len: u64) -> Result<Option<IndexSummary>, String> {
        if self.len < header_len + SEEK_FOOTER_BYTES + 8 {
            return Ok(None);
        }
        let mut footer = [0u8; SEEK_FOOTER_BYTES as usize];
        self.file.read_exact_at(&mut footer, self.len - SEEK_FOOTER_BYTES).map_err(|e| e.to_string())?;
        if u32::from_le_bytes([footer[5], footer[6], footer[7], footer[8]]) != SEEKABLE_FOOTER_MAGIC {
            return Ok(None);
        }
        let frames = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]) as u64;
        let entry = if footer[4] & 0x80 != 0 { 12 } else { 8 };
        let table_len = frames
            .checked_mul(entry)
            .and_then(|n| n.checked_add(SEEK_FOOTER_BYTES))
            .ok_or("seek table size overflows")?;
        let table_at = self.len.checked_sub(table_len + 8).ok_or("seek table larger than the file")?;
        let mut table = vec![0u8; (table_len + 8) as usize];
        self.file.read_exact_at(&mut table, table_at).map_err(|e| e.to_string())?;
        let mut cur = Cursor::new(&table);
        let (magic, size) = (cur.u32_le().map_err(|e| e.what)?, cur.u32_le().map_err(|e| e.what)?);
        if magic != SEEK_TABLE_SKIPPABLE_MAGIC || size as u64 != table_len {
            return Err(format!("seek table frame at byte {table_at} is malformed"));
        }
        let mut offset = 0u64;
        let mut entries = Vec::with_capacity(frames as usize);
        for _ in 0..frames {
            let c = cur.u32_le().map_err(|e| e.what)? as u64;
            let d = cur.u32_le().map_err(|e| e.what)? as u64;
            if entry == 12 {
                cur.u32_le().map_err(|e| e.what)?;
            }
            entries.push((offset, c, d));
            offset += c;
        }
        if offset != table_at || frames < 2 || entries[0].1 != header_len {
            return Err(format!("seek table frames add up to {offset} bytes, but the table starts at {table_at}"));
        }
        let (index_at, index_len, _) = entries[entries.len() - 1];
        let body = self.frame(index_at, index_len).map_err(|e| e.to_string())?;
        let summary = format::decode_index(&body)
            .map_err(|e| format!("index at byte {index_at}: {} (decompressed byte {})", e.what, e.offset))?;
        let chunk_frames = &entries[1..entries.len() - 1];
        let consistent = summary.chunks.len() == chunk_frames.len()
            && summary
                .chunks
                .iter()
                .zip(chunk_frames)
                .all(|(c, (o, l, d))| c.offset == *o && c.compressed_len == *l && c.raw_len == *d);
        if !consistent {
            return Err("index and seek table disagree".into());
        }
        Ok(Some(summary))
    }

    /// Walks the frames after the header of a file with no (usable) seek table. It stops at
    /// the first thing that is not a whole, readable frame in sequence (a cut, the zeros a
    /// crash leaves where data blocks were not written, junk) and keeps every whole chunk
    /// before it, saying how many bytes it skipped.
    fn scan(&mut self, header_len: u64) -> Result<(), TraceError> {
        let mut offset = header_len;
        let mut seq = 0u32;
        self.chunks.clear();
        let mut index: Option<IndexSummary> = None;
        let mut seek_table = false;
        while offset < self.len {
            let why = match frame_at(&self.file, offset, self.len).map_err(|e| TraceError::io(&self.path, e))? {
                FrameAt::Zstd(n) => match self.frame(offset, n) {
                    Err(TraceError::Io { path, source }) => return Err(TraceError::Io { path, source }),
                    Err(e) => format!("a damaged frame: {}", what_of(&e)),
                    Ok(body) if body.starts_with(INDEX_MAGIC) => match format::decode_index(&body) {
                        Ok(s) if index_matches(&s.chunks, &self.chunks) => {
                            index = Some(s);
                            offset += n;
                            continue;
                        }
                        Ok(_) => {
                            format!("an index frame that does not match the {} chunks before it", self.chunks.len())
                        }
                        Err(e) => format!("a damaged index frame (decompressed byte {}: {})", e.offset, e.what),
                    },
                    Ok(body) => match peek_chunk(&body, offset, n) {
                        Ok(meta) if meta.seq == seq => {
                            seq += 1;
                            self.chunks.push(meta);
                            offset += n;
                            continue;
                        }
                        Ok(meta) => format!("chunk number {} where {seq} was expected", meta.seq),
                        Err(e) => format!("a damaged chunk (decompressed byte {}: {})", e.offset, e.what),
                    },
                },
                FrameAt::Skippable { magic, len } => {
                    seek_table |= magic == SEEK_TABLE_SKIPPABLE_MAGIC;
                    offset += len;
                    continue;
                }
                FrameAt::Truncated => {
                    self.skipped = Some((offset, self.len - offset));
                    self.warnings.push(format!(
                        "file ends inside a frame at byte {offset} ({} bytes cut off there): the recording was interrupted; read {} whole chunks before it",
                        self.len - offset,
                        self.chunks.len()
                    ));
                    break;
                }
                FrameAt::Garbage { at, what } => format!("not a frame at byte {at}: {what}"),
            };
            self.skipped = Some((offset, self.len - offset));
            let zeros = self.all_zeros(offset);
            self.warnings.push(format!(
                "skipped the last {} bytes of the file, from byte {offset}: {} ({why}); read {} whole chunks before them",
                self.len - offset,
                if zeros { "all zeros, as a crash leaves a file whose data was not written" } else { "not whole chunks" },
                self.chunks.len()
            ));
            break;
        }
        match index {
            Some(s) => {
                self.index_drops = Some(s.drops);
                if !seek_table && self.skipped.is_none() {
                    self.warnings
                        .push(format!("file has its index but no seek table; read {} whole chunks", self.chunks.len()));
                }
            }
            None => {
                if self.skipped.is_none() {
                    self.warnings.push(format!(
                        "file has no index (recording did not finish cleanly); read {} whole chunks",
                        self.chunks.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the file is all zeros from `offset` on (read in 64 KiB pieces).
    fn all_zeros(&self, offset: u64) -> bool {
        let mut buf = vec![0u8; 64 << 10];
        let mut at = offset;
        while at < self.len {
            let n = (self.len - at).min(buf.len() as u64) as usize;
            if self.file.read_exact_at(&mut buf[..n], at).is_err() || buf[..n].iter().any(|b| *b != 0) {
                return false;
            }
            at += n as u64;
        }
        true
    }
}

/// The problem an error describes, without the file name (for a message that names it once).
fn what_of(e: &TraceError) -> String {
    match e {
        TraceError::Corrupt { offset, what, .. } => format!("at byte {offset}: {what}"),
        e => e.to_string(),
    }
}

/// Whether an index frame found by walking lists exactly the chunks walked before it.
fn index_matches(index: &[ChunkMeta], walked: &[ChunkMeta]) -> bool {
    index.len() == walked.len()
        && index.iter().zip(walked).all(|(a, b)| {
            a.seq == b.seq && a.offset == b.offset && a.compressed_len == b.compressed_len && a.counts == b.counts
        })
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum HeaderError {
    NotATrace(String),
    Corrupt(DecodeError),
}

fn parse_header(body: &[u8]) -> Result<TraceHeader, HeaderError> {
    if !body.starts_with(HEADER_MAGIC) {
        return Err(HeaderError::NotATrace("header magic GHSTPROF missing".into()));
    }
    let mut cur = Cursor::new(body);
    cur.bytes(8).map_err(HeaderError::Corrupt)?;
    let major = cur.u16_le().map_err(HeaderError::Corrupt)?;
    let minor = cur.u16_le().map_err(HeaderError::Corrupt)?;
    if major != FORMAT_MAJOR {
        // The rest may be laid out differently: report the version only.
        return Ok(TraceHeader { major, minor, meta: serde_json::Value::Null });
    }
    let n = cur.u32_le().map_err(HeaderError::Corrupt)? as usize;
    if n > MAX_HEADER_JSON {
        return Err(HeaderError::Corrupt(DecodeError::new(cur.pos, format!("header JSON claims {n} bytes"))));
    }
    let at = cur.pos;
    let json = cur.bytes(n).map_err(HeaderError::Corrupt)?;
    let meta = serde_json::from_slice(json)
        .map_err(|e| HeaderError::Corrupt(DecodeError::new(at, format!("header JSON: {e}"))))?;
    Ok(TraceHeader { major, minor, meta })
}

/// Chunk metadata from a decompressed chunk: header and section row counts only.
fn peek_chunk(body: &[u8], offset: u64, compressed_len: u64) -> Result<ChunkMeta, DecodeError> {
    if body.len() < CHUNK_HEADER_BYTES || !body.starts_with(CHUNK_MAGIC) {
        return Err(DecodeError::new(0, "not a chunk (magic GPCHUNK1 missing)"));
    }
    let mut cur = Cursor::new(body);
    cur.bytes(8)?;
    let seq = cur.u32_le()?;
    let sections = cur.u32_le()?;
    let min_ts = cur.u64_le()?;
    let max_ts = cur.u64_le()?;
    let mut counts = vec![0u64; Kind::ALL.len()];
    for _ in 0..sections {
        let kind = cur.u16_le()?;
        cur.u16_le()?;
        let rows = cur.u32_le()? as u64;
        let len = cur.u32_le()? as usize;
        cur.bytes(len)?;
        if kind == STRINGS_SECTION {
            continue;
        }
        if let Some(i) = Kind::from_id(kind).and_then(|k| Kind::ALL.iter().position(|x| *x == k)) {
            counts[i] += rows;
        }
    }
    Ok(ChunkMeta { seq, offset, compressed_len, raw_len: body.len() as u64, min_ts, max_ts, counts })
}
