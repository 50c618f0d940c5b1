//! The ground truth a rank writes at exit (schema `gpusim.ground_truth.v1`, documented in
//! docs/gpusim.md): per device, the ns of each category (docs/metrics.md) over the rank's window as
//! the simulator executed it, plus totals. Categories sum to the window exactly.

use std::collections::BTreeMap;
use std::path::Path;

use gpusim_core::abi::cbid;
use gpusim_core::accounting::{categorize, CATEGORIES};
use gpusim_core::record::{RecordKind, SimRecord};
use serde::Serialize;

use crate::scenario::Scenario;

/// Facts about the run that the records do not hold.
pub struct RunInfo<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// This rank.
    pub rank: u32,
    /// All ranks.
    pub ranks: u32,
    /// Steps run.
    pub steps: u32,
    /// Window start (CLOCK_MONOTONIC ns).
    pub window_start_ns: u64,
    /// Window end.
    pub window_end_ns: u64,
    /// Checkpoint bytes written.
    pub checkpoint_bytes: u64,
}

/// The window.
#[derive(Serialize)]
pub struct Window {
    /// Start, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// End, CLOCK_MONOTONIC ns.
    pub end_ns: u64,
    /// end − start.
    pub duration_ns: u64,
}

/// One device's accounting.
#[derive(Serialize)]
pub struct DeviceTruth {
    /// Device ordinal in the rank's process.
    pub device: u32,
    /// ns per category (keys: `compute.useful`, …).
    pub categories: BTreeMap<&'static str, u64>,
    /// Union of device-op intervals in the window (what "GPU busy" dashboards show).
    pub busy_ns: u64,
    /// `idle.host_stall` split by reason (host record name); sums to that category.
    pub host_stall_by_reason: BTreeMap<String, u64>,
    /// Every interval the host thread was blocked (data loader, checkpoint I/O, synchronize,
    /// NCCL rendezvous), by reason, whatever the device was doing meanwhile: what a host-side
    /// collector (sched_switch, syscalls) sees, as opposed to the device-idle share above.
    pub host_blocked_by_reason: BTreeMap<String, u64>,
    /// Every collective on this device, for the cross-rank view.
    pub collectives: Vec<CollectiveTruth>,
}

/// One collective as this rank executed it.
#[derive(Serialize)]
pub struct CollectiveTruth {
    /// Sequence number on the communicator (matches across ranks).
    pub sequence: u32,
    /// Kernel name.
    pub name: String,
    /// When this rank's stream reached the collective (its arrival).
    pub arrival_ns: u64,
    /// When the last rank arrived (transfer start).
    pub last_arrival_ns: u64,
    /// Kernel end.
    pub end_ns: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// NCCL algorithm gpusim's libnccl chose ("RING", "TREE"), as its profiler plugin event said.
    pub algorithm: Option<&'static str>,
    /// NCCL protocol ("LL", "LL128", "SIMPLE").
    pub protocol: Option<&'static str>,
    /// Device idle time between the previous collective's end (or the window start) and this
    /// arrival: host-side noise that shifts arrivals, measured.
    pub idle_before_ns: u64,
}

/// One training step (from the step markers).
#[derive(Serialize)]
pub struct StepTruth {
    /// Marker name (`step N`).
    pub name: String,
    /// Step start (host), CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// Step end (host, after the step's synchronize and checkpoint).
    pub end_ns: u64,
    /// ns per category over `[start_ns, end_ns)` (the device's accounting clipped to the step),
    /// so that a window of whole steps (an attach window) has a ground truth too. They sum to
    /// `end_ns - start_ns`.
    pub categories: BTreeMap<&'static str, u64>,
}

/// Totals over the run.
#[derive(Serialize, Default)]
pub struct Totals {
    /// Kernels executed (compute kernels plus collective kernels).
    pub kernels: u64,
    /// Kernel launch API calls (all launch entry points).
    pub launches: u64,
    /// Launch calls per entry point (`cuLaunchKernel`, …).
    pub launches_by_api: BTreeMap<String, u64>,
    /// Synchronization calls (stream/context/event synchronize).
    pub syncs: u64,
    /// Collectives.
    pub collectives: u64,
    /// Bytes moved: memcpy + memset + collective payloads.
    pub bytes: u64,
    /// FLOPs of all kernels.
    pub flops: u64,
    /// Checkpoint bytes written to disk.
    pub checkpoint_bytes: u64,
    /// Memcpy operations.
    pub memcpys: u64,
}

/// The whole file.
#[derive(Serialize)]
pub struct GroundTruth {
    /// `gpusim.ground_truth.v1`.
    pub schema: &'static str,
    /// Scenario name.
    pub scenario: String,
    /// Rank.
    pub rank: u32,
    /// Ranks.
    pub ranks: u32,
    /// Process id of the rank.
    pub pid: u32,
    /// Steps run.
    pub steps: u32,
    /// Seed.
    pub seed: u64,
    /// Kernel-time multiplier of this rank (1.25 = 25% slower).
    pub slowdown: f64,
    /// Peak FLOP/s used for `compute.useful`.
    pub peak_flops_per_s: f64,
    /// Time base.
    pub clock: &'static str,
    /// The window.
    pub window: Window,
    /// Per device.
    pub devices: Vec<DeviceTruth>,
    /// Step ranges (empty when the scenario has no step markers).
    pub step_ranges: Vec<StepTruth>,
    /// Totals.
    pub totals: Totals,
    /// The spans during which CUPTI was attached to this process (from its first use to
    /// `cuptiFinalize`), up to when the truth was taken.
    pub cupti_attached: Vec<CuptiAttached>,
}

