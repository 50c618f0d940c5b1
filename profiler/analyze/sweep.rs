//! The sweep of one device's window: every elementary interval between consecutive op
//! boundaries is classified (compute > comm > other; idle split by the launching threads'
//! state) and added to the window's totals, the step and bin it lies in, the idle gap it
//! extends and the straggler windows it overlaps. [`DeviceSweep::feed`] takes the window in
//! consecutive slices (the whole window at once in memory; bounded slices when streaming), so
//! both paths run the same arithmetic.

use std::collections::HashMap;

use super::flops::FlopSource;
use super::inputs::Reasoned;
use super::model::{
    round_to_total, Categories, Category, CheckpointIo, DetailOptions, DeviceAccount, DeviceDetail, DeviceResult,
    IdleGap, KernelStat, Partition, Window, MAX_BINS,
};
use crate::trace::DenseMap;
use crate::trace::StepSource;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
pub(crate) enum Class {
    Compute,
    Comm,
    Other,
}

/// One device operation, classified (32 bytes: the streaming sweep holds and moves many).
/// Built by [`Op::new`], [`DevicePlan::kernel_op`] or [`DevicePlan::copy_op`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op {
    pub start: u64,
    pub end: u64,
    /// the useful fraction's bits (compute, other), or the end of the wait phase (comm)
    x: u64,
    /// kernel name id (when `named`)
    pub name: u32,
    pub class: Class,
    /// false for copies
    pub named: bool,
}

impl Op {
    pub fn new(start: u64, end: u64, class: Class, rate: f64, transfer_from: u64, name: u32, named: bool) -> Op {
        let x = if class == Class::Comm { transfer_from } else { rate.to_bits() };
        Op { start, end, x, name, class, named }
    }

    /// Useful fraction (compute; 0 for the others).
    #[inline]
    pub fn rate(&self) -> f64 {
        if self.class == Class::Comm {
            0.0
        } else {
            f64::from_bits(self.x)
        }
    }

    /// End of the wait phase (comm; 0 for the others).
    #[inline]
    pub fn transfer_from(&self) -> u64 {
        if self.class == Class::Comm {
            self.x
        } else {
            0
        }
    }
}

/// A map with rustc's Fx hash (`rustc-hash`): the sweep's maps are keyed by small integers,
/// where SipHash costs more than the work around it.
pub(crate) type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// What is decided about a device before its sweep.
#[derive(Clone)]
pub(crate) struct DevicePlan {
    pub pid: u32,
    pub device: u32,
    pub window: Window,
    pub flop_source: FlopSource,
    /// Useful fraction per compute kernel name (PM source).
    pub fractions: HashMap<u32, f64>,
    pub flop_less_below: f64,
    /// None: no steps.
    pub step_source: Option<StepSource>,
    pub steps: Vec<(u64, u64)>,
    /// Useful rate of each step's compute kernels (model-FLOPs source).
    pub step_rates: Vec<f64>,
    pub bin_ns: u64,
    pub has_launcher: bool,
    /// Windows (sorted) in which other ranks waited for this one.
    pub late_windows: Vec<Window>,
    pub detail: bool,
    pub notes: Vec<String>,
}

impl DevicePlan {
    /// The plan without details (steps, bins): what [`super::account`] needs.
    pub fn totals_only(pid: u32, device: u32, window: Window, flop_source: FlopSource) -> Self {
        DevicePlan {
            pid,
            device,
            window,
            flop_source,
            fractions: HashMap::new(),
            flop_less_below: 0.01,
            step_source: None,
            steps: Vec::new(),
            step_rates: Vec::new(),
            bin_ns: 0,
            has_launcher: false,
            late_windows: Vec::new(),
            detail: false,
            notes: Vec::new(),
        }
    }

    /// Sets the bin width from the options (default: the window in `default_bins` bins).
    pub fn set_bins(&mut self, d: &DetailOptions) {
        let window = self.window.len_ns();
        let want = d.bin_ns.unwrap_or_else(|| window.div_ceil(d.default_bins.max(1))).max(1);
        let min = window.div_ceil(MAX_BINS).max(1);
        if want < min {
            self.notes.push(format!("bin width {want} ns would give more than {MAX_BINS} bins: widened to {min} ns"));
        }
        self.bin_ns = want.max(min);
    }

    /// Uses the model-FLOPs source when there is no PM source: each step's useful time
    /// (`useful_ns`) over its compute time (`compute_per_step`).
    pub fn set_step_rates(&mut self, useful_ns: f64, compute_per_step: &[u64]) {
        self.flop_source = FlopSource::FlopsPerStep;
        self.step_rates =
            compute_per_step.iter().map(|&b| if b == 0 { 0.0 } else { (useful_ns / b as f64).min(1.0) }).collect();
    }

    fn step_rate(&self, t: u64) -> f64 {
        let i = self.steps.partition_point(|s| s.1 <= t);
        match self.steps.get(i) {
            Some(s) if s.0 <= t => self.step_rates.get(i).copied().unwrap_or(0.0),
            _ => 0.0,
        }
    }

    /// A kernel as an op: `comm` for collectives (waiting `wait_ns` from its start).
    pub fn kernel_op(&self, start: u64, end: u64, name: u32, comm: bool, wait_ns: u64) -> Op {
        let (class, rate, transfer_from) = if comm {
            (Class::Comm, 0.0, start + wait_ns)
        } else if self.flop_source == FlopSource::FlopsPerStep {
            (Class::Compute, self.step_rate(start), 0)
        } else {
            match self.fractions.get(&name) {
                Some(&f) if f >= self.flop_less_below => (Class::Compute, f, 0),
                _ if self.flop_source == FlopSource::None => (Class::Compute, 0.0, 0),
                _ => (Class::Other, 0.0, 0),
            }
        };
        Op::new(start, end, class, rate, transfer_from, name, true)
    }

    pub fn copy_op(start: u64, end: u64) -> Op {
        Op::new(start, end, Class::Other, 0.0, 0, 0, false)
    }

    /// Its steps and bins: the partitions a sweep of it adds up.
    pub fn partitions(&self) -> u64 {
        let bins = if self.bin_ns > 0 { self.window.len_ns().div_ceil(self.bin_ns) } else { 0 };
        (self.steps.len() as u64).saturating_add(bins)
    }

    /// Whether the sweep's sums are exact in any order ([`Sums`]: whole ns below 2^53, and the
    /// useful part of compute in fixed point): the window is shorter than 2^53 ns (104 days).
    /// Then the window can be swept in spans on several threads and their sums added
    /// ([`DeviceSweep::absorb`]) to exactly the one-pass result.
    pub fn sums_exact(&self) -> bool {
        self.window.len_ns() < 1 << 53
    }
}

/// One ns in the fixed point of [`Sums::useful`] (2^64).
const FIXED_ONE: f64 = 18_446_744_073_709_551_616.0;

/// `x` ns (≥ 0, below 2^53) in fixed point, truncated to 2^-64 ns: whole ns exactly.
#[inline]
fn fixed(x: f64) -> u128 {
    // (a product by a power of two is exact; the cast truncates, saturating, NaN to 0)
    (x * FIXED_ONE) as u128
}

/// ns by category, added up exactly, so that any order of the same amounts gives the same
/// sums (what lets a window be swept in spans on several threads, [`DeviceSweep::absorb`]).
/// Every amount is a whole number of ns (below 2^53 in all: exact as `f64`) except the split of
/// compute time into useful and inefficient by a fractional rate: compute ns are kept whole in
/// `ns[ComputeInefficient]` and the useful part apart, in fixed point (2^-64 ns, truncated);
/// [`Sums::categories`] splits them at the end.
#[derive(Clone, Copy, Default)]
struct Sums {
    ns: [f64; 8],
    useful: u128,
}

