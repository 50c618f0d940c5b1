//! Exported PM-sampling and profiler-host entry points (`cupti_pmsampling.h`,
//! `cupti_profiler_host.h`, `cupti_profiler_target.h`, `cupti_target.h`, CUDA 12.9). Every call
//! takes a parameter struct whose `structSize` must be set, as in CUPTI.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use gpusim_core::clock::now_ns;
use gpusim_core::ffi::guard;

use crate::pm::{self, PmObject};
use crate::pm_metrics::{self, HostObject};

const SUCCESS: i32 = 0;
const INVALID_PARAMETER: i32 = 1;
const INVALID_OPERATION: i32 = 7;
const INVALID_METRIC_NAME: i32 = 17;
const UNKNOWN: i32 = 999;

/// Handles are small integers shared by host and sampling objects.
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(0x7000);

fn hosts() -> std::sync::MutexGuard<'static, std::collections::HashMap<usize, HostObject>> {
    static HOSTS: OnceLock<Mutex<std::collections::HashMap<usize, HostObject>>> = OnceLock::new();
    HOSTS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Run `body` on a non-null params struct with a non-zero `structSize` (its first field) no
/// larger than the struct's size.
fn with_params<P>(params: *mut P, body: impl FnOnce(&mut P) -> i32) -> i32 {
    with_params_sized(params, std::mem::size_of::<P>(), body)
}

/// [`with_params`] for a struct whose header `_STRUCT_SIZE` (offset + size of its last field)
/// is `exact`, below its `sizeof` because of trailing padding. CUPTI 13.0 refuses a larger
/// `structSize` with CUPTI_ERROR_INVALID_PARAMETER (seen on an H100 with
/// `CUpti_PmSampling_DecodeData_Params`: sizeof 48, STRUCT_SIZE 45).
fn with_params_sized<P>(params: *mut P, exact: usize, body: impl FnOnce(&mut P) -> i32) -> i32 {
    guard(UNKNOWN, || {
        if params.is_null() {
            return INVALID_PARAMETER;
        }
        // SAFETY: non-null pointer to the caller's params struct, whose first field is size_t.
        let params = unsafe { &mut *params };
        // SAFETY: every params struct starts with `size_t structSize`.
        let size = unsafe { *(params as *mut P as *const usize) };
        if size == 0 || size > exact {
            return INVALID_PARAMETER;
        }
        body(params)
    })
}

/// Read a C array of `n` C strings.
///
/// # Safety
/// `names` must point to `n` valid NUL-terminated strings.
unsafe fn names(names: *const *const c_char, n: usize) -> Option<Vec<String>> {
    if names.is_null() {
        return None;
    }
    (0..n)
        // SAFETY: caller contract.
        .map(|i| unsafe { gpusim_core::ffi::c_str(*names.add(i)) })
        .collect()
}

/// `CUpti_Profiler_Initialize_Params` / `DeInitialize`: `{structSize, pPriv}`.
#[repr(C)]
pub struct PlainParams {
    struct_size: usize,
    p_priv: *mut c_void,
}

/// `CUptiResult cuptiProfilerInitialize(CUpti_Profiler_Initialize_Params*)`.
#[no_mangle]
pub extern "C" fn cuptiProfilerInitialize(p: *mut PlainParams) -> i32 {
    with_params(p, |_| {
        crate::callbacks::attach();
        SUCCESS
    })
}

/// `CUptiResult cuptiProfilerDeInitialize(CUpti_Profiler_DeInitialize_Params*)`.
#[no_mangle]
pub extern "C" fn cuptiProfilerDeInitialize(p: *mut PlainParams) -> i32 {
    with_params(p, |_| SUCCESS)
}

/// `CUpti_Device_GetChipName_Params`.
#[repr(C)]
pub struct GetChipNameParams {
    struct_size: usize,
    p_priv: *mut c_void,
    device_index: usize,
    p_chip_name: *const c_char,
}

