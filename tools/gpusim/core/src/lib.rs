//! Shared pieces of gpusim, the simulated CUDA / CUPTI / NCCL stack.
//!
//! - [`clock`]: CLOCK_MONOTONIC nanoseconds, the one time base of every record, and real waiting.
//! - [`record`]: [`record::SimRecord`], the `#[repr(C)]` record that the fake `libcuda.so.1`
//!   keeps for every simulated device op and host interval; `libcupti` and `libnccl` reach it
//!   through the private `gpusim_*` symbols described in [`abi`].
//! - [`accounting`]: turns records into the categories of docs/metrics.md (the ground truth).
//! - [`ffi`]: the panic guard every exported C entry point runs inside.
//!
//! Each cdylib links its own copy of this crate, so nothing here holds global state: the one
//! simulated device lives in libcuda, as the real driver owns the real one.

pub mod abi;
pub mod accounting;
pub mod clock;
pub mod ffi;
pub mod record;
