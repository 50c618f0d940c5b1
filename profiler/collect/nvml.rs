//! NVML device samples: every GPU the driver sees, sampled on a thread of its own (never in the
//! drain loop) every 100 ms into `DeviceSample` records with pid 0 (host-wide) and the NVML
//! device index: GPU and memory utilization, memory used, SM and memory clocks, power, and —
//! where `nvmlGpmQueryDeviceSupport` says the device has GPM (Hopper and later) — SM activity,
//! SM occupancy, tensor activity and DRAM bandwidth over each 100 ms.
//!
//! `libnvidia-ml.so.1` is loaded with `dlopen` at run time: a machine without an NVIDIA driver
//! gets one note and no thread. Every NVML call's result is checked; a failing metric is left
//! out of that sample (and noted once), nothing panics, and no callback crosses the FFI.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pipeline::Producer;
use crate::trace::{DeviceSample, Metric};

/// The library every NVIDIA driver installs.
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// The sampling period.
pub const INTERVAL: Duration = Duration::from_millis(100);

type Ret = c_int;
type Device = *mut c_void;
type GpmSample = *mut c_void;

const NVML_SUCCESS: Ret = 0;
const NVML_CLOCK_SM: c_uint = 1;
const NVML_CLOCK_MEM: c_uint = 2;
const NVML_GPM_SUPPORT_VERSION: c_uint = 1;
const NVML_GPM_METRICS_GET_VERSION: c_uint = 1;
/// Room for the metrics array of `nvmlGpmMetricsGet_t` (NVML_GPM_METRIC_MAX in nvml.h of
/// CUDA 12.x is 98; the library reads `numMetrics` entries).
const GPM_METRIC_SLOTS: usize = 98;

/// `nvmlGpmMetricId_t` values of nvml.h, and the metric each becomes (NVML reports 0–100 %,
/// stored as a fraction like the CUPTI samples).
const GPM_METRICS: [(c_uint, Metric); 4] = [
    (2, Metric::SmActive),       // NVML_GPM_METRIC_SM_UTIL
    (3, Metric::SmOccupancy),    // NVML_GPM_METRIC_SM_OCCUPANCY
    (5, Metric::TensorActive),   // NVML_GPM_METRIC_ANY_TENSOR_UTIL
    (10, Metric::DramBandwidth), // NVML_GPM_METRIC_DRAM_BW_UTIL
];

#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
#[derive(Default)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

