//! The shared-memory ring that carries records from ghostprof's CUPTI injection library, inside
//! the training process, to the profiler: one producer (the target), one consumer (ghostprof).
//!
//! ```text
//! page 0   header: magic, version, capacity; head, tail and counters each on its own cache line
//! page 1…  data: capacity bytes (a power of two) of framed records
//! ```
//!
//! A record is framed as `len u32 (header + payload, exact), kind u16, reserved u16, payload`, and
//! the next frame starts at the next multiple of 8 bytes; a record
//! never wraps: when it does not fit before the end, the producer writes a padding frame
//! (kind 0) and starts again at offset 0. `head` and `tail` are byte counters that only grow.
//!
//! The two sides trust each other very differently. The producer runs inside the user's job,
//! so it **never blocks and never fails loudly**: when the ring is full it counts the record as
//! dropped. The consumer treats the whole mapping as **untrusted input**: a dying or hostile
//! writer may leave any bytes in any field, and the consumer validates every position and
//! length, never reads outside the mapping, never allocates more than one record's payload
//! (bounded by [`MAX_RECORD_BYTES`]) and never loops longer than the bytes it saw.

mod consumer;
mod layout;
mod producer;
mod sigbus;
pub mod wire;

pub use consumer::{Consumer, ConsumerError, Popped, MAX_CAPACITY, MAX_DRAIN_BYTES};
pub use layout::{Header, DATA_OFFSET, HEADER_BYTES, MAGIC, MAX_RECORD_BYTES, VERSION};
pub use producer::{ring_file_pid, sweep_stale, Producer};

/// Data bytes of the rings the injection library creates (64 MiB), and the most the consumer
/// accepts ([`MAX_CAPACITY`]).
pub const RING_BYTES: usize = 64 << 20;

/// Frame header bytes (len u32, kind u16, reserved u16).
pub const FRAME_HEADER: usize = 8;
/// Kind of a padding frame.
pub const KIND_PAD: u16 = 0;

/// Bytes a payload of `n` bytes takes in the ring.
pub const fn frame_bytes(n: usize) -> usize {
    (FRAME_HEADER + n + 7) & !7
}

#[cfg(test)]
mod tests;
