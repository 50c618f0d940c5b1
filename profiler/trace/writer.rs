//! The trace writer: groups records into chunks, encodes each chunk columnar and delta-coded,
//! compresses it as one zstd frame and appends it to the file *while recording*. A chunk on
//! disk is final; `finish` adds the index frame and the seek table.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::digest::ChunkDigest;
use super::error::TraceError;
use super::format::{self, ChunkMeta, IndexSummary, MAX_FRAME_BYTES};
use super::records::{Kind, Record, RecordBatch};
use super::strings::Interner;

/// Disk space kept ahead of the file's end beyond what the next chunk and the trailer need (see
/// `reserve_for`); what is left at the end is given back.
const RESERVE_AHEAD: u64 = 8 << 20;

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// zstd level (1 is fast and, on delta-coded columns, as small as 3).
    pub level: i32,
    /// A chunk is cut when it holds this many records.
    pub chunk_records: usize,
    /// Write each chunk's digest (what the analysis's summary pass reads instead of the whole
    /// chunk: [`super::digest`]). Off only to test readers of files without one.
    pub digest: bool,
    /// Disk space kept allocated past what the next chunk and the trailer need, so that most
    /// chunks find their space already kept (one fallocate per chunk cost ~0.3 ms). 0 for files
    /// under a disk cap that counts allocated blocks (`watch`'s flight-recorder segments).
    pub reserve_ahead: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { level: 1, chunk_records: 128 * 1024, digest: true, reserve_ahead: RESERVE_AHEAD }
    }
}

/// What the recording was: goes into the header JSON next to the schema.
#[derive(Debug, Clone, Default)]
pub struct TraceInfo {
    /// The recorded command line (empty when attaching).
    pub command: Vec<String>,
    /// The processes traced from the start (record: the launched command; attach: the process tree).
    pub target_pids: Vec<u32>,
    /// Anything else worth keeping (collector versions, flags), merged into the header.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Totals of a finished (or failed) write.
#[derive(Debug, Clone, Default)]
pub struct WriteSummary {
    /// Records written in whole chunks.
    pub records: u64,
    /// Chunks written.
    pub chunks: usize,
    /// Records as fixed in-memory rows, bytes.
    pub raw_bytes: u64,
    /// Bytes of the file.
    pub compressed_bytes: u64,
}

/// Writes a trace file: header, chunks as records come, then the index and seek table.
pub struct TraceWriter {
    file: File,
    path: PathBuf,
    offset: u64,
    options: WriterOptions,
    strings: Arc<Interner>,
    /// id → 1 + seq of the last chunk that carried it
    string_mark: Vec<u32>,
    pending: RecordBatch,
    /// `pending.len()`, kept here: summing every kind's length on each append was a measurable
    /// share of the writer's time (callgrind, `tools/bench trace`).
    pending_len: usize,
    seq: u32,
    frames: Vec<(u32, u32)>,
    chunks: Vec<ChunkMeta>,
    drops: BTreeMap<(u32, u32), u64>,
    compressor: zstd::bulk::Compressor<'static>,
    raw_buf: Vec<u8>,
    comp_buf: Vec<u8>,
    column_bufs: Vec<Vec<u8>>,
    records: u64,
    raw_bytes: u64,
    failed: bool,
    /// (process, device) pairs with PM sample intervals so far ([`ChunkDigest::build`])
    pm_devices: std::collections::HashSet<(u32, u32)>,
    /// The disk space after `offset` kept allocated (fallocate, file size unchanged) for the
    /// trailer: while it holds, a full disk still gets its drop counters, index and seek table.
    /// False where the file system cannot preallocate (then the trailer is best effort).
    reserve: bool,
    /// Bytes allocated from `offset` on by the last reservation.
    reserved: u64,
    /// Writing the trailer: into the reserve, no new reservation.
    in_trailer: bool,
}

impl TraceWriter {
    /// Creates `path` as a new file with mode 0600 by [`crate::outfile`]'s rules: never through
    /// a symlink, never over a device, FIFO or directory, an existing file refused unless
    /// `overwrite`, which unlinks it first (a fresh inode, not another user's file truncated).
    pub fn create(
        path: &Path,
        overwrite: bool,
        info: &TraceInfo,
        strings: Arc<Interner>,
        options: WriterOptions,
    ) -> Result<Self, TraceError> {
        let file = crate::outfile::create_in_place(path, overwrite, None)
            .map_err(|source| TraceError::Io { path: path.to_path_buf(), source })?;
        Self::from_file(file, path, info, strings, options)
    }

