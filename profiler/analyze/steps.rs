//! Training steps of one device, best source first (the order is `plan`'s): NVTX
//! ranges recorded by CUPTI (step markers), a user regex on kernel names (a step starts at each
//! matching kernel), a detected period of the kernel-name sequence, else none. Steps are sorted, disjoint and inside the
//! window; a step that starts at a kernel runs until the next one starts (the last one until
//! the window ends).

use std::collections::HashMap;

use super::flops::KernelSpan;
use super::model::Window;

/// NVTX ranges as steps: ranges named like a step (`step` in the name, any case) when there
/// are any, else the most frequent range name; sorted, clipped to the window, overlaps cut.
pub fn nvtx_steps(markers: &[(u64, u64, u32)], names: &HashMap<u32, String>, window: Window) -> Vec<(u64, u64)> {
    if markers.is_empty() {
        return Vec::new();
    }
    let is_step = |id: u32| names.get(&id).is_some_and(|n| n.to_ascii_lowercase().contains("step"));
    let chosen: Vec<(u64, u64)> = if markers.iter().any(|m| is_step(m.2)) {
        markers.iter().filter(|m| is_step(m.2)).map(|m| (m.0, m.1)).collect()
    } else {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for m in markers {
            *counts.entry(m.2).or_default() += 1;
        }
        let top = counts.into_iter().max_by_key(|(id, n)| (*n, std::cmp::Reverse(*id))).map(|x| x.0);
        markers.iter().filter(|m| Some(m.2) == top).map(|m| (m.0, m.1)).collect()
    };
    normalize(chosen, window)
}

/// Sorts, clips to the window, cuts overlaps (a step starts no earlier than the previous
/// one's end) and drops empty steps.
pub fn normalize(mut spans: Vec<(u64, u64)>, window: Window) -> Vec<(u64, u64)> {
    let Window { start_ns: w0, end_ns: w1 } = window;
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        let s = s.max(w0).max(out.last().map_or(0, |l| l.1));
        let e = e.min(w1);
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// Steps that start at each of `starts` and run to the next start (the last to the window end).
pub fn steps_from_starts(starts: &[u64], window: Window) -> Vec<(u64, u64)> {
    let mut s: Vec<u64> = starts.iter().copied().filter(|t| window.contains(*t)).collect();
    s.sort_unstable();
    s.dedup();
    let spans = s.iter().enumerate().map(|(i, &t)| (t, s.get(i + 1).copied().unwrap_or(window.end_ns))).collect();
    normalize(spans, window)
}

/// Idle time before each kernel (its start minus the latest end of the kernels before it).
fn kernel_gaps(kernels: &[KernelSpan]) -> Vec<u64> {
    let mut latest = 0u64;
    kernels
        .iter()
        .map(|k| {
            let gap = k.start.saturating_sub(latest);
            latest = latest.max(k.end);
            gap
        })
        .collect()
}

/// Periodicity is looked for in the first this many compute kernels of a device.
pub const PERIOD_PROBE: usize = 50_000;

/// The kernel a periodic sequence's steps start at: every `every`-th launch of `name`, from
/// the one that started at `first_start`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodicAnchor {
    /// The kernel name's id.
    pub name: u32,
    /// Start of the first launch a step starts at, ns.
    pub first_start: u64,
    /// Launches of `name` per step.
    pub every: usize,
}

/// The step anchor of the first compute kernels of a device (sorted by start), if they repeat.
pub fn periodic_anchor(prefix: &[KernelSpan]) -> Option<PeriodicAnchor> {
    let seq: Vec<u32> = prefix.iter().map(|k| k.name).collect();
    let (period, phase) = period_and_phase(&seq, &kernel_gaps(prefix))?;
    let name = seq[phase];
    let every = seq[phase..phase + period].iter().filter(|&&n| n == name).count();
    Some(PeriodicAnchor { name, first_start: prefix[phase].start, every })
}

/// Steps from every launch start of the anchor's kernel name (any order).
pub fn anchor_steps(anchor: &PeriodicAnchor, mut starts: Vec<u64>, window: Window) -> Vec<(u64, u64)> {
    starts.sort_unstable();
    let first = starts.partition_point(|&t| t < anchor.first_start);
    let picked: Vec<u64> = starts[first..].iter().step_by(anchor.every.max(1)).copied().collect();
    steps_from_starts(&picked, window)
}

