//! Scenario files (`tools/gpusim/scenarios/*.json`, schema in docs/gpusim.md): what one training
//! step does, the host overheads, and which rank straggles. The shipped scenarios are compiled
//! in, so `--scenario straggler` works from any directory; a path loads any other file.

use serde::Deserialize;

/// One kernel of a phase, launched `count` times per step.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// Kernel name (appears in CUPTI records and the module).
    pub name: String,
    /// Duration of one launch on a non-straggling rank.
    pub duration_us: f64,
    /// Fraction of the duration that is useful FLOP time at peak (0 = no FLOP attribution).
    #[serde(default)]
    pub useful_fraction: f64,
    /// Launches per step.
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// Per-step data loading on the host (the GPU idles unless work is queued).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataLoader {
    /// Blocking sleep per step, in ms (a loader queue that is empty).
    #[serde(default)]
    pub sleep_ms: f64,
    /// Bytes read per step from a scratch file with O_DIRECT-free buffered reads after
    /// dropping nothing (real read syscalls).
    #[serde(default)]
    pub read_bytes: u64,
    /// ± relative jitter on the sleep, drawn from the seed.
    #[serde(default)]
    pub jitter: f64,
}

/// Periodic checkpoint: device→host copy, then a real file write with fsync.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Write after every `every_steps` steps.
    pub every_steps: u32,
    /// Bytes per checkpoint.
    pub bytes: u64,
}

/// One rank runs slower.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Straggler {
    /// The slow rank.
    pub rank: u32,
    /// Extra kernel time as a fraction (0.25 = 25% slower).
    pub slowdown: f64,
}

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it demonstrates.
    #[serde(default)]
    pub description: String,
    /// Steps when `--seconds`/`--steps` are not given.
    pub steps: u32,
    /// Ranks when `--ranks` is not given.
    #[serde(default = "one")]
    pub ranks: u32,
    /// Seed for the data-loader jitter.
    #[serde(default)]
    pub seed: u64,
    /// Device peak FLOP/s used for FLOPs and `compute.useful` (H100 SXM bf16 dense: 989e12).
    #[serde(default = "default_peak")]
    pub peak_flops_per_s: f64,
    /// Real host CPU per launch call (libcuda spins this long).
    #[serde(default = "default_launch_cpu")]
    pub launch_cpu_ns: u64,
    /// Device enqueue-to-start latency.
    #[serde(default = "default_latency")]
    pub launch_latency_ns: u64,
    /// On-CPU host work between two launches (framework/Python dispatch).
    #[serde(default)]
    pub host_gap_ns: u64,
    /// Host→device input copy per step (async on the compute stream).
    #[serde(default)]
    pub h2d_bytes: u64,
    /// Forward kernels.
    #[serde(default)]
    pub forward: Vec<KernelSpec>,
    /// Backward kernels.
    #[serde(default)]
    pub backward: Vec<KernelSpec>,
    /// Gradient all-reduce payload per step (0 = none).
    #[serde(default)]
    pub allreduce_bytes: u64,
    /// Achievable bus bandwidth of collectives.
    #[serde(default = "default_bus")]
    pub bus_bytes_per_s: f64,
    /// Optimizer kernels (after the all-reduce).
    #[serde(default)]
    pub optimizer: Vec<KernelSpec>,
    /// Data loading.
    #[serde(default)]
    pub data_loader: DataLoader,
    /// Checkpointing.
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
    /// Straggling rank.
    #[serde(default)]
    pub straggler: Option<Straggler>,
    /// Driver entry points kernels are launched through, in rotation (default
    /// `["cuLaunchKernel"]`; also `cuLaunchKernel_ptsz`, `cuLaunchKernelEx`,
    /// `cuLaunchKernelEx_ptsz`, `cuLaunchCooperativeKernel`).
    #[serde(default)]
    pub launch_apis: Vec<String>,
    /// Emit a marker range per step (like `nvtx.range("step")`).
    #[serde(default)]
    pub step_markers: bool,
}