    /// Starts a trace in an already opened, empty file.
    pub fn from_file(
        file: File,
        path: &Path,
        info: &TraceInfo,
        strings: Arc<Interner>,
        options: WriterOptions,
    ) -> Result<Self, TraceError> {
        let mut compressor = zstd::bulk::Compressor::new(options.level)
            .map_err(|e| TraceError::Writer { what: format!("zstd: {e}") })?;
        compressor
            .include_checksum(true)
            .and_then(|_| compressor.include_contentsize(true))
            .map_err(|e| TraceError::Writer { what: format!("zstd: {e}") })?;
        let mut w = TraceWriter {
            file,
            path: path.to_path_buf(),
            offset: 0,
            options,
            strings,
            string_mark: Vec::new(),
            pending: RecordBatch::default(),
            pending_len: 0,
            seq: 0,
            frames: Vec::new(),
            chunks: Vec::new(),
            drops: BTreeMap::new(),
            compressor,
            raw_buf: Vec::with_capacity(4 << 20),
            comp_buf: Vec::new(),
            column_bufs: Vec::new(),
            records: 0,
            raw_bytes: 0,
            failed: false,
            pm_devices: Default::default(),
            reserve: true,
            reserved: 0,
            in_trailer: false,
        };
        let json = header_json(info).to_string();
        format::encode_header(&json, &mut w.raw_buf);
        w.write_frame()?;
        Ok(w)
    }

    /// The trace file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Records written in whole chunks so far.
    pub fn records_written(&self) -> u64 {
        self.records
    }

