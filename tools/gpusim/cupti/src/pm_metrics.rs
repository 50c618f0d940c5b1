//! The profiler-host side of PM sampling (`cupti_profiler_host.h`, `cupti_target.h`): chip
//! name, host objects, metric configuration images and metric evaluation.
//!
//! Metrics gpusim can evaluate from a sample's raw values (see [`crate::pm`]):
//!
//! | metric | value |
//! |---|---|
//! | `sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed` | 100 × tensor-active time / sample time |
//! | `sm__pipe_tensor_cycles_active.avg.ratio` (or `…pct…` of `sm__inst_executed_pipe_fma`) | tensor-active fraction (×100 for `pct`) |
//! | `sm__pipe_tensor_cycles_active.sum` | tensor-active cycles summed over 132 SMs at 1.98 GHz |
//! | `gr__cycles_active.avg.pct_of_peak_sustained_elapsed`, `sm__cycles_active.avg.pct_of_peak_sustained_elapsed` | 100 × kernel-busy time / sample time |
//! | `gpu__time_duration.sum` | sample length in ns |
//!
//! Tensor-active time is each kernel's FLOPs / peak FLOP/s spread evenly over its duration, so a
//! collector that converts the tensor percentage with the device peak recovers the scenario's
//! `compute.useful`.

use std::ffi::CString;

/// Chip name reported for the simulated H100.
pub const CHIP_NAME: &std::ffi::CStr = c"GH100";

/// SMs and clock used to express tensor-active time in cycles.
pub const SM_COUNT: f64 = 132.0;
/// Graphics clock in Hz.
pub const CLOCK_HZ: f64 = 1.98e9;

/// Raw values of one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SampleValues {
    /// Sample start, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// Sample end.
    pub end_ns: u64,
    /// FLOP-equivalent tensor-active ns within the sample.
    pub tensor_active_ns: f64,
    /// ns with at least one device op running.
    pub busy_ns: f64,
}

/// Evaluate `metric` for a sample; None for a metric gpusim does not know.
pub fn evaluate(metric: &str, s: &SampleValues) -> Option<f64> {
    let length_ns = s.end_ns.saturating_sub(s.start_ns).max(1) as f64;
    let tensor = s.tensor_active_ns / length_ns;
    let busy = s.busy_ns / length_ns;
    let scaled = |fraction: f64| {
        if metric.contains("pct") {
            Some(100.0 * fraction)
        } else if metric.ends_with(".ratio") {
            Some(fraction)
        } else {
            None
        }
    };
    if metric.starts_with("sm__pipe_tensor") || metric.starts_with("sm__inst_executed_pipe_fma") {
        if metric.ends_with(".sum") {
            return Some(s.tensor_active_ns * 1e-9 * CLOCK_HZ * SM_COUNT);
        }
        return scaled(tensor);
    }
    if metric.starts_with("gr__cycles_active") || metric.starts_with("sm__cycles_active") {
        return scaled(busy);
    }
    (metric == "gpu__time_duration.sum").then_some(length_ns)
}

/// A `CUpti_Profiler_Host_Object`: the metrics of one configuration.
#[derive(Default)]
pub struct HostObject {
    /// Metrics added so far.
    pub metrics: Vec<String>,
}

const CONFIG_MAGIC: &str = "gpusim-pm-config v1";

/// The config image of `metrics`: text, one metric per line after a magic line.
pub fn config_image(metrics: &[String]) -> Vec<u8> {
    let mut text = String::from(CONFIG_MAGIC);
    for m in metrics {
        text.push('\n');
        text.push_str(m);
    }
    text.into_bytes()
}

/// Metrics of a config image, or None for an image gpusim did not make.
pub fn parse_config(image: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(image).ok()?;
    let mut lines = text.lines();
    (lines.next()? == CONFIG_MAGIC).then(|| lines.map(str::to_string).collect())
}

/// Keep C strings alive for name lists handed out to callers.
pub fn leak_c_string(s: &str) -> *const std::ffi::c_char {
    Box::leak(Box::new(CString::new(s).unwrap_or_default())).as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_percentage_is_useful_time_over_sample_time() {
        let s = SampleValues { start_ns: 0, end_ns: 1_000_000, tensor_active_ns: 250_000.0, busy_ns: 900_000.0 };
        let pct = evaluate("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed", &s);
        assert_eq!(pct, Some(25.0));
        assert_eq!(evaluate("gr__cycles_active.avg.pct_of_peak_sustained_elapsed", &s), Some(90.0));
        assert_eq!(evaluate("sm__pipe_tensor_cycles_active.avg.ratio", &s), Some(0.25));
        assert_eq!(evaluate("dram__bytes.sum", &s), None);
    }

    #[test]
    fn config_images_round_trip() {
        let metrics = vec!["a.sum".to_string(), "b.avg.ratio".to_string()];
        assert_eq!(parse_config(&config_image(&metrics)), Some(metrics));
        assert_eq!(parse_config(b"\x00\x01"), None);
    }
}