impl Sums {
    #[inline]
    fn add(&mut self, other: &Sums) {
        for (a, b) in self.ns.iter_mut().zip(other.ns) {
            *a += b;
        }
        self.useful += other.useful;
    }

    /// The eight categories, compute split into useful and inefficient.
    fn categories(&self) -> [f64; 8] {
        let (u, i) = (Category::ComputeUseful.index(), Category::ComputeInefficient.index());
        let mut c = self.ns;
        c[u] = self.useful as f64 / FIXED_ONE;
        c[i] = self.ns[i] - c[u];
        c
    }

    /// Whole-ns sums by category (compute useful and inefficient apart).
    fn of_whole(sums: &[u64; 8]) -> Sums {
        let (u, i) = (Category::ComputeUseful.index(), Category::ComputeInefficient.index());
        let mut ns = sums.map(|x| x as f64);
        ns[i] = (sums[u] + sums[i]) as f64;
        ns[u] = 0.0;
        Sums { ns, useful: (sums[u] as u128) << 64 }
    }
}

/// Accumulates segments into disjoint, sorted partitions (steps or bins).
struct Partitions {
    spans: Vec<(u64, u64)>,
    acc: Vec<Sums>,
    busy: Vec<u64>,
    cursor: usize,
}

impl Partitions {
    fn new(spans: Vec<(u64, u64)>) -> Self {
        let n = spans.len();
        Partitions { spans, acc: vec![Sums::default(); n], busy: vec![0; n], cursor: 0 }
    }

    /// Adds segment [a, b), which never straddles a boundary; segments come in time order.
    #[inline]
    fn add(&mut self, a: u64, b: u64, seg: &Seg, busy: bool) {
        while self.cursor < self.spans.len() && self.spans[self.cursor].1 <= a {
            self.cursor += 1;
        }
        if let Some(&(s, e)) = self.spans.get(self.cursor) {
            if s <= a && b <= e {
                seg.add_to(&mut self.acc[self.cursor]);
                if busy {
                    self.busy[self.cursor] += b - a;
                }
            }
        }
    }

    /// Adds the sums of [a, b), which lies inside one partition or none (whole ns: see
    /// [`DeviceSweep::walk_integral`]).
    fn add_sums(&mut self, a: u64, b: u64, sums: &Sums, busy: u64) {
        while self.cursor < self.spans.len() && self.spans[self.cursor].1 <= a {
            self.cursor += 1;
        }
        if let Some(&(s, e)) = self.spans.get(self.cursor) {
            if s <= a && b <= e {
                self.acc[self.cursor].add(sums);
                self.busy[self.cursor] += busy;
            }
        }
    }

    /// Adds the sums of `later` (the same partitions, swept over a later span of time).
    fn absorb(&mut self, later: Partitions) {
        for (a, b) in self.acc.iter_mut().zip(&later.acc) {
            a.add(b);
        }
        for (a, b) in self.busy.iter_mut().zip(&later.busy) {
            *a += b;
        }
    }

    fn finish(self) -> Vec<Partition> {
        self.spans
            .iter()
            .zip(self.acc.iter().zip(&self.busy))
            .map(|(&(s, e), (acc, &busy))| Partition {
                start_ns: s,
                end_ns: e,
                busy_ns: busy,
                categories: Categories { ns: round_to_total(acc.categories(), e - s) },
            })
            .collect()
    }
}

/// One elementary segment's ns by category: at most two categories are not zero (the others'
/// additions of 0 would change no sum: every amount is ≥ 0), and its useful compute ns in
/// fixed point ([`Sums`]: a compute segment's whole ns go to `ComputeInefficient`).
struct Seg([(usize, f64); 2], u128);

impl Seg {
    #[inline]
    fn add_to(&self, acc: &mut Sums) {
        for &(i, ns) in &self.0 {
            acc.ns[i] += ns;
        }
        acc.useful += self.1;
    }
}

