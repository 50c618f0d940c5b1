//! The flight recorder: `watch`'s rotating trace segments in one directory, with a hard cap on
//! the bytes they hold on disk and on their age (oldest deleted first), a pause instead of a
//! failure when the disk is full, and the trigger files made of the last segments.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pipeline::{Pipeline, PipelineOptions};
use crate::trace::{Interner, SessionNote, TraceInfo, TraceReader, TraceWriter, WriterOptions};

/// File name prefix of a segment (the recorder deletes only files it names this way).
pub const SEGMENT_PREFIX: &str = "ghostprof-seg-";
/// File name prefix of a trigger's trace.
pub const TRIGGER_PREFIX: &str = "ghostprof-trigger-";
/// The smallest `--max-disk` accepted.
pub const MIN_MAX_DISK: u64 = 64 << 10;
/// A segment is cut when it holds this share of `--max-disk`, so deleting whole old segments
/// keeps the directory under the cap.
pub const SEGMENT_SHARE: u64 = 16;
/// Free space below which no new segment is started (recording pauses, with a note).
pub const MIN_FREE_BYTES: u64 = 64 << 20;
/// Bytes a rotation may add at once: the new segment's header and reserve blocks, the old
/// one's trailer.
const ROTATION_SLACK: u64 = 16 << 10;
/// Closed segments remembered for triggers; older ones are still on disk until the caps
/// delete them (bounds the recorder's memory).
const MAX_REMEMBERED: usize = 4096;

/// A closed segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its file.
    pub path: PathBuf,
    /// Its first and last instant, CLOCK_MONOTONIC ns (when it was opened and closed).
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
}

/// The segments directory and its caps.
pub struct Recorder {
    dir: PathBuf,
    max_disk: u64,
    max_age: Duration,
    interner: Arc<Interner>,
    seq: u64,
    closed: VecDeque<Segment>,
    /// The open segments, oldest first (a rotation opens the next before it closes the last):
    /// path and when it was opened (None while paused: a pipeline into /dev/null).
    open: VecDeque<Option<(PathBuf, u64)>>,
    /// Whether recording is paused for lack of disk space, and why.
    pub paused: Option<String>,
    /// Notes for the session (pauses, deletions that failed), taken by the caller.
    pub notes: Vec<String>,
    /// Files deleted by the caps so far.
    pub deleted: u64,
    /// The largest growth of the open segment seen between two looks (one chunk and its
    /// preallocation): the caps keep this much room besides the segment's limit.
    largest_step: u64,
    last_open_bytes: u64,
}

/// Bytes a file holds on disk: its length or its allocated blocks (the writer preallocates).
fn disk_bytes(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.len().max(m.blocks().saturating_mul(512))
}

/// Milliseconds since the epoch, for file names that sort by time.
fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Free bytes of the filesystem holding `dir` (None when it cannot be asked).
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

impl Recorder {
    /// A recorder over `dir` (created 0700 if missing; a symlink or non-directory refused).
    pub fn new(dir: &Path, max_disk: u64, max_age: Duration, interner: Arc<Interner>) -> std::io::Result<Self> {
        crate::outfile::create_output_dir(dir, None)?;
        Ok(Recorder {
            dir: dir.to_path_buf(),
            max_disk: max_disk.max(MIN_MAX_DISK),
            max_age,
            interner,
            seq: 0,
            closed: VecDeque::new(),
            open: VecDeque::new(),
            paused: None,
            notes: Vec::new(),
            deleted: 0,
            largest_step: 0,
            last_open_bytes: 0,
        })
    }

    /// Size at which the open segment is cut.
    pub fn segment_limit(&self) -> u64 {
        self.max_disk / SEGMENT_SHARE
    }

