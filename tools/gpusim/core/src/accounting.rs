//! Ground-truth accounting: every nanosecond of a window falls into exactly one category of
//! docs/metrics.md, computed from what the simulator executed.
//!
//! Device ops become labelled intervals: a compute kernel is `compute.useful` for FLOPs / peak
//! and `compute.inefficient` for the rest; a kernel without FLOPs, a memcpy or a memset is
//! `other.busy`; a collective is `comm.wait` until the last rank arrived and `comm.transfer`
//! after. Where the device is idle, the host's state decides: blocked (stall or sync wait) is
//! `idle.host_stall`, host time outside any step is `idle.other`, and otherwise the host was
//! on-CPU issuing work, `idle.launch_bound`. Overlaps resolve by priority (compute over comm over
//! other, as the product's overlap rule), so the categories sum to the window by construction.

use crate::record::{RecordKind, SimRecord};

/// The categories, in priority order (a lower index wins an overlap).
pub const CATEGORIES: [&str; 8] = [
    "compute.useful",
    "compute.inefficient",
    "comm.transfer",
    "comm.wait",
    "other.busy",
    "idle.host_stall",
    "idle.other",
    "idle.launch_bound",
];

const USEFUL: usize = 0;
const INEFFICIENT: usize = 1;
const TRANSFER: usize = 2;
const WAIT: usize = 3;
const OTHER_BUSY: usize = 4;
const HOST_STALL: usize = 5;
const IDLE_OTHER: usize = 6;
/// The fill for time no interval covers.
const LAUNCH_BOUND: usize = 7;

/// Nanoseconds per category, indexed like [`CATEGORIES`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CategoryTimes {
    /// ns per category.
    pub ns: [u64; 8],
    /// `idle.host_stall` split by what the host was blocked in (the host record's name:
    /// `data_loader`, `checkpoint_write`, `nccl rendezvous`, `cuStreamSynchronize`, …); sums to
    /// the category. Where several overlap, the earliest-starting reason wins.
    pub host_stall_by_reason: std::collections::BTreeMap<String, u64>,
}

impl CategoryTimes {
    /// ns of the category called `name` (0 for an unknown name).
    pub fn get(&self, name: &str) -> u64 {
        CATEGORIES.iter().position(|c| *c == name).map_or(0, |i| self.ns[i])
    }

    /// Sum over all categories (equals the window length).
    pub fn total_ns(&self) -> u64 {
        self.ns.iter().sum()
    }
}

/// Labelled interval `[start, end)`.
struct Span {
    start_ns: u64,
    end_ns: u64,
    category: usize,
    /// Host-stall reason (host record name), for `idle.host_stall` spans.
    reason: Option<String>,
}

/// Append `[start_ns, end_ns)` as `category` unless it is empty.
fn add(out: &mut Vec<Span>, start_ns: u64, end_ns: u64, category: usize, reason: Option<String>) {
    if end_ns > start_ns {
        out.push(Span { start_ns, end_ns, category, reason });
    }
}

/// Split records into labelled spans for one device.
fn spans(records: &[SimRecord], device_id: u32, peak_flops_per_s: f64) -> Vec<Span> {
    let mut out = Vec::new();
    for rec in records {
        let Some(kind) = rec.kind() else { continue };
        let device_op =
            matches!(kind, RecordKind::Kernel | RecordKind::Memcpy | RecordKind::Memset | RecordKind::Collective);
        if device_op && rec.device_id != device_id {
            continue;
        }
        match kind {
            RecordKind::Kernel if rec.flops > 0 && peak_flops_per_s > 0.0 => {
                let useful_ns = (rec.flops as f64 / peak_flops_per_s * 1e9).round() as u64;
                let split = rec.start_ns + useful_ns.min(rec.duration_ns());
                add(&mut out, rec.start_ns, split, USEFUL, None);
                add(&mut out, split, rec.end_ns, INEFFICIENT, None);
            }
            RecordKind::Kernel | RecordKind::Memcpy | RecordKind::Memset => {
                add(&mut out, rec.start_ns, rec.end_ns, OTHER_BUSY, None)
            }
            RecordKind::Collective => {
                let split = rec.transfer_start_ns.clamp(rec.start_ns, rec.end_ns);
                add(&mut out, rec.start_ns, split, WAIT, None);
                add(&mut out, split, rec.end_ns, TRANSFER, None);
            }
            RecordKind::SyncWait | RecordKind::HostStall => {
                add(&mut out, rec.start_ns, rec.end_ns, HOST_STALL, Some(rec.name().to_string()))
            }
            RecordKind::HostOther => add(&mut out, rec.start_ns, rec.end_ns, IDLE_OTHER, None),
            RecordKind::Api | RecordKind::Marker => {}
        }
    }
    out
}

