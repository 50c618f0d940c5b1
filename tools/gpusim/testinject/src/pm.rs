//! A PM-sampling client written against `cupti_pmsampling.h` / `cupti_profiler_host.h`
//! (CUDA 12.9). Parameter structs are laid out as arrays of 8-byte words in header field order
//! (each struct is a sequence of `size_t` / pointer fields, two trailing 32-bit enums packed in
//! one word), which keeps this independent of gpusim's own definitions.

use std::ffi::{c_char, c_void, CStr};
use std::sync::Mutex;

const TENSOR: &CStr = c"sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed";
const BUSY: &CStr = c"gr__cycles_active.avg.pct_of_peak_sustained_elapsed";
const MAX_SAMPLES: u64 = 100_000;

type Call = unsafe extern "C" fn(*mut u64) -> i32;

struct Session {
    lib: usize,
    host: u64,
    object: u64,
    image: Vec<u8>,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

/// What the samples add up to.
#[derive(Default)]
pub struct Totals {
    /// Samples decoded.
    pub samples: u64,
    /// Σ tensor % × sample length.
    pub tensor_active_ns: f64,
    /// Σ busy % × sample length.
    pub busy_ns: f64,
}

/// Call the CUPTI function `name` with a parameter struct of `words`; `words[0]` is set to the
/// struct size.
fn call(lib: usize, name: &CStr, words: &mut [u64]) -> Option<()> {
    // SAFETY: dlsym on the CUPTI handle; the function takes a pointer to its params struct.
    unsafe {
        let sym = libc::dlsym(lib as *mut c_void, name.as_ptr());
        if sym.is_null() {
            eprintln!("gpusim-testinject: libcupti has no {name:?}");
            return None;
        }
        let f: Call = std::mem::transmute::<*mut c_void, Call>(sym);
        // structSize: the words' size, unless the caller set the header's _STRUCT_SIZE.
        if words[0] == 0 {
            words[0] = (words.len() * 8) as u64;
        }
        let rc = f(words.as_mut_ptr());
        if rc != 0 {
            eprintln!("gpusim-testinject: {name:?} returned {rc}");
            return None;
        }
    }
    Some(())
}

/// Configure and start 1 ms PM sampling of device 0.
pub fn start(lib: *mut c_void) -> Option<()> {
    let lib = lib as usize;
    let metrics: [*const c_char; 2] = [TENSOR.as_ptr(), BUSY.as_ptr()];
    call(lib, c"cuptiProfilerInitialize", &mut [0u64; 2])?;
    // Host_Initialize: size, priv, profilerType (1 = PM sampling), chip, availability, out host.
    let mut init = [0, 0, 1, c"GH100".as_ptr() as u64, 0, 0];
    call(lib, c"cuptiProfilerHostInitialize", &mut init)?;
    let host = init[5];
    call(lib, c"cuptiProfilerHostConfigAddMetrics", &mut [0, 0, host, metrics.as_ptr() as u64, 2])?;
    let mut size = [0, 0, host, 0, 0];
    call(lib, c"cuptiProfilerHostGetConfigImageSize", &mut size)?;
    let mut config = vec![0u8; size[3] as usize];
    call(lib, c"cuptiProfilerHostGetConfigImage", &mut [0, 0, host, size[3], config.as_mut_ptr() as u64])?;
    // Enable: size, priv, deviceIndex, out object.
    let mut enable = [0, 0, 0, 0];
    call(lib, c"cuptiPmSamplingEnable", &mut enable)?;
    let object = enable[3];
    // SetConfig: size, priv, object, configSize, pConfig, hwBufferSize, interval (1 ms),
    // triggerMode = GPU_TIME_INTERVAL (1) | appendMode KEEP_OLDEST (0) << 32.
    let mut set = [0, 0, object, config.len() as u64, config.as_ptr() as u64, 512 << 20, 1_000_000, 1];
    call(lib, c"cuptiPmSamplingSetConfig", &mut set)?;
    // GetCounterDataSize: size, priv, object, names, numMetrics, maxSamples (u32), out size.
    let mut data_size = [0, 0, object, metrics.as_ptr() as u64, 2, MAX_SAMPLES, 0];
    call(lib, c"cuptiPmSamplingGetCounterDataSize", &mut data_size)?;
    let mut image = vec![0u8; data_size[6] as usize];
    call(
        lib,
        c"cuptiPmSamplingCounterDataImageInitialize",
        &mut [0, 0, object, data_size[6], image.as_mut_ptr() as u64],
    )?;
    call(lib, c"cuptiPmSamplingStart", &mut [0, 0, object])?;
    let mut session = SESSION.lock().unwrap_or_else(|p| p.into_inner());
    *session = Some(Session { lib, host, object, image });
    Some(())
}

/// Stop, decode and evaluate every sample.
pub fn finish() -> Totals {
    let mut totals = Totals::default();
    let mut session = SESSION.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = session.as_mut() else { return totals };
    let (lib, object, host) = (s.lib, s.object, s.host);
    let image = (s.image.as_mut_ptr() as u64, s.image.len() as u64);
    let _ = (|| -> Option<()> {
        call(lib, c"cuptiPmSamplingStop", &mut [0, 0, object])?;
        // DecodeData: size, priv, object, image, imageSize, out stopReason | overflow << 32;
        // structSize is the header's _STRUCT_SIZE (45: the end of `overflow`), not 48.
        call(lib, c"cuptiPmSamplingDecodeData", &mut [45, 0, object, image.0, image.1, 0])?;
        // GetCounterDataInfo: size, priv, image, imageSize, out total, populated, completed.
        let mut info = [0, 0, image.0, image.1, 0, 0, 0];
        call(lib, c"cuptiPmSamplingGetCounterDataInfo", &mut info)?;
        let metrics: [*const c_char; 2] = [TENSOR.as_ptr(), BUSY.as_ptr()];
        for index in 0..info[5] {
            let mut sample = [0, 0, object, image.0, image.1, index, 0, 0];
            call(lib, c"cuptiPmSamplingCounterDataGetSampleInfo", &mut sample)?;
            let mut values = [0f64; 2];
            let mut eval =
                [0, 0, host, image.0, image.1, index, metrics.as_ptr() as u64, 2, values.as_mut_ptr() as u64];
            call(lib, c"cuptiProfilerHostEvaluateToGpuValues", &mut eval)?;
            let length_ns = sample[7].saturating_sub(sample[6]) as f64;
            totals.samples += 1;
            totals.tensor_active_ns += values[0] / 100.0 * length_ns;
            totals.busy_ns += values[1] / 100.0 * length_ns;
        }
        Some(())
    })();
    totals
}
