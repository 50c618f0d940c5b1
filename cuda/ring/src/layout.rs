//! The header page, `#[repr(C)]`, shared by both sides. Fields the other side writes are only
//! touched through atomics; head, tail and the counters sit on separate cache lines so the two
//! processes don't false-share.

use std::sync::atomic::{AtomicU32, AtomicU64};

/// The header's first word: "GPRING01".
pub const MAGIC: u64 = u64::from_le_bytes(*b"GPRING01");
/// The protocol version in the header.
pub const VERSION: u32 = 1;
/// The header takes one page; data starts right after it.
pub const HEADER_BYTES: usize = 4096;
/// Where the data region starts in the file.
pub const DATA_OFFSET: usize = HEADER_BYTES;
/// Largest payload a record may have (a CUPTI kernel record is 208 bytes; names are ≤ 4 KiB).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// A value alone on its 64-byte cache line.
#[repr(C, align(64))]
pub struct CacheLine<T>(pub T);

/// The header page.
#[repr(C)]
pub struct Header {
    /// Immutable after creation (written by the producer before anyone maps the file).
    pub magic: u64,
    /// [`VERSION`].
    pub version: u32,
    /// [`HEADER_BYTES`].
    pub header_bytes: u32,
    /// Bytes of the data region, a power of two.
    pub capacity: u64,
    /// Pid of the process whose ring this is.
    pub producer_pid: u32,
    /// Zero.
    pub _reserved: u32,
    /// Bytes ever written (producer).
    pub head: CacheLine<AtomicU64>,
    /// Bytes ever consumed (consumer).
    pub tail: CacheLine<AtomicU64>,
    /// Records and bytes dropped because the ring was full (producer).
    pub dropped_records: CacheLine<AtomicU64>,
    /// Bytes of those records (producer).
    pub dropped_bytes: AtomicU64,
    /// Control word (consumer → producer): 1 = collect, 0 = dormant. A process started with
    /// the injection library and no profiler stays dormant and pays nothing.
    pub enabled: CacheLine<AtomicU32>,
    /// Pid of the attached consumer, 0 when none.
    pub consumer_pid: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);
const _: () = assert!(std::mem::offset_of!(Header, head) % 64 == 0);
const _: () = assert!(std::mem::offset_of!(Header, tail) - std::mem::offset_of!(Header, head) >= 64);
