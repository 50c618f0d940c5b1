//! The in-memory path: the accounting (docs/metrics.md) per (process, device) over a window. Every nanosecond of the
//! window lands in exactly one of eight categories; overlapping device work resolves compute >
//! comm > other, and idle time is attributed to what the launching threads were doing.
//!
//! - **Device work** comes from CUPTI kernel and memcpy/memset records. Kernels whose name
//!   starts with `nccl` are collectives; compute kernels with no FLOP attribution (fraction
//!   under 1 %) are `other.busy` like copies.
//! - **Useful time** comes from PM samples ([`super::flops`]); without them every compute
//!   nanosecond is `compute.inefficient` and MFU is unknown.
//! - **Collectives**: the k-th NCCL kernel of a rank is the k-th NCCL host call (eBPF) of that
//!   rank; calls with the same sequence number on the ranks of one communicator size are one
//!   collective. A kernel is `comm.wait` from its start until the last rank's kernel started,
//!   `comm.transfer` after. A collective whose ranks are not all in the trace is all transfer.
//! - **Idle time**: `idle.host_stall` where a launching thread of the process was blocked
//!   (off-CPU, in file I/O, in a synchronize/copy call, in an NCCL call), `idle.launch_bound`
//!   where it was not, `idle.other` when the process has no known launching thread.

use std::collections::{HashMap, HashSet};

use super::flops::{useful_fraction_by_name, FlopSource, KernelSpan};
use super::inputs::{checkpoint_io, comm_waits, host_blocked, is_comm_name, pm_samples};
use super::model::{AccountOptions, CheckpointIo, DetailOptions, DeviceAccount, DeviceResult, LateWindows};
use super::plan::{device_plan, settle_periodicity, useful_ns_per_step, wants_step_rates, DeviceInputs, StepInputs};
use super::steps::{compute_per_step, PERIOD_PROBE};
use super::sweep::{DevicePlan, DeviceSweep};
use crate::trace::{RecordBatch, StepSource};

/// Accounts every (process, device) with device work in `batch`. `names` maps string ids to
/// names (the chunks' string tables).
pub fn account(batch: &RecordBatch, names: &HashMap<u32, String>, opts: &AccountOptions) -> Vec<DeviceAccount> {
    analyze_with(batch, names, opts, None, &HashMap::new()).into_iter().map(|x| x.account).collect()
}

/// Every (process, device) with device work in `batch`, with the details when `detail` is
/// given ([`account`] without them), and what each device's process was doing in its `late`
/// windows.
pub fn analyze_with(
    batch: &RecordBatch,
    names: &HashMap<u32, String>,
    opts: &AccountOptions,
    detail: Option<&DetailOptions>,
    late: &LateWindows,
) -> Vec<DeviceResult> {
    let is_comm = |id: u32| is_comm_name(names, id);
    let waits = comm_waits(batch, &is_comm);
    device_keys(batch)
        .into_iter()
        .map(|(pid, device)| analyze_device(batch, names, pid, device, &waits, opts, detail, late))
        .collect()
}

fn device_keys(batch: &RecordBatch) -> Vec<(u32, u32)> {
    let mut keys: Vec<(u32, u32)> = batch
        .kernels
        .iter()
        .map(|k| (k.pid, k.device))
        .chain(batch.memops.iter().map(|m| (m.pid, m.device)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    keys.sort_unstable();
    keys
}

#[allow(clippy::too_many_arguments)]
fn analyze_device(
    batch: &RecordBatch,
    names: &HashMap<u32, String>,
    pid: u32,
    device: u32,
    waits: &HashMap<(u32, u64), u64>,
    opts: &AccountOptions,
    detail: Option<&DetailOptions>,
    late: &LateWindows,
) -> DeviceResult {
    let is_comm = |id: u32| is_comm_name(names, id);
    let kernels: Vec<_> = batch.kernels.iter().filter(|k| k.pid == pid && k.device == device).collect();
    let memops: Vec<_> = batch.memops.iter().filter(|m| m.pid == pid && m.device == device).collect();

    // FLOP attribution per compute kernel name, from this process's PM samples of the device.
    let mut compute: Vec<KernelSpan> = kernels
        .iter()
        .filter(|k| !is_comm(k.name_id))
        .map(|k| KernelSpan { start: k.start_ns, end: k.end_ns, name: k.name_id })
        .collect();
    compute.sort_by_key(|k| (k.start, k.end, k.name));
    let samples = pm_samples(batch, pid, device);
    let (fractions, flop_source) = if samples.is_empty() {
        (HashMap::new(), FlopSource::None)
    } else {
        (useful_fraction_by_name(&compute, &samples), FlopSource::PmSampling)
    };

    let first_op = kernels.iter().map(|k| k.start_ns).chain(memops.iter().map(|m| m.start_ns)).min().unwrap_or(0);
    let last_op = kernels.iter().map(|k| k.end_ns).chain(memops.iter().map(|m| m.end_ns)).max().unwrap_or(first_op);
    let launchers: HashSet<u32> =
        crate::trace::digest::launch_times(batch).filter(|l| l.0 == pid).map(|(_, tid, _, _)| tid).collect();

    let dev = DeviceInputs { pid, device, first_op, last_op, flop_source, has_launcher: !launchers.is_empty() };
    let markers = batch
        .steps
        .iter()
        .filter(|s| s.pid == pid && s.source == StepSource::Nvtx as u32)
        .map(|s| (s.start_ns, s.end_ns, s.name_id))
        .collect();
    let regex = detail.and_then(|d| d.step_regex.as_ref());
    let mut regex_starts = || {
        let re = regex.expect("asked only with a regex");
        kernels.iter().filter(|k| names.get(&k.name_id).is_some_and(|n| re.is_match(n))).map(|k| k.start_ns).collect()
    };
    let mut probe = || compute[..compute.len().min(PERIOD_PROBE)].to_vec();
    let inputs = StepInputs { markers, regex_starts: &mut regex_starts, probe: &mut probe };
    let (mut plan, anchor) = device_plan(dev, opts, detail, late, names, inputs);
    plan.fractions = fractions;
    if let Some(anchor) = anchor {
        let starts = compute.iter().filter(|k| k.name == anchor.name).map(|k| k.start).collect();
        settle_periodicity(&mut plan, &anchor, starts);
    }
    // The model-FLOPs source spreads each step's FLOPs over its kernels.
    if let Some(d) = detail.filter(|d| wants_step_rates(&plan, d) && !plan.steps.is_empty()) {
        let per_step = compute_per_step(&plan.steps, compute.iter().map(|k| (k.start, k.end)));
        plan.set_step_rates(useful_ns_per_step(d).unwrap_or(0.0), &per_step);
    }
    let window = plan.window;

    let mut ops = Vec::with_capacity(kernels.len() + memops.len());
    for k in &kernels {
        let wait = waits.get(&(pid, k.start_ns)).copied().unwrap_or(0);
        ops.push(plan.kernel_op(k.start_ns, k.end_ns, k.name_id, is_comm(k.name_id), wait));
    }
    ops.extend(memops.iter().map(|m| DevicePlan::copy_op(m.start_ns, m.end_ns)));
    let (blocked, reasons) = host_blocked(batch, pid, &launchers, opts.stall_policy());
    let mut sweep = DeviceSweep::new(plan);
    sweep.feed(window.start_ns, window.end_ns, &mut ops, &blocked, &reasons);
    let checkpoint = if detail.is_some() { checkpoint_io(batch, pid, window) } else { CheckpointIo::default() };
    sweep.finish(checkpoint)
}
