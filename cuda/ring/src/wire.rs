//! Ring record kinds from the injection library to ghostprof (payloads little-endian).

/// A CUPTI activity record, raw (its first u32 is the `CUpti_ActivityKind`); name pointers
/// replaced by [`NAME`] ids.
pub const ACTIVITY: u16 = 1;
/// `id u32, UTF-8 bytes`: a kernel or marker name.
pub const NAME: u16 = 2;
/// `cupti_ns u64, monotonic_ns u64, uncertainty_ns u64`: a clock pair.
pub const CLOCK: u16 = 3;
/// UTF-8 text: something ghostprof should tell the user (no CUPTI, another subscriber, …).
pub const STATUS: u16 = 4;
/// `count u64`: records CUPTI dropped (cumulative).
pub const CUPTI_DROPPED: u16 = 5;
/// `start_ns u64, end_ns u64 (CUPTI time), tensor_pct f64, sm_active_pct f64`: one PM sample
/// of device 0.
pub const PM_SAMPLE: u16 = 6;
