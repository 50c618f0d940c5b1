//! Errors of the trace format. Every decoding error names the byte offset where it was found,
//! so a corrupt file can be located with a hex dump.

use std::path::PathBuf;

/// A structural problem inside decompressed bytes; the offset is relative to the buffer the
/// decoder was given and is rebased to a file offset by the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub what: String,
}

impl DecodeError {
    pub fn new(offset: usize, what: impl Into<String>) -> Self {
        DecodeError { offset, what: what.into() }
    }
}

/// Everything that can go wrong reading or writing a trace file.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: empty file (0 bytes): nothing was recorded")]
    Empty { path: PathBuf },
    #[error("{path}: not a ghostprof trace ({why})")]
    NotATrace { path: PathBuf, why: String },
    #[error(
        "{path}: trace format version {found_major}.{found_minor}, this ghostprof reads version {supported_major}.x: use a ghostprof release that matches the recorder"
    )]
    Version { path: PathBuf, found_major: u16, found_minor: u16, supported_major: u16 },
    #[error("{path}: corrupt at byte {offset}: {what}")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("trace writer: {what}")]
    Writer { what: String },
}

impl TraceError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TraceError::Io { path: path.into(), source }
    }
}
