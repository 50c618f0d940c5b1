//! The analysis of whole trace files: [`analyze_files`] (streaming, bounded memory) reads
//! each file's summary, matches collectives across all files (skew, straggler), then sweeps
//! each file; [`analyze_batch`] is the same for records already in memory, one file alone.
//! Both give a [`FileReport`] per file, what report/ renders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::account::analyze_with;
use super::clock_align::{self, AlignInput, ClockChoice, FileClock};
use super::collectives::{self, ClockMap, CrossRank, RankInput, RankView};
use super::host::ProcessHost;
use super::model::{AccountOptions, DetailOptions, DeviceAccount, DeviceDetail, LateWindows, Window};
use super::stream::{self, StreamOptions};
use crate::trace::{RecordBatch, TraceError, TraceReader};

/// What the analysis of a file computes beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Steps, bins and the FLOP source.
    pub detail: DetailOptions,
    /// How several files are put on one timeline (`--clock`).
    pub clock: ClockChoice,
    /// Threads (`--jobs`): files analyzed side by side, and each file swept in time spans on
    /// the threads left (or its chunks decoded ahead of one sweep); 0: one per core. The result
    /// does not depend on it.
    pub jobs: usize,
}

/// The threads `jobs` asks for: 0 is one per core.
pub fn threads(jobs: usize) -> usize {
    match jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// `f(0) … f(n − 1)` on up to `threads` threads, the results in index order.
fn par_map<R: Send>(n: usize, threads: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<R>>> = (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let r = f(i);
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        }
    });
    slots.into_iter().filter_map(|s| s.into_inner().unwrap_or_else(|p| p.into_inner())).collect()
}

/// The analysis of one trace file.
pub struct FileReport {
    /// The trace file's path, as given.
    pub path: String,
    /// The accounting of each device of each process.
    pub accounts: Vec<DeviceAccount>,
    /// Parallel to `accounts`.
    pub details: Vec<DeviceDetail>,
    /// Names of the kernels the details mention.
    pub kernel_names: HashMap<u32, String>,
    /// Collective instances per process, for the cross-rank view.
    pub ranks: Vec<RankInput>,
    /// What each process was doing while other ranks waited for it (the straggler line).
    pub activity: HashMap<u32, String>,
    /// CLOCK_MONOTONIC → CLOCK_REALTIME, when the trace recorded it.
    pub realtime_offset_ns: Option<i128>,
    /// The recording host's identity (header `host_id`), when the trace has one.
    pub host_id: Option<String>,
    /// How this file's clock was put on the common timeline ([`clock_align`]).
    pub clock: FileClock,
    /// The reader's warnings (damaged chunks, ...) and records the sweep left out.
    pub warnings: Vec<String>,
    /// The recording session's notes, as stored in the trace (a collector off, CUPTI held…).
    pub recording_notes: Vec<String>,
    /// What the CUPTI injection library cost each traced process, measured inside it: the
    /// last (cumulative) record of each process, by pid.
    pub profiler_cost: Vec<crate::trace::ProfilerCost>,
    /// Chunks of the file that could not be read and were left out (report JSON
    /// `damaged_chunks`).
    pub damaged_chunks: Vec<crate::trace::reader::DamagedChunk>,
    /// Host figures per process (on-CPU, off-CPU by reason, file I/O), with or without devices.
    pub host: Vec<ProcessHost>,
}

/// A whole trace in memory.
pub struct Loaded {
    /// Every record of the file.
    pub batch: RecordBatch,
    /// The string table: id → string.
    pub names: HashMap<u32, String>,
    /// The reader's warnings.
    pub warnings: Vec<String>,
}

/// Every record of `path` and its string table, and the reader's warnings.
pub fn load(path: &Path) -> Result<Loaded, TraceError> {
    let reader = TraceReader::open(path)?;
    let mut names = HashMap::new();
    let mut batch = RecordBatch::default();
    reader.for_each_chunk(|c| {
        names.extend(c.strings.iter().cloned());
        batch.append(c.records.clone());
    })?;
    Ok(Loaded { batch, names, warnings: reader.warnings().to_vec() })
}

/// Reads `path` and analyzes every device of every process over its own active window (first
/// to last device operation or launch of that process).
pub fn analyze_file(path: &Path) -> Result<FileReport, TraceError> {
    analyze_file_with(path, &ReportOptions::default())
}