    /// The closed segments remembered, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.closed.iter()
    }

    /// Opens the next segment (or, when the disk has too little free space, a pipeline into
    /// /dev/null and a pause note: recording resumes at a later rotation).
    pub fn open(&mut self, info: &TraceInfo) -> std::io::Result<Pipeline> {
        self.enforce(0);
        let free = free_bytes(&self.dir).unwrap_or(u64::MAX);
        if free < MIN_FREE_BYTES.min(self.segment_limit().max(1 << 20) * 2) {
            let why = format!(
                "recording paused: {} has {} free; the profiled jobs go on, recording resumes when space is free",
                self.dir.display(),
                crate::units::human_bytes(free)
            );
            if self.paused.is_none() {
                self.notes.push(why.clone());
            }
            self.paused = Some(why);
            self.open.push_back(None);
            return self.null_pipeline(info);
        }
        if self.paused.take().is_some() {
            self.notes.push(format!("recording resumed in {}", self.dir.display()));
        }
        self.seq += 1;
        let path = self.dir.join(format!("{SEGMENT_PREFIX}{:013}-{:06}.gptrace", unix_ms(), self.seq));
        match TraceWriter::create(&path, false, info, self.interner.clone(), segment_writer_options()) {
            Ok(w) => {
                self.last_open_bytes = 0;
                self.open.push_back(Some((path, crate::clock::monotonic_ns())));
                Ok(Pipeline::start(w, self.interner.clone(), PipelineOptions::default()))
            }
            Err(e) => {
                let why = format!("recording paused: cannot create a segment: {e}");
                if self.paused.is_none() {
                    self.notes.push(why.clone());
                }
                self.paused = Some(why);
                self.open.push_back(None);
                self.null_pipeline(info)
            }
        }
    }

    /// A pipeline whose records go nowhere (a paused recorder).
    fn null_pipeline(&self, info: &TraceInfo) -> std::io::Result<Pipeline> {
        let f = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        let w =
            TraceWriter::from_file(f, Path::new("/dev/null"), info, self.interner.clone(), segment_writer_options())
                .map_err(|e| std::io::Error::other(format!("/dev/null: {e}")))?;
        Ok(Pipeline::start(w, self.interner.clone(), PipelineOptions::default()))
    }

    /// Finishes `pipeline` (the oldest open segment) and remembers it; None for a paused one.
    pub fn close(&mut self, pipeline: Pipeline) -> Option<Segment> {
        let finished = pipeline.finish();
        let (path, start_ns) = self.open.pop_front()??;
        if let Err(e) = finished {
            self.notes.push(format!("segment {} ended with an error: {e}", path.display()));
        }
        let seg = Segment { path, start_ns, end_ns: crate::clock::monotonic_ns() };
        self.closed.push_back(seg.clone());
        while self.closed.len() > MAX_REMEMBERED {
            self.closed.pop_front();
        }
        Some(seg)
    }

    /// The recorder's files in the directory, oldest first within each kind, segments before
    /// triggers (deleted in that order), with the bytes each holds. Only regular files named by
    /// the recorder count; nothing else in the directory is touched.
    fn files(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<(u8, String, PathBuf, u64, SystemTime)> = Vec::new();
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else { continue };
            let kind = if name.starts_with(SEGMENT_PREFIX) {
                0
            } else if name.starts_with(TRIGGER_PREFIX) {
                1
            } else {
                continue;
            };
            if !name.ends_with(".gptrace") {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
            if !m.file_type().is_file() {
                continue;
            }
            out.push((kind, name, e.path(), disk_bytes(&m), m.modified().unwrap_or(UNIX_EPOCH)));
        }
        out.sort();
        out.into_iter().map(|(_, _, p, b, t)| (p, b, t)).collect()
    }

    /// Bytes the recorder's files hold now (the open segment included).
    pub fn disk_used(&self) -> u64 {
        self.files().iter().map(|f| f.1).sum()
    }

    /// Applies the caps: files older than `max_age` go, then the oldest until the files and
    /// `headroom` more bytes fit in `max_disk`. The open segment is never deleted.
    pub fn enforce(&mut self, headroom: u64) {
        let open: Vec<PathBuf> = self.open.iter().flatten().map(|o| o.0.clone()).collect();
        let files = self.files();
        let mut total: u64 = files.iter().map(|f| f.1).sum::<u64>().saturating_add(headroom);
        let now = SystemTime::now();
        for (path, bytes, modified) in files {
            if open.contains(&path) {
                continue;
            }
            let too_old = now.duration_since(modified).is_ok_and(|age| age > self.max_age);
            // Room is kept for the open segment to grow to its limit and one write past it
            // before the next look, and for the next segment's first blocks and this one's
            // trailer at a rotation.
            let room = self.segment_limit().saturating_add(self.largest_step).saturating_add(ROTATION_SLACK);
            if !too_old && total.saturating_add(room) <= self.max_disk {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total = total.saturating_sub(bytes);
                    self.deleted += 1;
                    self.closed.retain(|s| s.path != path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => self.notes.push(format!("cannot delete old segment {}: {e}", path.display())),
            }
        }
    }

    /// Bytes of the open segment on disk (0 when paused); remembers the largest growth seen.
    pub fn open_bytes(&mut self) -> u64 {
        let now = self
            .open
            .back()
            .and_then(|o| o.as_ref())
            .and_then(|o| std::fs::symlink_metadata(&o.0).ok())
            .map_or(0, |m| disk_bytes(&m));
        self.largest_step = self.largest_step.max(now.saturating_sub(self.last_open_bytes)).min(self.max_disk / 4);
        self.last_open_bytes = now;
        now
    }

    /// Writes one self-contained trace of the segments that overlap `[from_ns, to_ns]` (at most
    /// a quarter of `--max-disk` of them, newest kept), with `reason` as a note record. All
    /// segments share the recorder's string table, so their records' name ids are the same
    /// and every chunk of the new file carries the names it refers to.
    pub fn write_trigger(
        &mut self,
        reason: &str,
        from_ns: u64,
        to_ns: u64,
        info: &TraceInfo,
    ) -> anyhow::Result<PathBuf> {
        let mut chosen: Vec<&Segment> = Vec::new();
        let mut bytes = 0u64;
        for s in self.closed.iter().rev() {
            if s.end_ns < from_ns || s.start_ns > to_ns {
                continue;
            }
            let b = std::fs::symlink_metadata(&s.path).map(|m| m.len()).unwrap_or(0);
            if bytes + b > self.max_disk / 4 && !chosen.is_empty() {
                break;
            }
            bytes += b;
            chosen.push(s);
        }
        chosen.reverse();
        let paths: Vec<PathBuf> = chosen.iter().map(|s| s.path.clone()).collect();
        self.enforce(bytes);
        let slug: String = reason.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').take(24).collect();
        let path = self.dir.join(format!("{TRIGGER_PREFIX}{:013}-{slug}.gptrace", unix_ms()));
        let mut w = TraceWriter::create(&path, false, info, self.interner.clone(), segment_writer_options())?;
        for p in &paths {
            // A segment the caps deleted meanwhile is simply missing from the trigger's trace.
            let Ok(r) = TraceReader::open(p) else { continue };
            let mut failed = None;
            r.for_each_chunk(|c| {
                if failed.is_none() {
                    failed = w.append_all(c.records.iter()).err();
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        let text = format!(
            "trigger: {reason}; {} segment(s) covering the {:.1} s up to the trigger's end",
            paths.len(),
            to_ns.saturating_sub(from_ns) as f64 / 1e9
        );
        let text_id = self.interner.intern(&text);
        w.append(SessionNote { time_ns: crate::clock::monotonic_ns(), pid: 0, text_id }.into())?;
        w.finish()?;
        self.enforce(0);
        Ok(path)
    }
}

/// The writer's options for the recorder's files: no disk kept allocated ahead of a file's end,
/// since `--max-disk` counts allocated blocks and the writer's default reserve (8 MiB) would
/// hold far more than a small cap allows.
fn segment_writer_options() -> WriterOptions {
    WriterOptions { reserve_ahead: 0, ..WriterOptions::default() }
}
