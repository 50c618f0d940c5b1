//! The host side on its own, per process and thread (docs/metrics.md, "Host figures"): on-CPU
//! time, off-CPU time by reason, file I/O bytes and time. It needs no device: a CPU-only
//! process gets these figures, and every report shows them next to its devices.
//!
//! A thread is seen from its first record (its process's launch, for the launched process's
//! main thread) to the end of its last one; on-CPU time is that span minus its off-CPU
//! intervals. Built record by record ([`HostAccumulator`]), so the streaming analysis adds it
//! chunk by chunk with bounded memory.

use std::collections::HashMap;

use crate::trace::{RecordBatch, StallReason, WRITE_SYSCALLS};

/// Off-CPU reasons, indexed like [`StallReason`]'s values (0..=7).
pub const OFF_CPU_REASONS: usize = 8;

/// Host figures of one thread (or, summed, of a process).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFigures {
    /// First time seen, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// End of the last record, CLOCK_MONOTONIC ns.
    pub end_ns: u64,
    /// The span minus the off-CPU time.
    pub on_cpu_ns: u64,
    /// Off-CPU ns per [`StallReason`] value (run-queue wait included, as its own reason).
    pub off_cpu_ns: [u64; OFF_CPU_REASONS],
    /// Bytes of read-family file syscalls.
    pub file_read_bytes: u64,
    /// Bytes of write-family file syscalls.
    pub file_write_bytes: u64,
    /// Time in reads, ns.
    pub file_read_ns: u64,
    /// Time in writes, fsyncs and truncations, ns.
    pub file_write_ns: u64,
}

impl HostFigures {
    /// Off-CPU time over all reasons, ns.
    pub fn off_cpu_total_ns(&self) -> u64 {
        self.off_cpu_ns.iter().fold(0u64, |s, x| s.saturating_add(*x))
    }
}

/// The host figures of one process: its threads (most on-CPU + off-CPU time first) and their sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessHost {
    /// The process.
    pub pid: u32,
    /// Sum over the threads; the span is the union's bounds.
    pub total: HostFigures,
    /// Each thread (tid) with its figures, most on-CPU + off-CPU time first.
    pub threads: Vec<(u32, HostFigures)>,
}

/// Builds [`ProcessHost`]s from records in any order.
#[derive(Default)]
pub struct HostAccumulator {
    threads: HashMap<(u32, u32), HostFigures>,
    /// Launch time of a process (its `process` record): its main thread is seen from then.
    launched: HashMap<u32, u64>,
}

impl HostAccumulator {
    fn thread(&mut self, pid: u32, tid: u32, start: u64, end: u64) -> &mut HostFigures {
        let t = self.threads.entry((pid, tid)).or_insert(HostFigures {
            start_ns: start,
            end_ns: end,
            ..Default::default()
        });
        t.start_ns = t.start_ns.min(start);
        t.end_ns = t.end_ns.max(end);
        t
    }

    /// Adds the host records of `batch` (off-CPU intervals, file I/O, process launches).
    pub fn add(&mut self, batch: &RecordBatch) {
        for s in &batch.stalls {
            let end = s.end_ns.max(s.start_ns);
            let t = self.thread(s.pid, s.tid, s.start_ns, end);
            // A reason this build does not know counts as `other`.
            let reason = if StallReason::from_u32(s.reason).is_some() { s.reason as usize } else { 0 };
            t.off_cpu_ns[reason] = t.off_cpu_ns[reason].saturating_add(end - s.start_ns);
        }
        for f in &batch.file_io {
            let end = f.end_ns.max(f.start_ns);
            let t = self.thread(f.pid, f.tid, f.start_ns, end);
            if WRITE_SYSCALLS.contains(&f.syscall) {
                t.file_write_bytes = t.file_write_bytes.saturating_add(f.bytes);
                t.file_write_ns = t.file_write_ns.saturating_add(end - f.start_ns);
            } else if super::inputs::is_checkpoint_syscall(f.syscall) {
                t.file_write_ns = t.file_write_ns.saturating_add(end - f.start_ns);
            } else {
                t.file_read_bytes = t.file_read_bytes.saturating_add(f.bytes);
                t.file_read_ns = t.file_read_ns.saturating_add(end - f.start_ns);
            }
        }
        for p in &batch.processes {
            let at = self.launched.entry(p.pid).or_insert(p.time_ns);
            *at = (*at).min(p.time_ns);
        }
    }

