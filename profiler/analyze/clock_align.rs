//! Clock alignment of trace files recorded on different hosts, from the work itself. The ranks
//! of one collective finish together (the last arrival releases them all), so the collective
//! kernels' end times, matched across files by (communicator, size, sequence number) as
//! [`super::collectives`] matches them, are one instant seen by every host's clock. Each file's
//! clock is fitted against a reference file's (the first given): an offset and a drift, by a
//! robust fit ([`robust_fit`]: a median-of-slopes start, a MAD cut of the outliers — a rank
//! preempted at the end —, then least squares on the inliers), with its residual.
//!
//! [`align`] chooses the alignment: collectives when the files come from different hosts (their
//! headers' `host_id`) or when asked; CLOCK_REALTIME otherwise, or with a warning when too few
//! collectives were matched (docs/metrics.md, "Clock alignment").

use std::collections::BTreeMap;

use super::collectives::{ClockMap, RankInput};

/// Fewest matched collectives (with kernels) a file needs to be aligned by them.
pub const MIN_MATCHED: usize = 8;
/// Largest drift believed, as a fraction (quartz clocks stay within ~100 ppm).
const MAX_DRIFT: f64 = 500e-6;
/// Floor of the outlier cut, ns: the ends of one collective differ by a few µs.
const CUT_FLOOR_NS: f64 = 2_000.0;

/// How the files were put on one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockChoice {
    /// Collectives when the files come from different hosts, else CLOCK_REALTIME.
    #[default]
    Auto,
    /// CLOCK_REALTIME as each trace recorded it.
    Realtime,
    /// The collectives' end times.
    Collectives,
}

/// The alignment used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockMethod {
    /// The files' own CLOCK_MONOTONIC (one file, or a file without a realtime mapping).
    #[default]
    Monotonic,
    /// CLOCK_REALTIME (NTP across hosts).
    Realtime,
    /// The collectives' end times.
    Collectives,
}

impl ClockMethod {
    /// The name the report prints: `monotonic`, `realtime` or `collectives`.
    pub fn name(self) -> &'static str {
        match self {
            ClockMethod::Monotonic => "monotonic",
            ClockMethod::Realtime => "realtime",
            ClockMethod::Collectives => "collectives",
        }
    }
}

/// One file's clock on the common timeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileClock {
    /// How the files were aligned (the same for every file of one analysis).
    pub method: ClockMethod,
    /// Own clock → common clock.
    pub map: ClockMap,
    /// With [`ClockMethod::Collectives`]: collectives matched with the reference file.
    pub matched: u64,
    /// Of those, left out of the fit as outliers.
    pub outliers: u64,
    /// Root mean square of the inliers' residuals, ns (0 for the reference file).
    pub residual_ns: f64,
    /// Whether this is the reference file (its map is the identity).
    pub reference: bool,
}

/// A line fitted to points `(x, y)`: `y ≈ offset + slope × (x − anchor)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// At `anchor`.
    pub offset: f64,
    /// dy/dx.
    pub slope: f64,
    /// The x the offset holds at (the points' median x).
    pub anchor: u64,
    /// Root mean square of the inliers' residuals.
    pub residual: f64,
    /// Points kept.
    pub inliers: usize,
    /// Points left out (beyond the MAD cut).
    pub outliers: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A robust line through `points` (x, y): the slope starts as the median of the slopes between
