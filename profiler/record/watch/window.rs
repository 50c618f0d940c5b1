//! One sample window's figures: the analysis (`analyze::account`, the same arithmetic as
//! `report`) of the records of a window in which CUPTI was on, clipped to the time it was fully
//! on, plus the straggler rule the triggers use (one rank last at K consecutive collectives).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::analyze::collectives::{self, CollInstance};
use crate::analyze::files::process_windows;
use crate::analyze::{self, AccountOptions, Categories, Category, Window};

/// A sample window's segment larger than this is not read back for figures (a note says so):
/// the analysis holds one window's records in memory, so this bounds that memory.
pub const MAX_WINDOW_FILE_BYTES: u64 = 256 << 20;

/// One device of one process over one sample window.
#[derive(Debug, Clone)]
pub struct DeviceFigures {
    /// The process.
    pub pid: u32,
    /// The device ordinal.
    pub device: u32,
    /// NCCL rank of the process (its first communicator), when it ran collectives.
    pub rank: Option<u32>,
    /// The accounted window, ns.
    pub window_ns: u64,
    /// Busy ns.
    pub busy_ns: u64,
    /// Nanoseconds per category (they sum to `window_ns`).
    pub categories: Categories,
    /// Whether `compute.useful` has a FLOP source (MFU is known).
    pub has_mfu: bool,
}

impl DeviceFigures {
    /// Busy fraction.
    pub fn busy(&self) -> f64 {
        self.busy_ns as f64 / self.window_ns.max(1) as f64
    }
    /// MFU, when there is a FLOP source.
    pub fn mfu(&self) -> Option<f64> {
        self.has_mfu.then(|| self.categories[Category::ComputeUseful] as f64 / self.window_ns.max(1) as f64)
    }
    /// One category's fraction.
    pub fn ratio(&self, c: Category) -> f64 {
        self.categories[c] as f64 / self.window_ns.max(1) as f64
    }
}

/// The figures of one sample window.
#[derive(Debug, Clone, Default)]
pub struct WindowFigures {
    /// Every device with device work in the window.
    pub devices: Vec<DeviceFigures>,
    /// The rank others waited for most (pid, rank), from the cross-rank matching.
    pub straggler: Option<(u32, u32)>,
    /// The longest run of consecutive collectives one rank arrived last at: (pid, rank, run).
    pub late_run: Option<(u32, u32, u32)>,
}

/// Analyzes the records of `path` between `start_ns` and `end_ns` (each process's window
/// clipped to it: launches after CUPTI went off have no kernels and must not count as idle).
pub fn analyze_window(path: &Path, start_ns: u64, end_ns: u64) -> anyhow::Result<WindowFigures> {
    let len = std::fs::symlink_metadata(path)?.len();
    if len > MAX_WINDOW_FILE_BYTES {
        anyhow::bail!(
            "sample window {} holds {len} bytes, more than the {MAX_WINDOW_FILE_BYTES} watch reads back: no figures for it (shorten --sample)",
            path.display()
        );
    }
    let mut loaded = analyze::load(path)?;
    let first_call = drop_kernels_of_earlier_calls(&mut loaded.batch, &loaded.names);
    let clip = Window::new(start_ns, end_ns);
    // Each process's device records of the window: its library switches CUPTI on and flushes
    // it off on its own control thread's poll, later than asked on a loaded host, so the
    // window of a process is also clipped to the span its device records cover (device work
    // before the first record or after the last is unknown, not idle).
    let mut device_span: HashMap<u32, Window> = HashMap::new();
    let b = &loaded.batch;
    let spans = b
        .kernels
        .iter()
        .map(|k| (k.pid, k.start_ns, k.end_ns))
        .chain(b.memops.iter().map(|m| (m.pid, m.start_ns, m.end_ns)));
    for (pid, s, e) in spans.filter(|x| x.2 > clip.start_ns && x.1 < clip.end_ns) {
        device_span.entry(pid).or_insert(Window::new(s, e)).widen(s, e);
    }
    let mut windows: HashMap<u32, Window> = HashMap::new();
    for (pid, w) in process_windows(&loaded.batch) {
        let Some(d) = device_span.get(&pid) else { continue };
        let s = w.start_ns.max(clip.start_ns).max(d.start_ns).max(first_call.get(&pid).copied().unwrap_or(0));
        let e = w.end_ns.min(clip.end_ns).min(d.end_ns);
        if e > s {
            windows.insert(pid, Window::new(s, e));
        }
    }
    let opts = AccountOptions { windows: windows.clone(), ..AccountOptions::default() };
    let instances = collectives::instances(&loaded.batch, &loaded.names);
    let mut rank_of: HashMap<u32, u32> = HashMap::new();
    for i in &instances {
        // u32::MAX: the rank was not seen (the communicator was made before the probes).
        if i.rank != u32::MAX {
            rank_of.entry(i.pid).or_insert(i.rank);
        }
    }
    let devices = analyze::account(&loaded.batch, &loaded.names, &opts)
        .into_iter()
        .filter(|a| windows.contains_key(&a.pid) && a.window_ns() > 0)
        .map(|a| DeviceFigures {
            pid: a.pid,
            device: a.device,
            rank: rank_of.get(&a.pid).copied(),
            window_ns: a.window_ns(),
            busy_ns: a.busy_ns,
            has_mfu: a.mfu().is_some(),
            categories: a.categories,
        })
        .collect();
    let mut by_pid: BTreeMap<u32, Vec<CollInstance>> = BTreeMap::new();
    for i in instances.iter().cloned() {
        by_pid.entry(i.pid).or_default().push(i);
    }
    let inputs: Vec<collectives::RankInput> = by_pid
        .into_iter()
        .map(|(pid, instances)| collectives::RankInput { file: String::new(), pid, instances })
        .collect();
    let views: Vec<collectives::RankView> =
        inputs.iter().map(|input| collectives::RankView { input, clock: collectives::ClockMap::default() }).collect();
    let cross = collectives::cross_rank(&views);
    let straggler = cross.straggler.map(|i| (cross.skew[i].pid, cross.skew[i].rank));
    Ok(WindowFigures { devices, straggler, late_run: longest_late_run(&instances) })
}

