//! CUPTI's entry points, resolved from the libcupti this process should use.
//!
//! cudarc supplies the types; the functions are resolved here rather than through cudarc's
//! loader, which only tries `libcupti.so` and the sonames of the CUDA version it was built for
//! (12): a CUDA 13 job (PyTorch's `nvidia/cu13/lib/libcupti.so.13`, never on the library path)
//! would get no device timeline. [`load`] prefers the libcupti the job has already mapped (the
//! one matching its CUDA), then the usual places. A missing entry point is an error code from
//! its wrapper, never a panic.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::cupti::sys::*;
use cudarc::driver::sys::CUcontext;

macro_rules! cupti_api {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        #[allow(non_snake_case)]
        struct Api {
            $($name: Option<unsafe extern "C" fn($($ty),*) -> CUptiResult>,)*
            _lib: libloading::Library,
        }

        fn resolve(lib: libloading::Library) -> Api {
            Api {
                // SAFETY: each symbol has the C signature of cupti.h (the declarations are
                // cudarc's bindings of the real headers).
                $($name: unsafe {
                    lib.get::<unsafe extern "C" fn($($ty),*) -> CUptiResult>(concat!(stringify!($name), "\0").as_bytes())
                }
                .ok()
                .map(|f| *f),)*
                _lib: lib,
            }
        }

        $(
            /// The CUPTI function of that name (`CUPTI_ERROR_NOT_INITIALIZED` before [`load`]
            /// succeeded, `CUPTI_ERROR_NOT_SUPPORTED` if this libcupti lacks it).
            ///
            /// # Safety
            /// As the C function.
            #[allow(non_snake_case)]
            pub unsafe fn $name($($arg: $ty),*) -> CUptiResult {
                match API.get() {
                    None => CUptiResult::CUPTI_ERROR_NOT_INITIALIZED,
                    Some(api) => match api.$name {
                        // SAFETY: per the caller's contract.
                        Some(f) => unsafe { f($($arg),*) },
                        None => CUptiResult::CUPTI_ERROR_NOT_SUPPORTED,
                    },
                }
            }
        )*
    };
}

/// `CUpti_SubscriberParams` (cupti_callbacks.h, CUPTI 13.3: 40 bytes; cudarc's 13.0 bindings
/// lack `allowMultipleSubscribers`).
#[repr(C)]
pub struct SubscriberParams {
    /// The size filled in ([`SUBSCRIBER_PARAMS_SIZE`]).
    pub struct_size: usize,
    /// Our name: CUPTI calls us "CUPTI for <name>".
    pub subscriber_name: *const std::ffi::c_char,
    /// Where CUPTI writes the holder's name when it refuses us.
    pub old_subscriber_name: *mut std::ffi::c_char,
    /// That buffer's size (at least 64, `CUPTI_OLD_SUBSCRIBER_NAME_MIN_LEN`).
    pub old_subscriber_size: usize,
    /// 1: let other subscribers share CUPTI with us (and ask to share it with them).
    pub allow_multiple_subscribers: u8,
    /// Up to 8-byte alignment.
    pub padding: [u8; 7],
}

/// `CUpti_SubscriberParams_STRUCT_SIZE`: up to the end of `padding`.
pub const SUBSCRIBER_PARAMS_SIZE: usize = 40;
const _: () = assert!(std::mem::size_of::<SubscriberParams>() == SUBSCRIBER_PARAMS_SIZE);
const _: () = assert!(std::mem::offset_of!(SubscriberParams, allow_multiple_subscribers) == 32);

/// `CUpti_BuffersCallbackRequestFunc_v2`: (buffer, size, maxNumRecords, request info).
pub type BufferRequestedV2 = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize, *mut c_void);
/// `CUpti_BuffersCallbackCompleteFunc_v2`: (buffer, size, validSize, completion info).
pub type BufferCompletedV2 = unsafe extern "C" fn(*mut u8, usize, usize, *mut c_void);

/// `CUPTI_ACTIVITY_ATTR_THREAD_ID_TYPE` (cupti_activity.h, 13.3): the thread-id type of one
/// subscriber, where `cuptiSetThreadIdType` is refused once subscribers share CUPTI.
pub const ATTR_THREAD_ID_TYPE: u32 = 21;

/// The first CUPTI_API_VERSION whose subscribers can share CUPTI (CUDA 13.3): all of them use
/// `cuptiSubscribe_v2` with `allowMultipleSubscribers`, and the V2 (per-subscriber) activity
/// API. Found in `cupti_callbacks.h` / `cupti_activity.h` of the 13.3 wheels (13.2 has the
/// flag as beta) and NVIDIA's CUPTI guide, "Multiple Subscribers".
pub const MULTI_SUBSCRIBER_VERSION: u32 = 130_300;