/// each point and the one half the points later (in x order), the offset as the median of what
/// is left; points further than 4 × 1.4826 × MAD (at least [`CUT_FLOOR_NS`]) from that line are
/// outliers; least squares on the rest gives the line. Without a spread in x the slope is 0.
/// None without points.
pub fn robust_fit(points: &[(u64, f64)]) -> Option<Fit> {
    if points.is_empty() {
        return None;
    }
    let mut pts: Vec<(u64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
    if pts.is_empty() {
        return None;
    }
    pts.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let anchor = pts[pts.len() / 2].0;
    let x = |p: &(u64, f64)| p.0 as f64 - anchor as f64;
    let half = pts.len() / 2;
    let mut slopes: Vec<f64> = (0..pts.len() - half)
        .filter_map(|i| {
            let (a, b) = (&pts[i], &pts[i + half]);
            let dx = x(b) - x(a);
            (dx > 0.0).then(|| (b.1 - a.1) / dx)
        })
        .collect();
    let mut slope = if slopes.is_empty() { 0.0 } else { median(&mut slopes) };
    let mut rest: Vec<f64> = pts.iter().map(|p| p.1 - slope * x(p)).collect();
    let mut offset = median(&mut rest);
    let mut dev: Vec<f64> = pts.iter().map(|p| (p.1 - offset - slope * x(p)).abs()).collect();
    let cut = (4.0 * 1.4826 * median(&mut dev)).max(CUT_FLOOR_NS);
    let inliers: Vec<&(u64, f64)> = pts.iter().filter(|p| (p.1 - offset - slope * x(p)).abs() <= cut).collect();
    let n = inliers.len() as f64;
    let mx = inliers.iter().map(|p| x(p)).sum::<f64>() / n;
    let my = inliers.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = inliers.iter().map(|p| (x(p) - mx).powi(2)).sum();
    let sxy: f64 = inliers.iter().map(|p| (x(p) - mx) * (p.1 - my)).sum();
    if sxx > 0.0 {
        slope = sxy / sxx;
        offset = my - slope * mx;
    } else {
        slope = 0.0;
        offset = my;
    }
    let sq: f64 = inliers.iter().map(|p| (p.1 - offset - slope * x(p)).powi(2)).sum();
    Some(Fit {
        offset,
        slope,
        anchor,
        residual: (sq / n).sqrt(),
        inliers: inliers.len(),
        outliers: pts.len() - inliers.len(),
    })
}

/// A file for [`align`]: its ranks' collectives, its host and its realtime mapping.
pub struct AlignInput<'a> {
    /// The file's ranks.
    pub ranks: &'a [RankInput],
    /// The host identity in its header, if recorded.
    pub host_id: Option<&'a str>,
    /// CLOCK_MONOTONIC → CLOCK_REALTIME, if recorded.
    pub realtime_offset_ns: Option<i128>,
}