#[repr(C)]
struct GpmSupport {
    version: c_uint,
    is_supported_device: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct GpmMetricInfo {
    short_name: *const c_char,
    long_name: *const c_char,
    unit: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct GpmMetric {
    metric_id: c_uint,
    nvml_return: Ret,
    value: f64,
    info: GpmMetricInfo,
}

#[repr(C)]
struct GpmMetricsGet {
    version: c_uint,
    num_metrics: c_uint,
    sample1: GpmSample,
    sample2: GpmSample,
    metrics: [GpmMetric; GPM_METRIC_SLOTS],
}

type NoArgsFn = unsafe extern "C" fn() -> Ret;
type ErrorStringFn = unsafe extern "C" fn(Ret) -> *const c_char;
type CountFn = unsafe extern "C" fn(*mut c_uint) -> Ret;
type HandleFn = unsafe extern "C" fn(c_uint, *mut Device) -> Ret;
type UtilizationFn = unsafe extern "C" fn(Device, *mut Utilization) -> Ret;
type MemoryFn = unsafe extern "C" fn(Device, *mut Memory) -> Ret;
type ClockFn = unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> Ret;
type PowerFn = unsafe extern "C" fn(Device, *mut c_uint) -> Ret;
type GpmSupportFn = unsafe extern "C" fn(Device, *mut GpmSupport) -> Ret;
type GpmAllocFn = unsafe extern "C" fn(*mut GpmSample) -> Ret;
type GpmFreeFn = unsafe extern "C" fn(GpmSample) -> Ret;
type GpmGetFn = unsafe extern "C" fn(Device, GpmSample) -> Ret;
type GpmMetricsFn = unsafe extern "C" fn(*mut GpmMetricsGet) -> Ret;

/// The entry points, resolved with dlsym. Optional ones are None when an older driver lacks them.
struct Api {
    handle: *mut c_void,
    shutdown: NoArgsFn,
    error_string: Option<ErrorStringFn>,
    count: CountFn,
    handle_by_index: HandleFn,
    utilization: Option<UtilizationFn>,
    memory: Option<MemoryFn>,
    clock: Option<ClockFn>,
    power: Option<PowerFn>,
    gpm_support: Option<GpmSupportFn>,
    gpm_alloc: Option<GpmAllocFn>,
    gpm_free: Option<GpmFreeFn>,
    gpm_get: Option<GpmGetFn>,
    gpm_metrics: Option<GpmMetricsFn>,
}

// SAFETY: the handle and function pointers are process-global and NVML is thread-safe; the
// Api is moved to the sampling thread and used there only.
unsafe impl Send for Api {}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Api {
    /// Loads `library` and resolves the entry points; Err says why in words.
    fn load(library: &str) -> Result<Api, String> {
        let name = CString::new(library).map_err(|_| format!("bad library name {library:?}"))?;
        // SAFETY: dlopen with a valid C string; the handle is closed in Drop.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dl_error());
        }
        let sym = |n: &str| -> *mut c_void {
            let c = CString::new(n).unwrap_or_default();
            // SAFETY: dlsym on a live handle with a valid C string.
            unsafe { libc::dlsym(handle, c.as_ptr()) }
        };
        macro_rules! req {
            ($n:literal, $t:ty) => {{
                let p = sym($n);
                if p.is_null() {
                    // SAFETY: closing the handle we opened.
                    unsafe { libc::dlclose(handle) };
                    return Err(format!("{library} has no {}", $n));
                }
                // SAFETY: the symbol has the signature of nvml.h, which the field's type spells.
                unsafe { std::mem::transmute::<*mut c_void, $t>(p) }
            }};
        }
        macro_rules! opt {
            ($n:literal, $t:ty) => {{
                let p = sym($n);
                // SAFETY: as above, when present.
                (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, $t>(p) })
            }};
        }
        let init = req!("nvmlInit_v2", NoArgsFn);
        let api = Api {
            handle,
            shutdown: req!("nvmlShutdown", NoArgsFn),
            error_string: opt!("nvmlErrorString", ErrorStringFn),
            count: req!("nvmlDeviceGetCount_v2", CountFn),
            handle_by_index: req!("nvmlDeviceGetHandleByIndex_v2", HandleFn),
            utilization: opt!("nvmlDeviceGetUtilizationRates", UtilizationFn),
            memory: opt!("nvmlDeviceGetMemoryInfo", MemoryFn),
            clock: opt!("nvmlDeviceGetClockInfo", ClockFn),
            power: opt!("nvmlDeviceGetPowerUsage", PowerFn),
            gpm_support: opt!("nvmlGpmQueryDeviceSupport", GpmSupportFn),
            gpm_alloc: opt!("nvmlGpmSampleAlloc", GpmAllocFn),
            gpm_free: opt!("nvmlGpmSampleFree", GpmFreeFn),
            gpm_get: opt!("nvmlGpmSampleGet", GpmGetFn),
            gpm_metrics: opt!("nvmlGpmMetricsGet", GpmMetricsFn),
        };
        // SAFETY: nvmlInit_v2 takes no arguments.
        let rc = unsafe { init() };
        if rc != NVML_SUCCESS {
            let why = api.describe(rc);
            // Not initialized: no shutdown, just close the library.
            // SAFETY: closing the handle we opened; `api` is forgotten so Drop does not run.
            unsafe { libc::dlclose(handle) };
            std::mem::forget(api);
            return Err(format!("nvmlInit failed: {why}"));
        }
        Ok(api)
    }

    fn describe(&self, rc: Ret) -> String {
        match self.error_string {
            // SAFETY: nvmlErrorString returns a static NUL-terminated string (or null).
            Some(f) => {
                let p = unsafe { f(rc) };
                if p.is_null() {
                    format!("NVML error {rc}")
                } else {
                    // SAFETY: non-null static string.
                    format!("{} (NVML error {rc})", unsafe { CStr::from_ptr(p) }.to_string_lossy())
                }
            }
            None => format!("NVML error {rc}"),
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        // SAFETY: NVML was initialized by load(); the handle is ours.
        unsafe {
            (self.shutdown)();
            libc::dlclose(self.handle);
        }
    }
}

/// One device being sampled.
struct Gpu {
    index: u32,
    handle: Device,
    /// GPM: the previous and the current sample buffers (None without GPM).
    gpm: Option<(GpmSample, GpmSample, bool)>,
}

/// What the sampler did, for the session summary.
#[derive(Debug, Clone, Default)]
pub struct NvmlStats {
    /// GPUs NVML reported.
    pub devices: u32,
    /// Of those, GPUs with GPM (GPU performance monitoring) metrics.
    pub gpm_devices: u32,
    /// Sampling rounds done (one round samples every GPU).
    pub rounds: u64,
    /// Samples written, all GPUs and rounds together.
    pub samples: u64,
}

/// The NVML sampler of a session. [`NvmlSampler::stop`] ends its thread.
pub struct NvmlSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Mutex<(NvmlStats, Vec<String>)>>,
}

