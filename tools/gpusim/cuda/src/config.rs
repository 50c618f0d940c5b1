//! Simulation knobs, read once from the environment so that a job is configured the way real
//! jobs are (the workload's launcher sets them per rank).

use std::sync::OnceLock;

/// Simulation parameters.
#[derive(Clone, Debug)]
pub struct Config {
    /// Real host CPU burnt inside every launch call (`GPUSIM_LAUNCH_CPU_NS`, default 2000).
    pub launch_cpu_ns: u64,
    /// Enqueue-to-start latency of the device (`GPUSIM_LAUNCH_LATENCY_NS`, default 3000).
    pub launch_latency_ns: u64,
    /// Multiplier on every kernel duration, for a straggler (`GPUSIM_SLOWDOWN`, default 1.0).
    pub slowdown: f64,
    /// Host<->device copy bandwidth (`GPUSIM_MEMCPY_BYTES_PER_S`, default 25e9).
    pub memcpy_bytes_per_s: f64,
    /// Duration of one `cuGraphLaunch` (`GPUSIM_GRAPH_NS`, default 50000).
    pub graph_ns: u64,
    /// Reported device name (`GPUSIM_DEVICE_NAME`).
    pub device_name: String,
    /// Simulated devices per process (`GPUSIM_DEVICE_COUNT`, default 1).
    pub device_count: i32,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .unwrap_or(default)
}

/// The process-wide configuration.
pub fn get() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config {
        launch_cpu_ns: env_u64("GPUSIM_LAUNCH_CPU_NS", 2_000),
        launch_latency_ns: env_u64("GPUSIM_LAUNCH_LATENCY_NS", 3_000),
        slowdown: env_f64("GPUSIM_SLOWDOWN", 1.0),
        memcpy_bytes_per_s: env_f64("GPUSIM_MEMCPY_BYTES_PER_S", 25e9),
        graph_ns: env_u64("GPUSIM_GRAPH_NS", 50_000),
        device_name: std::env::var("GPUSIM_DEVICE_NAME")
            .unwrap_or_else(|_| "NVIDIA H100 80GB HBM3 (gpusim)".to_string()),
        device_count: env_u64("GPUSIM_DEVICE_COUNT", 1).clamp(1, 64) as i32,
    })
}
