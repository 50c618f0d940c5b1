//! Host launches (eBPF uprobe records) joined to the kernels they launched (CUPTI records).
//!
//! A uprobe fires at the entry of the driver's launch function; CUPTI stamps the API record of the
//! call that launched the kernel (from ghostprof's launch callbacks, or from the API activity
//! buffers) around it, with the correlation id the kernel record carries. That call is the
//! driver call itself, or the runtime call around it: on a real GPU a kernel launched through
//! `cudaLaunchKernel` carries the runtime record's id, and the driver call inside has no record
//! of its own. So a launch belongs to the first API record (driver or runtime) of the same
//! thread that names a kernel and ends at or after the probe time (a thread's launch calls do
//! not overlap).

use std::collections::HashMap;

use crate::trace::{ApiDomain, RecordBatch};

/// The result of [`join_launches`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchJoin {
    /// eBPF launch records.
    pub launches: u64,
    /// Launches whose kernel record was found.
    pub joined: u64,
    /// For each launch record (in `batch.launches` order), the index of its kernel in
    /// `batch.kernels`.
    pub kernel_of: Vec<Option<usize>>,
}

impl LaunchJoin {
    /// Joined share of the launches (1 when there are none).
    pub fn share(&self) -> f64 {
        if self.launches == 0 {
            1.0
        } else {
            self.joined as f64 / self.launches as f64
        }
    }
}

/// Joins every launch of `batch` to its kernel.
pub fn join_launches(batch: &RecordBatch) -> LaunchJoin {
    let kernel_by_corr: HashMap<(u32, u32), usize> =
        batch.kernels.iter().enumerate().map(|(i, k)| ((k.pid, k.correlation_id), i)).collect();
    let mut calls: HashMap<(u32, u32), Vec<(u64, u32)>> = HashMap::new();
    let cuda = |d: u32| d == ApiDomain::CudaDriver as u32 || d == ApiDomain::CudaRuntime as u32;
    for a in
        batch.api_calls.iter().filter(|a| cuda(a.domain) && kernel_by_corr.contains_key(&(a.pid, a.correlation_id)))
    {
        calls.entry((a.pid, a.tid)).or_default().push((a.end_ns, a.correlation_id));
    }
    calls.values_mut().for_each(|v| v.sort_unstable());
    let kernel_of: Vec<Option<usize>> = batch
        .launches
        .iter()
        .map(|l| {
            let thread = calls.get(&(l.pid, l.tid))?;
            let i = thread.partition_point(|&(end, _)| end < l.time_ns);
            let &(_, corr) = thread.get(i)?;
            kernel_by_corr.get(&(l.pid, corr)).copied()
        })
        .collect();
    let joined = kernel_of.iter().filter(|k| k.is_some()).count() as u64;
    LaunchJoin { launches: batch.launches.len() as u64, joined, kernel_of }
}