/// `CUptiResult cuptiDeviceGetChipName(CUpti_Device_GetChipName_Params*)`: "GH100".
#[no_mangle]
pub extern "C" fn cuptiDeviceGetChipName(p: *mut GetChipNameParams) -> i32 {
    with_params(p, |p| {
        p.p_chip_name = pm_metrics::CHIP_NAME.as_ptr();
        SUCCESS
    })
}

/// `CUpti_PmSampling_GetCounterAvailability_Params`.
#[repr(C)]
pub struct GetCounterAvailabilityParams {
    struct_size: usize,
    p_priv: *mut c_void,
    device_index: usize,
    counter_availability_image_size: usize,
    p_counter_availability_image: *mut u8,
}

const AVAILABILITY: &[u8] = b"gpusim-counter-availability GH100\0";

/// `CUptiResult cuptiPmSamplingGetCounterAvailability(...)`: size query with a null image.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingGetCounterAvailability(p: *mut GetCounterAvailabilityParams) -> i32 {
    with_params(p, |p| {
        if p.p_counter_availability_image.is_null() {
            p.counter_availability_image_size = AVAILABILITY.len();
        } else if p.counter_availability_image_size >= AVAILABILITY.len() {
            // SAFETY: the caller's image has `counter_availability_image_size` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(AVAILABILITY.as_ptr(), p.p_counter_availability_image, AVAILABILITY.len())
            };
        } else {
            return INVALID_PARAMETER;
        }
        SUCCESS
    })
}

/// `CUpti_Profiler_Host_Initialize_Params`.
#[repr(C)]
pub struct HostInitializeParams {
    struct_size: usize,
    p_priv: *mut c_void,
    profiler_type: u32,
    p_chip_name: *const c_char,
    p_counter_availability_image: *const u8,
    p_host_object: *mut c_void,
}

/// `CUptiResult cuptiProfilerHostInitialize(...)`: offline, as the real host API: needs no
/// device, context or libcuda, only the chip name ("GH100") and, if given, gpusim's
/// counter-availability image; anything else is refused with CUPTI_ERROR_INVALID_PARAMETER.
#[no_mangle]
pub extern "C" fn cuptiProfilerHostInitialize(p: *mut HostInitializeParams) -> i32 {
    with_params(p, |p| {
        // SAFETY: the caller passes a NUL-terminated chip name (or null).
        if unsafe { gpusim_core::ffi::c_str(p.p_chip_name) }.as_deref() != Some("GH100") {
            return INVALID_PARAMETER;
        }
        if !p.p_counter_availability_image.is_null() {
            // SAFETY: an availability image is at least as long as the one gpusim hands out.
            let given = unsafe { std::slice::from_raw_parts(p.p_counter_availability_image, AVAILABILITY.len()) };
            if given != AVAILABILITY {
                return INVALID_PARAMETER;
            }
        }
        let handle = NEXT_HANDLE.fetch_add(1, Ordering::SeqCst);
        hosts().insert(handle, HostObject::default());
        p.p_host_object = handle as *mut c_void;
        SUCCESS
    })
}

/// `CUpti_Profiler_Host_Deinitialize_Params`.
#[repr(C)]
pub struct HostObjectParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_host_object: *mut c_void,
}

/// `CUptiResult cuptiProfilerHostDeinitialize(...)`.
#[no_mangle]
pub extern "C" fn cuptiProfilerHostDeinitialize(p: *mut HostObjectParams) -> i32 {
    with_params(p, |p| match hosts().remove(&(p.p_host_object as usize)) {
        Some(_) => SUCCESS,
        None => INVALID_PARAMETER,
    })
}

/// `CUpti_Profiler_Host_ConfigAddMetrics_Params`.
#[repr(C)]
pub struct ConfigAddMetricsParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_host_object: *mut c_void,
    pp_metric_names: *const *const c_char,
    num_metrics: usize,
}

