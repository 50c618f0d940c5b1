//! Recording: the pipeline that carries records from collectors to the trace writer. Sessions
//! (record / attach) are built on it.

pub mod attach;
mod collectors;
pub mod pipeline;
pub mod session;

pub use pipeline::{Pipeline, PipelineOptions, PipelineStats, Producer};
