//! How many threads the analysis runs within the memory the process may use.
//!
//! Every analysis thread holds one decoded chunk at a time and its buffers (the chunk's frame,
//! compressed and decompressed; its records decoded; the sweep's ops of it): about 19 MiB for
//! a chunk of 131,072 kernels, whatever the trace's size ([`thread_bytes`]). Under a memory
//! limit, the cgroup's (v2 `memory.max`, v1 `memory.limit_in_bytes`, of this process's group
//! and the groups above it) or `RLIMIT_AS`, `--jobs` runs no more threads than the room left
//! holds ([`threads_within`]); the result does not depend on the number of threads, so it is
//! the same report, only slower. One thread always runs.

use crate::trace::{Kind, TraceReader};

/// Kept free under a limit beyond the threads' buffers: the page cache the reads need in
/// flight, the allocator's slack, the thread stacks, what the results grow to.
const MARGIN_BYTES: u64 = 8 << 20;

/// Address space one more thread takes under `RLIMIT_AS` beyond its buffers: its stack and
/// the allocator's arena reserved for it (64 MiB with glibc).
const THREAD_SPACE_BYTES: u64 = 66 << 20;

/// Bytes of one sweep op (`sweep::Op`): the sweep holds a chunk's ops twice (incoming, carried).
const OP_BYTES: u64 = 32;

/// The most one analysis thread holds at a time for this file: its largest chunk's frame
/// (compressed and decompressed), records decoded and sweep ops.
pub fn thread_bytes(reader: &TraceReader) -> u64 {
    reader
        .chunks()
        .iter()
        .map(|c| {
            let (records, rows) = Kind::ALL.iter().zip(&c.counts).fold((0u64, 0u64), |(b, n), (k, &count)| {
                (b.saturating_add(count.saturating_mul(k.record_size() as u64)), n.saturating_add(count))
            });
            c.compressed_len
                .saturating_add(c.raw_len)
                .saturating_add(records)
                .saturating_add(rows.saturating_mul(2 * OP_BYTES))
        })
        .max()
        .unwrap_or(0)
}

/// What limits the memory of this process, and the room left under it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// bytes that more threads may take
    pub bytes: u64,
    /// bytes each more thread takes beyond its buffers (address space: its stack and arena)
    pub per_thread_extra: u64,
    /// "cgroup" or "RLIMIT_AS"
    pub source: &'static str,
}

/// The room left under this process's tightest memory limit now, or None without a limit.
pub fn room() -> Option<Room> {
    let cgroup = cgroup_room().map(|bytes| Room { bytes, per_thread_extra: 0, source: "cgroup" });
    let address_space =
        address_space_room().map(|bytes| Room { bytes, per_thread_extra: THREAD_SPACE_BYTES, source: "RLIMIT_AS" });
    match (cgroup, address_space) {
        (Some(c), Some(a)) => Some(if a.bytes < c.bytes { a } else { c }),
        (c, a) => c.or(a),
    }
}

/// Up to `threads` threads that each hold `per_thread` bytes, no more than `room` holds (at
/// least one).
pub fn threads_within(threads: usize, per_thread: u64, room: Option<Room>) -> usize {
    let Some(room) = room else { return threads.max(1) };
    let each = per_thread.saturating_add(room.per_thread_extra).max(1);
    let fit = room.bytes.saturating_sub(MARGIN_BYTES) / each;
    threads.min(usize::try_from(fit).unwrap_or(usize::MAX)).max(1)
}

/// The cgroup limit (the least of this group's and its ancestors') less the memory its
/// processes hold that cannot be reclaimed (anonymous), when there is a limit.
fn cgroup_room() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // v1 (a memory hierarchy of its own) first: where it is mounted, it is the one in force.
    let (root, path, limit_file, anon_key) =
        if let Some(p) = own.lines().find_map(|l| l.split_once(":memory:").map(|x| x.1.to_string())) {
            ("/sys/fs/cgroup/memory", p, "memory.limit_in_bytes", "total_rss")
        } else {
            let p = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
            ("/sys/fs/cgroup", p, "memory.max", "anon")
        };
    let own_dir = std::path::PathBuf::from(format!("{root}{path}"));
    let mut limit = u64::MAX;
    let mut dir = own_dir.as_path();
    loop {
        // "max" (v2) or a huge number (v1): no limit here
        if let Some(l) = std::fs::read_to_string(dir.join(limit_file)).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            limit = limit.min(l);
        }
        if dir == std::path::Path::new(root) {
            break;
        }
        match dir.parent() {
            Some(p) if p.starts_with(root) => dir = p,
            _ => break,
        }
    }
    // (v1 reports "no limit" as a page-rounded i64::MAX)
    if limit >= 1 << 60 {
        return None;
    }
    let stat = std::fs::read_to_string(own_dir.join("memory.stat")).unwrap_or_default();
    let anon = stat
        .lines()
        .find_map(|l| l.strip_prefix(anon_key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(own_anon_bytes);
    Some(limit.saturating_sub(anon))
}

/// `RLIMIT_AS` less the address space this process maps now, when there is a limit.
fn address_space_room() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let mapped = status_kib("VmSize:").saturating_mul(1024);
    Some(lim.rlim_cur.saturating_sub(mapped))
}

/// This process's anonymous resident memory, bytes.
fn own_anon_bytes() -> u64 {
    status_kib("RssAnon:").saturating_mul(1024)
}

/// A `kB` field of /proc/self/status, 0 when absent.
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_fit_the_room_and_one_always_runs() {
        let room = |mib: u64| Some(Room { bytes: mib << 20, per_thread_extra: 0, source: "cgroup" });
        assert_eq!(threads_within(4, 20 << 20, None), 4);
        assert_eq!(threads_within(4, 20 << 20, room(8 + 45)), 2);
        assert_eq!(threads_within(4, 20 << 20, room(8 + 39)), 1);
        assert_eq!(threads_within(4, 20 << 20, room(4)), 1);
        assert_eq!(threads_within(2, 20 << 20, room(1000)), 2);
        let space = Some(Room { bytes: 200 << 20, per_thread_extra: THREAD_SPACE_BYTES, source: "RLIMIT_AS" });
        assert_eq!(threads_within(8, 20 << 20, space), 2);
    }
}