    /// Adds what `other` has added up (records of other chunks: the figures are minima,
    /// maxima and sums, so the order does not matter).
    pub fn absorb(&mut self, other: HostAccumulator) {
        for ((pid, tid), f) in other.threads {
            let t = self.thread(pid, tid, f.start_ns, f.end_ns);
            for (a, b) in t.off_cpu_ns.iter_mut().zip(f.off_cpu_ns) {
                *a = a.saturating_add(b);
            }
            t.file_read_bytes = t.file_read_bytes.saturating_add(f.file_read_bytes);
            t.file_write_bytes = t.file_write_bytes.saturating_add(f.file_write_bytes);
            t.file_read_ns = t.file_read_ns.saturating_add(f.file_read_ns);
            t.file_write_ns = t.file_write_ns.saturating_add(f.file_write_ns);
        }
        for (pid, at) in other.launched {
            let a = self.launched.entry(pid).or_insert(at);
            *a = (*a).min(at);
        }
    }

    /// Per process, pid order.
    pub fn finish(mut self) -> Vec<ProcessHost> {
        for (pid, at) in std::mem::take(&mut self.launched) {
            if let Some(t) = self.threads.get_mut(&(pid, pid)) {
                t.start_ns = t.start_ns.min(at);
            }
        }
        let mut by_pid: HashMap<u32, ProcessHost> = HashMap::new();
        for ((pid, tid), mut t) in self.threads {
            t.on_cpu_ns = (t.end_ns - t.start_ns).saturating_sub(t.off_cpu_total_ns());
            let p = by_pid.entry(pid).or_insert_with(|| ProcessHost {
                pid,
                total: HostFigures { start_ns: t.start_ns, end_ns: t.end_ns, ..Default::default() },
                threads: Vec::new(),
            });
            let s = &mut p.total;
            s.start_ns = s.start_ns.min(t.start_ns);
            s.end_ns = s.end_ns.max(t.end_ns);
            s.on_cpu_ns = s.on_cpu_ns.saturating_add(t.on_cpu_ns);
            for (a, b) in s.off_cpu_ns.iter_mut().zip(t.off_cpu_ns) {
                *a = a.saturating_add(b);
            }
            s.file_read_bytes = s.file_read_bytes.saturating_add(t.file_read_bytes);
            s.file_write_bytes = s.file_write_bytes.saturating_add(t.file_write_bytes);
            s.file_read_ns = s.file_read_ns.saturating_add(t.file_read_ns);
            s.file_write_ns = s.file_write_ns.saturating_add(t.file_write_ns);
            p.threads.push((tid, t));
        }
        let mut out: Vec<ProcessHost> = by_pid.into_values().collect();
        for p in &mut out {
            p.threads.sort_by_key(|(tid, t)| (std::cmp::Reverse(t.end_ns - t.start_ns), *tid));
        }
        out.sort_by_key(|p| p.pid);
        out
    }
}

/// The host figures of every process in `batch`.
pub fn host_figures(batch: &RecordBatch) -> Vec<ProcessHost> {
    let mut acc = HostAccumulator::default();
    acc.add(batch);
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{FileIo, HostStall, ProcessInfo, Record};

    #[test]
    fn on_cpu_is_the_span_minus_off_cpu_per_thread() {
        let mut b = RecordBatch::default();
        let stall = |tid, s, e, reason: StallReason| -> Record {
            HostStall { start_ns: s, end_ns: e, pid: 7, tid, reason: reason as u32, syscall: -1 }.into()
        };
        b.push(ProcessInfo { time_ns: 1_000, pid: 7, ..Default::default() }.into());
        b.push(stall(7, 2_000, 5_000, StallReason::Sleep));
        b.push(stall(7, 5_000, 5_500, StallReason::RunQueue));
        b.push(FileIo { start_ns: 6_000, end_ns: 9_000, bytes: 4096, pid: 7, tid: 7, fd: 3, syscall: 0 }.into());
        b.push(stall(8, 3_000, 4_000, StallReason::Futex));
        let hosts = host_figures(&b);
        assert_eq!(hosts.len(), 1);
        let main = &hosts[0].threads.iter().find(|t| t.0 == 7).unwrap().1;
        assert_eq!((main.start_ns, main.end_ns), (1_000, 9_000));
        assert_eq!(main.on_cpu_ns, 8_000 - 3_500);
        assert_eq!(main.off_cpu_ns[StallReason::Sleep as usize], 3_000);
        assert_eq!((main.file_read_bytes, main.file_read_ns), (4096, 3_000));
        let total = &hosts[0].total;
        assert_eq!(total.on_cpu_ns, 4_500);
        assert_eq!(total.off_cpu_total_ns(), 4_500);
    }
}
