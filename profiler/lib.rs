//! ghostprof: a GPU-native eBPF + CUPTI profiler that measures how far a GPU's busy time
//! diverges from its useful time, and where the difference went.
//!
//! Map of the crate (docs/architecture.md tells how the parts fit):
//! - [`trace`]: the event model and the compressed, chunked trace file (writer and reader);
//! - [`pipeline`]: producers, bounded queues and the writer thread that carry records to the
//!   trace writer (below both the collectors and the sessions);
//! - [`collect`]: collectors (eBPF skeletons and their loaders, the CUPTI ring, NVML);
//! - [`inject`]: live injection of the CUPTI library into a running process (ptrace);
//! - [`record`]: recording sessions (record / attach), which assemble collectors and pipeline;
//! - [`analyze`]: the accounting, a pure function of trace records;
//! - [`report`]: text and JSON reports of the accounting;
//! - [`export`]: the trace in other tools' formats (Chrome trace JSON for Perfetto and HTA);
//! - [`cli`]: the command line (the only module that knows clap).

pub mod analyze;
pub mod cli;
pub mod clock;
pub mod collect;
pub mod export;
pub mod inject;
pub mod outfile;
pub mod pipeline;
pub mod record;
pub mod report;
pub mod trace;
pub mod units;
