//! The one builder of a device's [`DevicePlan`], called by the in-memory ([`super::account`])
//! and the streaming ([`super::stream`]) paths: the window (the process's own, else the
//! options', else first to last device operation), the steps (NVTX > regex > periodicity), the
//! bins and the straggler windows. Each path hands in what it has kept of the records
//! ([`StepInputs`]); a period is settled once the anchor kernel's launches are known
//! ([`settle_periodicity`]: at once in memory, after a kernel pass when streaming).

use std::collections::HashMap;

use super::flops::{FlopSource, KernelSpan};
use super::model::{AccountOptions, DetailOptions, LateWindows, Window};
use super::steps::{anchor_steps, nvtx_steps, periodic_anchor, steps_from_starts, PeriodicAnchor};
use super::sweep::DevicePlan;
use crate::trace::StepSource;

/// What the step sources are found in, as each path keeps it. The closures are called only
/// when their source is the one looked at.
pub(crate) struct StepInputs<'a> {
    /// NVTX step markers of the process: (start, end, name id).
    pub markers: Vec<(u64, u64, u32)>,
    /// Starts of the device's kernels (collectives included) whose name matches the step regex.
    pub regex_starts: &'a mut dyn FnMut() -> Vec<u64>,
    /// The device's first [`super::steps::PERIOD_PROBE`] compute kernels, sorted by (start,
    /// end, name).
    pub probe: &'a mut dyn FnMut() -> Vec<KernelSpan>,
}

/// The device: who, its first and last device operation, its FLOP source (PM samples or
/// none), whether its process has a launching thread.
pub(crate) struct DeviceInputs {
    pub pid: u32,
    pub device: u32,
    pub first_op: u64,
    pub last_op: u64,
    pub flop_source: FlopSource,
    pub has_launcher: bool,
}

/// Builds the plan of one device. With `detail`, the steps (all but a period's, which is
/// returned as its anchor for [`settle_periodicity`]), the bins and the late windows too.
pub(crate) fn device_plan(
    dev: DeviceInputs,
    opts: &AccountOptions,
    detail: Option<&DetailOptions>,
    late: &LateWindows,
    names: &HashMap<u32, String>,
    steps: StepInputs,
) -> (DevicePlan, Option<PeriodicAnchor>) {
    let window = opts.windows.get(&dev.pid).copied().or(opts.window).unwrap_or(Window::new(dev.first_op, dev.last_op));
    let mut plan = DevicePlan::totals_only(dev.pid, dev.device, window, dev.flop_source);
    plan.flop_less_below = opts.flop_less_below;
    plan.has_launcher = dev.has_launcher;
    let Some(d) = detail else { return (plan, None) };
    plan.detail = true;
    let mut anchor = None;
    let nvtx = nvtx_steps(&steps.markers, names, window);
    if !nvtx.is_empty() {
        (plan.step_source, plan.steps) = (Some(StepSource::Nvtx), nvtx);
    } else if d.step_regex.is_some() {
        (plan.step_source, plan.steps) =
            (Some(StepSource::KernelRegex), steps_from_starts(&(steps.regex_starts)(), window));
    } else if d.detect_periodicity {
        anchor = periodic_anchor(&(steps.probe)());
    }
    plan.set_bins(d);
    plan.late_windows = late.get(&dev.pid).cloned().unwrap_or_default();
    (plan, anchor)
}

/// The periodicity source's steps from every launch start of the anchor's kernel name (any
/// order), if there are at least two.
pub(crate) fn settle_periodicity(plan: &mut DevicePlan, anchor: &PeriodicAnchor, starts: Vec<u64>) {
    let steps = anchor_steps(anchor, starts, plan.window);
    if steps.len() >= 2 {
        (plan.step_source, plan.steps) = (Some(StepSource::Periodicity), steps);
    }
}

/// The useful time of one step (ns) for the model-FLOPs source: the model FLOPs of a step over
/// the device's peak FLOP/s; None without both.
pub(crate) fn useful_ns_per_step(d: &DetailOptions) -> Option<f64> {
    match (d.flops_per_step, d.peak_flops) {
        (Some(f), Some(p)) if f > 0.0 && p > 0.0 => Some(f / p * 1e9),
        _ => None,
    }
}

/// Whether the plan takes the model-FLOPs source (no PM source, the options give one) once
/// each step's compute time is known.
pub(crate) fn wants_step_rates(plan: &DevicePlan, d: &DetailOptions) -> bool {
    useful_ns_per_step(d).is_some() && plan.flop_source == FlopSource::None
}