/// The idle stretch being built by the sweep.
#[derive(Default)]
struct OpenGap {
    start: u64,
    end: u64,
    /// launch-bound, host-stall, other ns
    split: [f64; 3],
    /// off-CPU reason → ns
    reasons: Vec<(&'static str, u64)>,
}

fn tally(v: &mut Vec<(&'static str, u64)>, r: &'static str, ns: u64) {
    match v.iter_mut().find(|x| x.0 == r) {
        Some(x) => x.1 += ns,
        None => v.push((r, ns)),
    }
}

/// The sweep state of one device.
pub(crate) struct DeviceSweep {
    plan: DevicePlan,
    acc: Sums,
    busy: u64,
    steps: Partitions,
    bins: Partitions,
    gaps: Vec<OpenGap>,
    gap: OpenGap,
    /// per kernel name id: its figures and useful ns (fixed point, [`Sums`])
    kernels: DenseMap<(KernelStat, u128)>,
    /// class and rate per name id ([`DeviceSweep::kernel_op_cached`])
    class_of: DenseMap<(Class, f64)>,
    late_cursor: usize,
    late_busy: u64,
    late_reasons: Vec<(&'static str, u64)>,
    /// union of the blocked intervals inside the late windows
    late_blocked: u64,
    /// the longest reasoned interval of the current slice
    longest_reason: u64,
    /// whether every amount added so far is a whole number of ns, below 2^53 in all (the
    /// window is shorter): then sums are exact in any order
    integral: bool,
    /// scratch: the three streams of cut points, the sorts' buffers, the started ops
    starts: Vec<u64>,
    ends: Vec<u64>,
    side_cuts: Vec<u64>,
    sort_buf: Vec<u64>,
    op_buf: Vec<Op>,
    active: Vec<usize>,
    /// a later span of the window ([`DeviceSweep::span`]): its first gap is held in `head`
    /// whole, not ranked, since it may continue the gap open at the end of the span before
    hold_first: bool,
    /// the span's first gap, once another one has begun
    head: Option<OpenGap>,
}

impl DeviceSweep {
    pub fn new(plan: DevicePlan) -> Self {
        let Window { start_ns: w0, end_ns: w1 } = plan.window;
        let bins = if plan.bin_ns > 0 && w1 > w0 {
            let b = plan.bin_ns;
            (0..(w1 - w0).div_ceil(b)).map(|i| (w0 + i * b, (w0 + (i + 1) * b).min(w1))).collect()
        } else {
            Vec::new()
        };
        DeviceSweep {
            steps: Partitions::new(plan.steps.clone()),
            bins: Partitions::new(bins),
            plan,
            acc: Sums::default(),
            busy: 0,
            gaps: Vec::new(),
            gap: OpenGap::default(),
            kernels: DenseMap::new(),
            class_of: DenseMap::new(),
            late_cursor: 0,
            late_busy: 0,
            late_reasons: Vec::new(),
            late_blocked: 0,
            longest_reason: 0,
            integral: w1.saturating_sub(w0) < 1 << 53,
            starts: Vec::new(),
            ends: Vec::new(),
            side_cuts: Vec::new(),
            sort_buf: Vec::new(),
            op_buf: Vec::new(),
            active: Vec::new(),
            hold_first: false,
            head: None,
        }
    }

    /// The sweep of a later span of the window (one that does not start at its beginning),
    /// to be added to the sweep of the time before it with [`DeviceSweep::absorb`].
    pub fn span(plan: DevicePlan) -> Self {
        DeviceSweep { hold_first: true, ..DeviceSweep::new(plan) }
    }

    /// Adds `later`, the sweep of the span of the window right after this one's (made by
    /// [`DeviceSweep::span`], fed the slices the one-pass sweep would have fed it, starting
    /// where this one stopped), so that this is what one sweep of both spans gives. Exact only
    /// when the plan's sums are exact in any order ([`DevicePlan::sums_exact`]).
    pub fn absorb(&mut self, later: DeviceSweep) {
        let DeviceSweep { acc, busy, steps, bins, gaps, gap, kernels, late_busy, late_reasons, late_blocked, .. } =
            later;
        let (integral, hold_first, head) = (later.integral, later.hold_first, later.head);
        self.acc.add(&acc);
        self.busy += busy;
        self.steps.absorb(steps);
        self.bins.absorb(bins);
        // Gaps: the later span's first one continues this one's open gap when it starts where
        // that one ends (what `extend_gap` does segment by segment); then every gap closes in
        // time order, under the same rule.
        // (the later span's open gap, when its first one has closed)
        let (first, open) = if hold_first { (gap, None) } else { (head.unwrap_or_default(), Some(gap)) };
        if first.end > first.start {
            if self.gap.end > self.gap.start && self.gap.end == first.start {
                let g = &mut self.gap;
                for (a, b) in g.split.iter_mut().zip(first.split) {
                    *a += b;
                }
                g.end = first.end;
                for (r, ns) in first.reasons {
                    tally(&mut g.reasons, r, ns);
                }
            } else {
                close_gap(&mut self.gaps, std::mem::take(&mut self.gap));
                self.gap = first;
            }
        }
        if let Some(open) = open {
            close_gap(&mut self.gaps, std::mem::replace(&mut self.gap, open));
            let mut closed = gaps;
            closed.sort_by_key(|g| g.start);
            for g in closed {
                close_gap(&mut self.gaps, g);
            }
        }
        for (name, (stat, useful)) in kernels.into_map() {
            let e = self.kernels.get_or_insert_with(name, || (KernelStat { name_id: name, ..Default::default() }, 0));
            e.0.count += stat.count;
            e.0.total_ns += stat.total_ns;
            e.1 += useful;
        }
        self.late_busy += late_busy;
        self.late_blocked += late_blocked;
        for (r, ns) in late_reasons {
            tally(&mut self.late_reasons, r, ns);
        }
        self.integral &= integral;
    }

    /// [`DevicePlan::kernel_op`], remembering the class and rate of each name id where they
    /// depend on the name alone (not for collectives, nor per-step rates).
    #[inline]
    pub fn kernel_op_cached(&mut self, start: u64, end: u64, name: u32, comm: bool, wait_ns: u64) -> Op {
        if comm || self.plan.flop_source == FlopSource::FlopsPerStep {
            return self.plan.kernel_op(start, end, name, comm, wait_ns);
        }
        let plan = &self.plan;
        let &mut (class, rate) = self.class_of.get_or_insert_with(name, || {
            let o = plan.kernel_op(start, end, name, false, 0);
            (o.class, o.rate())
        });
        Op::new(start, end, class, rate, 0, name, true)
    }

    /// The class and rate [`DeviceSweep::kernel_op_cached`] has remembered for a kernel that
    /// is not a collective, if it has.
    #[inline]
    pub fn cached_class(&self, name: u32) -> Option<(Class, f64)> {
        if self.plan.flop_source == FlopSource::FlopsPerStep {
            return None;
        }
        self.class_of.get(name).copied()
    }

    pub fn window(&self) -> Window {
        self.plan.window
    }

    /// Sweeps [a, b) (the slice after the previous one). `ops`: every op overlapping it
    /// (reordered here); `blocked`: sorted, merged blocked intervals of the launching threads
    /// covering it; `reasons`: the same unmerged with reasons, sorted by start.
    ///
    /// The elementary segments lie between consecutive distinct cut points: `a`, `b`, the
    /// (clamped) starts and ends of the ops that are not collectives, the starts, ends and
    /// transfer points of collectives, and (with details) step and bin boundaries. They come
    /// from a merge of three sorted streams (starts, in the ops' order; ends, nearly sorted;
    /// the side cuts), and the ops covering a segment from a list of the started ones, pruned
    /// only when one of them has ended: the same segments and the same sums, in the same
    /// order, as sorting every cut and scanning the list per segment.
    pub fn feed(&mut self, a: u64, b: u64, ops: &mut [Op], blocked: &[(u64, u64)], reasons: &[Reasoned]) {
        let Some((a, b)) = self.prepare(a, b, ops, blocked, reasons) else { return };
        sort_runs(ops, &mut self.op_buf, |o| o.start);
        if one_at_a_time(ops, a, b) {
            if self.integral && ops.iter().all(integral_rate) {
                self.walk_integral(a, b, ops, blocked, reasons);
            } else {
                self.feed_one_at_a_time(a, b, ops, blocked, reasons);
            }
            return;
        }
        let mut starts = std::mem::take(&mut self.starts);
        let mut ends = std::mem::take(&mut self.ends);
        starts.clear();
        ends.clear();
        starts.push(a);
        let mut ends_sorted = true;
        for o in ops.iter().filter(|o| o.class != Class::Comm) {
            let e = o.end.clamp(a, b);
            ends_sorted &= ends.last().is_none_or(|&l| l <= e);
            starts.push(o.start.clamp(a, b));
            ends.push(e);
        }
        if !ends_sorted {
            sort_runs(&mut ends, &mut self.sort_buf, |&x| x);
        }
        let side = std::mem::take(&mut self.side_cuts);
        let mut active = std::mem::take(&mut self.active);
        active.clear();
        let (mut i, mut j, mut k) = (0usize, 0usize, 0usize);
        let (mut next, mut min_end) = (0usize, u64::MAX);
        let mut blocked_at = BlockedCursor::default();
        let mut x = a;
        loop {
            while i < starts.len() && starts[i] <= x {
                i += 1;
            }
            while j < ends.len() && ends[j] <= x {
                j += 1;
            }
            while k < side.len() && side[k] <= x {
                k += 1;
            }
            let y = starts.get(i).copied().unwrap_or(u64::MAX).min(ends.get(j).copied().unwrap_or(u64::MAX));
            let y = y.min(side.get(k).copied().unwrap_or(u64::MAX));
            if y == u64::MAX {
                break;
            }
            while next < ops.len() && ops[next].start <= x {
                active.push(next);
                min_end = min_end.min(ops[next].end);
                next += 1;
            }
            if min_end <= x {
                active.retain(|&i| ops[i].end > x);
                min_end = active.iter().map(|&i| ops[i].end).min().unwrap_or(u64::MAX);
            }
            let covering = active.iter().map(|&i| &ops[i]);
            self.segment(x, y, covering, reasons, &mut |x, y| blocked_at.overlap(blocked, x, y));
            x = y;
        }
        self.starts = starts;
        self.ends = ends;
        self.side_cuts = side;
        self.active = active;
    }

    /// [`DeviceSweep::feed`] when no op is a collective and the ops (sorted by start, clamped
    /// to the slice) follow one another without overlapping: the cut points are then, in
    /// order, each op's start and end merged with the side cuts, and the op covering a segment
    /// is the one being walked (none in the gaps), so the ops are walked in turn.
    fn feed_one_at_a_time(&mut self, a: u64, b: u64, ops: &[Op], blocked: &[(u64, u64)], reasons: &[Reasoned]) {
        let side = std::mem::take(&mut self.side_cuts);
        let mut k = 0usize;
        let mut blocked_at = BlockedCursor::default();
        let mut stalled = |x: u64, y: u64| blocked_at.overlap(blocked, x, y);
        let mut x = a;
        // the first side cut after x (`b` is one: there always is one while x < b)
        let side_after = |x: u64, k: &mut usize| {
            while *k < side.len() && side[*k] <= x {
                *k += 1;
            }
            side.get(*k).copied().unwrap_or(u64::MAX)
        };
        let mut comms = CommCover::new(ops);
        for o in ops.iter().filter(|o| o.class != Class::Comm) {
            let (s, e) = (o.start.clamp(a, b), o.end.clamp(a, b));
            while x < s {
                let y = s.min(side_after(x, &mut k));
                self.segment(x, y, comms.at(x).iter().copied(), reasons, &mut stalled);
                x = y;
            }
            while x < e {
                let y = e.min(side_after(x, &mut k));
                // (the rates summed in start order, as the merged sweep does: a collective adds none)
                self.segment(x, y, std::iter::once(o).chain(comms.at(x).iter().copied()), reasons, &mut stalled);
                x = y;
            }
        }
        while x < b {
            let y = b.min(side_after(x, &mut k));
            self.segment(x, y, comms.at(x).iter().copied(), reasons, &mut stalled);
            x = y;
        }
        self.side_cuts = side;
    }

    /// [`DeviceSweep::feed_one_at_a_time`] while every amount added so far and every one of
    /// this slice is a whole number of ns (no fractional compute rate): sums of whole numbers
    /// below 2^53 are exact in any order, so each stretch between two side cuts (inside one
    /// step and one bin) is summed in integers and added once.
    fn walk_integral(&mut self, a: u64, b: u64, ops: &[Op], blocked: &[(u64, u64)], reasons: &[Reasoned]) {
        let side = std::mem::take(&mut self.side_cuts);
        let detail = self.plan.detail;
        let launcher = self.plan.has_launcher;
        let late = detail && !self.plan.late_windows.is_empty();
        let mut blocked_at = BlockedCursor::default();
        let mut k = 0usize;
        // the stretch [run, x) since the last side cut: its ns by category, busy ns
        let (mut run, mut sums, mut busy) = (a, [0u64; 8], 0u64);
        let mut x = a;
        let mut comms = CommCover::new(ops);
        let mut ops = ops.iter().filter(|o| o.class != Class::Comm);
        let mut op = ops.next();
        while x < b {
            while k < side.len() && side[k] <= x {
                k += 1;
            }
            let cut = side.get(k).copied().unwrap_or(b);
            let (s, e) = op.map_or((b, b), |o| (o.start.clamp(a, b), o.end.clamp(a, b)));
            let covering = comms.at(x);
            // a collective covering the segment: comm.transfer once its data moves, else wait
            let comm = (!covering.is_empty()).then(|| {
                if covering.iter().any(|c| x >= c.transfer_from()) {
                    Category::CommTransfer.index()
                } else {
                    Category::CommWait.index()
                }
            });
            if x < s && comm.is_some() {
                // a collective alone until the op's start or the cut
                let y = s.min(cut);
                let dt = y - x;
                sums[comm.unwrap_or(Category::CommWait.index())] += dt;
                busy += dt;
                if late {
                    self.late_busy_add(x, y);
                }
                x = y;
            } else if x < s {
                // idle until the op's start or the cut
                let y = s.min(cut);
                let dt = y - x;
                if launcher {
                    let stalled = blocked_at.overlap(blocked, x, y);
                    sums[Category::IdleHostStall.index()] += stalled;
                    // (merged intervals: no more than dt)
                    sums[Category::IdleLaunchBound.index()] += dt.saturating_sub(stalled);
                    if detail {
                        let stall = stalled as f64;
                        self.extend_gap(x, y, (dt as f64 - stall, stall, 0.0), stalled, reasons);
                    }
                } else {
                    sums[Category::IdleOther.index()] += dt;
                    if detail {
                        self.extend_gap(x, y, (0.0, 0.0, dt as f64), 0, reasons);
                    }
                }
                x = y;
            } else if x < e {
                let o = op.expect("an op ends after x");
                let y = e.min(cut);
                let dt = y - x;
                let category = match o.class {
                    Class::Compute if o.rate() >= 1.0 => Category::ComputeUseful.index(),
                    Class::Compute => Category::ComputeInefficient.index(),
                    // comm wins over other (a copy under a collective)
                    _ => comm.unwrap_or(Category::OtherBusy.index()),
                };
                sums[category] += dt;
                busy += dt;
                if late {
                    self.late_busy_add(x, y);
                }
                x = y;
            } else {
                op = ops.next();
                continue;
            }
            if x == cut || x == b {
                self.add_stretch(run, x, &sums, busy);
                (run, sums, busy) = (x, [0; 8], 0);
            }
        }
        self.side_cuts = side;
    }

    /// Adds the sums of [a, b) (whole ns, between two side cuts) to the totals, its step and bin.
    fn add_stretch(&mut self, a: u64, b: u64, sums: &[u64; 8], busy: u64) {
        let seg = Sums::of_whole(sums);
        self.acc.add(&seg);
        self.busy += busy;
        if self.plan.detail {
            self.steps.add_sums(a, b, &seg, busy);
            self.bins.add_sums(a, b, &seg, busy);
        }
    }

    /// What [`DeviceSweep::feed`] does before its segments: the slice clipped to the window
    /// (None when empty), kernel counts, the sorted side cuts (in `side_cuts`), late windows.
    fn prepare(
        &mut self,
        a: u64,
        b: u64,
        ops: &[Op],
        blocked: &[(u64, u64)],
        reasons: &[Reasoned],
    ) -> Option<(u64, u64)> {
        let Window { start_ns: w0, end_ns: w1 } = self.plan.window;
        let (a, b) = (a.max(w0), b.min(w1));
        if a >= b {
            return None;
        }
        let detail = self.plan.detail;
        if detail {
            self.longest_reason = reasons.iter().map(|x| x.end_ns.saturating_sub(x.start_ns)).max().unwrap_or(0);
        }
        // The cuts other than the ops' that are not collectives: collectives (on their own
        // stream), steps, bins, the slice's end. Nearly sorted: a few runs, merged in a reused
        // buffer (the library sort allocates its buffer every call).
        let mut side = std::mem::take(&mut self.side_cuts);
        side.clear();
        side.push(b);
        for o in ops.iter() {
            if o.class == Class::Comm {
                side.extend([o.start.clamp(a, b), o.transfer_from().clamp(a, b), o.end.clamp(a, b)]);
            }
            if detail {
                self.count_kernel(o, a, b);
            }
        }
        if detail {
            let i = self.plan.steps.partition_point(|s| s.1 <= a);
            for &(s, e) in self.plan.steps[i..].iter().take_while(|s| s.0 < b) {
                side.extend([s.clamp(a, b), e.clamp(a, b)]);
            }
            if self.plan.bin_ns > 0 {
                let bin = self.plan.bin_ns;
                let mut t = w0 + (a - w0) / bin * bin + bin;
                while t < b {
                    side.push(t);
                    t += bin;
                }
            }
            if !reasons.is_empty() && !self.plan.late_windows.is_empty() {
                self.late_off_cpu(a, b, reasons);
                self.late_blocked_add(a, b, blocked);
            }
        }
        sort_runs(&mut side, &mut self.sort_buf, |&x| x);
        self.side_cuts = side;
        Some((a, b))
    }

    /// Classifies the elementary segment [a, b) from the ops that may cover it (in the order
    /// of their starts: the compute rates are summed in that order) and adds it up.
    /// `stalled(a, b)`: the launching threads' blocked time in it.
    #[inline(always)]
    fn segment<'o>(
        &mut self,
        a: u64,
        b: u64,
        ops: impl Iterator<Item = &'o Op>,
        reasons: &[Reasoned],
        stalled: &mut impl FnMut(u64, u64) -> u64,
    ) {
        let detail = self.plan.detail;
        let dt = (b - a) as f64;
        let seg: Seg;
        let mut best: Option<Class> = None;
        let (mut rate, mut transferring) = (0f64, false);
        for o in ops.filter(|o| o.start <= a && o.end >= b) {
            best = Some(best.map_or(o.class, |c| c.min(o.class)));
            match o.class {
                Class::Compute => rate += o.rate(),
                Class::Comm => transferring |= a >= o.transfer_from(),
                Class::Other => {}
            }
        }
        match best {
            None => {
                let stalled = if self.plan.has_launcher { stalled(a, b) } else { 0 };
                let split = if !self.plan.has_launcher {
                    seg = Seg([(Category::IdleOther.index(), dt), (Category::IdleHostStall.index(), 0.0)], 0);
                    (0.0, 0.0, dt)
                } else {
                    let (stall, launch) = (stalled as f64, dt - stalled as f64);
                    seg =
                        Seg([(Category::IdleHostStall.index(), stall), (Category::IdleLaunchBound.index(), launch)], 0);
                    (launch, stall, 0.0)
                };
                if detail {
                    self.extend_gap(a, b, split, stalled, reasons);
                }
            }
            Some(class) => {
                self.busy += b - a;
                seg = match class {
                    Class::Compute => {
                        let rate = rate.min(1.0);
                        if rate != 0.0 && rate != 1.0 {
                            self.integral = false;
                        }
                        // (whole ns to inefficient, the useful part apart: `Sums`)
                        Seg(
                            [(Category::ComputeInefficient.index(), dt), (Category::ComputeUseful.index(), 0.0)],
                            fixed(rate * dt),
                        )
                    }
                    Class::Comm => Seg(
                        [
                            (
                                if transferring { Category::CommTransfer.index() } else { Category::CommWait.index() },
                                dt,
                            ),
                            (Category::OtherBusy.index(), 0.0),
                        ],
                        0,
                    ),
                    Class::Other => Seg([(Category::OtherBusy.index(), dt), (Category::ComputeUseful.index(), 0.0)], 0),
                };
                if detail && !self.plan.late_windows.is_empty() {
                    self.late_busy_add(a, b);
                }
            }
        }
        seg.add_to(&mut self.acc);
        if detail {
            self.steps.add(a, b, &seg, best.is_some());
            self.bins.add(a, b, &seg, best.is_some());
        }
    }

    /// Counts a kernel once, in the slice that holds its start (clipped to the window).
    fn count_kernel(&mut self, o: &Op, a: u64, b: u64) {
        if !o.named {
            return;
        }
        let name = o.name;
        let Window { start_ns: w0, end_ns: w1 } = self.plan.window;
        let at = o.start.max(w0);
        let clipped = o.end.min(w1).saturating_sub(o.start.max(w0));
        if at < a || at >= b || (clipped == 0 && o.start < w0) {
            return;
        }
        let fresh = || (KernelStat { name_id: name, ..Default::default() }, 0);
        let e = self.kernels.get_or_insert_with(name, fresh);
        e.0.count += 1;
        e.0.total_ns += clipped;
        if o.class != Class::Comm {
            e.1 += fixed(o.rate().min(1.0) * clipped as f64);
        }
    }

    /// `split`: the segment's launch-bound, host-stall and other idle ns.
    #[inline]
    fn extend_gap(&mut self, a: u64, b: u64, split: (f64, f64, f64), stalled: u64, reasons: &[Reasoned]) {
        // (field by field: an array stored and read back whole stalls the store forwarding)
        if self.gap.end != a || self.gap.end == self.gap.start {
            // A new gap: the last one is kept only if it is among the 10 longest (most are not:
            // moving it out costs more than the check).
            let len = self.gap.end - self.gap.start;
            if len > 0 && self.hold_first {
                self.head = Some(std::mem::take(&mut self.gap));
                self.hold_first = false;
            } else if len > 0 && !(self.gaps.len() == 10 && self.gaps.last().is_some_and(|g| g.end - g.start >= len)) {
                self.keep_gap();
            } else {
                self.gap.reasons.clear();
            }
            self.gap.start = a;
            (self.gap.split[0], self.gap.split[1], self.gap.split[2]) = split;
        } else {
            let g = &mut self.gap.split;
            g[0] += split.0;
            g[1] += split.1;
            g[2] += split.2;
        }
        self.gap.end = b;
        if stalled > 0 {
            self.gap_reasons(a, b, reasons);
        }
    }

    #[inline(never)]
    fn keep_gap(&mut self) {
        close_gap(&mut self.gaps, std::mem::take(&mut self.gap));
    }

    /// The reasons of the blocked time in [a, b), added to the open gap's.
    #[inline(never)]
    fn gap_reasons(&mut self, a: u64, b: u64, reasons: &[Reasoned]) {
        let lo = reasons.partition_point(|x| x.start_ns < a.saturating_sub(self.longest_reason));
        for &Reasoned { start_ns: s, end_ns: e, reason: r } in reasons[lo..].iter().take_while(|x| x.start_ns < b) {
            let o = e.min(b).saturating_sub(s.max(a));
            if o > 0 {
                tally(&mut self.gap.reasons, r, o);
            }
        }
    }

    fn late_busy_add(&mut self, a: u64, b: u64) {
        let w = &self.plan.late_windows;
        while self.late_cursor < w.len() && w[self.late_cursor].end_ns <= a {
            self.late_cursor += 1;
        }
        for x in w[self.late_cursor..].iter().take_while(|x| x.start_ns < b) {
            self.late_busy += x.overlap(Window::new(a, b));
        }
    }

    /// Off-CPU time of the launching threads inside the late windows, within [a, b).
    fn late_blocked_add(&mut self, a: u64, b: u64, blocked: &[(u64, u64)]) {
        let w = &self.plan.late_windows;
        let lo = blocked.partition_point(|x| x.1 <= a);
        for &(s, e) in blocked[lo..].iter().take_while(|x| x.0 < b) {
            let (s, e) = (s.max(a), e.min(b));
            let i = w.partition_point(|x| x.end_ns <= s);
            self.late_blocked +=
                w[i..].iter().take_while(|x| x.start_ns < e).map(|x| x.overlap(Window::new(s, e))).sum::<u64>();
        }
    }

    fn late_off_cpu(&mut self, a: u64, b: u64, reasons: &[Reasoned]) {
        let w = &self.plan.late_windows;
        for &Reasoned { start_ns: s, end_ns: e, reason: r } in reasons.iter().take_while(|x| x.start_ns < b) {
            let (s, e) = (s.max(a), e.min(b));
            if s >= e {
                continue;
            }
            let i = w.partition_point(|x| x.end_ns <= s);
            let ns: u64 = w[i..].iter().take_while(|x| x.start_ns < e).map(|x| x.overlap(Window::new(s, e))).sum();
            if ns > 0 {
                tally(&mut self.late_reasons, r, ns);
            }
        }
    }

    pub fn finish(mut self, checkpoint: CheckpointIo) -> DeviceResult {
        let Window { start_ns: w0, end_ns: w1 } = self.plan.window;
        close_gap(&mut self.gaps, std::mem::take(&mut self.gap));
        let account = DeviceAccount {
            pid: self.plan.pid,
            device: self.plan.device,
            window_start_ns: w0,
            window_end_ns: w1,
            busy_ns: self.busy,
            categories: Categories { ns: round_to_total(self.acc.categories(), w1.saturating_sub(w0)) },
            flop_source: self.plan.flop_source,
        };
        if !self.plan.detail {
            return DeviceResult { account, detail: DeviceDetail::default(), late_activity: None };
        }
        let top_idle_gaps = self
            .gaps
            .into_iter()
            .map(|g| {
                let cat = (0..3).max_by(|&i, &j| g.split[i].total_cmp(&g.split[j])).unwrap_or(2);
                let (category, reason) = match cat {
                    0 => (Category::IdleLaunchBound.name(), "on-CPU"),
                    1 => (
                        Category::IdleHostStall.name(),
                        g.reasons.iter().max_by_key(|x| x.1).map_or("off-CPU", |x| x.0),
                    ),
                    _ => (Category::IdleOther.name(), "no launching thread seen"),
                };
                IdleGap { start_ns: g.start, end_ns: g.end, category, reason }
            })
            .collect();
        let mut top: Vec<KernelStat> = self
            .kernels
            .into_values()
            .map(|(mut s, useful)| {
                s.useful_ns = (useful as f64 / FIXED_ONE).round() as u64;
                s
            })
            .collect();
        top.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.name_id.cmp(&b.name_id)));
        let kernels = top.clone();
        top.truncate(10);
        let late_total: u64 = self.plan.late_windows.iter().map(|x| x.overlap(self.plan.window)).sum();
        let activity =
            (late_total > 0).then(|| describe(late_total, self.late_busy, self.late_blocked, self.late_reasons));
        let detail = DeviceDetail {
            step_source: self.plan.step_source,
            steps: self.steps.finish(),
            bin_ns: self.plan.bin_ns,
            bins: self.bins.finish(),
            top_kernels: top,
            kernels,
            top_idle_gaps,
            checkpoint,
            notes: self.plan.notes,
        };
        DeviceResult { account, detail, late_activity: activity }
    }
}