/// Categorize the window `[window_start_ns, window_end_ns)` of device `device_id`.
pub fn categorize(
    records: &[SimRecord],
    device_id: u32,
    peak_flops_per_s: f64,
    window_start_ns: u64,
    window_end_ns: u64,
) -> CategoryTimes {
    let mut times = CategoryTimes::default();
    if window_end_ns <= window_start_ns {
        return times;
    }
    // Sweep over boundaries with a count of open spans per category (and per stall reason).
    let mut reasons: Vec<String> = Vec::new();
    let mut events: Vec<(u64, usize, i64, usize)> = Vec::new();
    let mut spans = spans(records, device_id, peak_flops_per_s);
    spans.sort_by_key(|s| s.start_ns);
    for span in spans {
        let start = span.start_ns.clamp(window_start_ns, window_end_ns);
        let end = span.end_ns.clamp(window_start_ns, window_end_ns);
        if end > start {
            let reason = match span.reason {
                Some(name) => match reasons.iter().position(|r| *r == name) {
                    Some(i) => i,
                    None => {
                        reasons.push(name);
                        reasons.len() - 1
                    }
                },
                None => usize::MAX,
            };
            events.push((start, span.category, 1, reason));
            events.push((end, span.category, -1, reason));
        }
    }
    events.sort_unstable_by_key(|&(t, _, _, _)| t);
    let mut open = [0i64; 8];
    let mut open_reasons = vec![0i64; reasons.len()];
    let mut cursor = window_start_ns;
    let mut index = 0;
    let account = |times: &mut CategoryTimes, open: &[i64; 8], open_reasons: &[i64], ns: u64| {
        let winner = (0..8).find(|&c| open[c] > 0).unwrap_or(LAUNCH_BOUND);
        times.ns[winner] += ns;
        if winner == HOST_STALL && ns > 0 {
            if let Some(r) = open_reasons.iter().position(|&n| n > 0) {
                *times.host_stall_by_reason.entry(reasons[r].clone()).or_insert(0) += ns;
            }
        }
    };
    while index < events.len() {
        let t = events[index].0;
        account(&mut times, &open, &open_reasons, t - cursor);
        cursor = t;
        while index < events.len() && events[index].0 == t {
            let (_, category, delta, reason) = events[index];
            open[category] += delta;
            if reason != usize::MAX {
                open_reasons[reason] += delta;
            }
            index += 1;
        }
    }
    account(&mut times, &open, &open_reasons, window_end_ns - cursor);
    times
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: RecordKind, start_ns: u64, end_ns: u64) -> SimRecord {
        let mut rec = SimRecord::new(kind);
        rec.start_ns = start_ns;
        rec.transfer_start_ns = start_ns;
        rec.end_ns = end_ns;
        rec
    }

    #[test]
    fn every_ns_lands_in_one_category() {
        // peak 1e9 FLOP/s: 300 FLOPs = 300 ns useful of a 1000 ns kernel.
        let mut kernel = op(RecordKind::Kernel, 1_000, 2_000);
        kernel.flops = 300;
        let mut coll = op(RecordKind::Collective, 2_500, 4_000);
        coll.transfer_start_ns = 3_500;
        let copy = op(RecordKind::Memcpy, 1_500, 3_000); // overlaps both: loses to each
        let stall = op(RecordKind::HostStall, 4_000, 4_600);
        let t = categorize(&[kernel, coll, copy, stall], 0, 1e9, 0, 5_000);
        assert_eq!(t.get("compute.useful"), 300);
        assert_eq!(t.get("compute.inefficient"), 700);
        assert_eq!(t.get("other.busy"), 500); // 2000..2500
        assert_eq!(t.get("comm.wait"), 1_000);
        assert_eq!(t.get("comm.transfer"), 500);
        assert_eq!(t.get("idle.host_stall"), 600);
        assert_eq!(t.host_stall_by_reason.values().sum::<u64>(), 600);
        assert_eq!(t.get("idle.launch_bound"), 1_000 + 400);
        assert_eq!(t.total_ns(), 5_000);
    }

    #[test]
    fn spans_outside_the_window_are_clipped() {
        let t = categorize(&[op(RecordKind::Kernel, 0, 10_000)], 0, 1e9, 2_000, 3_000);
        assert_eq!(t.get("other.busy"), 1_000);
        assert_eq!(t.total_ns(), 1_000);
    }
}
