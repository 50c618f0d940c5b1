//! Analysis: a pure function of trace records (definitions: docs/metrics.md). For each
//! device of each process over a window: busy, MFU, divergence, and the eight [`Category`]s
//! that sum to the window; with the details, per-step and per-bin accounting, top kernels,
//! idle gaps with their reason, checkpoint I/O and what a late rank was doing.
//!
//! Layout, each file using only the ones above it (no circle):
//! - [`model`]: the categories, options and result types (no records);
//! - `inputs`: record selection (collectives' waits, blocked intervals, PM samples,
//!   checkpoint I/O, the window's end); [`steps`] finds steps, `flops` FLOP attribution,
//!   [`peak`] the peak FLOP/s table, [`host`] each process's host figures;
//! - `sweep`: the sweep of one device's window, fed slice by slice; `plan`: the ONE
//!   builder of a device's sweep plan (window, steps NVTX > regex > periodicity, bins), which
//!   both paths below call;
//! - `account` (records in memory) and [`stream`] (a file chunk by chunk, bounded memory):
//!   the two paths, same arithmetic; `ahead` reads ahead of `stream` on the other threads,
//!   [`budget`] says how many threads fit under the memory limit;
//! - [`join`], [`nccl_algo`], then [`collectives`] (cross-rank matching: skew, straggler),
//!   then [`clock_align`] (each file's clock from the collectives' end times);
//! - [`files`]: whole files ([`FileReport`], what `report/` renders).
//!
//! Entry points, and why each remains:
//! - [`analyze_files`]: what `ghostprof report` runs: streaming, every file together (the
//!   cross-rank matching spans files). [`analyze_file`] and [`analyze_file_with`] are it for one
//!   file (with default options, or given ones), for `record`, `demo` and tests.
//! - [`analyze_batch`]: the same analysis of one file's records already in memory (tests check
//!   that both paths agree; the bench measures its memory).
//! - [`analyze_with`]: the in-memory per-device analysis under [`analyze_batch`], with the
//!   windows and late windows it is given.
//! - [`account`]: totals only over windows the caller chooses (the ground-truth checks
//!   against the simulator's windows, `demo`).
//!
//! (A former `analyze`, [`analyze_with`] without late windows, had no caller and is gone.)

pub(crate) mod account;
mod ahead;
pub mod budget;
pub mod clock_align;
pub mod collectives;
pub mod files;
mod flops;
pub mod host;
pub(crate) mod inputs;
pub mod join;
pub mod model;
pub mod nccl_algo;
pub mod peak;
mod plan;
pub mod steps;
pub mod stream;
mod sweep;

pub use account::{account, analyze_with};
pub use files::{
    analyze_batch, analyze_file, analyze_file_with, analyze_files, load, FileReport, Loaded, ReportOptions,
};
pub use flops::FlopSource;
pub use inputs::{extend_windows_to_blocking, stall_reason_label};
pub use model::{
    AccountOptions, Categories, Category, CheckpointIo, DetailOptions, DeviceAccount, DeviceDetail, DeviceResult,
    IdleGap, KernelStat, LateWindows, Partition, Window, MAX_BINS,
};
#[doc(hidden)]
pub use sweep::sort_runs; // for `tools/bench sort`