/// "GPU busy 97%; host on-CPU 70%, blocked 30% (futex 30%)": the reasons of blocked time can
/// overlap (an off-CPU wait inside a synchronizing call counts for both).
fn describe(total: u64, busy: u64, blocked: u64, mut reasons: Vec<(&'static str, u64)>) -> String {
    let blocked = blocked.min(total);
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let pct = |ns: u64| ns as f64 * 100.0 / total as f64;
    let why: Vec<String> =
        reasons.iter().filter(|x| pct(x.1) >= 0.5).map(|x| format!("{} {:.0}%", x.0, pct(x.1))).collect();
    let mut host = format!("on-CPU {:.0}%", pct(total - blocked));
    if blocked > 0 {
        host.push_str(&format!(", blocked {:.0}%", pct(blocked)));
        if !why.is_empty() {
            host.push_str(&format!(" ({})", why.join(", ")));
        }
    }
    format!("GPU busy {:.0}%; host {host}", pct(busy))
}

/// Keeps the 10 longest gaps, longest first.
fn close_gap(gaps: &mut Vec<OpenGap>, gap: OpenGap) {
    let len = gap.end - gap.start;
    if len == 0 {
        return;
    }
    if gaps.len() == 10 && gaps.last().is_some_and(|g| g.end - g.start >= len) {
        return;
    }
    let at = gaps.partition_point(|g| g.end - g.start >= len);
    gaps.insert(at, gap);
    gaps.truncate(10);
}

/// Whether an op adds whole ns: not compute, or compute at rate 0 or (capped) 1.
fn integral_rate(o: &Op) -> bool {
    o.class != Class::Compute || o.rate() == 0.0 || o.rate() >= 1.0
}

/// Whether the ops of `ops` (sorted by start) that are not collectives, clamped to [a, b),
/// each end before (or where) the next starts, none backwards. (Collectives may overlap them:
/// their starts, transfer starts and ends are side cuts, so the walk knows which cover a
/// segment.)
fn one_at_a_time(ops: &[Op], a: u64, b: u64) -> bool {
    let mut last_end = a;
    for o in ops.iter().filter(|o| o.class != Class::Comm) {
        let (s, e) = (o.start.clamp(a, b), o.end.clamp(a, b));
        if s < last_end || e < s {
            return false;
        }
        last_end = e;
    }
    true
}

/// The collectives covering the segment starting at `x`, kept as the walk goes: `comms` are
/// the slice's collectives in start order; their boundaries are side cuts, so what covers a
/// segment's start covers all of it.
struct CommCover<'o> {
    comms: Vec<&'o Op>,
    next: usize,
    active: Vec<&'o Op>,
    /// the earliest end among `active`
    min_end: u64,
}

