//! Errors of the trace format. Every decoding error names the byte offset where it was found,
//! so a corrupt file can be located with a hex dump.

use std::path::PathBuf;

/// A structural problem inside decompressed bytes; the offset is relative to the buffer the
/// decoder was given and is rebased to a file offset by the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset of the problem in the decoded buffer (a file offset once the reader rebased it).
    pub offset: usize,
    /// What is wrong.
    pub what: String,
}

impl DecodeError {
    /// An error at `offset` saying `what`.
    pub fn new(offset: usize, what: impl Into<String>) -> Self {
        DecodeError { offset, what: what.into() }
    }
}

/// Everything that can go wrong reading or writing a trace file.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The trace file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file has no bytes at all.
    #[error("{path}: empty file (0 bytes): nothing was recorded")]
    Empty {
        /// The trace file.
        path: PathBuf,
    },
    /// The file does not start like a ghostprof trace.
    #[error("{path}: not a ghostprof trace ({why})")]
    NotATrace {
        /// The file.
        path: PathBuf,
        /// What did not match.
        why: String,
    },
    /// The file's major format version is not the one this build reads.
    #[error(
        "{path}: trace format version {found_major}.{found_minor}, this ghostprof reads version {supported_major}.x: use a ghostprof release that matches the recorder"
    )]
    Version {
        /// The trace file.
        path: PathBuf,
        /// The file's major version.
        found_major: u16,
        /// The file's minor version.
        found_minor: u16,
        /// The major version this build reads.
        supported_major: u16,
    },
    /// The file's structure is broken at `offset`.
    #[error("{path}: corrupt at byte {offset}: {what}")]
    Corrupt {
        /// The trace file.
        path: PathBuf,
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// Another failure: the compressor, the writer thread, or a request for a chunk that does not exist.
    #[error("trace writer: {what}")]
    Writer {
        /// What happened.
        what: String,
    },
}

impl TraceError {
    /// A [`TraceError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TraceError::Io { path: path.into(), source }
    }
}