/// `CUptiResult cuptiProfilerHostConfigAddMetrics(...)`: unknown metrics are refused with
/// CUPTI_ERROR_INVALID_METRIC_NAME (see `pm_metrics` for the supported ones).
#[no_mangle]
pub extern "C" fn cuptiProfilerHostConfigAddMetrics(p: *mut ConfigAddMetricsParams) -> i32 {
    with_params(p, |p| {
        // SAFETY: the caller passes `num_metrics` C strings.
        let Some(list) = (unsafe { names(p.pp_metric_names, p.num_metrics) }) else {
            return INVALID_PARAMETER;
        };
        let probe = pm_metrics::SampleValues::default();
        if list.iter().any(|m| pm_metrics::evaluate(m, &probe).is_none()) {
            return INVALID_METRIC_NAME;
        }
        match hosts().get_mut(&(p.p_host_object as usize)) {
            Some(host) => {
                host.metrics.extend(list);
                SUCCESS
            }
            None => INVALID_PARAMETER,
        }
    })
}

/// `CUpti_Profiler_Host_GetConfigImageSize_Params` / `GetConfigImage_Params`.
#[repr(C)]
pub struct ConfigImageParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_host_object: *mut c_void,
    config_image_size: usize,
    p_config_image: *mut u8,
}

/// `CUptiResult cuptiProfilerHostGetConfigImageSize(...)`.
#[no_mangle]
pub extern "C" fn cuptiProfilerHostGetConfigImageSize(p: *mut ConfigImageParams) -> i32 {
    with_params(p, |p| match hosts().get(&(p.p_host_object as usize)) {
        Some(host) => {
            p.config_image_size = pm_metrics::config_image(&host.metrics).len();
            SUCCESS
        }
        None => INVALID_PARAMETER,
    })
}

/// `CUptiResult cuptiProfilerHostGetConfigImage(...)`.
#[no_mangle]
pub extern "C" fn cuptiProfilerHostGetConfigImage(p: *mut ConfigImageParams) -> i32 {
    with_params(p, |p| {
        let Some(image) = hosts().get(&(p.p_host_object as usize)).map(|h| pm_metrics::config_image(&h.metrics)) else {
            return INVALID_PARAMETER;
        };
        if p.p_config_image.is_null() || p.config_image_size < image.len() {
            return INVALID_PARAMETER;
        }
        // SAFETY: the caller's buffer holds `config_image_size` >= image.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), p.p_config_image, image.len()) };
        SUCCESS
    })
}

/// `CUpti_Profiler_Host_GetNumOfPasses_Params`.
#[repr(C)]
pub struct GetNumOfPassesParams {
    struct_size: usize,
    p_priv: *mut c_void,
    config_image_size: usize,
    p_config_image: *mut u8,
    num_of_passes: usize,
}

/// `CUptiResult cuptiProfilerHostGetNumOfPasses(...)`: always one pass.
#[no_mangle]
pub extern "C" fn cuptiProfilerHostGetNumOfPasses(p: *mut GetNumOfPassesParams) -> i32 {
    with_params(p, |p| {
        p.num_of_passes = 1;
        SUCCESS
    })
}

/// `CUpti_Profiler_Host_EvaluateToGpuValues_Params`.
#[repr(C)]
pub struct EvaluateParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_host_object: *mut c_void,
    p_counter_data_image: *const u8,
    counter_data_image_size: usize,
    range_index: usize,
    pp_metric_names: *const *const c_char,
    num_metrics: usize,
    p_metric_values: *mut f64,
}

/// Evaluate calls made in this process, written to `$GPUSIM_PM_EVAL_DIR/evaluate-<pid>` after
/// each call when that variable is set (tests count where evaluation runs: in the job or in
/// ghostprof's decoder).
static EVALUATIONS: AtomicUsize = AtomicUsize::new(0);

fn count_evaluation() {
    static DIR: OnceLock<Option<String>> = OnceLock::new();
    let n = EVALUATIONS.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(dir) = DIR.get_or_init(|| std::env::var("GPUSIM_PM_EVAL_DIR").ok()) {
        let _ = std::fs::write(format!("{dir}/evaluate-{}", std::process::id()), n.to_string());
    }
}

