//! Analysis: a pure function of trace records. [`account`] implements the accounting of
//! DESIGN.md §1 for each device of each process over a window: busy, MFU, divergence, and the
//! eight categories that sum to the window. [`analyze`] adds per-step and per-bin accounting
//! ([`steps`] finds the steps), top kernels, idle gaps with their reason and checkpoint I/O;
//! [`collectives`] matches collectives across ranks and files (skew, straggler); [`peak`] is
//! the table of peak FLOP/s; [`host`] gives each process's and thread's host figures.

pub(crate) mod account;
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

pub use account::{account, analyze, analyze_with};
pub use files::{
    analyze_batch, analyze_file, analyze_file_with, analyze_files, load, FileReport, Loaded, ReportOptions,
};
pub use flops::FlopSource;
pub use inputs::{extend_windows_to_blocking, stall_reason_label};
pub use model::{
    AccountOptions, Categories, Category, CheckpointIo, DetailOptions, DeviceAccount, DeviceDetail, DeviceResult,
    IdleGap, KernelStat, LateWindows, Partition, Window, MAX_BINS,
};
