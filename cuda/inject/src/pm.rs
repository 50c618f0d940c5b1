//! PM sampling (CUDA ≥ 12.6): tensor-pipe and SM activity of device 0 at a fixed GPU-time
//! interval, the hardware FLOP source of docs/metrics.md. Each tick (from the control loop)
//! decodes the samples completed so far while sampling goes on, sends them through the ring and
//! re-initializes the counter-data image; the last tick stops sampling first, so the final
//! (partial) sample is included. A device that does not offer the metrics gets a status record
//! and no sampling.

use std::ffi::{c_char, CStr};
use std::mem::{size_of, zeroed};

use cs::CUptiResult::CUPTI_SUCCESS;
use cudarc::cupti::sys as cs;

pub const TENSOR: &CStr = c"sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed";
pub const SM_ACTIVE: &CStr = c"gr__cycles_active.avg.pct_of_peak_sustained_elapsed";
const MAX_SAMPLES: u32 = 20_000;
const HW_BUFFER_BYTES: usize = 64 << 20;

pub struct PmSession {
    host: *mut cs::CUpti_Profiler_Host_Object,
    object: *mut cs::CUpti_PmSampling_Object,
    image: Vec<u8>,
}

// SAFETY: the CUPTI handles are used from one thread at a time (behind the state mutex).
unsafe impl Send for PmSession {}

/// A zeroed CUPTI params struct with its size set.
macro_rules! params {
    ($t:ident { $($f:ident: $v:expr),* $(,)? }) => {{
        // SAFETY: CUPTI params structs are plain C data; all-zero is their documented default.
        #[allow(unused_unsafe)]
        let mut p: cs::$t = unsafe { zeroed() };
        p.structSize = size_of::<cs::$t>();
        $( p.$f = $v; )*
        p
    }};
}

fn check(what: &str, rc: cs::CUptiResult) -> Result<(), String> {
    if rc == CUPTI_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what} failed ({rc:?})"))
    }
}

fn metric_names() -> [*const c_char; 2] {
    [TENSOR.as_ptr(), SM_ACTIVE.as_ptr()]
}

