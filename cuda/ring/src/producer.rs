//! The producer side, inside the target process: creates the ring file and pushes records
//! without ever blocking. Full ring → the record is counted as dropped.

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use memmap2::MmapMut;

use crate::layout::{Header, DATA_OFFSET, HEADER_BYTES, MAGIC, MAX_RECORD_BYTES, VERSION};
use crate::{frame_bytes, FRAME_HEADER, KIND_PAD};

/// The producer (the injected library's) side of one ring: records pushed without blocking,
/// dropped and counted when the ring is full.
pub struct Producer {
    map: MmapMut,
    capacity: u64,
    /// The consumer's tail as last read. It only grows, so a stale value under-states the free
    /// space and is safe; it is re-read only when a record does not fit by it. Reading the
    /// shared tail on every push (a cache line the consumer writes) was most of a push's cost.
    cached_tail: u64,
    /// (device, inode) of the ring file, to remove it at exit only if it is still ours.
    identity: (u64, u64),
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
        let capacity = capacity.max(4096).next_power_of_two();
        let (tmp, file) = create_temp(path)?;
        let made = Self::fill(&file, capacity, prefault).and_then(|map| {
            refuse_foreign_name(path)?;
            // rename replaces whatever is at `path` itself (a planted symlink too), never its
            // target; in a sticky directory it fails on another user's file.
            std::fs::rename(&tmp, path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot put the ring in place at {}: {e}", path.display()))
            })?;
            Ok(map)
        });
        match made {
            Ok(map) => {
                let meta = file.metadata()?;
                Ok(Producer { map, capacity: capacity as u64, cached_tail: 0, identity: (meta.dev(), meta.ino()) })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Sizes and maps the fresh file and writes its header.
    fn fill(file: &std::fs::File, capacity: usize, prefault: bool) -> std::io::Result<MmapMut> {
        file.set_len((HEADER_BYTES + capacity) as u64)?;
        // SAFETY: a fresh file of the right size that we own; the consumer only maps it after
        // the rename, when the header is complete.
        let mut map = unsafe { MmapMut::map_mut(file)? };
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
        Ok(map)
    }

    /// Removes the ring file at `path` if it is still the file this producer created (not one
    /// put there since); true when removed. Never follows a symlink.
    pub fn remove_if_ours(&self, path: &Path) -> bool {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_file() && (m.dev(), m.ino()) == self.identity => {
                std::fs::remove_file(path).is_ok()
            }
            _ => false,
        }
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

/// Creates a fresh temporary file next to `path`, mode 0600, under a name nobody can predict
/// (pid and random bits), with O_EXCL|O_NOFOLLOW: a file or symlink planted in advance makes it
/// fail (and try another name), never write through it.
fn create_temp(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ring".into());
    let mut last = None;
    for _ in 0..16 {
        let tmp = path.with_file_name(format!("{name}.{}-{:016x}.tmp", std::process::id(), random_u64()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(std::io::Error::new(e.kind(), format!("cannot create {}: {e}", tmp.display())));
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Fails (without following anything) when the ring's final name is held by another user's
/// file: rename would fail on it in a sticky directory, and elsewhere it is not ours to replace.
fn refuse_foreign_name(path: &Path) -> std::io::Result<()> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.uid() != me => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} already exists and belongs to uid {} (a stale or planted file): remove it, or set \
                 GHOSTPROF_RING_DIR to a directory of your own",
                path.display(),
                m.uid()
            ),
        )),
        _ => Ok(()),
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into the buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, libc::GRND_NONBLOCK) };
    let mut v = u64::from_ne_bytes(b);
    if n != 8 {
        // No entropy yet (early boot): the clock's nanoseconds and a stack address.
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        v ^= (ts.tv_sec as u64).rotate_left(32) ^ ts.tv_nsec as u64 ^ (&b as *const _ as u64);
    }
    v
}

/// The pid a ring file or one of its temporary files in a ring directory belongs to
/// (`ghostprof-<pid>.ring`, `ghostprof-<pid>.ring.<…>.tmp`, or the old `ghostprof-<pid>.tmp`).
pub fn ring_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ghostprof-")?;
    let (pid, tail) = rest.split_at(rest.find('.')?);
    let ok = tail == ".ring" || tail == ".tmp" || (tail.starts_with(".ring.") && tail.ends_with(".tmp"));
    if !ok || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes the rings (and temporary files) in `dir` left by processes that are gone: only
/// regular files of this user (lstat: nothing is followed), only of dead pids. Returns how many
/// were removed.
pub fn sweep_stale(dir: &Path) -> usize {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(ring_file_pid) else { continue };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let path = e.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file() && m.uid() == me);
        if ours && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// False only when no process has this pid (kill(pid, 0) fails with ESRCH).
fn alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