impl NvmlSampler {
    /// Starts sampling every GPU into `producer` every [`INTERVAL`] on a thread of its own. When
    /// `libnvidia-ml.so.1` is absent or NVML does not initialize, no thread starts and
    /// [`NvmlSampler::notes`] says so once.
    pub fn start(producer: Producer) -> NvmlSampler {
        Self::start_with(LIBRARY, producer, INTERVAL)
    }

    /// [`NvmlSampler::start`] with another library file and period (tests).
    pub fn start_with(library: &str, producer: Producer, interval: Duration) -> NvmlSampler {
        let shared = Arc::new(Mutex::new((NvmlStats::default(), Vec::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let api = match Api::load(library) {
            Ok(api) => api,
            Err(why) => {
                lock(&shared).1.push(format!("NVML ({library}) is not available: no device samples ({why})"));
                return NvmlSampler { stop, thread: None, shared };
            }
        };
        let (s, st) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("ghostprof-nvml".into()).spawn(move || {
            // Nothing in here may take the recording down: a panic ends sampling with a note.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sample_loop(api, producer, interval, &st, &s)
            }));
            if result.is_err() {
                lock(&s).1.push("NVML sampling stopped after an internal error".into());
            }
        });
        match thread {
            Ok(t) => NvmlSampler { stop, thread: Some(t), shared },
            Err(e) => {
                lock(&shared).1.push(format!("NVML sampling is off: cannot start its thread ({e})"));
                NvmlSampler { stop, thread: None, shared }
            }
        }
    }

    /// Whether a sampling thread runs.
    pub fn running(&self) -> bool {
        self.thread.is_some()
    }

    /// What the sampler did so far.
    pub fn stats(&self) -> NvmlStats {
        lock(&self.shared).0.clone()
    }

    /// Things the user should know (each said once).
    pub fn notes(&self) -> Vec<String> {
        lock(&self.shared).1.clone()
    }

    /// Ends the sampling thread (its producer is flushed as it goes).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for NvmlSampler {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn note(shared: &Mutex<(NvmlStats, Vec<String>)>, msg: String) {
    let mut g = lock(shared);
    if !g.1.contains(&msg) {
        g.1.push(msg);
    }
}

fn sample_loop(
    api: Api,
    mut producer: Producer,
    interval: Duration,
    stop: &AtomicBool,
    shared: &Mutex<(NvmlStats, Vec<String>)>,
) {
    let mut count: c_uint = 0;
    // SAFETY: out-pointer to a local.
    let rc = unsafe { (api.count)(&mut count) };
    if rc != NVML_SUCCESS {
        note(shared, format!("NVML sees no devices: {}", api.describe(rc)));
        return;
    }
    let mut gpus = Vec::new();
    for index in 0..count {
        let mut handle: Device = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        let rc = unsafe { (api.handle_by_index)(index, &mut handle) };
        if rc != NVML_SUCCESS {
            note(shared, format!("NVML device {index}: {}", api.describe(rc)));
            continue;
        }
        let gpm = gpm_buffers(&api, handle);
        gpus.push(Gpu { index, handle, gpm });
    }
    {
        let mut g = lock(shared);
        g.0.devices = gpus.len() as u32;
        g.0.gpm_devices = gpus.iter().filter(|g| g.gpm.is_some()).count() as u32;
    }
    let mut next = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let mut n = 0u64;
        for gpu in &mut gpus {
            n += sample(&api, gpu, &mut producer, shared);
        }
        producer.flush();
        {
            let mut g = lock(shared);
            g.0.rounds += 1;
            g.0.samples += n;
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::park_timeout(next - now);
        } else {
            next = now;
        }
    }
    for gpu in &gpus {
        if let (Some((a, b, _)), Some(free)) = (gpu.gpm, api.gpm_free) {
            // SAFETY: buffers allocated by nvmlGpmSampleAlloc, freed once.
            unsafe {
                free(a);
                free(b);
            }
        }
    }
}