/// Configures and starts sampling of device 0 every `interval_ns`.
pub fn start(interval_ns: u64) -> Result<PmSession, String> {
    // SAFETY (whole fn): CUPTI calls with initialized params structs and live buffers.
    unsafe {
        check(
            "cuptiProfilerInitialize",
            crate::api::cuptiProfilerInitialize(&mut params!(CUpti_Profiler_Initialize_Params {})),
        )?;
        let mut chip = params!(CUpti_Device_GetChipName_Params { deviceIndex: 0 });
        check("cuptiDeviceGetChipName", crate::api::cuptiDeviceGetChipName(&mut chip))?;
        let mut avail = params!(CUpti_PmSampling_GetCounterAvailability_Params { deviceIndex: 0 });
        check("cuptiPmSamplingGetCounterAvailability", crate::api::cuptiPmSamplingGetCounterAvailability(&mut avail))?;
        let mut avail_image = vec![0u8; avail.counterAvailabilityImageSize];
        avail.pCounterAvailabilityImage = avail_image.as_mut_ptr();
        check("cuptiPmSamplingGetCounterAvailability", crate::api::cuptiPmSamplingGetCounterAvailability(&mut avail))?;
        let mut init = params!(CUpti_Profiler_Host_Initialize_Params {
            profilerType: cs::CUpti_ProfilerType::CUPTI_PROFILER_TYPE_PM_SAMPLING,
            pChipName: chip.pChipName,
            pCounterAvailabilityImage: avail_image.as_ptr(),
        });
        check("cuptiProfilerHostInitialize", crate::api::cuptiProfilerHostInitialize(&mut init))?;
        let host = init.pHostObject;
        let mut names = metric_names();
        let mut add = params!(CUpti_Profiler_Host_ConfigAddMetrics_Params {
            pHostObject: host,
            ppMetricNames: names.as_mut_ptr(),
            numMetrics: names.len(),
        });
        let chip_name =
            if chip.pChipName.is_null() { "?".into() } else { CStr::from_ptr(chip.pChipName).to_string_lossy() };
        check(
            &format!(
                "the device ({chip_name}) does not offer tensor/SM activity metrics: cuptiProfilerHostConfigAddMetrics"
            ),
            crate::api::cuptiProfilerHostConfigAddMetrics(&mut add),
        )?;
        let mut size = params!(CUpti_Profiler_Host_GetConfigImageSize_Params { pHostObject: host });
        check("cuptiProfilerHostGetConfigImageSize", crate::api::cuptiProfilerHostGetConfigImageSize(&mut size))?;
        let mut config = vec![0u8; size.configImageSize];
        let mut get = params!(CUpti_Profiler_Host_GetConfigImage_Params {
            pHostObject: host,
            configImageSize: config.len(),
            pConfigImage: config.as_mut_ptr(),
        });
        check("cuptiProfilerHostGetConfigImage", crate::api::cuptiProfilerHostGetConfigImage(&mut get))?;
        let mut enable = params!(CUpti_PmSampling_Enable_Params { deviceIndex: 0 });
        check("cuptiPmSamplingEnable", crate::api::cuptiPmSamplingEnable(&mut enable))?;
        let object = enable.pPmSamplingObject;
        let mut set = params!(CUpti_PmSampling_SetConfig_Params {
            pPmSamplingObject: object,
            configSize: config.len(),
            pConfig: config.as_ptr(),
            hardwareBufferSize: HW_BUFFER_BYTES,
            samplingInterval: interval_ns,
            triggerMode: cs::CUpti_PmSampling_TriggerMode::CUPTI_PM_SAMPLING_TRIGGER_MODE_GPU_TIME_INTERVAL,
        });
        check("cuptiPmSamplingSetConfig", crate::api::cuptiPmSamplingSetConfig(&mut set))?;
        let mut data = params!(CUpti_PmSampling_GetCounterDataSize_Params {
            pPmSamplingObject: object,
            pMetricNames: names.as_mut_ptr(),
            numMetrics: names.len(),
            maxSamples: MAX_SAMPLES,
        });
        check("cuptiPmSamplingGetCounterDataSize", crate::api::cuptiPmSamplingGetCounterDataSize(&mut data))?;
        let mut session = PmSession { host, object, image: vec![0u8; data.counterDataSize] };
        session.reset_image()?;
        session.start()?;
        Ok(session)
    }
}

/// One decoded sample: [start, end) in CUPTI time, tensor-pipe and SM activity in percent.
pub struct Sample {
    pub start_ns: u64,
    pub end_ns: u64,
    pub tensor_pct: f64,
    pub sm_active_pct: f64,
}

impl PmSession {
    fn reset_image(&mut self) -> Result<(), String> {
        let mut p = params!(CUpti_PmSampling_CounterDataImage_Initialize_Params {
            pPmSamplingObject: self.object,
            counterDataSize: self.image.len(),
            pCounterData: self.image.as_mut_ptr(),
        });
        // SAFETY: the image buffer is live and of the size CUPTI asked for.
        check("cuptiPmSamplingCounterDataImageInitialize", unsafe {
            crate::api::cuptiPmSamplingCounterDataImageInitialize(&mut p)
        })
    }

    fn start(&mut self) -> Result<(), String> {
        // SAFETY: a live sampling object.
        check("cuptiPmSamplingStart", unsafe {
            crate::api::cuptiPmSamplingStart(&mut params!(CUpti_PmSampling_Start_Params {
                pPmSamplingObject: self.object
            }))
        })
    }