/// [`analyze_file`] with options (steps, bins, FLOP source).
pub fn analyze_file_with(path: &Path, opts: &ReportOptions) -> Result<FileReport, TraceError> {
    let mut v = analyze_files(&[path.to_path_buf()], opts)?;
    Ok(v.remove(0))
}

/// Analyzes trace files with bounded memory ([`super::stream`]): a summary pass over
/// every file, the cross-rank matching of their collectives, then each file's sweep (which
/// books `comm.wait` of collectives matched across files, and measures what each late rank
/// was doing while the others waited).
pub fn analyze_files(paths: &[PathBuf], opts: &ReportOptions) -> Result<Vec<FileReport>, TraceError> {
    let mut readers = Vec::new();
    for p in paths {
        readers.push((p.display().to_string(), TraceReader::open(p)?));
    }
    let damaged = |readers: &[(String, TraceReader)]| readers.iter().map(|r| r.1.damaged_chunks().len()).sum::<usize>();
    loop {
        let (reports, known) = analyze_readers(&readers, opts)?;
        // A chunk whose head was whole (the summary pass reads only that) but whose frame is
        // damaged (found by the sweep) was half counted: analyze again without it. Each round
        // knows more damaged chunks, so this ends.
        if damaged(&readers) == known {
            return Ok(reports);
        }
    }
}

/// One round of [`analyze_files`]; also the number of damaged chunks known after the summary
/// pass.
fn analyze_readers(
    readers: &[(String, TraceReader)],
    opts: &ReportOptions,
) -> Result<(Vec<FileReport>, usize), TraceError> {
    // Files side by side first; the threads left over sweep each file in spans (or decode its
    // chunks ahead). No more threads than the memory limit leaves room for (`budget`): asked
    // before each pass, the summaries held counted.
    let wanted = threads(opts.jobs);
    let per_thread = readers.iter().map(|r| super::budget::thread_bytes(&r.1)).max().unwrap_or(0);
    let split = |threads: usize| {
        let side_by_side = threads.min(readers.len()).max(1);
        let o = StreamOptions {
            detail: opts.detail.clone(),
            jobs: (threads / side_by_side).max(1),
            ..StreamOptions::default()
        };
        (side_by_side, o)
    };
    let (side_by_side, stream_opts) = split(super::budget::threads_within(wanted, per_thread, super::budget::room()));
    // Each file's collective instances on its own thread too: on one thread they were most of
    // the serial stretch between the two passes (two 20 M-event files: ~35 of 55 ms).
    // With threads to spare (one file, `--jobs` ≥ 2), its per-device collective waits are made
    // beside them, on this thread.
    let skeletons = par_map(readers.len(), side_by_side, |i| {
        let mut sk = stream::summarize(&readers[i].1, &stream_opts)?;
        let group = |sk: &stream::Skeleton| {
            let mut by_pid: std::collections::BTreeMap<u32, Vec<collectives::CollInstance>> = Default::default();
            for inst in collectives::instances(&sk.small, &sk.names) {
                by_pid.entry(inst.pid).or_default().push(inst);
            }
            by_pid
        };
        let by_pid = if stream_opts.jobs >= 2 {
            let (by_pid, waits) = std::thread::scope(|scope| {
                let beside = scope.spawn(|| group(&sk));
                let waits = stream::skeleton_comm_waits(&sk);
                (beside.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), waits)
            });
            sk.comm_waits = Some(waits);
            by_pid
        } else {
            group(&sk)
        };
        Ok::<_, TraceError>((sk, by_pid))
    });
    let mut files = Vec::new();
    let mut instances = Vec::new();
    for ((path, reader), skeleton) in readers.iter().zip(skeletons) {
        let (sk, by_pid) = skeleton?;
        files.push((path.clone(), reader, sk));
        instances.push(by_pid);
    }
    let known = readers.iter().map(|r| r.1.damaged_chunks().len()).sum();
    let shells: Vec<FileReport> = files
        .iter()
        .zip(instances)
        .map(|((path, reader, sk), by_pid)| FileReport {
            path: path.clone(),
            accounts: Vec::new(),
            details: Vec::new(),
            kernel_names: HashMap::new(),
            ranks: by_pid
                .into_iter()
                .map(|(pid, instances)| RankInput { file: path.clone(), pid, instances })
                .collect(),
            activity: HashMap::new(),
            realtime_offset_ns: collectives::realtime_offset(&sk.small),
            host_id: host_id(reader),
            clock: FileClock::default(),
            warnings: Vec::new(),
            recording_notes: recording_notes(&sk.small, &sk.names),
            profiler_cost: profiler_costs(&sk.small),
            damaged_chunks: Vec::new(),
            host: Vec::new(),
        })
        .collect();
    let mut shells = shells;
    let align_inputs: Vec<AlignInput> = shells
        .iter()
        .map(|r| AlignInput {
            ranks: &r.ranks,
            host_id: r.host_id.as_deref(),
            realtime_offset_ns: r.realtime_offset_ns,
        })
        .collect();
    let (clocks, clock_warning) = clock_align::align(&align_inputs, opts.clock);
    for (r, c) in shells.iter_mut().zip(clocks) {
        r.clock = c;
    }
    let cross = cross_rank(&shells);
    let mut out = Vec::new();
    let no_waits = HashMap::new();
    let (side_by_side, stream_opts) = split(super::budget::threads_within(wanted, per_thread, super::budget::room()));
    let sweeps = par_map(files.len(), side_by_side, |i| {
        let (path, reader, sk) = &files[i];
        let late = late_windows(&cross, path);
        let mut o = stream_opts.clone();
        o.account.windows = sk.windows.clone();
        let extra_waits = cross.spanning_waits.get(path).unwrap_or(&no_waits);
        stream::sweep_file_with_host(reader, sk, &o, &late, extra_waits)
    });
    for ((mut report, (_, reader, sk)), sweep) in shells.into_iter().zip(files).zip(sweeps) {
        let (results, late_records, host) = sweep?;
        report.host = host;
        // after the sweep, which decoded every chunk: every damaged one is known
        report.warnings = reader.warnings();
        report.damaged_chunks = reader.damaged_chunks();
        for r in results {
            if let Some(act) = r.late_activity {
                report.activity.entry(r.account.pid).or_insert(act);
            }
            report.accounts.push(r.account);
            report.details.push(r.detail);
        }
        report.kernel_names = report
            .details
            .iter()
            .flat_map(|d| d.kernels.iter())
            .map(|k| (k.name_id, sk.names.get(&k.name_id).cloned().unwrap_or_else(|| format!("kernel#{}", k.name_id))))
            .collect();
        if late_records > 0 {
            report.warnings.push(format!(
                "{late_records} records arrived more than {} s after newer ones and were left out of the sweep",
                stream_opts.reorder_window_ns as f64 / 1e9
            ));
        }
        out.push(report);
    }
    if let (Some(w), Some(first)) = (clock_warning, out.first_mut()) {
        first.warnings.push(w);
    }
    Ok((out, known))
}

