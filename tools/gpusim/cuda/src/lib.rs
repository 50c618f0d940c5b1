//! gpusim's `libcuda.so.1`: the driver-API subset a training job uses, with the signatures of the
//! real `cuda.h` (CUDA 12.9), over one simulated device.
//!
//! - [`device`]: the simulated device: per-stream timelines on CLOCK_MONOTONIC, events, the
//!   kernel table loaded from modules, and the record log every other part reads.
//! - [`config`]: knobs from `GPUSIM_*` environment variables (launch cost, latency, slowdown).
//! - [`inject`]: `CUDA_INJECTION64_PATH` handling, as the real `cuInit` does it.
//! - [`hook`]: API enter/exit reports for libcupti's callback API.
//! - [`api_init`], [`api_exec`], [`api_mem`]: the exported `cu*` entry points.
//! - [`procaddr`]: `cuGetProcAddress`, how the CUDA runtime finds every other entry point.
//! - [`private`]: the `gpusim_*` symbols through which libcupti, libnccl and the workload share
//!   this device.
//!
//! Every entry point runs inside [`gpusim_core::ffi::guard`] and returns `CUDA_ERROR_UNKNOWN`
//! instead of unwinding into C.

// The exported entry points take raw pointers from C callers under the real header's contract;
// marking them `unsafe fn` would change nothing for those callers, and every dereference is
// checked for null and commented where it happens.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod api_exec;
pub mod api_init;
pub mod api_mem;
pub mod config;
pub mod device;
pub mod hook;
pub mod inject;
pub mod private;
pub mod procaddr;
pub mod types;
