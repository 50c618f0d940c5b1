//! The consumer side, in ghostprof: maps a ring file it does not trust and pops records,
//! validating everything the producer wrote.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use memmap2::MmapMut;

use crate::layout::{Header, DATA_OFFSET, HEADER_BYTES, MAGIC, MAX_RECORD_BYTES, VERSION};
use crate::{FRAME_HEADER, KIND_PAD};

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a ghostprof ring ({what})")]
    NotARing { path: PathBuf, what: String },
    /// The producer wrote something impossible. The consumer skips everything written so far
    /// (counted in `corrupt_bytes`) and goes on; the error tells what was wrong.
    #[error("ring corrupt at byte {position}: {what}")]
    Corrupt { position: u64, what: String },
}

/// One record popped from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Popped {
    pub kind: u16,
    pub payload: Vec<u8>,
}

pub struct Consumer {
    map: MmapMut,
    path: PathBuf,
    capacity: u64,
    /// Bytes skipped because they could not be valid records.
    pub corrupt_bytes: u64,
}

impl Consumer {
    /// Maps the ring at `path`, checking its header, and switches collection on.
    pub fn open(path: &Path) -> Result<Self, ConsumerError> {
        let io = |source| ConsumerError::Io { path: path.to_path_buf(), source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let not = |what: String| ConsumerError::NotARing { path: path.to_path_buf(), what };
        if len < HEADER_BYTES as u64 {
            return Err(not(format!("{len} bytes, shorter than its header")));
        }
        // SAFETY: a shared mapping of a file another process writes. Everything read from it
        // goes through the checks below; a producer that truncates the file could still raise
        // SIGBUS, which is why ghostprof only opens rings created mode 0600 in /dev/shm by the
        // job's own injection library.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io)?;
        // SAFETY: the mapping is page-aligned and at least HEADER_BYTES long.
        let h = unsafe { &*map.as_ptr().cast::<Header>() };
        if h.magic != MAGIC {
            return Err(not("magic GPRING01 missing".into()));
        }
        if h.version != VERSION {
            return Err(not(format!("ring version {}, this ghostprof reads {VERSION}", h.version)));
        }
        let capacity = h.capacity;
        if h.header_bytes as usize != HEADER_BYTES
            || capacity < 4096
            || !capacity.is_power_of_two()
            || len != HEADER_BYTES as u64 + capacity
        {
            return Err(not(format!("header claims {capacity} data bytes in a {len}-byte file")));
        }
        let c = Consumer { map, path: path.to_path_buf(), capacity, corrupt_bytes: 0 };
        c.header().consumer_pid.store(std::process::id(), Ordering::Relaxed);
        c.header().enabled.0.store(1, Ordering::Release);
        Ok(c)
    }

    fn header(&self) -> &Header {
        // SAFETY: checked in open; shared fields are atomics.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Switches collection off (the producer goes dormant) and forgets the consumer.
    pub fn detach(&self) {
        self.header().enabled.0.store(0, Ordering::Release);
        self.header().consumer_pid.store(0, Ordering::Relaxed);
    }

    /// Records the producer dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.header().dropped_records.0.load(Ordering::Relaxed)
    }

    /// Pops every complete record available now into `out` (at most what was there when the
    /// call began). On corruption, skips to the producer's head and returns the error after
    /// keeping the records before it.
    pub fn drain(&mut self, out: &mut Vec<Popped>) -> Result<usize, ConsumerError> {
        let h = self.header();
        let head = h.head.0.load(Ordering::Acquire);
        let mut tail = h.tail.0.load(Ordering::Relaxed);
        let available = head.wrapping_sub(tail);
        if available > self.capacity {
            return Err(self.resync(head, tail, format!("head {head} is {available} bytes past tail {tail}")));
        }
        let mut n = 0;
        while tail != head {
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