/// Removes the collective kernels of each process that started before its first NCCL call in
/// the window: CUPTI was already on when the window's segment began, so the kernels of calls
/// made just before it are here without their calls, and the analysis pairs a process's k-th
/// collective kernel with its k-th call (off by one for the whole window otherwise). Returns
/// each process's first call: its window starts there, so what was removed is outside it.
fn drop_kernels_of_earlier_calls(
    batch: &mut crate::trace::RecordBatch,
    names: &HashMap<u32, String>,
) -> HashMap<u32, u64> {
    let mut first_call: HashMap<u32, u64> = HashMap::new();
    for c in batch.nccl.iter().filter(|c| c.phase == crate::trace::NcclPhase::Host as u32) {
        let e = first_call.entry(c.pid).or_insert(c.start_ns);
        *e = (*e).min(c.start_ns);
    }
    let is_coll = |id: u32| names.get(&id).is_some_and(|n| crate::trace::is_collective_name(n));
    batch.kernels.retain(|k| !is_coll(k.name_id) || first_call.get(&k.pid).is_some_and(|t| k.start_ns >= *t));
    first_call
}

/// The longest run of consecutive collectives (by sequence number, per communicator size)
/// at which one rank arrived last, later than every other rank: (pid, rank, run length).
pub fn longest_late_run(instances: &[CollInstance]) -> Option<(u32, u32, u32)> {
    // (nranks, comm index, seq) → arrivals; a collective counts once every rank is present.
    let mut by_coll: BTreeMap<(u32, u32, u64), Vec<&CollInstance>> = BTreeMap::new();
    for i in instances {
        by_coll.entry((i.nranks, i.comm_index, i.seq)).or_default().push(i);
    }
    let mut best: Option<(u32, u32, u32)> = None;
    let mut run: Option<(u32, u32, u32)> = None;
    for members in by_coll.values() {
        if members.len() < 2 || members.len() as u32 != members[0].nranks {
            // Not every rank's part was seen: the run cannot be said to go on.
            run = None;
            continue;
        }
        let last = members.iter().max_by_key(|m| m.arrival_ns).expect("at least two members");
        let strictly = members.iter().filter(|m| m.arrival_ns == last.arrival_ns).count() == 1;
        run = match run {
            Some((pid, rank, n)) if strictly && pid == last.pid => Some((pid, rank, n + 1)),
            _ if strictly => Some((last.pid, last.rank, 1)),
            _ => None,
        };
        if let Some(r) = run {
            if best.is_none_or(|b| r.2 > b.2) {
                best = Some(r);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(pid: u32, rank: u32, seq: u64, arrival_ns: u64) -> CollInstance {
        CollInstance {
            pid,
            rank,
            nranks: 3,
            comm_index: 0,
            seq,
            op: 0,
            size_bytes: 0,
            arrival_ns,
            kernel: None,
            algo: Default::default(),
        }
    }

    #[test]
    fn the_longest_run_of_one_late_rank_is_found() {
        let mut v = Vec::new();
        // seq 0..10: rank 2 last at 2..=8 (7 in a row), rank 1 last at 0, 1 and 9.
        for seq in 0..10u64 {
            let late = if (2..=8).contains(&seq) { 2 } else { 1 };
            for rank in 0..3u32 {
                v.push(inst(100 + rank, rank, seq, seq * 1000 + if rank == late { 500 } else { rank as u64 }));
            }
        }
        assert_eq!(longest_late_run(&v), Some((102, 2, 7)));
        // A tie for last breaks the run; incomplete collectives are skipped.
        v.retain(|i| !(i.seq == 5 && i.rank == 0));
        assert_eq!(longest_late_run(&v), Some((102, 2, 3)), "seq 5 incomplete: runs 2..=4 and 6..=8");
    }
}
