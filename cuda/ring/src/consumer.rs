//! The consumer side, in ghostprof: maps a ring file it does not trust and pops records,
//! validating everything the producer wrote.

use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use memmap2::MmapMut;

use crate::layout::{Header, DATA_OFFSET, HEADER_BYTES, MAGIC, MAX_RECORD_BYTES, VERSION};
use crate::sigbus;
use crate::{FRAME_HEADER, KIND_PAD};

/// The largest data region the consumer maps: the injection library's own ring size. A larger
/// ring is not one ghostprof's library made, and its pages would count against root
/// ghostprof's memory (a 1 GiB ring took it to 1.84 GB RSS), so it is refused.
pub const MAX_CAPACITY: u64 = crate::RING_BYTES as u64;
/// Bytes one `drain` call consumes at most; what is left stays in the ring for the next call,
/// so one ring cannot make a drain tick (and its batch of records) arbitrarily large.
pub const MAX_DRAIN_BYTES: u64 = 8 << 20;

/// Why a ring cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Opening, checking or mapping the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The ring file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a ring of this protocol (magic, version, sizes).
    #[error("{path}: not a ghostprof ring ({what})")]
    NotARing {
        /// The file.
        path: PathBuf,
        /// What did not match.
        what: String,
    },
    /// The file at the ring's name cannot be the traced process's own ring (a symlink, not a
    /// regular file, several hard links, another owner, too large); it was not mapped.
    #[error("{path}: refused: {what}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        what: String,
    },
    /// The producer wrote something impossible. The consumer skips everything written so far
    /// (counted in `corrupt_bytes`) and goes on; the error tells what was wrong.
    #[error("ring corrupt at byte {position}: {what}")]
    Corrupt {
        /// Stream position (bytes ever consumed) of the bad frame.
        position: u64,
        /// What was wrong with it.
        what: String,
    },
    /// The producer truncated the ring file under the mapping. The batch read in that drain
    /// is discarded and the ring yields nothing more.
    #[error("shrank its CUPTI ring: its device timeline ends here")]
    Shrunk,
}

/// One record popped from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Popped {
    /// The record's kind (the producer's tag).
    pub kind: u16,
    /// The record's bytes, as pushed.
    pub payload: Vec<u8>,
}

/// The consumer (ghostprof's) side of one ring: the file mapped, records drained in order.
pub struct Consumer {
    /// Declared before `map`: unregistered from the SIGBUS table before the mapping goes.
    guard: sigbus::Guard,
    map: MmapMut,
    path: PathBuf,
    capacity: u64,
    /// The file was shrunk under the mapping: nothing more is read.
    shrunk: bool,
    /// Bytes skipped because they could not be valid records.
    pub corrupt_bytes: u64,
}

impl Consumer {
    /// Maps the ring at `path`, checking its file and header, and switches collection on.
    /// Refuses anything but a regular file with one link (never through a symlink).
    pub fn open(path: &Path) -> Result<Self, ConsumerError> {
        Self::open_owned(path, None)
    }

