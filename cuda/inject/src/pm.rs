//! PM sampling (CUDA ≥ 12.6): tensor-pipe and SM activity of device 0 at a fixed GPU-time
//! interval, the hardware FLOP source of docs/metrics.md. Each tick (from the control loop)
//! decodes the samples completed so far while sampling goes on, sends them through the ring and
//! re-initializes the counter-data image; the last tick stops sampling first, so the final
//! (partial) sample is included. A device that does not offer the metrics gets a status record
//! and no sampling.
//!
//! Where the samples are evaluated ([`set_collector_decode`]): in the job (the fallback,
//! `GHOSTPROF_PM_DECODE=job`), one `cuptiProfilerHostEvaluateToGpuValues` per sample (~44 µs
//! each on an H200: 47 % of a PyTorch job's CPU at 50 µs sampling); or in ghostprof
//! (`collector`): the job does only what needs the device — `cuptiPmSamplingDecodeData`,
//! `GetCounterDataInfo` and each sample's timestamps (`CounterDataGetSampleInfo` takes the
//! sampling object) — and ships the image's filled part through the ring (`wire::PM_PART`
//! blobs: a `PmSetup` once per session, then a `PmImage` per decode); ghostprof's decoder
//! process evaluates them.

use std::ffi::{c_char, CStr};
use std::mem::{size_of, zeroed};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use ghostprof_ring::wire;

use cs::CUptiResult::CUPTI_SUCCESS;
use cudarc::cupti::sys as cs;

pub const TENSOR: &CStr = c"sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed";
pub const SM_ACTIVE: &CStr = c"gr__cycles_active.avg.pct_of_peak_sustained_elapsed";
const MAX_SAMPLES: u32 = 20_000;
const HW_BUFFER_BYTES: usize = 64 << 20;
/// Decodes per collect in collector mode while CUPTI says the image filled up (a late tick):
/// the rest of the samples stay in the hardware buffer for the next decode.
const MAX_DECODES_PER_COLLECT: usize = 16;
/// The ring's largest record, for the parts of a PM blob.
const PART_BYTES: usize = ghostprof_ring::MAX_RECORD_BYTES;

static COLLECTOR_DECODE: AtomicBool = AtomicBool::new(false);
static SESSIONS: AtomicU32 = AtomicU32::new(0);

/// Where sessions started from now on evaluate: true = ghostprof evaluates (`collector`),
/// false = here (`job`, the default). Set from `GHOSTPROF_PM_DECODE` by `InitializeInjection`
/// and from the attach argument's `pm_decode` (never read from the environment here: this runs
/// on the control thread).
pub fn set_collector_decode(on: bool) {
    COLLECTOR_DECODE.store(on, Ordering::Release);
}

/// `GHOSTPROF_PM_DECODE` / `pm_decode` value → collector mode (None: not a known value).
pub fn parse_mode(value: &str) -> Option<bool> {
    match value {
        "collector" => Some(true),
        "job" => Some(false),
        _ => None,
    }
}

/// What collector mode ships besides the images (the host API's inputs), sent with the first
/// blob of the session that goes through.
struct Shipping {
    session: u32,
    seq: u32,
    setup: Option<Vec<u8>>,
}

pub struct PmSession {
    host: *mut cs::CUpti_Profiler_Host_Object,
    object: *mut cs::CUpti_PmSampling_Object,
    image: Vec<u8>,
    /// Some in collector mode.
    shipping: Option<Shipping>,
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
        let collector = COLLECTOR_DECODE.load(Ordering::Acquire);
        // Collector mode ships the image every 50 ms tick: sized for four ticks of samples
        // (a late tick decodes again), not 20,000.
        let max_samples = if collector {
            (200_000_000 / interval_ns.max(1)).clamp(64, MAX_SAMPLES as u64) as u32
        } else {
            MAX_SAMPLES
        };
        let mut data = params!(CUpti_PmSampling_GetCounterDataSize_Params {
            pPmSamplingObject: object,
            pMetricNames: names.as_mut_ptr(),
            numMetrics: names.len(),
            maxSamples: max_samples,
        });
        check("cuptiPmSamplingGetCounterDataSize", crate::api::cuptiPmSamplingGetCounterDataSize(&mut data))?;
        let shipping = collector.then(|| {
            let chip: &[u8] = if chip.pChipName.is_null() { b"" } else { CStr::from_ptr(chip.pChipName).to_bytes() };
            let setup = wire::PmSetup {
                interval_ns,
                chip,
                availability: &avail_image,
                metrics: metric_names().iter().map(|&n| CStr::from_ptr(n).to_bytes()).collect(),
            };
            Shipping { session: SESSIONS.fetch_add(1, Ordering::AcqRel), seq: 0, setup: Some(setup.encode()) }
        });
        let mut session = PmSession { host, object, image: vec![0u8; data.counterDataSize], shipping };
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