/// Two GPM sample buffers when the device supports GPM and the driver has the calls.
fn gpm_buffers(api: &Api, dev: Device) -> Option<(GpmSample, GpmSample, bool)> {
    let (support, alloc, free) = (api.gpm_support?, api.gpm_alloc?, api.gpm_free?);
    api.gpm_get?;
    api.gpm_metrics?;
    let mut s = GpmSupport { version: NVML_GPM_SUPPORT_VERSION, is_supported_device: 0 };
    // SAFETY: out-pointer to a local with its version set.
    if unsafe { support(dev, &mut s) } != NVML_SUCCESS || s.is_supported_device == 0 {
        return None;
    }
    let (mut a, mut b): (GpmSample, GpmSample) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: out-pointers to locals.
    unsafe {
        if alloc(&mut a) != NVML_SUCCESS {
            return None;
        }
        if alloc(&mut b) != NVML_SUCCESS {
            free(a);
            return None;
        }
    }
    Some((a, b, false))
}

/// One round for one device: returns the number of samples pushed.
fn sample(api: &Api, gpu: &mut Gpu, producer: &mut Producer, shared: &Mutex<(NvmlStats, Vec<String>)>) -> u64 {
    let t = crate::clock::monotonic_ns();
    let index = gpu.index;
    let mut n = 0u64;
    let mut push = |metric: Metric, value: f64, producer: &mut Producer| {
        producer.push(DeviceSample { time_ns: t, value, device: index, metric: metric as u32, pid: 0, reserved: 0 });
        n += 1;
    };
    let failed = |what: &str, rc: Ret| {
        note(shared, format!("NVML device {index}: {what} is not available ({})", api.describe(rc)));
    };
    // SAFETY (all calls below): a device handle from NVML and out-pointers to locals.
    if let Some(f) = api.utilization {
        let mut u = Utilization::default();
        match unsafe { f(gpu.handle, &mut u) } {
            NVML_SUCCESS => {
                push(Metric::GpuUtilPercent, u.gpu as f64, producer);
                push(Metric::MemUtilPercent, u.memory as f64, producer);
            }
            rc => failed("utilization", rc),
        }
    }
    if let Some(f) = api.memory {
        let mut m = Memory::default();
        match unsafe { f(gpu.handle, &mut m) } {
            NVML_SUCCESS => push(Metric::MemUsedBytes, m.used as f64, producer),
            rc => failed("memory used", rc),
        }
    }
    if let Some(f) = api.clock {
        for (kind, metric, what) in
            [(NVML_CLOCK_SM, Metric::SmClockMhz, "SM clock"), (NVML_CLOCK_MEM, Metric::MemClockMhz, "memory clock")]
        {
            let mut mhz: c_uint = 0;
            match unsafe { f(gpu.handle, kind, &mut mhz) } {
                NVML_SUCCESS => push(metric, mhz as f64, producer),
                rc => failed(what, rc),
            }
        }
    }
    if let Some(f) = api.power {
        let mut mw: c_uint = 0;
        match unsafe { f(gpu.handle, &mut mw) } {
            NVML_SUCCESS => push(Metric::PowerWatts, mw as f64 / 1000.0, producer),
            rc => failed("power", rc),
        }
    }
    if let (Some((prev, cur, have_prev)), Some(get), Some(metrics)) = (gpu.gpm.as_mut(), api.gpm_get, api.gpm_metrics) {
        match unsafe { get(gpu.handle, *cur) } {
            NVML_SUCCESS => {
                if *have_prev {
                    let empty = GpmMetric {
                        metric_id: 0,
                        nvml_return: 0,
                        value: 0.0,
                        info: GpmMetricInfo {
                            short_name: std::ptr::null(),
                            long_name: std::ptr::null(),
                            unit: std::ptr::null(),
                        },
                    };
                    let mut req = Box::new(GpmMetricsGet {
                        version: NVML_GPM_METRICS_GET_VERSION,
                        num_metrics: GPM_METRICS.len() as c_uint,
                        sample1: *prev,
                        sample2: *cur,
                        metrics: [empty; GPM_METRIC_SLOTS],
                    });
                    for (slot, (id, _)) in req.metrics.iter_mut().zip(GPM_METRICS) {
                        slot.metric_id = id;
                    }
                    match unsafe { metrics(&mut *req) } {
                        NVML_SUCCESS => {
                            for (slot, (_, metric)) in req.metrics.iter().zip(GPM_METRICS) {
                                if slot.nvml_return == NVML_SUCCESS && slot.value.is_finite() {
                                    push(metric, slot.value / 100.0, producer);
                                }
                            }
                        }
                        rc => failed("GPM metrics", rc),
                    }
                }
                std::mem::swap(prev, cur);
                *have_prev = true;
            }
            rc => failed("GPM sample", rc),
        }
    }
    n
}