/// The period and phase of a kernel-name sequence, or None if it has no period (at least 3
/// repeats, ≥ 95 % of names equal one period later). Candidate periods are the distances
/// between consecutive launches of one name; of those that pass, the one whose repeats agree
/// best wins (the shortest of those within 0.2 % of the best: a step's multiples agree as well). The phase is the
/// position in the period with the most idle time before it, summed over the repeats (a step
/// usually begins after the host's data loading).
pub fn period_and_phase(seq: &[u32], gaps: &[u64]) -> Option<(usize, usize)> {
    let n = seq.len();
    if n < 6 {
        return None;
    }
    let mut last: HashMap<u32, usize> = HashMap::new();
    let mut candidates: Vec<usize> = Vec::new();
    for (i, &name) in seq.iter().enumerate() {
        if let Some(prev) = last.insert(name, i) {
            candidates.push(i - prev);
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    // Every candidate that passes, with how well its repeats agree: the step is the period that
    // agrees best (a model's layers repeat too, but the step boundary breaks their period: 96 %
    // where the step's own period gives 100 %); among periods as good (within 0.2 %: the
    // step's multiples), the shortest.
    let passing: Vec<(usize, f64)> = candidates
        .into_iter()
        .filter(|&p| p >= 1 && 3 * p <= n)
        .take(400)
        .map(|p| (p, (0..n - p).filter(|&i| seq[i] == seq[i + p]).count() as f64 / (n - p) as f64))
        .filter(|&(_, agree)| agree >= 0.95)
        .collect();
    let best = passing.iter().map(|x| x.1).fold(f64::NAN, f64::max);
    let period = passing.iter().find(|x| x.1 >= best - 0.002)?.0;
    let mut idle_at = vec![0u128; period];
    for (i, &g) in gaps.iter().enumerate().skip(1) {
        // (position 0's first gap is the time before the trace's first kernel)
        idle_at[i % period] += g as u128;
    }
    let phase = (0..period).max_by_key(|&i| (idle_at[i], std::cmp::Reverse(i)))?;
    Some((period, phase))
}

/// Compute time of each step: the durations of the kernels that start in it.
pub fn compute_per_step(steps: &[(u64, u64)], kernels: impl Iterator<Item = (u64, u64)>) -> Vec<u64> {
    let mut busy = vec![0u64; steps.len()];
    for (start, end) in kernels {
        let i = steps.partition_point(|s| s.1 <= start);
        if steps.get(i).is_some_and(|s| s.0 <= start) {
            busy[i] += end.saturating_sub(start);
        }
    }
    busy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_and_phase_of_a_repeated_sequence() {
        // 5 repeats of [a b c b d]; the idle time comes before `a` (position 0 of each step),
        // but the trace starts mid-step at `c`.
        let step = [1u32, 2, 3, 2, 4];
        let seq: Vec<u32> = step.iter().cycle().skip(2).take(23).copied().collect();
        let gaps: Vec<u64> = seq.iter().map(|&n| if n == 1 { 1000 } else { 10 }).collect();
        assert_eq!(period_and_phase(&seq, &gaps), Some((5, 3)));
        assert!(period_and_phase(&[1, 2, 3, 4, 5, 6, 7, 8], &[0; 8]).is_none());
    }

    #[test]
    fn the_step_wins_over_the_layers_inside_it() {
        // A step: 40 forward layers (kernels 1 2 3), 40 backward layers (4 5 6), the optimizer
        // (7); 5 steps. The layers' period 3 agrees 96 % of the time (the step breaks it);
        // the step's 241 agrees always, and so do its multiples.
        let step: Vec<u32> = [1u32, 2, 3].repeat(40).into_iter().chain([4u32, 5, 6].repeat(40)).chain([7]).collect();
        let seq: Vec<u32> = step.iter().cycle().take(5 * step.len()).copied().collect();
        let gaps: Vec<u64> = seq.iter().map(|&n| if n == 1 { 10 } else { 1 }).collect();
        let three = (0..seq.len() - 3).filter(|&i| seq[i] == seq[i + 3]).count() as f64 / (seq.len() - 3) as f64;
        assert!(three >= 0.95, "the layers pass on their own: {three}");
        assert_eq!(period_and_phase(&seq, &gaps).map(|x| x.0), Some(241));
    }

    #[test]
    fn overlapping_ranges_are_cut_and_clipped() {
        let spans = normalize(vec![(50, 120), (0, 60), (110, 130), (200, 300)], Window::new(10, 250));
        assert_eq!(spans, vec![(10, 60), (60, 120), (120, 130), (200, 250)]);
    }
}
