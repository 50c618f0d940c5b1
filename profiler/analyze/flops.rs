//! FLOP attribution. With hardware PM samples (tensor-pipe activity per sample interval), the
//! useful time of each compute kernel is estimated per kernel *name*: tensor-active time in
//! sample s = Σ_names f(name) × (time kernels of that name ran in s), solved for f by least
//! squares over all samples. A name counts as compute only when its fitted f is distinguishable
//! from zero: f > [`SIGNIFICANCE_SE`] standard errors of the fit (and, in the sweep, at least the
//! 1 % floor); the others get f = 0, no FLOP attribution, and are `other.busy` (docs/metrics.md,
//! "Per-name attribution"). The rest get `f × duration` of useful time.

use std::collections::HashMap;

/// Where the useful (FLOP-equivalent) time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlopSource {
    /// CUPTI PM sampling of tensor-pipe activity.
    PmSampling,
    /// Model FLOPs per step (`--flops-per-step`) over peak FLOP/s, spread over each step's
    /// compute kernels in proportion to their time.
    FlopsPerStep,
    /// No FLOP source in the trace: MFU cannot be computed.
    None,
}

impl FlopSource {
    /// The name reports use ("pm_sampling", "flops_per_step", "none").
    pub fn name(self) -> &'static str {
        match self {
            FlopSource::PmSampling => "pm_sampling",
            FlopSource::FlopsPerStep => "flops_per_step",
            FlopSource::None => "none",
        }
    }
}

/// A compute kernel for attribution: [start, end) and its name id.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpan {
    pub start: u64,
    pub end: u64,
    pub name: u32,
}

/// A PM sample: [start, start + len) with `tensor` = tensor-active fraction.
#[derive(Debug, Clone, Copy)]
pub struct PmSample {
    pub start: u64,
    pub len: u64,
    pub tensor: f64,
}

/// Useful fraction per kernel name, from PM samples (samples sorted by start).
pub fn useful_fraction_by_name(kernels: &[KernelSpan], samples: &[PmSample]) -> HashMap<u32, f64> {
    let mut time: HashMap<u32, u64> = HashMap::new();
    for k in kernels {
        *time.entry(k.name).or_default() += k.end.saturating_sub(k.start);
    }
    let mut acc = FractionAccumulator::new(&time, samples.to_vec());
    for k in kernels {
        acc.add(*k);
    }
    acc.finish()
}

/// A fitted fraction counts only above this many standard errors. Noisy samples (on a loaded
/// host the clock mapping of samples against kernels is off by tens of µs) give a name with no
/// FLOPs a share over the 1 % floor, but within a few SEs of zero; a real share is far above.
pub const SIGNIFICANCE_SE: f64 = 3.0;

/// At most this many unknowns; the names with less time share the last one.
const MAX_NAMES: usize = 48;

/// The least-squares problem of [`useful_fraction_by_name`] built kernel by kernel, in any
/// order: each sample keeps the time each name ran in it.
pub struct FractionAccumulator {
    names: Vec<u32>,
    index: HashMap<u32, usize>,
    samples: Vec<PmSample>,
    rows: Vec<Vec<(u16, f64)>>,
}

impl FractionAccumulator {
    /// `time_by_name`: total kernel time per name (picks the unknowns); `samples` sorted by
    /// start and disjoint.
    pub fn new<S: std::hash::BuildHasher>(time_by_name: &HashMap<u32, u64, S>, samples: Vec<PmSample>) -> Self {
        // Names, most time first.
        let mut names: Vec<u32> = time_by_name.keys().copied().collect();
        names.sort_by_key(|n| (std::cmp::Reverse(time_by_name[n]), *n));
        let index = names.iter().enumerate().map(|(i, n)| (*n, i.min(MAX_NAMES - 1))).collect();
        let rows = vec![Vec::new(); samples.len()];
        FractionAccumulator { names, index, samples, rows }
    }

    pub fn add(&mut self, k: KernelSpan) {
        let Some(&i) = self.index.get(&k.name) else { return };
        let first = self.samples.partition_point(|s| s.start + s.len <= k.start);
        for (s, row) in self.samples[first..].iter().zip(&mut self.rows[first..]) {
            if s.start >= k.end {
                break;
            }
            let overlap = k.end.min(s.start + s.len).saturating_sub(k.start.max(s.start));
            if overlap == 0 {
                continue;
            }
            match row.iter_mut().find(|x| x.0 as usize == i) {
                Some(x) => x.1 += overlap as f64,
                None => row.push((i as u16, overlap as f64)),
            }
        }
    }

    pub fn finish(self) -> HashMap<u32, f64> {
        let dim = self.names.len().min(MAX_NAMES);
        if dim == 0 || self.samples.is_empty() {
            return HashMap::new();
        }
        // Normal equations A^T A f = A^T b, sample by sample.
        let mut ata = vec![0f64; dim * dim];
        let mut atb = vec![0f64; dim];
        for (s, row) in self.samples.iter().zip(&self.rows) {
            if row.is_empty() {
                continue;
            }
            let mut dense = vec![0f64; dim];
            for &(i, v) in row {
                dense[i as usize] = v;
            }
            let b = s.tensor * s.len as f64;
            for i in 0..dim {
                if dense[i] == 0.0 {
                    continue;
                }
                atb[i] += dense[i] * b;
                for j in 0..dim {
                    ata[i * dim + j] += dense[i] * dense[j];
                }
            }
        }
        let normal = ata.clone();
        let f = solve(&mut ata, &mut atb, dim);
        let significant = significant(&f, &normal, dim, self.samples.iter().zip(&self.rows));
        self.names
            .iter()
            .enumerate()
            .map(|(n, name)| {
                let i = n.min(MAX_NAMES - 1);
                let fi = if significant.get(i).copied().unwrap_or(false) { f[i] } else { 0.0 };
                (*name, fi.clamp(0.0, 1.0))
            })
            .collect()
    }
}