fn default_peak() -> f64 {
    989e12
}
fn default_launch_cpu() -> u64 {
    2_000
}
fn default_latency() -> u64 {
    3_000
}
fn default_bus() -> f64 {
    100e9
}

const BUILT_IN: [(&str, &str); 5] = [
    ("balanced", include_str!("../../scenarios/balanced.json")),
    ("straggler", include_str!("../../scenarios/straggler.json")),
    ("launch-bound", include_str!("../../scenarios/launch-bound.json")),
    ("io-stall", include_str!("../../scenarios/io-stall.json")),
    ("checkpoint", include_str!("../../scenarios/checkpoint.json")),
];

/// Names of the compiled-in scenarios.
pub fn built_in_names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(n, _)| *n).collect()
}

impl Scenario {
    /// Load a built-in scenario by name, or a JSON file by path.
    pub fn load(name_or_path: &str) -> Result<Self, String> {
        let text = match BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, text)) => text.to_string(),
            None => std::fs::read_to_string(name_or_path).map_err(|e| {
                format!(
                    "scenario {name_or_path:?} is neither built in ({}) nor a readable file: {e}",
                    built_in_names().join(", ")
                )
            })?,
        };
        serde_json::from_str(&text).map_err(|e| format!("scenario {name_or_path:?}: {e}"))
    }

    /// All kernels of a step, in launch order with their phase.
    pub fn all_kernels(&self) -> impl Iterator<Item = &KernelSpec> {
        self.forward.iter().chain(&self.backward).chain(&self.optimizer)
    }

    /// Kernel-time multiplier of `rank`.
    pub fn slowdown_of(&self, rank: u32) -> f64 {
        match &self.straggler {
            Some(s) if s.rank == rank => 1.0 + s.slowdown,
            _ => 1.0,
        }
    }

    /// FLOPs of one launch of `kernel`: its useful time at peak.
    pub fn flops_of(&self, kernel: &KernelSpec) -> u64 {
        (kernel.useful_fraction.clamp(0.0, 1.0) * kernel.duration_us * 1e-6 * self.peak_flops_per_s) as u64
    }

    /// Rough wall time of one step of the slowest rank, to turn `--seconds` into steps.
    pub fn estimated_step_ns(&self, ranks: u32) -> u64 {
        let slowest = (0..ranks).map(|r| self.slowdown_of(r)).fold(1.0, f64::max);
        let launches: u64 = self.all_kernels().map(|k| k.count as u64).sum();
        let kernel_ns: f64 = self.all_kernels().map(|k| k.duration_us * 1e3 * k.count as f64).sum::<f64>() * slowest;
        let host_ns = launches * (self.launch_cpu_ns + self.host_gap_ns);
        let comm_ns = self.allreduce_bytes as f64 * 2.0 / self.bus_bytes_per_s * 1e9;
        let ckpt_ns = self.checkpoint.as_ref().map_or(0.0, |c| {
            // ~1 GB/s buffered write + fsync, amortized over the interval.
            c.bytes as f64 / 1e9 * 1e9 / c.every_steps.max(1) as f64
        });
        (kernel_ns.max(host_ns as f64) + comm_ns + self.data_loader.sleep_ms * 1e6 + ckpt_ns).max(1e5) as u64
    }

    /// The gpusim module image defining this scenario's kernels (see libcuda's module format).
    pub fn module_image(&self) -> String {
        let mut text = String::from("gpusim-module v1\n");
        for k in self.all_kernels() {
            let duration_ns = (k.duration_us * 1e3).round() as u64;
            text.push_str(&format!("{} {} {}\n", k.name, duration_ns, self.flops_of(k)));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_scenario_parses() {
        for name in built_in_names() {
            let s = Scenario::load(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.name, name);
            assert!(s.all_kernels().count() > 0, "{name} has kernels");
        }
    }

    #[test]
    fn flops_are_useful_time_at_peak() {
        let s = Scenario::load("balanced").expect("balanced");
        let k = KernelSpec { name: "k".into(), duration_us: 1000.0, useful_fraction: 0.5, count: 1 };
        assert_eq!(s.flops_of(&k), (0.5e-3 * s.peak_flops_per_s) as u64);
    }
}