impl<'o> CommCover<'o> {
    fn new(ops: &'o [Op]) -> Self {
        let comms = ops.iter().filter(|o| o.class == Class::Comm).collect();
        CommCover { comms, next: 0, active: Vec::new(), min_end: u64::MAX }
    }

    /// The collectives covering [x, …) (x no earlier than the previous call's).
    #[inline]
    fn at(&mut self, x: u64) -> &[&'o Op] {
        while self.next < self.comms.len() && self.comms[self.next].start <= x {
            let o = self.comms[self.next];
            self.active.push(o);
            self.min_end = self.min_end.min(o.end);
            self.next += 1;
        }
        self.active.retain(|o| o.end > x);
        &self.active
    }
}

/// A cursor over sorted, disjoint blocked intervals, for segments that come in time order.
#[derive(Default)]
struct BlockedCursor {
    at: usize,
}

impl BlockedCursor {
    /// Length of [x, y) covered by `blocked` (x no earlier than the previous call's).
    #[inline]
    fn overlap(&mut self, blocked: &[(u64, u64)], x: u64, y: u64) -> u64 {
        while self.at < blocked.len() && blocked[self.at].1 <= x {
            self.at += 1;
        }
        blocked[self.at..].iter().take_while(|iv| iv.0 < y).map(|iv| iv.1.min(y).saturating_sub(iv.0.max(x))).sum()
    }
}

