//! FLOP attribution. With hardware PM samples (tensor-pipe activity per sample interval), the
//! useful time of each compute kernel is estimated per kernel *name*: tensor-active time in
//! sample s = Σ_names f(name) × (time kernels of that name ran in s), solved for f by least
//! squares over all samples. Names whose f is ~0 have no FLOP attribution (DESIGN.md §1:
//! `other.busy`); the others get `f × duration` of useful time.

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
        let f = solve(&mut ata, &mut atb, dim);
        self.names
            .iter()
            .enumerate()
            .map(|(n, name)| (*name, f.get(n.min(MAX_NAMES - 1)).copied().unwrap_or(0.0).clamp(0.0, 1.0)))
            .collect()
    }
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
}