/// Which fitted fractions are distinguishable from zero: f_i > [`SIGNIFICANCE_SE`] × SE(f_i),
/// SE(f_i)² = σ² (AᵀA)⁻¹_ii, σ² = residual sum of squares / (samples − unknowns).
fn significant<'a>(
    f: &[f64],
    normal: &[f64],
    dim: usize,
    rows: impl Iterator<Item = (&'a PmSample, &'a Vec<(u16, f64)>)>,
) -> Vec<bool> {
    let (mut rss, mut n) = (0f64, 0usize);
    for (s, row) in rows {
        if row.is_empty() {
            continue;
        }
        let fitted: f64 = row.iter().map(|&(i, v)| v * f[i as usize]).sum();
        rss += (s.tensor * s.len as f64 - fitted).powi(2);
        n += 1;
    }
    let unknowns = f.iter().filter(|x| **x != 0.0).count();
    let sigma2 = rss / n.saturating_sub(unknowns).max(1) as f64;
    (0..dim)
        .map(|i| {
            if f[i] <= 0.0 {
                return false;
            }
            let mut a = normal.to_vec();
            let mut e = vec![0f64; dim];
            e[i] = 1.0;
            let inv_ii = solve(&mut a, &mut e, dim)[i].max(0.0);
            f[i] > SIGNIFICANCE_SE * (sigma2 * inv_ii).sqrt()
        })
        .collect()
}

/// Gaussian elimination with partial pivoting (small, dense); singular directions give 0.
fn solve(a: &mut [f64], b: &mut [f64], n: usize) -> Vec<f64> {
    let scale = a.iter().fold(0f64, |m, x| m.max(x.abs())).max(1.0);
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs())).unwrap_or(col);
        if a[pivot * n + col].abs() <= 1e-12 * scale {
            continue;
        }
        if pivot != col {
            for j in 0..n {
                a.swap(col * n + j, pivot * n + j);
            }
            b.swap(col, pivot);
        }
        for r in 0..n {
            if r == col {
                continue;
            }
            let factor = a[r * n + col] / a[col * n + col];
            if factor == 0.0 {
                continue;
            }
            for j in col..n {
                a[r * n + j] -= factor * a[col * n + j];
            }
            b[r] -= factor * b[col];
        }
    }
    (0..n).map(|i| if a[i * n + i].abs() <= 1e-12 * scale { 0.0 } else { b[i] / a[i * n + i] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_name_fractions_are_recovered_from_mixed_samples() {
        // Alternating kernels: name 1 is 60% tensor-active, name 2 has no FLOPs, name 3 30%.
        let mut kernels = Vec::new();
        let mut t = 0;
        for i in 0..300u64 {
            let (name, dur) = [(1, 800), (2, 40), (3, 1600)][(i % 3) as usize];
            kernels.push(KernelSpan { start: t, end: t + dur, name });
            t += dur + 7;
        }
        let truth = |name: u32| [0.0, 0.6, 0.0, 0.3][name as usize];
        let mut samples = Vec::new();
        let mut s = 0;
        while s < t {
            let e = s + 50;
            let active: f64 =
                kernels.iter().map(|k| k.end.min(e).saturating_sub(k.start.max(s)) as f64 * truth(k.name)).sum();
            samples.push(PmSample { start: s, len: 50, tensor: active / 50.0 });
            s = e;
        }
        let f = useful_fraction_by_name(&kernels, &samples);
        for name in 1..=3 {
            assert!((f[&name] - truth(name)).abs() < 1e-9, "name {name}: {}", f[&name]);
        }
    }

    /// Noisy samples (a loaded host: each sample's interval is mapped with a clock error of
    /// up to ±20 µs, and its value carries ±3 points of noise). The layer-norm kernel has no
    /// FLOPs; least squares alone gives it 1.3 % (over the 1 % floor) from the noise, which booked
    /// its time as compute. It must stay out and the real shares stay in.
    #[test]
    fn a_name_without_flops_stays_out_under_noise() {
        let specs = [(1u32, 800u64, 0.6), (2, 150, 0.0), (3, 300, 0.05)];
        let truth = |name: u32| specs.iter().find(|s| s.0 == name).map_or(0.0, |s| s.2);
        let mut kernels = Vec::new();
        let mut t = 0u64;
        for i in 0..3000usize {
            let (name, dur_us, _) = specs[i % specs.len()];
            kernels.push(KernelSpan { start: t, end: t + dur_us * 1000, name });
            t += dur_us * 1000 + 5_000;
        }
        let mut seed = 0x1_3c6e_f372_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut samples = Vec::new();
        let mut s = 20_000u64;
        while s + 1_020_000 < t {
            let (a, b) = (s + next() % 40_001 - 20_000, s + 1_000_000);
            let active: f64 =
                kernels.iter().map(|k| k.end.min(b).saturating_sub(k.start.max(a)) as f64 * truth(k.name)).sum();
            let noise = (next() % 60_001) as f64 / 1e6 - 0.03;
            samples.push(PmSample {
                start: s,
                len: 1_000_000,
                tensor: (active / (b - a) as f64 + noise).clamp(0.0, 1.0),
            });
            s += 1_000_000;
        }
        let f = useful_fraction_by_name(&kernels, &samples);
        assert_eq!(f[&2], 0.0, "layer norm has no FLOPs: {f:?}");
        assert!((f[&1] - 0.6).abs() < 0.02, "gemm {f:?}");
        assert!((f[&3] - 0.05).abs() < 0.02, "adam {f:?}");
    }
}
