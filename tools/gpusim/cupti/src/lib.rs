//! gpusim's `libcupti.so.12`: the CUPTI activity-API subset a collector uses, emitting records
//! with the real CUPTI 12.x layouts from the simulated device's timeline.
//!
//! - [`layout`]: the record structs, mirrored once from `cupti_activity.h` (CUDA 12.9) with
//!   offsets checked at compile time against values printed by a C program built on the real
//!   header.
//! - [`activity`]: enabled kinds, buffer callbacks, and the flush that converts libcuda's
//!   records (read through `gpusim_read_records`) into CUPTI records in client buffers.
//! - [`api`]: the exported activity and callback `cupti*` entry points.
//! - [`callbacks`]: the callback API's subscribers and the `CUpti_CallbackData` they receive.
//! - [`subscribers`]: who holds CUPTI, by the version reported (`GPUSIM_CUPTI_VERSION`): one
//!   subscriber before 13.3, shared among V2 subscribers from 13.3, each with its own activity.
//! - [`pm`], [`pm_metrics`], [`pm_api`]: PM sampling — tensor-pipe activity per sample derived
//!   from each kernel's FLOPs, the profiler-host metric evaluation, and their entry points.
//!
//! Timestamps are CLOCK_MONOTONIC ns, and `cuptiGetTimestamp` reads the same clock, so a
//! collector that aligns clocks by sampling both finds an offset of zero.

// The exported entry points take raw pointers from C callers under the real header's contract;
// marking them `unsafe fn` would change nothing for those callers, and every dereference is
// checked for null and commented where it happens.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod activity;
pub mod api;
pub mod callbacks;
pub mod layout;
pub mod pm;
pub mod pm_api;
pub mod pm_metrics;
pub mod subscribers;
