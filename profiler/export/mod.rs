//! Exports of a trace to other tools' formats. [`chrome`]: Chrome trace event JSON in the shape
//! PyTorch's profiler (Kineto) writes, for Perfetto UI, chrome://tracing and Holistic Trace
//! Analysis (docs/export.md). [`parquet`]: the analysis `report` makes, as Parquet tables for
//! fleet analysis (docs/parquet-schema.md).

pub mod chrome;
pub mod parquet;

pub use self::parquet::{export_parquet, ParquetOptions, ParquetSummary};
pub use chrome::{export_chrome, ChromeOptions, ExportSummary, ExportedFile};