    /// Queues one record; cuts a chunk when the chunk is full.
    pub fn append(&mut self, rec: Record) -> Result<(), TraceError> {
        if let Record::Drops(d) = rec {
            let e = self.drops.entry((d.source, d.cause)).or_insert(0);
            *e = (*e).max(d.count);
        }
        self.pending.push(rec);
        self.pending_len += 1;
        if self.pending_len >= self.options.chunk_records {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Queues every record of `recs` (see [`TraceWriter::append`]).
    pub fn append_all(&mut self, recs: impl IntoIterator<Item = Record>) -> Result<(), TraceError> {
        for r in recs {
            self.append(r)?;
        }
        Ok(())
    }

    /// Records queued for the next chunk.
    pub fn pending_records(&self) -> usize {
        self.pending_len
    }

    /// Writes the pending records as one chunk (or more, if one would exceed the frame limit).
    pub fn flush_chunk(&mut self) -> Result<(), TraceError> {
        if self.pending_len == 0 {
            return Ok(());
        }
        // The batch goes back, emptied, with its allocations: a fresh one regrew every kind's
        // vector from nothing each chunk (realloc copies and new pages: ~50 instructions per
        // record, callgrind, `tools/bench trace`).
        let mut batch = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let written = self.write_batch(&mut batch);
        batch.clear();
        self.pending = batch;
        written
    }

    fn write_batch(&mut self, batch: &mut RecordBatch) -> Result<(), TraceError> {
        let seq = self.seq;
        let strings = self.chunk_strings(batch, seq);
        let refs: Vec<(u32, &str)> = strings.iter().map(|(i, s)| (*i, &**s)).collect();
        let digest = self.options.digest.then(|| ChunkDigest::build(batch, &refs, &mut self.pm_devices));
        let encode_digest =
            digest.as_ref().map(|d| move |out: &mut Vec<u8>, scratch: &mut Vec<Vec<u8>>| d.encode(out, scratch));
        let encode_digest: Option<format::EncodeSection<'_>> = encode_digest.as_ref().map(|f| f as _);
        format::encode_chunk(seq, batch, &refs, encode_digest, &mut self.raw_buf, &mut self.column_bufs);
        if self.raw_buf.len() as u64 > MAX_FRAME_BYTES && batch.len() > 1 {
            // Rare (huge names or values): split and let each half carry its own strings.
            let mut second = batch.split_half();
            self.forget_strings(&strings, seq);
            self.write_batch(batch)?;
            return self.write_batch(&mut second);
        }
        let (min_ts, max_ts) = batch.time_range().unwrap_or((0, 0));
        let offset = self.offset;
        let raw_len = self.raw_buf.len() as u64;
        let compressed_len = self.write_frame()?;
        self.chunks.push(ChunkMeta {
            seq,
            offset,
            compressed_len,
            raw_len,
            min_ts,
            max_ts,
            counts: Kind::ALL.iter().map(|k| batch.count(*k) as u64).collect(),
        });
        self.seq += 1;
        self.records += batch.len() as u64;
        self.raw_bytes += batch.raw_bytes() as u64;
        Ok(())
    }

    /// Strings referred to by `batch` that this chunk must carry.
    fn chunk_strings(&mut self, batch: &RecordBatch, seq: u32) -> Vec<(u32, Arc<str>)> {
        let mark = seq + 1;
        let mut ids = Vec::new();
        // Ids the interner never handed out have no string to carry (and must not size the
        // mark table: a collector bug could put any u32 there).
        let known = self.strings.len();
        let marks = &mut self.string_mark;
        batch.for_each_string_ref(&mut |id| {
            if id == 0 {
                return;
            }
            let i = id as usize;
            if i >= known {
                return;
            }
            if i >= marks.len() {
                marks.resize(i + 1, 0);
            }
            if marks[i] != mark {
                marks[i] = mark;
                ids.push(id);
            }
        });
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.strings.get(id).map(|s| (id, s))).collect()
    }

    fn forget_strings(&mut self, strings: &[(u32, Arc<str>)], seq: u32) {
        for (id, _) in strings {
            if self.string_mark.get(*id as usize) == Some(&(seq + 1)) {
                self.string_mark[*id as usize] = 0;
            }
        }
    }

    /// Compresses `raw_buf` into one frame and appends it. Returns the compressed length.
    fn write_frame(&mut self) -> Result<u64, TraceError> {
        if self.failed {
            return Err(TraceError::Writer {
                what: format!("{}: an earlier write failed; the file holds every chunk before it", self.path.display()),
            });
        }
        let bound = zstd::zstd_safe::compress_bound(self.raw_buf.len());
        self.comp_buf.clear();
        self.comp_buf.reserve(bound);
        self.compressor
            .compress_to_buffer(&self.raw_buf, &mut self.comp_buf)
            .map_err(|e| TraceError::Writer { what: format!("zstd compression: {e}") })?;
        self.write_raw_comp()?;
        self.frames.push((self.comp_buf.len() as u32, self.raw_buf.len() as u32));
        Ok(self.comp_buf.len() as u64)
    }

    fn write_raw_comp(&mut self) -> Result<(), TraceError> {
        let len = self.comp_buf.len() as u64;
        let written = self.reserve_for(len).and_then(|_| self.file.write_all(&self.comp_buf));
        if let Err(e) = written {
            self.failed = true;
            let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
                " (disk full: the file is readable up to its last whole chunk)"
            } else {
                ""
            };
            return Err(TraceError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(e.kind(), format!("{e}{hint}")),
            });
        }
        self.offset += len;
        self.reserved = self.reserved.saturating_sub(len);
        Ok(())
    }

    /// Most bytes the trailer can take: a chunk of drop counters, the index and the seek table
    /// (their raw sizes, compressed at worst a little larger).
    fn trailer_bound(&self) -> u64 {
        let kinds = Kind::ALL.len() as u64;
        let chunks = self.chunks.len() as u64 + 1;
        let index = 16 + 2 * kinds + chunks * (44 + 8 * kinds) + 4 + 16 * 64;
        let seek = 17 + 8 * (self.frames.len() as u64 + 3);
        let bound = |n: u64| n + n / 128 + 1024;
        bound(16 << 10) + bound(index) + seek
    }