/// The host identity a trace's header recorded (`host_id`, format 1.2), at most 256 bytes.
fn host_id(reader: &TraceReader) -> Option<String> {
    let id = reader.header().meta.get("host_id")?.as_str()?;
    (!id.is_empty() && id.len() <= 256).then(|| id.to_string())
}

/// Each process's last (cumulative) profiler-cost record, by pid.
pub fn profiler_costs(batch: &RecordBatch) -> Vec<crate::trace::ProfilerCost> {
    let mut last: std::collections::BTreeMap<u32, crate::trace::ProfilerCost> = Default::default();
    for c in &batch.costs {
        match last.get(&c.pid) {
            Some(l) if l.time_ns > c.time_ns => {}
            _ => {
                last.insert(c.pid, *c);
            }
        }
    }
    last.into_values().collect()
}

/// The texts of a trace's session notes, in order, each once.
pub fn recording_notes(batch: &RecordBatch, names: &HashMap<u32, String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in &batch.notes {
        let text = names.get(&n.text_id).cloned().unwrap_or_else(|| format!("note #{}", n.text_id));
        if !out.contains(&text) {
            out.push(text);
        }
    }
    out
}

/// The active window of each process: first device operation or launch to the later of the
/// last one and the launching threads' last blocking interval (docs/metrics.md, "Window").
pub fn process_windows(batch: &RecordBatch) -> HashMap<u32, Window> {
    let mut windows: HashMap<u32, Window> = HashMap::new();
    let spans = batch
        .kernels
        .iter()
        .map(|k| (k.pid, k.start_ns, k.end_ns))
        .chain(batch.memops.iter().map(|m| (m.pid, m.start_ns, m.end_ns)))
        .chain(batch.launches.iter().map(|l| (l.pid, l.time_ns, l.time_ns)));
    for (pid, s, e) in spans {
        windows.entry(pid).or_insert(Window::new(s, e)).widen(s, e);
    }
    // CUPTI's launch records open a window, never end one (`launch_times`).
    for (pid, _, t, _) in crate::trace::digest::launch_times(batch).filter(|l| l.3) {
        super::stream::widen_start(&mut windows, pid, t);
    }
    let launchers: std::collections::HashSet<(u32, u32)> =
        crate::trace::digest::launch_times(batch).map(|(pid, tid, _, _)| (pid, tid)).collect();
    super::inputs::extend_windows_to_blocking(&mut windows, batch, &|p, t| launchers.contains(&(p, t)));
    windows
}