/// Each file's clock on the common timeline, and a warning when the alignment asked for (or
/// chosen) could not be made.
pub fn align(files: &[AlignInput<'_>], choice: ClockChoice) -> (Vec<FileClock>, Option<String>) {
    let realtime = files.len() > 1 && files.iter().all(|f| f.realtime_offset_ns.is_some());
    let fallback = || -> Vec<FileClock> {
        files
            .iter()
            .map(|f| FileClock {
                method: if realtime { ClockMethod::Realtime } else { ClockMethod::Monotonic },
                map: ClockMap::offset(if realtime { f.realtime_offset_ns.unwrap_or(0) } else { 0 }),
                ..FileClock::default()
            })
            .collect()
    };
    let mut hosts: Vec<&str> = files.iter().filter_map(|f| f.host_id).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let wanted = match choice {
        ClockChoice::Auto => files.len() > 1 && hosts.len() > 1,
        ClockChoice::Realtime => false,
        ClockChoice::Collectives => files.len() > 1,
    };
    if !wanted {
        return (fallback(), None);
    }
    match by_collectives(files) {
        Ok(clocks) => (clocks, None),
        Err(why) => {
            let used = if realtime {
                "CLOCK_REALTIME (NTP: its error can be as large as the skews)"
            } else {
                "each file's own clock"
            };
            (fallback(), Some(format!("clocks not aligned by collectives ({why}): using {used}")))
        }
    }
}

/// A collective: (communicator index, nranks, seq).
type CollKey = (u32, u32, u64);

/// The end time of each matched collective in each file: (communicator index, nranks, seq) →
/// per file the median end of its ranks' kernels. A collective counts only when all its ranks
/// are there with distinct rank numbers (as [`super::collectives::cross_rank`] matches them).
fn matched_ends(files: &[AlignInput<'_>]) -> BTreeMap<CollKey, BTreeMap<usize, u64>> {
    // per collective: (file, rank, kernel end)
    let mut members: BTreeMap<CollKey, Vec<(usize, u32, Option<u64>)>> = BTreeMap::new();
    for (f, file) in files.iter().enumerate() {
        for rank in file.ranks {
            for inst in &rank.instances {
                members.entry((inst.comm_index, inst.nranks, inst.seq)).or_default().push((
                    f,
                    inst.rank,
                    inst.kernel.map(|k| k.1),
                ));
            }
        }
    }
    let mut out = BTreeMap::new();
    for (key, mut m) in members {
        if key.1 < 2 || m.len() != key.1 as usize {
            continue;
        }
        m.sort_unstable_by_key(|x| x.1);
        if m.windows(2).any(|w| w[0].1 == w[1].1) {
            continue;
        }
        let mut per_file: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for (f, _, end) in m {
            if let Some(e) = end {
                per_file.entry(f).or_default().push(e);
            }
        }
        let ends: BTreeMap<usize, u64> = per_file
            .into_iter()
            .map(|(f, mut e)| {
                e.sort_unstable();
                (f, e[(e.len() - 1) / 2])
            })
            .collect();
        if ends.len() > 1 {
            out.insert(key, ends);
        }
    }
    out
}

/// Every file fitted against the first; Err says which file could not be.
fn by_collectives(files: &[AlignInput<'_>]) -> Result<Vec<FileClock>, String> {
    let ends = matched_ends(files);
    let mut clocks = vec![FileClock {
        method: ClockMethod::Collectives,
        reference: true,
        matched: ends.values().filter(|e| e.contains_key(&0)).count() as u64,
        ..FileClock::default()
    }];
    for f in 1..files.len() {
        let points: Vec<(u64, f64)> = ends
            .values()
            .filter_map(|e| Some((*e.get(&f)?, (*e.get(&0)? as i128 - *e.get(&f)? as i128) as f64)))
            .collect();
        if points.len() < MIN_MATCHED {
            return Err(format!(
                "file {} shares {} collectives with the first file, fewer than {MIN_MATCHED}",
                f + 1,
                points.len()
            ));
        }
        let fit = robust_fit(&points).ok_or_else(|| format!("file {}: no collective to fit", f + 1))?;
        if fit.inliers < MIN_MATCHED || fit.slope.abs() > MAX_DRIFT {
            return Err(format!(
                "file {}: {} of {} collectives agree, drift {:.0} ppm",
                f + 1,
                fit.inliers,
                points.len(),
                fit.slope * 1e6
            ));
        }
        clocks.push(FileClock {
            method: ClockMethod::Collectives,
            map: ClockMap { offset_ns: fit.offset.round() as i128, drift: fit.slope, anchor_ns: fit.anchor },
            matched: points.len() as u64,
            outliers: fit.outliers as u64,
            residual_ns: fit.residual,
            reference: false,
        });
    }
    Ok(clocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pseudo-random sequence (no dependency): xorshift.
    fn noise(seed: &mut u64) -> f64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % 2001) as f64 - 1000.0
    }

    #[test]
    fn fit_recovers_offset_and_drift_despite_outliers() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        // 400 collectives over 4 s, offset −37.2 ms and −20 ppm, ±1 µs noise; 40 preempted ends
        // (one rank's end 0.2–5 ms late).
        let points: Vec<(u64, f64)> = (0..400u64)
            .map(|i| {
                let x = 1_000_000_000_000 + i * 10_000_000;
                let mut y = -37_200_000.0 - 20e-6 * (x as f64 - 1_000_000_000_000.0) + noise(&mut seed);
                if i % 10 == 3 {
                    y -= 200_000.0 + (i as f64) * 10_000.0;
                }
                (x, y)
            })
            .collect();
        let fit = robust_fit(&points).unwrap();
        assert_eq!(fit.outliers, 40, "{fit:?}");
        assert_eq!(fit.inliers, 360);
        assert!((fit.slope - -20e-6).abs() < 0.2e-6, "{fit:?}");
        let at = |x: u64| fit.offset + fit.slope * (x as f64 - fit.anchor as f64);
        for x in [1_000_000_000_000u64, 1_002_000_000_000, 1_004_000_000_000] {
            let truth = -37_200_000.0 - 20e-6 * (x as f64 - 1_000_000_000_000.0);
            assert!((at(x) - truth).abs() < 500.0, "at {x}: {} vs {truth}", at(x));
        }
        // the noise is uniform in ±1 µs: RMS ≈ 577 ns
        assert!(fit.residual > 400.0 && fit.residual < 750.0, "{fit:?}");
    }

    #[test]
    fn fit_without_spread_or_points() {
        assert_eq!(robust_fit(&[]), None);
        let fit = robust_fit(&[(5, 10.0), (5, 12.0), (5, 11.0), (5, 900_000.0)]).unwrap();
        assert_eq!((fit.slope, fit.offset, fit.outliers), (0.0, 11.0, 1));
    }

    fn rank(pid: u32, r: u32, ends: impl Iterator<Item = u64>) -> RankInput {
        use super::super::collectives::CollInstance;
        RankInput {
            file: format!("f{pid}"),
            pid,
            instances: ends
                .enumerate()
                .map(|(seq, end)| CollInstance {
                    pid,
                    rank: r,
                    nranks: 2,
                    comm_index: 0,
                    seq: seq as u64,
                    op: 0,
                    size_bytes: 0,
                    arrival_ns: end - 1000,
                    kernel: Some((end - 1000, end)),
                    algo: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn align_by_host_and_fallback() {
        let a = [rank(1, 0, (0..20).map(|i| 1_000_000 + i * 1_000_000))];
        let b = [rank(2, 1, (0..20).map(|i| 1_000_000 + i * 1_000_000 + 37_200_000))];
        let input = |host_b| {
            [
                AlignInput { ranks: &a, host_id: Some("host-a"), realtime_offset_ns: Some(5) },
                AlignInput { ranks: &b, host_id: Some(host_b), realtime_offset_ns: Some(7) },
            ]
        };
        // one host: realtime, as before
        let (clocks, warn) = align(&input("host-a"), ClockChoice::Auto);
        assert_eq!((clocks[0].method, clocks[1].map.offset_ns, warn), (ClockMethod::Realtime, 7, None));
        // two hosts: collectives
        let (clocks, warn) = align(&input("host-b"), ClockChoice::Auto);
        assert_eq!(warn, None);
        assert_eq!(clocks[1].method, ClockMethod::Collectives);
        assert_eq!(clocks[1].map.apply(50_000_000), 50_000_000 - 37_200_000);
        assert_eq!(clocks[1].matched, 20);
        // forced realtime
        let (clocks, _) = align(&input("host-b"), ClockChoice::Realtime);
        assert_eq!(clocks[1].method, ClockMethod::Realtime);
        // too few collectives: realtime with a warning
        let (a, b) = (&a[0].instances[..5], &b[0].instances[..5]);
        let (ra, rb) = (
            [RankInput { file: "a".into(), pid: 1, instances: a.to_vec() }],
            [RankInput { file: "b".into(), pid: 2, instances: b.to_vec() }],
        );
        let few = [
            AlignInput { ranks: &ra, host_id: Some("host-a"), realtime_offset_ns: Some(5) },
            AlignInput { ranks: &rb, host_id: Some("host-b"), realtime_offset_ns: Some(7) },
        ];
        let (clocks, warn) = align(&few, ClockChoice::Auto);
        assert_eq!(clocks[1].method, ClockMethod::Realtime);
        assert!(warn.unwrap().contains("shares 5 collectives"));
    }
}
