//! `record`'s per-launch uprobes (`cuLaunchKernel` and its kin), left off while CUPTI sees the
//! launches of every process using the GPU.
//!
//! Each probed launch costs the job a kernel trap (~0.6–0.8 µs on the development VMs, 3 % of
//! a launch-bound step: docs/performance.md). Where the injection library's CUPTI session is
//! live, its launch callbacks (or CUPTI's API activity) already give every launch: its thread,
//! time and correlation id, which the analysis takes as it takes a uprobe's launch
//! ([`crate::trace::ApiCall::is_launch`]). So the probes are placed while some process that
//! uses the GPU has no CUPTI launch record yet — at the start, a rank whose CUPTI another tool
//! holds, a process started without the library — and removed once every such process has
//! had them for [`REMOVE_AFTER`]. A process is "using the GPU" once its library opened a ring
//! or eBPF saw it make a probed CUDA or NCCL call (synchronizations, copies and collectives
//! stay probed throughout).
//!
//! What can be missed, and is said in a note: the launches of a process that starts using the
//! GPU while the probes are off and whose CUPTI does not see its launches, from its start until
//! the loop turn that noticed it (its ring, read every turn while they are off, or its first
//! probed call) has placed them again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::collect::cupti::CuptiCollector;
use crate::collect::host::HostCollector;

/// How long every process using the GPU must have had CUPTI launch records before the probes
/// are removed. Removing them is not free: the kernel rewrites the probed code page of each
/// process under its memory-map lock, and the launching thread took one page-fault stall of
/// 7–18 ms right after (2-vCPU VM, kernel 6.18; docs/performance.md), which a short recording would book as a host stall
/// of several percent. A recording shorter than this keeps them; a longer one pays the stall
/// once and then saves ~0.7 µs per launch.
pub(crate) const REMOVE_AFTER: Duration = Duration::from_secs(2);

/// When the per-launch probes are placed during a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LaunchProbes {
    /// Throughout (`attach`, `record --launches-always`).
    Always,
    /// While some process using the GPU has no CUPTI launch record ([`LaunchProbeSwitch`]).
    WhereCuptiMisses,
}

/// Places and removes the per-launch probes as the module says, and keeps what the notes need.
pub(crate) struct LaunchProbeSwitch {
    /// Processes known to use the GPU.
    known: BTreeSet<u32>,
    /// Processes that started using the GPU while the probes were off: the pid, when it was
    /// seen (CLOCK_MONOTONIC ns) and when the probes were placed again (0: not yet).
    unprobed_start: BTreeMap<u32, (u64, u64)>,
    /// Since when every process using the GPU has CUPTI launch records (None: not now).
    covered_since: Option<Instant>,
    /// Since when the probes are off (None: placed).
    off_since: Option<Instant>,
    /// Time with the probes off before `off_since`.
    off_total: Duration,
    /// Times they were removed.
    removals: u64,
    started: Instant,
    /// Probes that could not be placed again, once each.
    pub(crate) failures: Vec<String>,
}

impl LaunchProbeSwitch {
    pub(crate) fn new() -> Self {
        LaunchProbeSwitch {
            known: BTreeSet::new(),
            unprobed_start: BTreeMap::new(),
            covered_since: None,
            off_since: None,
            off_total: Duration::ZERO,
            removals: 0,
            started: Instant::now(),
            failures: Vec::new(),
        }
    }

    /// One loop turn: places or removes the probes as the processes' CUPTI launch records say.
    pub(crate) fn update(&mut self, host: &mut HostCollector, cupti: &CuptiCollector) {
        let mut covered = BTreeSet::new();
        let mut active: BTreeSet<u32> = host.cuda_pids().iter().copied().collect();
        for (pid, launches) in cupti.launches_seen() {
            active.insert(pid);
            if launches > 0 {
                covered.insert(pid);
            }
        }
        let off = !host.launch_probes();
        for pid in &active {
            if self.known.insert(*pid) && off && !covered.contains(pid) {
                self.unprobed_start.insert(*pid, (crate::clock::monotonic_ns(), 0));
            }
        }
        let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        let needed = active.is_empty() || active.iter().any(|p| !covered.contains(p) && alive(*p));
        let want_on = if needed {
            self.covered_since = None;
            true
        } else {
            self.covered_since.get_or_insert_with(Instant::now).elapsed() < REMOVE_AFTER
        };
        if want_on == host.launch_probes() {
            return;
        }
        let (removed, failed) = host.set_launch_probes(want_on);
        for f in failed {
            if !self.failures.contains(&f) {
                self.failures.push(f);
            }
        }
        if want_on {
            let now = crate::clock::monotonic_ns();
            for (_, placed) in self.unprobed_start.values_mut().filter(|(_, placed)| *placed == 0) {
                *placed = now;
            }
            self.off_total += self.off_since.take().map_or(Duration::ZERO, |t| t.elapsed());
        } else {
            self.off_since = Some(Instant::now());
            self.removals += 1;
        }
        if !removed.is_empty() {
            // The kernel takes up to seconds to remove uprobes on a loaded host: not on the
            // loop's thread, which must go on draining the rings.
            std::thread::spawn(move || crate::collect::host::drop_links(removed));
        }
    }

    /// The session's notes: how long the probes were off, and each process whose early
    /// launches may be missing.
    pub(crate) fn notes(&self, cupti: &CuptiCollector) -> Vec<String> {
        let mut notes = self.failures.clone();
        let off = self.off_total + self.off_since.map_or(Duration::ZERO, |t| t.elapsed());
        if self.removals > 0 {
            notes.push(format!(
                "the per-launch uprobes were off for {:.1} of {:.1} s (removed {} times): CUPTI's launch records stood \
                 for them in every process using the GPU (record --launches-always keeps them)",
                off.as_secs_f64(),
                self.started.elapsed().as_secs_f64(),
                self.removals
            ));
        }
        let seen: BTreeMap<u32, u64> = cupti.launches_seen().collect();
        for (pid, (at, placed)) in &self.unprobed_start {
            if seen.get(pid).copied().unwrap_or(0) == 0 {
                let until = match placed {
                    0 => "the end of the recording".to_string(),
                    t => format!(
                        "{t} ns, {:.1} ms later, when they were placed again",
                        t.saturating_sub(*at) as f64 / 1e6
                    ),
                };
                notes.push(format!(
                    "process {pid} was seen using the GPU at {at} ns (CLOCK_MONOTONIC) while the per-launch uprobes were \
                     off, and its CUPTI reported no launch: its launches before {until} may be missing"
                ));
            }
        }
        notes
    }
}
