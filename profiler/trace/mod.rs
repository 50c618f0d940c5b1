//! The trace file: the event model ([`records`]), its column codecs ([`columns`]), the on-disk
//! layout ([`format`](mod@format), spec in docs/trace-format.md), and the [`writer`] and
//! [`reader`]. One decoder serves live recording and offline review. [`classify`] holds the
//! rules that sort records (checkpoint syscalls, collective kernel names) for the digest and the
//! analysis.
//!
//! This module imports nothing of the crate above it: only `trace` itself and the base modules
//! `clock`, `units` and `outfile`.

pub mod classify;
pub mod columns;
pub mod dense;
pub mod digest;
pub mod error;
pub mod format;
pub mod frames;
pub mod reader;
pub mod records;
pub mod strings;
pub mod summary;
pub mod synth;
pub mod writer;

pub use classify::{is_checkpoint_syscall, is_collective_name, WRITE_SYSCALLS};
pub use dense::{DenseMap, DENSE_IDS};
pub use error::{DecodeError, TraceError};
pub use format::{Chunk, ChunkMeta};
pub use reader::{Scratch, TraceHeader, TraceReader};
pub use records::*;
pub use strings::{Interner, NameBudget, NameLimits, SourceBudgets, NAME_LIMIT};
pub use writer::{TraceInfo, TraceWriter, WriteSummary, WriterOptions};