cupti_api! {
    cuptiGetVersion(version: *mut u32);
    cuptiSubscribe_v2(subscriber: *mut CUpti_SubscriberHandle, callback: CUpti_CallbackFunc, userdata: *mut c_void, params: *mut SubscriberParams);
    cuptiActivityEnable_v2(subscriber: CUpti_SubscriberHandle, kind: CUpti_ActivityKind, config: *mut c_void);
    cuptiActivityDisable_v2(subscriber: CUpti_SubscriberHandle, kind: CUpti_ActivityKind, config: *mut c_void);
    cuptiActivityRegisterCallbacks_v2(subscriber: CUpti_SubscriberHandle, requested: Option<BufferRequestedV2>, completed: Option<BufferCompletedV2>);
    cuptiActivityGetNextRecord_v2(subscriber: CUpti_SubscriberHandle, buffer: *mut u8, valid: usize, record: *mut *mut CUpti_Activity);
    cuptiActivityGetNumDroppedRecords_v2(subscriber: CUpti_SubscriberHandle, context: CUcontext, stream: u32, dropped: *mut usize);
    cuptiActivitySetAttribute_v2(subscriber: CUpti_SubscriberHandle, attr: u32, size: *mut usize, value: *mut c_void);
    cuptiActivityDisable(kind: CUpti_ActivityKind);
    cuptiActivityEnable(kind: CUpti_ActivityKind);
    cuptiActivityFlushAll(flag: u32);
    cuptiActivityFlushPeriod(time: u32);
    cuptiActivityGetNextRecord(buffer: *mut u8, valid: usize, record: *mut *mut CUpti_Activity);
    cuptiActivityGetNumDroppedRecords(context: CUcontext, stream: u32, dropped: *mut usize);
    cuptiActivityRegisterCallbacks(requested: CUpti_BuffersCallbackRequestFunc, completed: CUpti_BuffersCallbackCompleteFunc);
    cuptiDeviceGetChipName(p: *mut CUpti_Device_GetChipName_Params);
    cuptiGetTimestamp(timestamp: *mut u64);
    cuptiPmSamplingCounterDataGetSampleInfo(p: *mut CUpti_PmSampling_CounterData_GetSampleInfo_Params);
    cuptiPmSamplingCounterDataImageInitialize(p: *mut CUpti_PmSampling_CounterDataImage_Initialize_Params);
    cuptiPmSamplingDecodeData(p: *mut CUpti_PmSampling_DecodeData_Params);
    cuptiPmSamplingDisable(p: *mut CUpti_PmSampling_Disable_Params);
    cuptiPmSamplingEnable(p: *mut CUpti_PmSampling_Enable_Params);
    cuptiPmSamplingGetCounterAvailability(p: *mut CUpti_PmSampling_GetCounterAvailability_Params);
    cuptiPmSamplingGetCounterDataInfo(p: *mut CUpti_PmSampling_GetCounterDataInfo_Params);
    cuptiPmSamplingGetCounterDataSize(p: *mut CUpti_PmSampling_GetCounterDataSize_Params);
    cuptiPmSamplingSetConfig(p: *mut CUpti_PmSampling_SetConfig_Params);
    cuptiPmSamplingStart(p: *mut CUpti_PmSampling_Start_Params);
    cuptiPmSamplingStop(p: *mut CUpti_PmSampling_Stop_Params);
    cuptiProfilerHostConfigAddMetrics(p: *mut CUpti_Profiler_Host_ConfigAddMetrics_Params);
    cuptiProfilerHostEvaluateToGpuValues(p: *mut CUpti_Profiler_Host_EvaluateToGpuValues_Params);
    cuptiProfilerHostGetConfigImage(p: *mut CUpti_Profiler_Host_GetConfigImage_Params);
    cuptiProfilerHostGetConfigImageSize(p: *mut CUpti_Profiler_Host_GetConfigImageSize_Params);
    cuptiProfilerHostDeinitialize(p: *mut CUpti_Profiler_Host_Deinitialize_Params);
    cuptiProfilerHostInitialize(p: *mut CUpti_Profiler_Host_Initialize_Params);
    cuptiProfilerDeInitialize(p: *mut CUpti_Profiler_DeInitialize_Params);
    cuptiProfilerInitialize(p: *mut CUpti_Profiler_Initialize_Params);
    cuptiSubscribe(subscriber: *mut CUpti_SubscriberHandle, callback: CUpti_CallbackFunc, userdata: *mut c_void);
    cuptiUnsubscribe(subscriber: CUpti_SubscriberHandle);
    cuptiFinalize();
    cuptiSetThreadIdType(kind: CUpti_ActivityThreadIdType);
    cuptiEnableCallback(enable: u32, subscriber: CUpti_SubscriberHandle, domain: CUpti_CallbackDomain, cbid: CUpti_CallbackId);
}

static API: OnceLock<Api> = OnceLock::new();

/// Whether this libcupti lets subscribers share CUPTI: its `cuptiGetVersion` is at least
/// [`MULTI_SUBSCRIBER_VERSION`] and it has every V2 entry point used. Before [`load`]: false.
pub fn shares_subscribers() -> bool {
    let Some(api) = API.get() else { return false };
    let has_v2 = api.cuptiSubscribe_v2.is_some()
        && api.cuptiActivityEnable_v2.is_some()
        && api.cuptiActivityDisable_v2.is_some()
        && api.cuptiActivityRegisterCallbacks_v2.is_some()
        && api.cuptiActivityGetNextRecord_v2.is_some()
        && api.cuptiActivitySetAttribute_v2.is_some();
    let mut version = 0u32;
    // SAFETY: writes one u32.
    has_v2
        && unsafe { cuptiGetVersion(&mut version) } == CUptiResult::CUPTI_SUCCESS
        && version >= MULTI_SUBSCRIBER_VERSION
}