/// `CUptiResult cuptiProfilerHostEvaluateToGpuValues(...)`: for PM sampling, `rangeIndex` is the
/// sample index. Offline, as the real host API: a host object and the image bytes are all it
/// reads (no context, no sampling object, no libcuda), so a process that never touched the
/// device can evaluate images another process decoded; a corrupted image is
/// CUPTI_ERROR_INVALID_PARAMETER.
#[no_mangle]
pub extern "C" fn cuptiProfilerHostEvaluateToGpuValues(p: *mut EvaluateParams) -> i32 {
    with_params(p, |p| {
        count_evaluation();
        if p.p_counter_data_image.is_null() || p.p_metric_values.is_null() {
            return INVALID_PARAMETER;
        }
        if !hosts().contains_key(&(p.p_host_object as usize)) {
            return INVALID_PARAMETER;
        }
        // SAFETY: the caller's image has `counter_data_image_size` bytes.
        let image = unsafe { std::slice::from_raw_parts(p.p_counter_data_image, p.counter_data_image_size) };
        let Some(sample) = pm::sample(image, p.range_index) else {
            return INVALID_PARAMETER;
        };
        // SAFETY: the caller passes `num_metrics` C strings.
        let Some(list) = (unsafe { names(p.pp_metric_names, p.num_metrics) }) else {
            return INVALID_PARAMETER;
        };
        for (i, metric) in list.iter().enumerate() {
            let Some(value) = pm_metrics::evaluate(metric, &sample) else {
                return INVALID_METRIC_NAME;
            };
            // SAFETY: the caller's value array has `num_metrics` doubles.
            unsafe { *p.p_metric_values.add(i) = value };
        }
        SUCCESS
    })
}

/// `CUpti_PmSampling_Enable_Params`.
#[repr(C)]
pub struct EnableParams {
    struct_size: usize,
    p_priv: *mut c_void,
    device_index: usize,
    p_pm_sampling_object: *mut c_void,
}

/// `CUptiResult cuptiPmSamplingEnable(...)`. As the real CUPTI, one PM sampling object per
/// device: enabling a device whose object was not disabled is refused (CUPTI's Python layer
/// documents it as "PM sampling is already enabled on the device"), so a client that only
/// stops sampling can never sample that device again in the process.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingEnable(p: *mut EnableParams) -> i32 {
    with_params(p, |p| {
        let mut objects = pm::objects();
        if objects.values().any(|o| o.device_index == p.device_index) {
            return INVALID_OPERATION;
        }
        let handle = NEXT_HANDLE.fetch_add(1, Ordering::SeqCst);
        objects.insert(handle, PmObject { device_index: p.device_index, ..PmObject::default() });
        p.p_pm_sampling_object = handle as *mut c_void;
        SUCCESS
    })
}

/// `CUpti_PmSampling_Disable/Start/Stop_Params`.
#[repr(C)]
pub struct ObjectParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_pm_sampling_object: *mut c_void,
}

/// `CUptiResult cuptiPmSamplingDisable(...)`.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingDisable(p: *mut ObjectParams) -> i32 {
    with_params(p, |p| match pm::objects().remove(&(p.p_pm_sampling_object as usize)) {
        Some(_) => SUCCESS,
        None => INVALID_PARAMETER,
    })
}

/// `CUpti_PmSampling_SetConfig_Params`.
#[repr(C)]
pub struct SetConfigParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_pm_sampling_object: *mut c_void,
    config_size: usize,
    p_config: *const u8,
    hardware_buffer_size: usize,
    sampling_interval: u64,
    trigger_mode: u32,
    hw_buffer_append_mode: u32,
}