    /// Decodes every sample completed since the last call; `last` stops sampling first.
    pub fn collect(&mut self, last: bool) -> Result<Vec<Sample>, String> {
        // SAFETY (whole fn): CUPTI calls on the live session and its image.
        unsafe {
            if last {
                check(
                    "cuptiPmSamplingStop",
                    crate::api::cuptiPmSamplingStop(&mut params!(CUpti_PmSampling_Stop_Params {
                        pPmSamplingObject: self.object
                    })),
                )?;
            }
            let mut decode = params!(CUpti_PmSampling_DecodeData_Params {
                pPmSamplingObject: self.object,
                pCounterDataImage: self.image.as_mut_ptr(),
                counterDataImageSize: self.image.len(),
            });
            // The header's _STRUCT_SIZE (end of the last field, `overflow`), not sizeof with its
            // trailing padding: CUPTI 13.0 refuses 48 for 45 with INVALID_PARAMETER (H100). The
            // only params struct ghostprof uses whose sizeof and _STRUCT_SIZE differ.
            decode.structSize = std::mem::offset_of!(cs::CUpti_PmSampling_DecodeData_Params, overflow) + 1;
            check("cuptiPmSamplingDecodeData", crate::api::cuptiPmSamplingDecodeData(&mut decode))?;
            let mut info = params!(CUpti_PmSampling_GetCounterDataInfo_Params {
                pCounterDataImage: self.image.as_ptr(),
                counterDataImageSize: self.image.len(),
            });
            check("cuptiPmSamplingGetCounterDataInfo", crate::api::cuptiPmSamplingGetCounterDataInfo(&mut info))?;
            let mut out = Vec::with_capacity(info.numCompletedSamples);
            let mut names = metric_names();
            for index in 0..info.numCompletedSamples {
                let mut sample = params!(CUpti_PmSampling_CounterData_GetSampleInfo_Params {
                    pPmSamplingObject: self.object,
                    pCounterDataImage: self.image.as_ptr(),
                    counterDataImageSize: self.image.len(),
                    sampleIndex: index,
                });
                check(
                    "cuptiPmSamplingCounterDataGetSampleInfo",
                    crate::api::cuptiPmSamplingCounterDataGetSampleInfo(&mut sample),
                )?;
                let mut values = [0f64; 2];
                let mut eval = params!(CUpti_Profiler_Host_EvaluateToGpuValues_Params {
                    pHostObject: self.host,
                    pCounterDataImage: self.image.as_ptr(),
                    counterDataImageSize: self.image.len(),
                    rangeIndex: index,
                    ppMetricNames: names.as_mut_ptr(),
                    numMetrics: names.len(),
                    pMetricValues: values.as_mut_ptr(),
                });
                check(
                    "cuptiProfilerHostEvaluateToGpuValues",
                    crate::api::cuptiProfilerHostEvaluateToGpuValues(&mut eval),
                )?;
                out.push(Sample {
                    start_ns: sample.startTimestamp,
                    end_ns: sample.endTimestamp,
                    tensor_pct: values[0],
                    sm_active_pct: values[1],
                });
            }
            self.reset_image()?;
            Ok(out)
        }
    }
}

/// The session's end, whichever way it ends (the last decode, an error, a detach): sampling
/// disabled, the host object and the profiler released, as CUPTI's own PM sampling sample ends.
/// Stopping alone left the sampling object and the profiler initialized in a job that goes on
/// after `attach` detaches. Results are ignored: there is nothing left to do on failure.
impl Drop for PmSession {
    fn drop(&mut self) {
        // SAFETY: the live handles of this session, released once.
        unsafe {
            crate::api::cuptiPmSamplingDisable(&mut params!(CUpti_PmSampling_Disable_Params {
                pPmSamplingObject: self.object
            }));
            crate::api::cuptiProfilerHostDeinitialize(&mut params!(CUpti_Profiler_Host_Deinitialize_Params {
                pHostObject: self.host
            }));
            crate::api::cuptiProfilerDeInitialize(&mut params!(CUpti_Profiler_DeInitialize_Params {}));
        }
    }
}
