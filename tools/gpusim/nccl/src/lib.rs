//! gpusim's `libnccl.so.2`: the NCCL API subset of a data-parallel job, with the signatures of
//! the real `nccl.h` (2.32). Ranks are separate processes that meet in a shared-memory segment
//! named by the `ncclUniqueId`.
//!
//! - [`shm`]: the segment: join barrier and per-collective arrival slots.
//! - [`comm`]: communicators, collectives and groups: how a collective's kernel is placed on the
//!   rank's simulated device (through libcuda's `gpusim_*` symbols).
//! - [`api`]: the exported `nccl*` entry points.
//! - [`profiler`]: NCCL's profiler plugin API (`NCCL_PROFILER_PLUGIN`), driven as NCCL 2.27 does.
//!
//! Timing of one collective on rank r: its kernel starts when r's stream reaches it
//! (`arrival_r`), waits until the last rank's arrival (`comm.wait`), then moves data for
//! `bus bytes / GPUSIM_NCCL_BUS_BYTES_PER_S` (`comm.transfer`). The host thread that issues the
//! collective blocks until every rank has published its arrival, which is real cross-process
//! waiting; the device-side wait is what ghostprof must call ghost compute.

// The exported entry points take raw pointers from C callers under nccl.h's contract; marking
// them `unsafe fn` would change nothing for those callers, and every dereference is checked
// for null and commented where it happens.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod api;
pub mod comm;
pub mod profiler;
pub mod shm;
