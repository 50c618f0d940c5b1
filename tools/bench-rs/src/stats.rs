//! Statistics for benchmarks that compare modes over repeated runs: medians, and a percentile
//! bootstrap interval of the ratio of two medians (`tools/bench overhead`).
//!
//! The bootstrap resamples each sample with replacement, independently (the runs of two modes
//! are not paired), computes the ratio of the resampled medians, and takes the 2.5th and 97.5th
//! percentiles of those ratios. The generator is seeded, so a result is reproducible.

/// The median (mean of the two middle values for an even count); NaN for an empty sample.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    median_sorted(&s)
}

fn median_sorted(s: &[f64]) -> f64 {
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The `q`-quantile (0..=1) of a sorted sample, by linear interpolation between closest ranks.
fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// SplitMix64: small, fast, good enough to draw resampling indices, and fixed by its seed.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) (n > 0); the modulo bias is below 2^-50 for the sizes used here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    #[cfg(test)]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A ratio of medians with its bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatioCi {
    /// median(a) / median(b) of the samples themselves.
    pub ratio: f64,
    /// 2.5th percentile of the bootstrap ratios.
    pub lo: f64,
    /// 97.5th percentile of the bootstrap ratios.
    pub hi: f64,
}

/// median(a) / median(b) with a 95% percentile-bootstrap interval from `resamples` resamples
/// (each sample resampled with replacement, independently), drawn from `seed`. None when a
/// sample is empty or b's median is not positive.
pub fn ratio_of_medians_ci(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> Option<RatioCi> {
    let (ma, mb) = (median(a), median(b));
    if a.is_empty() || b.is_empty() || mb.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let mut rng = SplitMix64::new(seed);
    let (mut ra, mut rb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    let mut ratios = Vec::with_capacity(resamples.max(1));
    for _ in 0..resamples.max(1) {
        for x in ra.iter_mut() {
            *x = a[rng.below(a.len())];
        }
        for x in rb.iter_mut() {
            *x = b[rng.below(b.len())];
        }
        ra.sort_by(f64::total_cmp);
        rb.sort_by(f64::total_cmp);
        let den = median_sorted(&rb);
        if den > 0.0 {
            ratios.push(median_sorted(&ra) / den);
        }
    }
    ratios.sort_by(f64::total_cmp);
    Some(RatioCi { ratio: ma / mb, lo: quantile_sorted(&ratios, 0.025), hi: quantile_sorted(&ratios, 0.975) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A normal draw (Box–Muller).
    fn normal(rng: &mut SplitMix64, mean: f64, sd: f64) -> f64 {
        let u1 = rng.unit().max(1e-300);
        let u2 = rng.unit();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn sample(rng: &mut SplitMix64, n: usize, mean: f64, sd: f64) -> Vec<f64> {
        (0..n).map(|_| normal(rng, mean, sd)).collect()
    }

    #[test]
    fn median_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        let s = [0.0, 10.0, 20.0, 30.0, 40.0];
        assert_eq!(quantile_sorted(&s, 0.0), 0.0);
        assert_eq!(quantile_sorted(&s, 1.0), 40.0);
        assert_eq!(quantile_sorted(&s, 0.5), 20.0);
        assert!((quantile_sorted(&s, 0.125) - 5.0).abs() < 1e-12);
    }

    #[test]
    fn identical_samples_give_ratio_one() {
        let mut rng = SplitMix64::new(7);
        let a = sample(&mut rng, 15, 10.0, 0.5);
        let r = ratio_of_medians_ci(&a, &a, 2000, 1).expect("ratio");
        assert_eq!(r.ratio, 1.0);
        assert!(r.lo <= 1.0 && r.hi >= 1.0, "{r:?}");
        // A constant sample has no spread: the interval is the point.
        let c = [5.0; 9];
        let r = ratio_of_medians_ci(&c, &c, 2000, 1).expect("ratio");
        assert_eq!((r.ratio, r.lo, r.hi), (1.0, 1.0, 1.0));
    }

    /// Two normal samples whose medians are in a known ratio (1.05): over 200 independent
    /// experiments the 95% interval holds 1.05 in at least 88% of them (a bootstrap of n = 15
    /// under-covers a little; far below that would be a wrong interval), and the point ratio is
    /// within 1% of 1.05 on average.
    #[test]
    fn interval_covers_the_true_ratio() {
        let truth = 1.05;
        let (mut covered, mut sum) = (0, 0.0);
        let trials = 200;
        for t in 0..trials {
            let mut rng = SplitMix64::new(1000 + t);
            let b = sample(&mut rng, 15, 10.0, 0.3);
            let a = sample(&mut rng, 15, 10.0 * truth, 0.3 * truth);
            let r = ratio_of_medians_ci(&a, &b, 2000, t).expect("ratio");
            assert!(r.lo <= r.ratio && r.ratio <= r.hi, "{r:?}");
            covered += usize::from(r.lo <= truth && truth <= r.hi);
            sum += r.ratio;
        }
        assert!(covered >= trials as usize * 88 / 100, "covered {covered} of {trials}");
        assert!((sum / trials as f64 - truth).abs() < 0.01, "mean ratio {}", sum / trials as f64);
    }

    /// The interval narrows about as 1/√n: 16× the runs, ~4× narrower (at least 2.5×).
    #[test]
    fn interval_shrinks_with_n() {
        let width = |n: usize| {
            let mut rng = SplitMix64::new(42);
            let b = sample(&mut rng, n, 10.0, 0.5);
            let a = sample(&mut rng, n, 11.0, 0.55);
            let r = ratio_of_medians_ci(&a, &b, 4000, 3).expect("ratio");
            assert!(r.lo < 1.1 && r.hi > 1.1, "n {n}: {r:?}");
            r.hi - r.lo
        };
        let (small, large) = (width(16), width(256));
        assert!(small > 2.5 * large, "width n=16 {small}, n=256 {large}");
    }

    #[test]
    fn the_same_seed_gives_the_same_interval() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let b = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0];
        assert_eq!(ratio_of_medians_ci(&a, &b, 2000, 9), ratio_of_medians_ci(&a, &b, 2000, 9));
        assert_eq!(ratio_of_medians_ci(&a, &[], 2000, 9), None);
        assert_eq!(ratio_of_medians_ci(&a, &[0.0], 2000, 9), None);
    }
}