    /// Allocates the disk space for `len` more bytes and the trailer after them before they are
    /// written: when the disk is full this fails with nothing written, and the space for the
    /// trailer, allocated by the previous call, is still there for [`TraceWriter::finish_failed`].
    fn reserve_for(&mut self, len: u64) -> std::io::Result<()> {
        if !self.reserve || self.in_trailer {
            return Ok(());
        }
        let want = len + self.trailer_bound();
        if want <= self.reserved {
            return Ok(());
        }
        // Reserve RESERVE_AHEAD more than needed, so that most chunks find their space already
        // kept: one fallocate per chunk was ~0.3 ms each on this VM's ext4 (strace -T, `tools/bench
        // trace`). When the disk cannot give that much, the exact need is tried: a full disk
        // stops the writer at the same chunk as before.
        let fallocate = |fd: i32, offset: u64, bytes: u64| {
            // SAFETY: fallocate on our own descriptor; KEEP_SIZE leaves the file's size as it is.
            unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, offset as i64, bytes as i64) }
        };
        let fd = self.file.as_raw_fd();
        let ahead = self.options.reserve_ahead;
        let tries = [want.saturating_add(ahead), want];
        for &bytes in &tries[usize::from(ahead == 0)..] {
            if fallocate(fd, self.offset, bytes) == 0 {
                self.reserved = bytes;
                return Ok(());
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSPC) {
                break;
            }
            if bytes > want {
                // A failed fallocate may have kept part of the range: what lies past the need
                // goes back at once, not at the end (the job may need that disk).
                // SAFETY: as above; punching past the end frees preallocated blocks only.
                unsafe {
                    libc::fallocate(
                        fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        (self.offset + want) as i64,
                        ahead as i64,
                    )
                };
            }
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return Err(e);
        }
        // EOPNOTSUPP (no preallocation here) and the like: write without a reserve.
        self.reserve = false;
        Ok(())
    }

    /// Gives back what is left of the reserve past the end of the finished file.
    fn release_reserve(&mut self) {
        if self.reserve && self.reserved > 0 {
            // SAFETY: as in reserve_for; punching past the end frees the preallocated blocks.
            unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    self.offset as i64,
                    self.reserved as i64,
                );
            }
            self.reserved = 0;
        }
    }

    /// After a failed write (a full disk): writes `drops` (the final counters, which count the
    /// records that never reached the file) as one last chunk, then the index and seek table,
    /// over whatever the failed write left after the last whole frame, in the space kept for
    /// them; the file is then finalized with every chunk written before the failure.
    pub fn finish_failed(mut self, drops: impl IntoIterator<Item = Record>) -> Result<WriteSummary, TraceError> {
        self.failed = false;
        self.in_trailer = true;
        // records of the chunk that failed: the caller counted them as lost
        self.pending.clear();
        self.pending_len = 0;
        self.file.seek(SeekFrom::Start(self.offset)).map_err(|e| TraceError::io(&self.path, e))?;
        for d in drops {
            self.append(d)?;
        }
        self.finish()
    }

    /// Flushes the last chunk, writes the index and the seek table and syncs the file.
    pub fn finish(mut self) -> Result<WriteSummary, TraceError> {
        self.flush_chunk()?;
        self.in_trailer = true;
        let summary = IndexSummary {
            chunks: std::mem::take(&mut self.chunks),
            drops: self.drops.iter().map(|((s, c), n)| (*s, *c, *n)).collect(),
        };
        format::encode_index(&summary, &mut self.raw_buf);
        self.write_frame()?;
        format::encode_seek_table(&self.frames, &mut self.comp_buf);
        self.write_raw_comp()?;
        self.release_reserve();
        // (after a failed write: cuts what it left past the trailer)
        self.file.set_len(self.offset).map_err(|e| TraceError::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| TraceError::io(&self.path, e))?;
        Ok(WriteSummary {
            records: self.records,
            chunks: summary.chunks.len(),
            raw_bytes: self.raw_bytes,
            compressed_bytes: self.offset,
        })
    }
}

fn header_json(info: &TraceInfo) -> serde_json::Value {
    let created_unix_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut m = serde_json::Map::new();
    m.insert("ghostprof_version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert("format".into(), format!("{}.{}", format::FORMAT_MAJOR, format::FORMAT_MINOR).into());
    m.insert("created_unix_ns".into(), created_unix_ns.into());
    m.insert("clock".into(), "CLOCK_MONOTONIC".into());
    m.insert("hostname".into(), hostname().into());
    if let Some(id) = host_id() {
        m.insert("host_id".into(), id.into());
    }
    m.insert("command".into(), info.command.clone().into());
    m.insert("target_pids".into(), info.target_pids.clone().into());
    for (k, v) in &info.extra {
        m.insert(k.clone(), v.clone());
    }
    m.insert("schema".into(), format::schema_json());
    serde_json::Value::Object(m)
}

/// The host's identity, for aligning the clocks of traces from several hosts: systemd's
/// `/etc/machine-id`, else this boot's id (a boot id changes at reboot: still one per host and
/// recording). At most 64 bytes of one line.
fn host_id() -> Option<String> {
    ["/etc/machine-id", "/proc/sys/kernel/random/boot_id"].iter().find_map(|p| {
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut std::fs::File::open(p).ok()?, &mut buf).ok()?;
        let id = std::str::from_utf8(&buf[..n]).ok()?.trim();
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then(|| id.to_string())
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}