/// `CUptiResult cuptiPmSamplingSetConfig(...)`: the interval is ns for
/// `GPU_TIME_INTERVAL` and clock cycles (at 1.98 GHz) for `GPU_SYSCLK_INTERVAL`.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingSetConfig(p: *mut SetConfigParams) -> i32 {
    with_params(p, |p| {
        if p.p_config.is_null() || p.sampling_interval == 0 {
            return INVALID_PARAMETER;
        }
        // SAFETY: the caller's config image has `config_size` bytes.
        let config = unsafe { std::slice::from_raw_parts(p.p_config, p.config_size) };
        let Some(metrics) = pm_metrics::parse_config(config) else {
            return INVALID_PARAMETER;
        };
        let interval_ns = match p.trigger_mode {
            1 => p.sampling_interval,
            _ => (p.sampling_interval as f64 / pm_metrics::CLOCK_HZ * 1e9).max(1.0) as u64,
        };
        match pm::objects().get_mut(&(p.p_pm_sampling_object as usize)) {
            Some(obj) => {
                obj.metrics = metrics;
                obj.interval_ns = interval_ns;
                SUCCESS
            }
            None => INVALID_PARAMETER,
        }
    })
}

/// `CUptiResult cuptiPmSamplingStart(...)`.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingStart(p: *mut ObjectParams) -> i32 {
    with_params(p, |p| match pm::objects().get_mut(&(p.p_pm_sampling_object as usize)) {
        Some(obj) if obj.interval_ns > 0 => {
            obj.next_sample_ns = now_ns();
            obj.first_relevant = pm::first_relevant_at(obj.first_relevant, obj.next_sample_ns);
            obj.stop_ns = None;
            SUCCESS
        }
        Some(_) => INVALID_OPERATION,
        None => INVALID_PARAMETER,
    })
}

/// `CUptiResult cuptiPmSamplingStop(...)`.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingStop(p: *mut ObjectParams) -> i32 {
    with_params(p, |p| match pm::objects().get_mut(&(p.p_pm_sampling_object as usize)) {
        Some(obj) if obj.next_sample_ns > 0 => {
            obj.stop_ns = Some(now_ns());
            SUCCESS
        }
        Some(_) => INVALID_OPERATION,
        None => INVALID_PARAMETER,
    })
}

/// `CUpti_PmSampling_GetCounterDataSize_Params`.
#[repr(C)]
pub struct GetCounterDataSizeParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_pm_sampling_object: *mut c_void,
    p_metric_names: *const *const c_char,
    num_metrics: usize,
    max_samples: u32,
    counter_data_size: usize,
}

/// `CUptiResult cuptiPmSamplingGetCounterDataSize(...)`.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingGetCounterDataSize(p: *mut GetCounterDataSizeParams) -> i32 {
    with_params(p, |p| {
        if p.max_samples == 0 {
            return INVALID_PARAMETER;
        }
        p.counter_data_size = pm::image_size(p.max_samples as usize);
        SUCCESS
    })
}

/// `CUpti_PmSampling_CounterDataImage_Initialize_Params`.
#[repr(C)]
pub struct CounterDataInitializeParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_pm_sampling_object: *mut c_void,
    counter_data_size: usize,
    p_counter_data: *mut u8,
}

/// `CUptiResult cuptiPmSamplingCounterDataImageInitialize(...)`.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingCounterDataImageInitialize(p: *mut CounterDataInitializeParams) -> i32 {
    with_params(p, |p| {
        if p.p_counter_data.is_null() {
            return INVALID_PARAMETER;
        }
        // SAFETY: the caller's image has `counter_data_size` bytes.
        let image = unsafe { std::slice::from_raw_parts_mut(p.p_counter_data, p.counter_data_size) };
        if pm::init_image(image) {
            SUCCESS
        } else {
            INVALID_PARAMETER
        }
    })
}

/// `CUpti_PmSampling_DecodeData_Params`.
#[repr(C)]
pub struct DecodeDataParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_pm_sampling_object: *mut c_void,
    p_counter_data_image: *mut u8,
    counter_data_image_size: usize,
    decode_stop_reason: u32,
    overflow: u8,
}