/// Length of [a, b) covered by sorted, disjoint `intervals`.
#[cfg(test)]
fn overlap(intervals: &[(u64, u64)], a: u64, b: u64) -> u64 {
    let i = intervals.partition_point(|iv| iv.1 <= a);
    intervals[i..].iter().take_while(|iv| iv.0 < b).map(|iv| iv.1.min(b).saturating_sub(iv.0.max(a))).sum()
}

/// Stable sort of `v` by `key` when few elements are out of place (a collective stream's ops
/// among another stream's): each element below the largest key kept before it is taken out
/// (into `buf`), those are sorted, and merged back, the kept first on equal keys — an element
/// is taken out only after a larger key, so every kept one with its key came before it: the
/// order of a stable sort. False (nothing changed) when more than an eighth would move.
fn sort_displaced<T: Copy, K: Ord>(v: &mut [T], buf: &mut Vec<T>, key: &impl Fn(&T) -> K) -> bool {
    let n = v.len();
    let mut displaced = 0usize;
    let mut max: Option<K> = None;
    for x in v.iter() {
        let k = key(x);
        if max.as_ref().is_some_and(|m| k < *m) {
            displaced += 1;
            if displaced > n / 8 {
                return false;
            }
        } else {
            max = Some(k);
        }
    }
    buf.clear();
    let mut kept = 0usize;
    let mut max: Option<K> = None;
    for i in 0..n {
        let k = key(&v[i]);
        if max.as_ref().is_some_and(|m| k < *m) {
            buf.push(v[i]);
        } else {
            v[kept] = v[i];
            kept += 1;
            max = Some(k);
        }
    }
    buf.sort_by_key(key);
    let (mut i, mut j, mut out) = (kept, buf.len(), n);
    while j > 0 {
        out -= 1;
        if i > 0 && key(&v[i - 1]) > key(&buf[j - 1]) {
            v[out] = v[i - 1];
            i -= 1;
        } else {
            v[out] = buf[j - 1];
            j -= 1;
        }
    }
    true
}

