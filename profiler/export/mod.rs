//! Exports of a trace to other tools' formats. [`chrome`]: Chrome trace event JSON in the shape
//! PyTorch's profiler (Kineto) writes, for Perfetto UI, chrome://tracing and Holistic Trace
//! Analysis (docs/export.md).

pub mod chrome;

pub use chrome::{export_chrome, ChromeOptions, ExportSummary, ExportedFile};
