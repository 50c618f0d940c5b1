//! PM sampling over the simulated device: a sampling object turns the kernel timeline into
//! fixed-interval samples of tensor-active and busy time, written into a counter-data image.
//!
//! Counter-data image (gpusim's own layout; real images are opaque to clients too): a 64-byte
//! header (`GPSIMPM1` magic, max samples, populated samples) followed by 32-byte samples
//! (`start_ns`, `end_ns`, `tensor_active_ns` f64, `busy_ns` f64).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard, OnceLock};

use gpusim_core::abi;
use gpusim_core::clock::now_ns;
use gpusim_core::record::{RecordKind, SimRecord};

use crate::pm_metrics::SampleValues;

/// Header bytes of a counter-data image.
pub const HEADER_BYTES: usize = 64;
/// Bytes per sample.
pub const SAMPLE_BYTES: usize = 32;
const MAGIC: &[u8; 8] = b"GPSIMPM1";

/// One `CUpti_PmSampling_Object`.
#[derive(Default)]
pub struct PmObject {
    /// Device index it samples.
    pub device_index: usize,
    /// Configured metrics.
    pub metrics: Vec<String>,
    /// Sample length in ns.
    pub interval_ns: u64,
    /// Start of the next sample not yet decoded (0 = not started).
    pub next_sample_ns: u64,
    /// When sampling stopped, if it did.
    pub stop_ns: Option<u64>,
    /// Index of the first libcuda record that can still overlap an undecoded sample.
    pub first_relevant: u64,
}

/// Objects by handle (`CUpti_PmSampling_Object*` values handed to the client).
pub fn objects() -> MutexGuard<'static, HashMap<usize, PmObject>> {
    static OBJECTS: OnceLock<Mutex<HashMap<usize, PmObject>>> = OnceLock::new();
    OBJECTS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Image size for `max_samples`.
pub fn image_size(max_samples: usize) -> usize {
    HEADER_BYTES + max_samples * SAMPLE_BYTES
}