/// `CUptiResult cuptiPmSamplingDecodeData(...)`: appends every completed sample.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingDecodeData(p: *mut DecodeDataParams) -> i32 {
    with_params_sized(p, std::mem::offset_of!(DecodeDataParams, overflow) + 1, |p| {
        if p.p_counter_data_image.is_null() {
            return INVALID_PARAMETER;
        }
        // SAFETY: the caller's image has `counter_data_image_size` bytes.
        let image = unsafe { std::slice::from_raw_parts_mut(p.p_counter_data_image, p.counter_data_image_size) };
        if pm::image_info(image).is_none() {
            return INVALID_PARAMETER;
        }
        let mut objects = pm::objects();
        let Some(obj) = objects.get_mut(&(p.p_pm_sampling_object as usize)) else {
            return INVALID_PARAMETER;
        };
        match pm::decode(obj, image) {
            Some(reason) => {
                p.decode_stop_reason = reason;
                p.overflow = 0;
                SUCCESS
            }
            None => INVALID_OPERATION,
        }
    })
}

/// `CUpti_PmSampling_GetCounterDataInfo_Params`.
#[repr(C)]
pub struct GetCounterDataInfoParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_counter_data_image: *const u8,
    counter_data_image_size: usize,
    num_total_samples: usize,
    num_populated_samples: usize,
    num_completed_samples: usize,
}

/// `CUptiResult cuptiPmSamplingGetCounterDataInfo(...)`.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingGetCounterDataInfo(p: *mut GetCounterDataInfoParams) -> i32 {
    with_params(p, |p| {
        if p.p_counter_data_image.is_null() {
            return INVALID_PARAMETER;
        }
        // SAFETY: the caller's image has `counter_data_image_size` bytes.
        let image = unsafe { std::slice::from_raw_parts(p.p_counter_data_image, p.counter_data_image_size) };
        match pm::image_info(image) {
            Some((max, populated)) => {
                (p.num_total_samples, p.num_populated_samples, p.num_completed_samples) = (max, populated, populated);
                SUCCESS
            }
            None => INVALID_PARAMETER,
        }
    })
}

/// `CUpti_PmSampling_CounterData_GetSampleInfo_Params`.
#[repr(C)]
pub struct GetSampleInfoParams {
    struct_size: usize,
    p_priv: *mut c_void,
    p_pm_sampling_object: *mut c_void,
    p_counter_data_image: *const u8,
    counter_data_image_size: usize,
    sample_index: usize,
    start_timestamp: u64,
    end_timestamp: u64,
}

/// `CUptiResult cuptiPmSamplingCounterDataGetSampleInfo(...)`: CLOCK_MONOTONIC ns.
#[no_mangle]
pub extern "C" fn cuptiPmSamplingCounterDataGetSampleInfo(p: *mut GetSampleInfoParams) -> i32 {
    with_params(p, |p| {
        if p.p_counter_data_image.is_null() {
            return INVALID_PARAMETER;
        }
        // SAFETY: the caller's image has `counter_data_image_size` bytes.
        let image = unsafe { std::slice::from_raw_parts(p.p_counter_data_image, p.counter_data_image_size) };
        match pm::sample(image, p.sample_index) {
            Some(s) => {
                (p.start_timestamp, p.end_timestamp) = (s.start_ns, s.end_ns);
                SUCCESS
            }
            None => INVALID_PARAMETER,
        }
    })
}

