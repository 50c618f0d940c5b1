//! The shared-memory segment of one communicator: `/dev/shm/<name>` mapped by every rank.
//!
//! Layout: a header (`joined`, `left` counters) and, per rank, a slot with the sequence number of
//! its latest published collective and a ring of arrival times indexed by sequence. Ranks are
//! never more than one collective apart (each waits for all at every collective), so a small
//! ring cannot be overrun.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Arrival times kept per rank.
const RING: usize = 64;
/// Largest communicator supported.
pub const MAX_RANKS: usize = 256;
/// How long a rank waits for its peers before giving up (a peer died).
const PEER_TIMEOUT: Duration = Duration::from_secs(120);

#[repr(C)]
struct RankSlot {
    /// Sequence number + 1 of the last published collective (0 = none yet).
    published: AtomicU64,
    arrival_ns: [AtomicU64; RING],
}

#[repr(C)]
struct Header {
    joined: AtomicU64,
    left: AtomicU64,
    slots: [RankSlot; MAX_RANKS],
}

/// One rank's mapping of the segment.
pub struct Segment {
    header: *mut Header,
    name: CString,
    nranks: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for Segment {}

/// Why a segment operation failed.
#[derive(Debug)]
pub enum ShmError {
    /// open/ftruncate/mmap failed.
    Os(std::io::Error),
    /// A peer did not show up within the timeout.
    PeerTimeout,
}

impl Segment {
    /// Open (creating if needed) the segment `name`, and wait until all `nranks` ranks joined.
    pub fn join(name: &str, nranks: usize) -> Result<Self, ShmError> {
        let c_name = CString::new(name).map_err(|e| ShmError::Os(std::io::Error::other(e)))?;
        let size = std::mem::size_of::<Header>();
        // SAFETY: shm_open/ftruncate/mmap with checked results; every rank truncates to the
        // same size, and the fresh segment is zeroed, which is a valid initial Header.
        let header = unsafe {
            let fd = libc::shm_open(c_name.as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o600);
            if fd < 0 {
                return Err(ShmError::Os(std::io::Error::last_os_error()));
            }
            if libc::ftruncate(fd, size as libc::off_t) != 0 {
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(ShmError::Os(err));
            }
            let ptr =
                libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            libc::close(fd);
            if ptr == libc::MAP_FAILED {
                return Err(ShmError::Os(std::io::Error::last_os_error()));
            }
            ptr as *mut Header
        };
        let segment = Self { header, name: c_name, nranks };
        segment.header().joined.fetch_add(1, Ordering::SeqCst);
        wait_for(|| segment.header().joined.load(Ordering::SeqCst) >= nranks as u64)?;
        Ok(segment)
    }

    fn header(&self) -> &Header {
        // SAFETY: mapped for the lifetime of self.
        unsafe { &*self.header }
    }

    /// Publish this rank's device arrival time for collective `sequence`, then wait until all
    /// ranks have published theirs and return the latest arrival.
    pub fn arrive(&self, rank: usize, sequence: u64, arrival_ns: u64) -> Result<u64, ShmError> {
        let header = self.header();
        let index = (sequence % RING as u64) as usize;
        header.slots[rank].arrival_ns[index].store(arrival_ns, Ordering::Relaxed);
        header.slots[rank].published.store(sequence + 1, Ordering::Release);
        wait_for(|| (0..self.nranks).all(|r| header.slots[r].published.load(Ordering::Acquire) > sequence))?;
        Ok((0..self.nranks)
            .map(|r| header.slots[r].arrival_ns[index].load(Ordering::Relaxed))
            .max()
            .unwrap_or(arrival_ns))
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let last = self.header().left.fetch_add(1, Ordering::SeqCst) + 1 >= self.nranks as u64;
        // SAFETY: unmapping our own mapping; the last rank out removes the name.
        unsafe {
            libc::munmap(self.header as *mut libc::c_void, std::mem::size_of::<Header>());
            if last {
                libc::shm_unlink(self.name.as_ptr());
            }
        }
    }
}

/// Poll `ready` with short sleeps (the waiting thread is off-CPU, as NCCL's proxy would be
/// blocked), failing after [`PEER_TIMEOUT`].
fn wait_for(mut ready: impl FnMut() -> bool) -> Result<(), ShmError> {
    let start = std::time::Instant::now();
    let mut spins = 0u32;
    while !ready() {
        if start.elapsed() > PEER_TIMEOUT {
            return Err(ShmError::PeerTimeout);
        }
        // A few busy polls catch a peer that is microseconds away; then sleep.
        if spins < 100 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_ranks_meet_and_see_the_latest_arrival() {
        let name = format!("/gpusim-test-{}", std::process::id());
        let peer_name = name.clone();
        let peer = std::thread::spawn(move || {
            let seg = Segment::join(&peer_name, 2).expect("join");
            seg.arrive(1, 0, 5_000).expect("arrive")
        });
        let seg = Segment::join(&name, 2).expect("join");
        assert_eq!(seg.arrive(0, 0, 3_000).expect("arrive"), 5_000);
        assert_eq!(peer.join().expect("peer"), 5_000);
    }
}