/// Stable sort of `v` by `key`, for slices made of a few sorted runs: each run is merged into
/// the sorted prefix through `buf` (reused). More than `MAX_RUNS` runs: the library's sort.
pub fn sort_runs<T: Copy, K: Ord>(v: &mut [T], buf: &mut Vec<T>, key: impl Fn(&T) -> K) {
    const MAX_RUNS: usize = 4;
    let descents = v.windows(2).filter(|w| key(&w[1]) < key(&w[0])).take(MAX_RUNS).count();
    if descents == 0 {
        return;
    }
    if descents >= MAX_RUNS {
        if !sort_displaced(v, buf, &key) {
            v.sort_by_key(key);
        }
        return;
    }
    let n = v.len();
    let mut sorted = 1;
    while sorted < n && key(&v[sorted]) >= key(&v[sorted - 1]) {
        sorted += 1;
    }
    while sorted < n {
        let mut end = sorted + 1;
        while end < n && key(&v[end]) >= key(&v[end - 1]) {
            end += 1;
        }
        // Merge v[from..sorted] (the sorted prefix's tail past the run's first key) with
        // v[sorted..end]; on equal keys the earlier element goes first.
        let first = key(&v[sorted]);
        let from = v[..sorted].partition_point(|x| key(x) <= first);
        if end - sorted < sorted - from {
            // The run is the shorter: it goes through the buffer, merged from the back.
            buf.clear();
            buf.extend_from_slice(&v[sorted..end]);
            let (mut i, mut j, mut out) = (sorted, buf.len(), end);
            while i > from && j > 0 {
                out -= 1;
                // on equal keys the later (run) element goes last
                if key(&buf[j - 1]) < key(&v[i - 1]) {
                    v[out] = v[i - 1];
                    i -= 1;
                } else {
                    v[out] = buf[j - 1];
                    j -= 1;
                }
            }
            while j > 0 {
                out -= 1;
                v[out] = buf[j - 1];
                j -= 1;
            }
            sorted = end;
            continue;
        }
        buf.clear();
        buf.extend_from_slice(&v[from..sorted]);
        let (mut i, mut j, mut out) = (0usize, sorted, from);
        while i < buf.len() && j < end {
            if key(&v[j]) < key(&buf[i]) {
                v[out] = v[j];
                j += 1;
            } else {
                v[out] = buf[i];
                i += 1;
            }
            out += 1;
        }
        while i < buf.len() {
            v[out] = buf[i];
            i += 1;
            out += 1;
        }
        sorted = end;
    }
}

