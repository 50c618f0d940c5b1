//! The producer side, inside the target process: creates the ring file and pushes records
//! without ever blocking. Full ring → the record is counted as dropped.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::Ordering;

use memmap2::MmapMut;

use crate::layout::{Header, DATA_OFFSET, HEADER_BYTES, MAGIC, MAX_RECORD_BYTES, VERSION};
use crate::{frame_bytes, FRAME_HEADER, KIND_PAD};

pub struct Producer {
    map: MmapMut,
    capacity: u64,
    /// The consumer's tail as last read. It only grows, so a stale value under-states the free
    /// space and is safe; it is re-read only when a record does not fit by it. Reading the
    /// shared tail on every push (a cache line the consumer writes) was most of a push's cost.
    cached_tail: u64,
}

impl Producer {
    /// Creates (or replaces) the ring file at `path` with a data region of `capacity` bytes
    /// (rounded up to a power of two, at least 4 KiB). Mode 0600: only the job's user and
    /// root can read what the job records.
    pub fn create(path: &Path, capacity: usize) -> std::io::Result<Self> {
        Self::create_with(path, capacity, false)
    }

    /// [`Producer::create`], and with `prefault` the ring's pages are allocated and mapped now
    /// (`MADV_POPULATE_WRITE`, Linux ≥ 5.14; ignored where unsupported) rather than by the first
    /// push into each page: for a process that records from its start, this takes the ~16 k
    /// first-touch faults of a 64 MiB ring off the record path. A dormant process should not:
    /// it would hold the ring's memory without using it.
    pub fn create_with(path: &Path, capacity: usize, prefault: bool) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let capacity = capacity.max(4096).next_power_of_two();
        let tmp = path.with_extension("tmp");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.set_len((HEADER_BYTES + capacity) as u64)?;
        // SAFETY: a fresh file of the right size that we own; the consumer only maps it after
        // the rename below, when the header is complete.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        {
            let h = map.as_mut_ptr().cast::<Header>();
            // SAFETY: the mapping is page-aligned, zero-filled and HEADER_BYTES ≥ size_of::<Header>().
            unsafe {
                (*h).magic = MAGIC;
                (*h).version = VERSION;
                (*h).header_bytes = HEADER_BYTES as u32;
                (*h).capacity = capacity as u64;
                (*h).producer_pid = std::process::id();
            }
        }
        if prefault {
            let _ = map.advise(memmap2::Advice::PopulateWrite);
        }
        std::fs::rename(&tmp, path)?;
        Ok(Producer { map, capacity: capacity as u64, cached_tail: 0 })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header we initialized; shared fields are atomics.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// True when a consumer has switched collection on.
    pub fn enabled(&self) -> bool {
        self.header().enabled.0.load(Ordering::Acquire) != 0
    }

    /// Appends one record; returns false (and counts a drop) if it does not fit.
    pub fn push(&mut self, kind: u16, payload: &[u8]) -> bool {
        self.push_with(kind, payload.len(), |slot| slot.copy_from_slice(payload))
    }

    /// Appends one record of `len` bytes that `fill` writes in place (no intermediate copy);
    /// returns false (and counts a drop) if it does not fit, without calling `fill`. `fill` gets
    /// the record's bytes in the ring, whose previous contents are unspecified: it must write
    /// all of them.
    pub fn push_with(&mut self, kind: u16, len: usize, fill: impl FnOnce(&mut [u8])) -> bool {
        let h = self.header();
        let need = frame_bytes(len) as u64;
        if len > MAX_RECORD_BYTES || kind == KIND_PAD {
            h.dropped_records.0.fetch_add(1, Ordering::Relaxed);
            h.dropped_bytes.fetch_add(len as u64, Ordering::Relaxed);
            return false;
        }
        let head = h.head.0.load(Ordering::Relaxed);
        let at = head & (self.capacity - 1);
        let to_end = self.capacity - at;
        let pad = if need > to_end { to_end } else { 0 };
        // A consumer that wrote a bogus tail must not make us write out of bounds: the
        // arithmetic below only trusts `head`, which only we write.
        let fits = |tail: u64| {
            let used = head.wrapping_sub(tail);
            used <= self.capacity && self.capacity - used >= need + pad
        };
        if !fits(self.cached_tail) {
            let tail = h.tail.0.load(Ordering::Acquire);
            if !fits(tail) {
                h.dropped_records.0.fetch_add(1, Ordering::Relaxed);
                h.dropped_bytes.fetch_add(len as u64, Ordering::Relaxed);
                return false;
            }
            self.cached_tail = tail;
        }
        let mut pos = at as usize;
        if pad > 0 {
            self.write_frame_header(pos, pad as u32, KIND_PAD);
            pos = 0;
        }
        // The frame header carries the exact length; the stride is rounded up to 8 bytes.
        self.write_frame_header(pos, (FRAME_HEADER + len) as u32, kind);
        let start = DATA_OFFSET + pos + FRAME_HEADER;
        fill(&mut self.map[start..start + len]);
        self.header().head.0.store(head + pad + need, Ordering::Release);
        true
    }

    fn write_frame_header(&mut self, pos: usize, len: u32, kind: u16) {
        let at = DATA_OFFSET + pos;
        self.map[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.map[at + 4..at + 6].copy_from_slice(&kind.to_le_bytes());
        self.map[at + 6..at + 8].copy_from_slice(&0u16.to_le_bytes());
    }

    /// Records dropped so far because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.header().dropped_records.0.load(Ordering::Relaxed)
    }
}