    /// Sends one blob of the session in parts; false when the ring refused a part (the
    /// collector drops a blob it did not get whole). `last`: the session's final decode, sent
    /// whatever the control word says (an attach session's ends after ghostprof cleared it,
    /// and ghostprof still drains the ring, as it does for in-job samples).
    fn ship(shipping: &mut Shipping, blob: &[u8], last: bool) -> bool {
        let seq = shipping.seq;
        shipping.seq = shipping.seq.wrapping_add(1);
        wire::PmPart::send(shipping.session, seq, blob, PART_BYTES, |p| {
            if last {
                crate::cupti::push_always(wire::PM_PART, p)
            } else {
                crate::cupti::push_if_collecting(wire::PM_PART, p)
            }
        })
    }

    /// Collector mode: decodes what is complete, ships each image (its filled part) with its
    /// samples' timestamps, evaluates nothing. The setup goes first, until it went through.
    fn collect_and_ship(&mut self, last: bool) -> Result<(), String> {
        let Some(mut shipping) = self.shipping.take() else { return Ok(()) };
        let result = (|| {
            if let Some(setup) = shipping.setup.take() {
                if shipping.seq != 0 || !Self::ship(&mut shipping, &setup, last) {
                    // Not sent whole: a new session number, so the collector never pairs
                    // images with a setup it lacks.
                    shipping.session = SESSIONS.fetch_add(1, Ordering::AcqRel);
                    shipping.seq = 0;
                    shipping.setup = Some(setup);
                    return Ok(());
                }
            }
            for _ in 0..MAX_DECODES_PER_COLLECT {
                let (full, times) = self.decode()?;
                if !times.is_empty() {
                    Self::ship(&mut shipping, &wire::PmImage::encode(&times, &self.image), last);
                }
                self.reset_image()?;
                if !full {
                    break;
                }
            }
            Ok(())
        })();
        self.shipping = Some(shipping);
        result
    }

    /// `cuptiPmSamplingDecodeData` into the image, then each completed sample's [start, end):
    /// (whether the image filled up before the data ended, the times).
    fn decode(&mut self) -> Result<(bool, Vec<(u64, u64)>), String> {
        // SAFETY (whole fn): CUPTI calls on the live session and its image.
        unsafe {
            let mut decode = params!(CUpti_PmSampling_DecodeData_Params {
                pPmSamplingObject: self.object,
                pCounterDataImage: self.image.as_mut_ptr(),
                counterDataImageSize: self.image.len(),
            });
            decode.structSize = std::mem::offset_of!(cs::CUpti_PmSampling_DecodeData_Params, overflow) + 1;
            check("cuptiPmSamplingDecodeData", crate::api::cuptiPmSamplingDecodeData(&mut decode))?;
            // Read as the u32 it is (a value outside the Rust enum must not be UB):
            // 1 = CUPTI_PM_SAMPLING_DECODE_STOP_REASON_COUNTER_DATA_FULL.
            let full = *std::ptr::addr_of!(decode.decodeStopReason).cast::<u32>() == 1;
            let mut info = params!(CUpti_PmSampling_GetCounterDataInfo_Params {
                pCounterDataImage: self.image.as_ptr(),
                counterDataImageSize: self.image.len(),
            });
            check("cuptiPmSamplingGetCounterDataInfo", crate::api::cuptiPmSamplingGetCounterDataInfo(&mut info))?;
            let mut times = Vec::with_capacity(info.numCompletedSamples.min(wire::PM_SAMPLES_MAX));
            for index in 0..info.numCompletedSamples.min(wire::PM_SAMPLES_MAX) {
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
                times.push((sample.startTimestamp, sample.endTimestamp));
            }
            Ok((full, times))
        }
    }

    /// Decodes every sample completed since the last call; `last` stops sampling first. In
    /// collector mode the samples are shipped, not returned (the list is empty).
    pub fn collect(&mut self, last: bool) -> Result<Vec<Sample>, String> {
        if self.shipping.is_some() {
            if last {
                // SAFETY: a live sampling object.
                check("cuptiPmSamplingStop", unsafe {
                    crate::api::cuptiPmSamplingStop(&mut params!(CUpti_PmSampling_Stop_Params {
                        pPmSamplingObject: self.object
                    }))
                })?;
            }
            return self.collect_and_ship(last).map(|()| Vec::new());
        }
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