const _: () = {
    // Sizes of the real parameter structs (CUDA 12.9 headers), as the *_STRUCT_SIZE macros
    // and a C program built on the headers give them.
    assert!(std::mem::size_of::<SetConfigParams>() == 64);
    assert!(std::mem::size_of::<DecodeDataParams>() == 48);
    assert!(std::mem::size_of::<GetCounterDataSizeParams>() == 56);
    assert!(std::mem::size_of::<GetSampleInfoParams>() == 64);
    assert!(std::mem::size_of::<EvaluateParams>() == 72);
    assert!(std::mem::size_of::<HostInitializeParams>() == 48);
    assert!(std::mem::size_of::<EnableParams>() == 32);
    assert!(std::mem::size_of::<GetCounterDataInfoParams>() == 56);
    assert!(std::mem::size_of::<ConfigAddMetricsParams>() == 40);
    assert!(std::mem::size_of::<GetChipNameParams>() == 32);
    assert!(std::mem::size_of::<GetCounterAvailabilityParams>() == 40);
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    fn host(chip: *const c_char) -> (i32, *mut c_void) {
        let mut init = HostInitializeParams {
            struct_size: size_of::<HostInitializeParams>(),
            p_priv: std::ptr::null_mut(),
            profiler_type: 1,
            p_chip_name: chip,
            p_counter_availability_image: AVAILABILITY.as_ptr(),
            p_host_object: std::ptr::null_mut(),
        };
        (cuptiProfilerHostInitialize(&mut init), init.p_host_object)
    }

    fn evaluate(host: *mut c_void, image: &[u8], index: usize, names: &[*const c_char]) -> (i32, [f64; 2]) {
        let mut values = [f64::NAN; 2];
        let mut p = EvaluateParams {
            struct_size: size_of::<EvaluateParams>(),
            p_priv: std::ptr::null_mut(),
            p_host_object: host,
            p_counter_data_image: image.as_ptr(),
            counter_data_image_size: image.len(),
            range_index: index,
            pp_metric_names: names.as_ptr(),
            num_metrics: names.len(),
            p_metric_values: values.as_mut_ptr(),
        };
        (cuptiProfilerHostEvaluateToGpuValues(&mut p), values)
    }

    /// The test process never loads libcuda, creates a context or enables sampling: evaluation
    /// works from the chip name, the availability image and the image bytes alone.
    #[test]
    fn evaluation_is_offline_and_refuses_corrupted_images() {
        assert!(pm::objects().is_empty());
        let (rc, _) = host(c"GA100".as_ptr());
        assert_eq!(rc, INVALID_PARAMETER, "another chip");
        let (rc, h) = host(pm_metrics::CHIP_NAME.as_ptr());
        assert_eq!(rc, SUCCESS);
        let names = [
            c"sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed".as_ptr(),
            c"gr__cycles_active.avg.pct_of_peak_sustained_elapsed".as_ptr(),
        ];
        let mut add = ConfigAddMetricsParams {
            struct_size: size_of::<ConfigAddMetricsParams>(),
            p_priv: std::ptr::null_mut(),
            p_host_object: h,
            pp_metric_names: names.as_ptr(),
            num_metrics: 2,
        };
        assert_eq!(cuptiProfilerHostConfigAddMetrics(&mut add), SUCCESS);
        let mut image = vec![0u8; pm::image_size(8)];
        assert!(pm::init_image(&mut image));
        let s = pm_metrics::SampleValues { start_ns: 0, end_ns: 50_000, tensor_active_ns: 10_000.0, busy_ns: 40_000.0 };
        assert!(pm::push_sample(&mut image, &s));
        assert_eq!(evaluate(h, &image, 0, &names), (SUCCESS, [20.0, 80.0]));
        assert_eq!(evaluate(h, &image, 1, &names).0, INVALID_PARAMETER, "past the populated samples");
        assert_eq!(evaluate(0x5 as *mut c_void, &image, 0, &names).0, INVALID_PARAMETER, "no such host object");
        let mut corrupted = image.clone();
        corrupted[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(evaluate(h, &corrupted, 0, &names).0, INVALID_PARAMETER);
        assert_eq!(evaluate(h, &image[..40], 0, &names).0, INVALID_PARAMETER, "cut inside the header");
        let junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert_eq!(evaluate(h, &junk, 0, &names).0, INVALID_PARAMETER);
        assert!(pm::objects().is_empty(), "no sampling object was ever made");
    }
}
