//! Analysis: a pure function of trace records. [`account`] implements the accounting of
//! DESIGN.md §1 for each device of each process over a window: busy, MFU, divergence, and the
//! eight categories that sum to the window.

mod account;
mod flops;
pub mod join;

pub use account::{account, AccountOptions, Categories, DeviceAccount, CATEGORY_NAMES};
pub use flops::FlopSource;