    /// [`Consumer::open`], and the file's owner must be one of `owners` (when given): the uids
    /// of the process the ring's name claims it belongs to.
    pub fn open_owned(path: &Path, owners: Option<&[u32]>) -> Result<Self, ConsumerError> {
        let io = |source| ConsumerError::Io { path: path.to_path_buf(), source };
        let refuse = |what: String| ConsumerError::Refused { path: path.to_path_buf(), what };
        // lstat first: a FIFO, device or symlink is never opened at all.
        let before = std::fs::symlink_metadata(path).map_err(io)?;
        check_file(&before, owners).map_err(refuse)?;
        // O_NOFOLLOW: a symlink swapped in after the lstat fails (ELOOP); O_NONBLOCK: a FIFO
        // swapped in cannot hang the open. std adds O_CLOEXEC.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => refuse("a symbolic link (a ring is a regular file its process creates)".into()),
                _ => io(e),
            })?;
        let meta = file.metadata().map_err(io)?;
        if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
            return Err(refuse("replaced while it was being opened".into()));
        }
        check_file(&meta, owners).map_err(refuse)?;
        let len = meta.len();
        let not = |what: String| ConsumerError::NotARing { path: path.to_path_buf(), what };
        if len < HEADER_BYTES as u64 {
            return Err(not(format!("{len} bytes, shorter than its header")));
        }
        // The header is read with pread, not through a mapping: a ring claiming a huge capacity
        // is refused before anything is mapped.
        let mut page = vec![0u8; HEADER_BYTES];
        file.read_exact_at(&mut page, 0).map_err(io)?;
        // The producer writes the header in native byte order.
        let u32_at = |at: usize| u32::from_ne_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&page[at..at + 8]);
            u64::from_ne_bytes(b)
        };
        let magic = u64_at(std::mem::offset_of!(Header, magic));
        let version = u32_at(std::mem::offset_of!(Header, version)) as u64;
        let header_bytes = u32_at(std::mem::offset_of!(Header, header_bytes));
        let capacity = u64_at(std::mem::offset_of!(Header, capacity));
        if magic != MAGIC {
            return Err(not("magic GPRING01 missing".into()));
        }
        if version != VERSION as u64 {
            return Err(not(format!("ring version {version}, this ghostprof reads {VERSION}")));
        }
        if header_bytes as usize != HEADER_BYTES
            || capacity < 4096
            || !capacity.is_power_of_two()
            || len != HEADER_BYTES as u64 + capacity
        {
            return Err(not(format!("header claims {capacity} data bytes in a {len}-byte file")));
        }
        if capacity > MAX_CAPACITY {
            return Err(refuse(format!(
                "{capacity} data bytes, more than the {MAX_CAPACITY} of the injection library's rings"
            )));
        }
        // SAFETY: a shared mapping of a file another process writes. Everything read from it
        // goes through the checks in `drain`; a producer that truncates the file makes reads
        // past its new end fault, which the SIGBUS guard registered next turns into zero pages.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io)?;
        if map.len() as u64 != len {
            return Err(not(format!("mapped {} bytes of a {len}-byte file", map.len())));
        }
        let guard = sigbus::Guard::register(map.as_ptr(), map.len()).ok_or_else(|| {
            refuse(format!(
                "cannot guard its mapping against SIGBUS ({} rings open, or sigaction failed)",
                sigbus::SLOTS
            ))
        })?;
        let c = Consumer { guard, map, path: path.to_path_buf(), capacity, shrunk: false, corrupt_bytes: 0 };
        c.header().consumer_pid.store(std::process::id(), Ordering::Relaxed);
        c.header().enabled.0.store(1, Ordering::Release);
        if c.guard.poisoned() {
            return Err(ConsumerError::Shrunk);
        }
        Ok(c)
    }

    fn header(&self) -> &Header {
        // SAFETY: checked in open; shared fields are atomics.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// The ring file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Switches collection off (the producer goes dormant) and forgets the consumer.
    pub fn detach(&self) {
        self.header().enabled.0.store(0, Ordering::Release);
        self.header().consumer_pid.store(0, Ordering::Relaxed);
    }

    /// Switches collection back on after [`Consumer::detach`] (`ghostprof watch` duty-cycles
    /// CUPTI this way: the ring and the names the producer already sent stay valid).
    pub fn resume(&self) {
        self.header().consumer_pid.store(std::process::id(), Ordering::Relaxed);
        self.header().enabled.0.store(1, Ordering::Release);
    }

    /// Records the producer dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.header().dropped_records.0.load(Ordering::Relaxed)
    }

    /// Pops every complete record available now into `out` (at most what was there when the
    /// call began, and at most [`MAX_DRAIN_BYTES`] of it: the rest waits for the next call). On
    /// corruption, skips to the producer's head and returns the error after keeping the records
    /// before it. A ring shrunk under the mapping returns [`ConsumerError::Shrunk`] once, with
    /// nothing added to `out` (what was read may be zeros), and is empty from then on.
    pub fn drain(&mut self, out: &mut Vec<Popped>) -> Result<usize, ConsumerError> {
        if self.shrunk {
            return Ok(0);
        }
        let (kept, corrupt) = (out.len(), self.corrupt_bytes);
        let result = self.drain_some(out);
        // Checked after the copy: a fault during it patched zeros in, so the whole batch is
        // suspect.
        if self.guard.poisoned() {
            out.truncate(kept);
            self.corrupt_bytes = corrupt;
            self.shrunk = true;
            return Err(ConsumerError::Shrunk);
        }
        result
    }

    /// True once the producer shrank the ring (see [`ConsumerError::Shrunk`]).
    pub fn shrunk(&self) -> bool {
        self.shrunk || self.guard.poisoned()
    }

    fn drain_some(&mut self, out: &mut Vec<Popped>) -> Result<usize, ConsumerError> {
        let h = self.header();
        let head = h.head.0.load(Ordering::Acquire);
        let mut tail = h.tail.0.load(Ordering::Relaxed);
        let available = head.wrapping_sub(tail);
        if available > self.capacity {
            return Err(self.resync(head, tail, format!("head {head} is {available} bytes past tail {tail}")));
        }
        let start = tail;
        let mut n = 0;
        while tail != head && tail.wrapping_sub(start) < MAX_DRAIN_BYTES {
            let at = (tail & (self.capacity - 1)) as usize;
            let left = head.wrapping_sub(tail);
            let to_end = self.capacity as usize - at;
            if left < FRAME_HEADER as u64 || to_end < FRAME_HEADER {
                return Err(self.resync(head, tail, "a frame header does not fit".into()));
            }
            let base = DATA_OFFSET + at;
            let frame = &self.map[base..base + FRAME_HEADER];
            let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            let kind = u16::from_le_bytes([frame[4], frame[5]]);
            // `len` is exact; frames start 8-byte aligned, so the stride rounds it up.
            let stride = (len + 7) & !7;
            let bad = len < FRAME_HEADER
                || stride > to_end
                || stride as u64 > left
                || (kind != KIND_PAD && len > FRAME_HEADER + MAX_RECORD_BYTES);
            if bad {
                return Err(self.resync(head, tail, format!("frame of {len} bytes (kind {kind}) at offset {at}")));
            }
            if kind != KIND_PAD {
                let payload = self.map[base + FRAME_HEADER..base + len].to_vec();
                out.push(Popped { kind, payload });
                n += 1;
            }
            tail += stride as u64;
            // Free the space as we go, so a slow drain still lets the producer write.
            self.header().tail.0.store(tail, Ordering::Release);
        }
        Ok(n)
    }

    fn resync(&mut self, head: u64, tail: u64, what: String) -> ConsumerError {
        // Nothing between tail and head can be trusted: skip it all.
        let skipped = head.wrapping_sub(tail);
        self.corrupt_bytes = self.corrupt_bytes.saturating_add(skipped.min(self.capacity));
        self.header().tail.0.store(head, Ordering::Release);
        ConsumerError::Corrupt { position: tail, what }
    }
}

/// Why the file at a ring's name cannot be the ring of the process it names, if it cannot.
fn check_file(meta: &std::fs::Metadata, owners: Option<&[u32]>) -> Result<(), String> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err("a symbolic link (a ring is a regular file its process creates)".into());
    }
    if !kind.is_file() {
        return Err("not a regular file".into());
    }
    if meta.nlink() != 1 {
        // A hard link to someone else's file: the ring is created under a fresh name and
        // renamed, so it has exactly one link.
        return Err(format!("{} hard links (a ring has one)", meta.nlink()));
    }
    if let Some(owners) = owners {
        if !owners.contains(&meta.uid()) {
            return Err(format!("owned by uid {}, not by the process it names (uid {owners:?})", meta.uid()));
        }
    }
    Ok(())
}