fn read_u64(image: &[u8], at: usize) -> u64 {
    image.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Write an empty image header.
pub fn init_image(image: &mut [u8]) -> bool {
    if image.len() < HEADER_BYTES {
        return false;
    }
    image.fill(0);
    let max_samples = ((image.len() - HEADER_BYTES) / SAMPLE_BYTES) as u64;
    image[..8].copy_from_slice(MAGIC);
    image[8..16].copy_from_slice(&max_samples.to_le_bytes());
    true
}

/// (max samples, populated samples) of an image, or None if it is not a well-formed gpusim
/// image: the magic, at most `max` samples populated and room for `max` in the bytes given.
/// Images reach the host API from another process (a collector evaluating offline), so a
/// corrupted one is an error (CUPTI_ERROR_INVALID_PARAMETER), never a read past its end.
pub fn image_info(image: &[u8]) -> Option<(usize, usize)> {
    if image.len() < HEADER_BYTES || &image[..8] != MAGIC {
        return None;
    }
    let (max, populated) = (read_u64(image, 8), read_u64(image, 16));
    let room = ((image.len() - HEADER_BYTES) / SAMPLE_BYTES) as u64;
    (max <= room && populated <= max).then_some((max as usize, populated as usize))
}

/// Sample `index` of an image.
pub fn sample(image: &[u8], index: usize) -> Option<SampleValues> {
    let (_, populated) = image_info(image)?;
    if index >= populated {
        return None;
    }
    let at = HEADER_BYTES + index * SAMPLE_BYTES;
    Some(SampleValues {
        start_ns: read_u64(image, at),
        end_ns: read_u64(image, at + 8),
        tensor_active_ns: f64::from_bits(read_u64(image, at + 16)),
        busy_ns: f64::from_bits(read_u64(image, at + 24)),
    })
}

/// Appends one sample to an image; false when it is full or not a gpusim image.
pub fn push_sample(image: &mut [u8], values: &SampleValues) -> bool {
    let Some((max, populated)) = image_info(image) else { return false };
    if populated >= max {
        return false;
    }
    let at = HEADER_BYTES + populated * SAMPLE_BYTES;
    image[at..at + 8].copy_from_slice(&values.start_ns.to_le_bytes());
    image[at + 8..at + 16].copy_from_slice(&values.end_ns.to_le_bytes());
    image[at + 16..at + 24].copy_from_slice(&values.tensor_active_ns.to_bits().to_le_bytes());
    image[at + 24..at + 32].copy_from_slice(&values.busy_ns.to_bits().to_le_bytes());
    image[16..24].copy_from_slice(&(populated as u64 + 1).to_le_bytes());
    true
}

fn peak_flops_per_s() -> f64 {
    std::env::var("GPUSIM_PEAK_FLOPS_PER_S")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .unwrap_or(989e12)
}

fn is_device_op(r: &SimRecord) -> bool {
    matches!(r.kind(), Some(RecordKind::Kernel | RecordKind::Memcpy | RecordKind::Memset | RecordKind::Collective))
}

/// Tensor-active and busy ns of `[start, end)` from device ops of `device`.
pub fn sample_values(records: &[SimRecord], device: u32, start_ns: u64, end_ns: u64, peak: f64) -> SampleValues {
    let mut tensor_active_ns = 0.0;
    let mut spans = Vec::new();
    for r in records.iter().filter(|r| is_device_op(r) && r.device_id == device) {
        let (a, b) = (r.start_ns.max(start_ns), r.end_ns.min(end_ns));
        if b <= a {
            continue;
        }
        spans.push((a, b));
        if r.kind() == Some(RecordKind::Kernel) && r.flops > 0 && r.duration_ns() > 0 {
            let rate = (r.flops as f64 / peak * 1e9 / r.duration_ns() as f64).min(1.0);
            tensor_active_ns += (b - a) as f64 * rate;
        }
    }
    spans.sort_unstable();
    let (mut busy_ns, mut cursor) = (0u64, start_ns);
    for (a, b) in spans {
        let a = a.max(cursor);
        if b > a {
            busy_ns += b - a;
            cursor = b;
        }
    }
    SampleValues { start_ns, end_ns, tensor_active_ns, busy_ns: busy_ns as f64 }
}

/// Records of libcuda from index `first`.
fn records_from(first: u64) -> Option<Vec<SimRecord>> {
    let count = abi::lookup(abi::RECORD_COUNT)?;
    let read = abi::lookup(abi::READ_RECORDS)?;
    // SAFETY: the symbols have the signatures in gpusim_core::abi; the buffer has room for n.
    unsafe {
        let count = std::mem::transmute::<*mut c_void, abi::RecordCountFn>(count);
        let read = std::mem::transmute::<*mut c_void, abi::ReadRecordsFn>(read);
        let n = count().saturating_sub(first);
        let mut out = vec![SimRecord::new(RecordKind::Api); n as usize];
        let got = read(first, out.as_mut_ptr(), n);
        out.truncate(got as usize);
        Some(out)
    }
}

/// Where a sampling that starts at `start_ns` needs libcuda's log from: past every leading
/// record that is no device op or ended by then (read from `first` on, in slices). A second
/// session of a long job otherwise began its first decode at record 0 and, for each 50 µs
/// sample, scanned the whole log: the decode spun for minutes (seen in `attach`'s second
/// session, whose thread then never ended).
pub fn first_relevant_at(first: u64, start_ns: u64) -> u64 {
    const SLICE: u64 = 65_536;
    let (Some(count), Some(read)) = (abi::lookup(abi::RECORD_COUNT), abi::lookup(abi::READ_RECORDS)) else {
        return first;
    };
    // SAFETY: the symbols have the signatures in gpusim_core::abi; the buffer has room for n.
    unsafe {
        let count = std::mem::transmute::<*mut c_void, abi::RecordCountFn>(count);
        let read = std::mem::transmute::<*mut c_void, abi::ReadRecordsFn>(read);
        let total = count();
        let mut at = first;
        let mut buf = vec![SimRecord::new(RecordKind::Api); SLICE as usize];
        while at < total {
            let got = read(at, buf.as_mut_ptr(), SLICE.min(total - at)) as usize;
            if got == 0 {
                break;
            }
            let done = buf[..got].iter().take_while(|r| !is_device_op(r) || r.end_ns <= start_ns).count();
            at += done as u64;
            if done < got {
                break;
            }
        }
        at
    }
}

/// Why decoding stopped (`CUpti_PmSampling_DecodeStopReason`).
pub const STOP_COUNTER_DATA_FULL: u32 = 1;
/// All completed samples were decoded.
pub const STOP_END_OF_RECORDS: u32 = 2;

/// Decode every completed sample of `obj` into `image`; returns the stop reason, or None when
/// libcuda is not loaded.
pub fn decode(obj: &mut PmObject, image: &mut [u8]) -> Option<u32> {
    if obj.next_sample_ns == 0 || obj.interval_ns == 0 {
        return Some(STOP_END_OF_RECORDS);
    }
    let records = records_from(obj.first_relevant)?;
    let limit = obj.stop_ns.unwrap_or_else(now_ns);
    let peak = peak_flops_per_s();
    let device = obj.device_index as u32;
    // This device's ops by start: each sample looks only at those that can overlap it (a
    // scan of every record per 50 µs sample made a decode of a few seconds of a busy job
    // take seconds).
    let mut ops: Vec<SimRecord> =
        records.iter().filter(|r| is_device_op(r) && r.device_id == device).copied().collect();
    ops.sort_by_key(|r| r.start_ns);
    let mut lo = 0;
    let mut decoded = 0u64;
    let cost = DecodeCost(&mut decoded);
    while obj.next_sample_ns < limit {
        let end = (obj.next_sample_ns + obj.interval_ns).min(limit);
        // Only the final sample after a stop may be partial; running samples wait to complete.
        if end < obj.next_sample_ns + obj.interval_ns && obj.stop_ns.is_none() {
            break;
        }
        while lo < ops.len() && ops[lo].end_ns <= obj.next_sample_ns {
            lo += 1;
        }
        let hi = lo + ops[lo..].partition_point(|r| r.start_ns < end);
        let values = sample_values(&ops[lo..hi], device, obj.next_sample_ns, end, peak);
        if !push_sample(image, &values) {
            // Advanced here too: a client that keeps filling its image would otherwise
            // re-read the log from the same place at every decode, for ever longer.
            advance(obj, &records);
            return Some(STOP_COUNTER_DATA_FULL);
        }
        obj.next_sample_ns = end;
        *cost.0 += 1;
    }
    advance(obj, &records);
    Some(STOP_END_OF_RECORDS)
}

/// The CPU a real decode costs the calling thread: `GPUSIM_PM_DECODE_NS_PER_SAMPLE` of thread
/// CPU per sample decoded (default 0). On an H200 (CUPTI 13.0) the decode path of a PyTorch
/// job sampled every 50 µs kept the collecting thread ~90 % busy, ~45 µs per sample; this lets
/// a test put a library's control thread under that load. Burnt when the decode returns.
struct DecodeCost<'a>(&'a mut u64);