/// The analysis of records already in memory, one file alone (the streaming
/// [`analyze_files`] gives the same result with bounded memory).
pub fn analyze_batch(
    path: String,
    batch: &RecordBatch,
    names: &HashMap<u32, String>,
    warnings: Vec<String>,
    opts: &ReportOptions,
) -> FileReport {
    let mut by_pid: std::collections::BTreeMap<u32, Vec<collectives::CollInstance>> = Default::default();
    for inst in collectives::instances(batch, names) {
        by_pid.entry(inst.pid).or_default().push(inst);
    }
    let ranks: Vec<RankInput> =
        by_pid.into_iter().map(|(pid, instances)| RankInput { file: path.clone(), pid, instances }).collect();
    let views: Vec<RankView> = ranks.iter().map(|input| RankView { input, clock: ClockMap::default() }).collect();
    let late = late_windows(&collectives::cross_rank(&views), &path);
    let account_opts = AccountOptions { windows: process_windows(batch), ..AccountOptions::default() };
    let mut accounts = Vec::new();
    let mut details = Vec::new();
    let mut activity = HashMap::new();
    for r in analyze_with(batch, names, &account_opts, Some(&opts.detail), &late) {
        if let Some(act) = r.late_activity {
            activity.entry(r.account.pid).or_insert(act);
        }
        accounts.push(r.account);
        details.push(r.detail);
    }
    let kernel_names = details
        .iter()
        .flat_map(|d| d.kernels.iter())
        .map(|k| (k.name_id, names.get(&k.name_id).cloned().unwrap_or_else(|| format!("kernel#{}", k.name_id))))
        .collect();
    FileReport {
        path,
        accounts,
        details,
        kernel_names,
        ranks,
        activity,
        realtime_offset_ns: collectives::realtime_offset(batch),
        host_id: None,
        clock: FileClock::default(),
        warnings,
        recording_notes: recording_notes(batch, names),
        profiler_cost: profiler_costs(batch),
        damaged_chunks: Vec::new(),
        host: super::host::host_figures(batch),
    }
}

/// The windows (own clock) in which other ranks waited for each process of `file`.
pub fn late_windows(cross: &CrossRank, file: &str) -> LateWindows {
    cross
        .skew
        .iter()
        .filter(|s| s.file == file && !s.late_windows.is_empty())
        .map(|s| (s.pid, s.late_windows.clone()))
        .collect()
}

/// The cross-rank view of all files, each file's clock mapped as [`analyze_files`] aligned it
/// ([`clock_align::align`]: by the collectives across hosts, else CLOCK_REALTIME when each
/// recorded the mapping, else their monotonic clocks).
pub fn cross_rank(reports: &[FileReport]) -> CrossRank {
    let ranks: Vec<RankView> =
        reports.iter().flat_map(|r| r.ranks.iter().map(move |input| RankView { input, clock: r.clock.map })).collect();
    collectives::cross_rank(&ranks)
}

/// What the straggler was doing while the others waited for it.
pub fn straggler_activity(reports: &[FileReport], cross: &CrossRank) -> Option<String> {
    let s = &cross.skew[cross.straggler?];
    let report = reports.iter().find(|r| r.path == s.file)?;
    report.activity.get(&s.pid).cloned()
}
