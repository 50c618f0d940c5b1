//! Ground-truth accounting: every nanosecond of a window falls into exactly one DESIGN.md §1
//! category, computed from what the simulator executed.
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
}

/// Split records into labelled spans for one device.
fn spans(records: &[SimRecord], device_id: u32, peak_flops_per_s: f64) -> Vec<Span> {
    let mut out = Vec::new();
    let mut push = |start_ns: u64, end_ns: u64, category: usize| {
        if end_ns > start_ns {
            out.push(Span { start_ns, end_ns, category });
        }
    };
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
                push(rec.start_ns, split, USEFUL);
                push(split, rec.end_ns, INEFFICIENT);
            }
            RecordKind::Kernel | RecordKind::Memcpy | RecordKind::Memset => push(rec.start_ns, rec.end_ns, OTHER_BUSY),
            RecordKind::Collective => {
                let split = rec.transfer_start_ns.clamp(rec.start_ns, rec.end_ns);
                push(rec.start_ns, split, WAIT);
                push(split, rec.end_ns, TRANSFER);
            }
            RecordKind::SyncWait | RecordKind::HostStall => push(rec.start_ns, rec.end_ns, HOST_STALL),
            RecordKind::HostOther => push(rec.start_ns, rec.end_ns, IDLE_OTHER),
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
    // Sweep over boundaries with a count of open spans per category.
    let mut events: Vec<(u64, usize, i64)> = Vec::new();
    for span in spans(records, device_id, peak_flops_per_s) {
        let start = span.start_ns.clamp(window_start_ns, window_end_ns);
        let end = span.end_ns.clamp(window_start_ns, window_end_ns);
        if end > start {
            events.push((start, span.category, 1));
            events.push((end, span.category, -1));
        }
    }
    events.sort_unstable_by_key(|&(t, _, _)| t);
    let mut open = [0i64; 8];
    let mut cursor = window_start_ns;
    let mut index = 0;
    while index < events.len() {
        let t = events[index].0;
        let winner = (0..8).find(|&c| open[c] > 0).unwrap_or(LAUNCH_BOUND);
        times.ns[winner] += t - cursor;
        cursor = t;
        while index < events.len() && events[index].0 == t {
            open[events[index].1] += events[index].2;
            index += 1;
        }
    }
    let winner = (0..8).find(|&c| open[c] > 0).unwrap_or(LAUNCH_BOUND);
    times.ns[winner] += window_end_ns - cursor;
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