/// One span CUPTI sat in the driver's call path.
#[derive(Serialize)]
pub struct CuptiAttached {
    /// When it attached (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// When `cuptiFinalize` detached it; None: still attached when the truth was taken.
    pub end_ns: Option<u64>,
    /// Driver API calls made while it was attached.
    pub api_calls: u64,
}

/// Host blocking intervals clipped to the window, summed per record name.
fn host_blocked(records: &[SimRecord], start_ns: u64, end_ns: u64) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in records.iter().filter(|r| matches!(r.kind(), Some(RecordKind::SyncWait | RecordKind::HostStall))) {
        let (a, b) = (r.start_ns.clamp(start_ns, end_ns), r.end_ns.clamp(start_ns, end_ns));
        if b > a {
            *out.entry(r.name().to_string()).or_insert(0) += b - a;
        }
    }
    out
}

fn busy_ns(records: &[SimRecord], start_ns: u64, end_ns: u64) -> u64 {
    let mut spans: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| {
            matches!(
                r.kind(),
                Some(RecordKind::Kernel | RecordKind::Memcpy | RecordKind::Memset | RecordKind::Collective)
            )
        })
        .map(|r| (r.start_ns.clamp(start_ns, end_ns), r.end_ns.clamp(start_ns, end_ns)))
        .filter(|(a, b)| b > a)
        .collect();
    spans.sort_unstable();
    let (mut total, mut cursor) = (0, start_ns);
    for (a, b) in spans {
        let a = a.max(cursor);
        if b > a {
            total += b - a;
            cursor = b;
        }
    }
    total
}

/// Build the ground truth from the device's records.
pub fn build(info: &RunInfo, records: &[SimRecord], cupti_attached: Vec<CuptiAttached>) -> GroundTruth {
    let s = info.scenario;
    let times = categorize(records, 0, s.peak_flops_per_s, info.window_start_ns, info.window_end_ns);
    let categories = CATEGORIES.iter().zip(times.ns).map(|(c, ns)| (*c, ns)).collect();
    let of_kind = |kind: RecordKind| records.iter().filter(move |r| r.kind() == Some(kind));
    let mut previous_end_ns = info.window_start_ns;
    let collectives = of_kind(RecordKind::Collective)
        .map(|r| {
            let from = previous_end_ns.min(r.start_ns);
            previous_end_ns = r.end_ns;
            CollectiveTruth {
                sequence: r.sequence,
                name: r.name().to_string(),
                arrival_ns: r.start_ns,
                last_arrival_ns: r.transfer_start_ns,
                end_ns: r.end_ns,
                bytes: r.bytes,
                algorithm: gpusim_core::record::collective_algo_names(r.copy_kind).map(|n| n.0),
                protocol: gpusim_core::record::collective_algo_names(r.copy_kind).map(|n| n.1),
                idle_before_ns: (r.start_ns - from) - busy_ns(records, from, r.start_ns),
            }
        })
        .collect();
    let step_ranges = of_kind(RecordKind::Marker)
        .map(|r| {
            // Only the records that overlap the step matter to its accounting.
            let near: Vec<SimRecord> =
                records.iter().filter(|o| o.end_ns > r.start_ns && o.start_ns < r.end_ns).copied().collect();
            let step = categorize(&near, 0, s.peak_flops_per_s, r.start_ns, r.end_ns);
            StepTruth {
                name: r.name().to_string(),
                start_ns: r.start_ns,
                end_ns: r.end_ns,
                categories: CATEGORIES.iter().zip(step.ns).map(|(c, ns)| (*c, ns)).collect(),
            }
        })
        .collect();
    let mut totals = Totals { checkpoint_bytes: info.checkpoint_bytes, ..Totals::default() };
    for rec in records {
        match rec.kind() {
            Some(RecordKind::Kernel) => {
                totals.kernels += 1;
                totals.flops += rec.flops;
            }
            Some(RecordKind::Collective) => {
                totals.kernels += 1;
                totals.collectives += 1;
                totals.bytes += rec.bytes;
            }
            Some(RecordKind::Memcpy) => {
                totals.memcpys += 1;
                totals.bytes += rec.bytes;
            }
            Some(RecordKind::Memset) => totals.bytes += rec.bytes,
            Some(RecordKind::SyncWait) => totals.syncs += 1,
            Some(RecordKind::Api) if cbid::is_launch(rec.cbid) => {
                totals.launches += 1;
                *totals.launches_by_api.entry(rec.name().to_string()).or_insert(0) += 1;
            }
            _ => {}
        }
    }
    GroundTruth {
        schema: "gpusim.ground_truth.v1",
        scenario: s.name.clone(),
        rank: info.rank,
        ranks: info.ranks,
        pid: std::process::id(),
        steps: info.steps,
        seed: s.seed,
        slowdown: s.slowdown_of(info.rank),
        peak_flops_per_s: s.peak_flops_per_s,
        clock: "CLOCK_MONOTONIC",
        window: Window {
            start_ns: info.window_start_ns,
            end_ns: info.window_end_ns,
            duration_ns: info.window_end_ns - info.window_start_ns,
        },
        devices: vec![DeviceTruth {
            device: 0,
            categories,
            busy_ns: busy_ns(records, info.window_start_ns, info.window_end_ns),
            host_stall_by_reason: times.host_stall_by_reason,
            host_blocked_by_reason: host_blocked(records, info.window_start_ns, info.window_end_ns),
            collectives,
        }],
        step_ranges,
        totals,
        cupti_attached,
    }
}

/// Write the ground truth as pretty JSON.
pub fn write(path: &Path, truth: &GroundTruth) -> Result<(), String> {
    let text = serde_json::to_string_pretty(truth).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write ground truth {}: {e}", path.display()))
}