/// The sweep as it was before the merged streams, kept to check [`DeviceSweep::feed`]
/// against: every cut in one sorted vector, the started ops pruned at every segment.
#[cfg(test)]
impl DeviceSweep {
    fn feed_reference(&mut self, a: u64, b: u64, ops: &mut [Op], blocked: &[(u64, u64)], reasons: &[Reasoned]) {
        let Some((a, b)) = self.prepare(a, b, ops, blocked, reasons) else { return };
        let mut cuts = vec![a];
        for o in ops.iter().filter(|o| o.class != Class::Comm) {
            cuts.extend([o.start.clamp(a, b), o.end.clamp(a, b)]);
        }
        cuts.extend_from_slice(&self.side_cuts);
        cuts.sort_unstable();
        cuts.dedup();
        ops.sort_by_key(|o| o.start);
        let mut active: Vec<usize> = Vec::new();
        let mut next = 0usize;
        for pair in cuts.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            while next < ops.len() && ops[next].start <= a {
                active.push(next);
                next += 1;
            }
            active.retain(|&i| ops[i].end > a);
            self.segment(a, b, active.iter().map(|&i| &ops[i]), reasons, &mut |a, b| overlap(blocked, a, b));
        }
    }

    /// Everything the sweep has added up, floats as bits.
    fn state(&self) -> String {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let sums = |a: &Sums| (bits(&a.ns), a.useful);
        let parts = |p: &Partitions| p.acc.iter().map(sums).zip(p.busy.clone()).collect::<Vec<_>>();
        let gap = |g: &OpenGap| (g.start, g.end, bits(&g.split), g.reasons.clone());
        let kernels: Vec<_> = self.kernels.values().map(|(k, u)| (k.clone(), *u)).collect();
        format!(
            "{:?}",
            (
                sums(&self.acc),
                self.busy,
                parts(&self.steps),
                parts(&self.bins),
                self.gaps.iter().map(gap).collect::<Vec<_>>(),
                gap(&self.gap),
                format!("{kernels:?}"),
                (self.late_busy, &self.late_reasons, self.late_blocked),
            )
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_of_fractional_useful_time_do_not_depend_on_the_order() {
        // Compute segments at rate 0.1 (each 0.1 × 1, 3, 7 … ns useful), added in time order and
        // as two spans added up: the same bits, where plain f64 sums differ in the last bit.
        let segs: Vec<(f64, f64)> = (0..40).map(|i| (0.1 + i as f64 * 0.013, (1 + 2 * i) as f64)).collect();
        let add = |acc: &mut Sums, &(rate, dt): &(f64, f64)| {
            Seg([(Category::ComputeInefficient.index(), dt), (Category::ComputeUseful.index(), 0.0)], fixed(rate * dt))
                .add_to(acc)
        };
        let mut one = Sums::default();
        segs.iter().for_each(|s| add(&mut one, s));
        let (mut a, mut b) = (Sums::default(), Sums::default());
        segs[..17].iter().for_each(|s| add(&mut a, s));
        segs[17..].iter().for_each(|s| add(&mut b, s));
        a.add(&b);
        assert_eq!(one.categories().map(f64::to_bits), a.categories().map(f64::to_bits));
        let total: f64 = segs.iter().map(|&(_, dt)| dt).sum();
        let c = one.categories();
        assert_eq!(c[Category::ComputeInefficient.index()] + c[Category::ComputeUseful.index()], total);
        // (what the f64 sums did: order-dependent)
        let f = |v: &[(f64, f64)]| v.iter().fold(0.0, |acc, &(r, dt)| acc + r * dt);
        let halves = f(&segs[..17]) + f(&segs[17..]);
        assert_ne!(f(&segs).to_bits(), halves.to_bits(), "these amounts round differently in two orders as f64");
    }

    #[test]
    fn sort_displaced_is_the_stable_sort() {
        let mut seed = 3u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n.max(1)
        };
        let mut buf = Vec::new();
        let mut moved = 0;
        for case in 0..500 {
            // one sorted stream with a few elements of another dropped in (and equal keys)
            let n = 1 + next(300) as usize;
            let mut keys: Vec<u64> = (0..n as u64).map(|i| i * 3 + next(3)).collect();
            // mostly a little later than their place, past one or two (a collective starting after the next
            // kernels), sometimes anywhere (then often refused: all after it would move)
            for _ in 0..next(1 + n as u64 / 12) {
                let at = next(n as u64) as usize;
                keys[at] = if case % 5 == 0 { next(3 * n as u64) } else { keys[at] + next(7) };
            }
            if case % 7 == 0 {
                keys.reverse();
            }
            let mut v: Vec<(u64, usize)> = keys.iter().copied().zip(0..).collect();
            let mut want = v.clone();
            want.sort_by_key(|x| x.0);
            if sort_displaced(&mut v, &mut buf, &|x: &(u64, usize)| x.0) {
                moved += 1;
                assert_eq!(v, want, "case {case}");
            } else {
                assert_eq!(v, keys.iter().copied().zip(0..).collect::<Vec<_>>(), "unchanged when refused");
            }
        }
        assert!(moved > 300, "{moved} of 500 sorted this way");
    }

    #[test]
    fn sort_runs_is_the_stable_sort() {
        // (key, position): a stable sort keeps positions increasing among equal keys.
        let mut seed = 1u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        let mut buf = Vec::new();
        for case in 0..400 {
            let n = (next() % 200) as usize;
            let mut keys: Vec<u64> = (0..n).map(|_| next() % 50).collect();
            // mostly sorted runs (few descents), sometimes many
            let runs = 1 + (case % 7);
            for chunk in keys.chunks_mut(n / runs + 1) {
                if case % 5 != 0 {
                    chunk.sort_unstable();
                }
            }
            let mut v: Vec<(u64, usize)> = keys.iter().copied().zip(0..).collect();
            let mut want = v.clone();
            want.sort_by_key(|x| x.0);
            sort_runs(&mut v, &mut buf, |x| x.0);
            assert_eq!(v, want, "case {case}");
        }
    }

    /// The merged-stream sweep equals the sort-every-cut sweep bit for bit (every float sum,
    /// in the same order) on random slices of random ops: overlapping kernels and copies,
    /// collectives with transfer points (some past their end), zero-length and backwards ops,
    /// fractional compute rates, steps, bins, late windows and blocked intervals.
    #[test]
    fn ops_are_32_bytes() {
        assert_eq!(std::mem::size_of::<Op>(), 32);
        let comm = Op::new(1, 9, Class::Comm, 0.0, 4, 7, true);
        assert_eq!((comm.rate(), comm.transfer_from()), (0.0, 4));
        let compute = Op::new(1, 9, Class::Compute, 0.25, 0, 7, true);
        assert_eq!((compute.rate(), compute.transfer_from()), (0.25, 0));
    }

    #[test]
    fn merged_sweep_equals_the_reference_sweep() {
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n.max(1)
        };
        // slices swept by walking the ops in turn (the rest by merging the cut streams)
        let (mut walked, mut summed, mut with_comm) = (0, 0, 0);
        for case in 0..300u64 {
            let span = 1 + next(100_000);
            let w = (1_000 + next(1_000), 1_000 + span + next(2_000));
            let mut plan = DevicePlan::totals_only(1, 0, Window::new(w.0, w.1), FlopSource::PmSampling);
            plan.detail = case % 4 != 3;
            plan.has_launcher = case % 5 != 4;
            plan.bin_ns = [0, 1 + next(span), 1 + next(span / 10 + 1)][case as usize % 3];
            let mut t = w.0.saturating_sub(next(500));
            while t < w.1 && plan.steps.len() < 20 {
                let len = 1 + next(span / 4 + 1);
                plan.steps.push((t, t + len));
                t += len + next(span / 8 + 1);
            }
            let mut t = w.0;
            for _ in 0..next(6) {
                let s = t + next(span / 3 + 1);
                plan.late_windows.push(Window::new(s, s + 1 + next(span / 5 + 1)));
                t = s + 1 + next(span / 5 + 1) + 1;
            }
            // how many streams overlap; every other case without collectives
            let kinds = if case % 4 < 2 { 1 } else { 1 + next(3) };
            let comm = if case % 2 == 0 { 6 } else { 1 };
            let mut ops: Vec<Op> = Vec::new();
            let mut ends = vec![w.0.saturating_sub(next(300)); kinds as usize];
            for n in 0..next(300) {
                let s = (n % kinds) as usize;
                let start = ends[s] + next(span / 50 + 1);
                let len = if next(20) == 0 { 0 } else { next(span / 20 + 1) };
                let end = if next(400) == 0 { start.saturating_sub(next(100)) } else { start + len };
                ends[s] = end.max(start);
                let op = match next(6) {
                    0 => DevicePlan::copy_op(start, end),
                    n if n == comm => {
                        let wait = next(len + 2);
                        Op::new(start, end, Class::Comm, 0.0, start + wait, 0, false)
                    }
                    2 => Op::new(start, end, Class::Other, 0.0, 0, next(5) as u32, true),
                    _ => {
                        let rate = if case % 8 < 4 {
                            [0.0, 1.0, 2.0][next(3) as usize]
                        } else {
                            [0.0, 0.25, 1.0 / 3.0, 0.7, 0.9][next(5) as usize]
                        };
                        Op::new(start, end, Class::Compute, rate, 0, next(5) as u32, true)
                    }
                };
                ops.push(op);
            }
            if case % 3 == 0 {
                ops.sort_by_key(|o| o.start);
            }
            let mut reasons: Vec<Reasoned> = Vec::new();
            let mut t = w.0.saturating_sub(next(1_000));
            while t < w.1 + 1_000 && reasons.len() < 40 {
                let s = t + next(span / 10 + 1);
                let e = s + next(span / 10 + 1);
                reasons.push(Reasoned::new(s, e, ["futex", "io", "sync call"][next(3) as usize]));
                t = s + next(span / 20 + 1);
            }
            reasons.sort_by_key(|x| (x.start_ns, x.end_ns));
            let blocked = super::super::inputs::merge(reasons.iter().map(|x| (x.start_ns, x.end_ns)));
            let mut fast = DeviceSweep::new(DevicePlan { ..clone_plan(&plan) });
            let mut slow = DeviceSweep::new(plan);
            // Slices as the streaming sweep cuts them: ops reach the slice they start in and
            // stay while they overlap.
            let mut cuts: Vec<u64> = (0..next(5)).map(|_| w.0 + next(span + 1)).collect();
            cuts.extend([0, u64::MAX]);
            cuts.sort_unstable();
            cuts.dedup();
            let (mut carry_fast, mut carry_slow) = (Vec::new(), Vec::new());
            for pair in cuts.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                for o in ops.iter().filter(|o| o.start >= a && o.start < b) {
                    carry_fast.push(*o);
                    carry_slow.push(*o);
                }
                let mut sorted = carry_fast.clone();
                sorted.sort_by_key(|o| o.start);
                let (ca, cb) = (a.max(w.0), b.min(w.1));
                let walk = ca < cb && one_at_a_time(&sorted, ca, cb);
                walked += walk as usize;
                summed += (walk && fast.integral && sorted.iter().all(integral_rate)) as usize;
                with_comm +=
                    (walk && sorted.iter().any(|o| o.class == Class::Comm && o.end > ca && o.start < cb)) as usize;
                fast.feed(a, b, &mut carry_fast, &blocked, &reasons);
                slow.feed_reference(a, b, &mut carry_slow, &blocked, &reasons);
                carry_fast.retain(|o| o.end > b);
                carry_slow.retain(|o| o.end > b);
                assert_eq!(fast.state(), slow.state(), "case {case}, slice {a}..{b}");
            }
        }
        assert!(
            walked > 100 && summed > 50 && with_comm > 30,
            "{walked} slices walked, {summed} of them summed in integers, {with_comm} under collectives"
        );
    }

    fn clone_plan(p: &DevicePlan) -> DevicePlan {
        DevicePlan {
            pid: p.pid,
            device: p.device,
            window: p.window,
            flop_source: p.flop_source,
            fractions: p.fractions.clone(),
            flop_less_below: p.flop_less_below,
            step_source: p.step_source,
            steps: p.steps.clone(),
            step_rates: p.step_rates.clone(),
            bin_ns: p.bin_ns,
            has_launcher: p.has_launcher,
            late_windows: p.late_windows.clone(),
            detail: p.detail,
            notes: p.notes.clone(),
        }
    }
}