/// The libcupti files mapped into this process (from /proc/self/maps).
fn mapped_cupti() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut found: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libcupti.so")))
        .collect();
    found.dedup();
    found
}

/// Directories of the CUDA runtime libraries this process mapped (a PyTorch wheel's
/// `nvidia/cu13/lib`, or `nvidia/cuda_runtime/lib` beside `nvidia/cuda_cupti/lib` for CUDA 12).
fn wheel_dirs() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut dirs = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.contains("libcudart.so")) {
        if let Some(dir) = Path::new(path).parent() {
            dirs.push(dir.to_path_buf());
            if let Some(nvidia) = dir.parent().and_then(Path::parent) {
                dirs.push(nvidia.join("cuda_cupti/lib"));
            }
        }
    }
    dirs.dedup();
    dirs
}

/// Every `libcupti.so*` file in `dir`, newest soname first.
fn cupti_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libcupti.so")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.reverse();
    v
}

/// Where [`load_from`] looks besides the job's own mappings and the usual places.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// `GHOSTPROF_CUPTI_PATH`: the libcupti file to try first.
    pub cupti_path: Option<String>,
    /// `CUDA_HOME`: a CUDA install whose `extras/CUPTI/lib64` is tried.
    pub cuda_home: Option<String>,
}

impl Search {
    /// From this process's environment (the library loaded by the driver at `cuInit`, on the
    /// job's own thread, before the job runs anything of its own).
    pub fn from_env() -> Self {
        Search { cupti_path: std::env::var("GHOSTPROF_CUPTI_PATH").ok(), cuda_home: std::env::var("CUDA_HOME").ok() }
    }
}

/// [`load_from`] with [`Search::from_env`].
pub fn load() -> Result<String, String> {
    load_from(&Search::from_env())
}

/// Loads libcupti, best first: `search.cupti_path`; the one the job already mapped; the
/// library path (`libcupti.so`, `.so.13`, `.so.12`); beside the job's libcudart (pip wheels);
/// `search.cuda_home` and `/usr/local/cuda` `extras/CUPTI/lib64`. Returns the path or name
/// loaded, or what was tried. Reads no environment variable: an injected attach runs this on
/// a thread borrowed from the job, where a `setenv` of the job's at that moment could race a
/// `getenv` (ghostprof passes what it read in /proc/PID/environ instead).
pub fn load_from(search: &Search) -> Result<String, String> {
    let mut tried: Vec<String> = Vec::new();
    let mut candidates: Vec<String> = Vec::new();
    candidates.extend(search.cupti_path.iter().cloned());
    candidates.extend(mapped_cupti().into_iter().map(|p| p.display().to_string()));
    candidates.extend(["libcupti.so", "libcupti.so.13", "libcupti.so.12"].map(String::from));
    for dir in wheel_dirs() {
        candidates.extend(cupti_in(&dir).into_iter().map(|p| p.display().to_string()));
    }
    let homes = search.cuda_home.iter().cloned().chain(std::iter::once("/usr/local/cuda".to_string()));
    for home in homes {
        candidates.extend(
            cupti_in(&Path::new(&home).join("extras/CUPTI/lib64")).into_iter().map(|p| p.display().to_string()),
        );
    }
    for c in candidates {
        if tried.contains(&c) {
            continue;
        }
        // SAFETY: loading CUPTI runs its initializers, as any CUPTI client does.
        match unsafe { libloading::Library::new(&c) } {
            Ok(lib) => {
                let api = resolve(lib);
                if api.cuptiActivityRegisterCallbacks.is_none() {
                    tried.push(format!("{c} (no cuptiActivityRegisterCallbacks)"));
                    continue;
                }
                let _ = API.set(api);
                return Ok(c);
            }
            Err(_) => tried.push(c),
        }
    }
    Err(format!("tried {}; set GHOSTPROF_CUPTI_PATH to the libcupti.so file", tried.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attach path's search reads no environment variable: a GHOSTPROF_CUPTI_PATH set in
    /// the process is not tried unless it was passed in.
    #[test]
    fn load_from_tries_what_it_is_given_not_the_environment() {
        let planted = "/nonexistent/ghostprof-test-env/libcupti.so";
        std::env::set_var("GHOSTPROF_CUPTI_PATH", planted);
        let given = "/nonexistent/ghostprof-test-arg/libcupti.so";
        let search = Search { cupti_path: Some(given.into()), cuda_home: Some("/nonexistent/cuda".into()) };
        match load_from(&search) {
            Err(tried) => {
                assert!(tried.contains(given), "{tried}");
                assert!(!tried.contains(planted), "read the environment: {tried}");
            }
            Ok(loaded) => assert_ne!(loaded, planted),
        }
        std::env::remove_var("GHOSTPROF_CUPTI_PATH");
    }
}
