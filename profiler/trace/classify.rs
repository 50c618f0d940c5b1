//! Record classification: which syscalls of a file-I/O record are writes or checkpoint I/O,
//! and which kernel names are collectives. The trace's digest filters by these rules and the
//! analysis counts by them, so they live here, below both (the digest's [`DIGEST_VERSION`]
//! changes with them).
//!
//! [`DIGEST_VERSION`]: super::digest::DIGEST_VERSION

/// x86_64 syscall numbers of the write family (for telling checkpoint writes from reads).
pub const WRITE_SYSCALLS: &[i32] = &[1, 18, 20, 296, 328];

/// Syscalls counted as checkpoint I/O: the write family, fsync (74) and fdatasync (75), and
/// what rewriting a file costs besides: an open that truncates (open 2, openat 257, creat 85:
/// the sched program records only truncating ones), ftruncate (77), fallocate (285).
pub fn is_checkpoint_syscall(nr: i32) -> bool {
    WRITE_SYSCALLS.contains(&nr) || matches!(nr, 74 | 75 | 2 | 257 | 85 | 77 | 285)
}

/// Whether a kernel name is a collective's (an NCCL kernel: `ncclKernel_…`, `ncclDevKernel_…`).
pub fn is_collective_name(name: &str) -> bool {
    name.as_bytes().get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"nccl"))
}