impl Drop for DecodeCost<'_> {
    fn drop(&mut self) {
        static NS: OnceLock<u64> = OnceLock::new();
        let per = *NS.get_or_init(|| {
            std::env::var("GPUSIM_PM_DECODE_NS_PER_SAMPLE").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
        });
        let want = per.saturating_mul(*self.0);
        if want == 0 {
            return;
        }
        let cpu = || {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid timespec out-pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let t0 = cpu();
        while cpu().saturating_sub(t0) < want {
            std::hint::spin_loop();
        }
    }
}

/// Past the leading records no later sample can need (no device op, or ended by the next one).
fn advance(obj: &mut PmObject, records: &[SimRecord]) {
    let done = records.iter().take_while(|r| !is_device_op(r) || r.end_ns <= obj.next_sample_ns).count();
    obj.first_relevant += done as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_split_kernel_flops_evenly() {
        let mut k = SimRecord::new(RecordKind::Kernel);
        (k.start_ns, k.end_ns) = (1_000, 3_000);
        k.flops = 1_000_000; // at peak 1e12 FLOP/s: 1000 ns useful of 2000 ns
        let v = sample_values(&[k], 0, 2_000, 4_000, 1e12);
        assert_eq!(v.busy_ns, 1_000.0);
        assert!((v.tensor_active_ns - 500.0).abs() < 1e-9);
    }

    #[test]
    fn images_hold_samples_until_full() {
        let mut image = vec![0u8; image_size(2)];
        assert!(init_image(&mut image));
        let s = SampleValues { start_ns: 1, end_ns: 2, tensor_active_ns: 0.5, busy_ns: 1.0 };
        assert!(push_sample(&mut image, &s));
        assert!(push_sample(&mut image, &s));
        assert!(!push_sample(&mut image, &s));
        assert_eq!(image_info(&image), Some((2, 2)));
        assert_eq!(sample(&image, 1), Some(s));
    }

    #[test]
    fn corrupted_images_are_refused() {
        let mut image = vec![0u8; image_size(4)];
        assert!(init_image(&mut image));
        let s = SampleValues { start_ns: 1, end_ns: 2, tensor_active_ns: 0.5, busy_ns: 1.0 };
        assert!(push_sample(&mut image, &s));
        let mut lying = image.clone();
        lying[16..24].copy_from_slice(&5u64.to_le_bytes()); // populated > max
        assert_eq!(image_info(&lying), None);
        assert_eq!(sample(&lying, 4), None);
        let mut lying = image.clone();
        lying[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // max past the bytes
        assert_eq!(image_info(&lying), None);
        assert_eq!(image_info(&image[..HEADER_BYTES + SAMPLE_BYTES]), None, "cut short: room for 1 of 4");
        let mut bad_magic = image.clone();
        bad_magic[0] ^= 1;
        assert_eq!(sample(&bad_magic, 0), None);
        assert_eq!(sample(&image, 0), Some(s));
    }
}
