//! Collectors → bounded lock-free queues → one writer thread → trace file.
//!
//! Each producer owns a queue (crossbeam `ArrayQueue`) of record batches. Pushing never blocks:
//! when the queue is full the batch is dropped and counted against its source. The writer thread
//! drains every queue, cuts chunks, and writes the drop counters into the trace as `Drops`
//! records whenever they change, so the trace says what it is missing.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::trace::{
    DropCause, Drops, Interner, Record, Source, TraceError, TraceInfo, TraceWriter, WriteSummary, WriterOptions,
};

/// Number of drop causes tracked per queue (DropCause values are 1..=8; room to grow).
const CAUSES: usize = 16;
const _: () = {
    let mut i = 0;
    while i < DropCause::ALL.len() {
        assert!((DropCause::ALL[i] as usize) < CAUSES);
        i += 1;
    }
};

/// Sizes and timing of the pipeline: queue depth, batch size, flush interval, and the trace writer's options.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Batches each producer's queue holds before it drops.
    pub queue_batches: usize,
    /// Records per batch.
    pub batch_records: usize,
    /// Pending records are written as a chunk at least this often (bounds what a crash loses).
    pub flush_interval: Duration,
    /// Options of the trace writer the pipeline's thread drives.
    pub writer: WriterOptions,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            queue_batches: 256,
            batch_records: 1024,
            flush_interval: Duration::from_millis(500),
            writer: WriterOptions::default(),
        }
    }
}

struct SourceQueue {
    source: Source,
    queue: ArrayQueue<Vec<Record>>,
    /// Emptied batches handed back to the producer, so steady state allocates nothing.
    free: ArrayQueue<Vec<Record>>,
    /// Cumulative drops by cause; QueueFull is counted here, the others are reported by the
    /// collector (e.g. BPF ring buffer losses it read from a map).
    drops: [AtomicU64; CAUSES],
}

struct Shared {
    queues: Mutex<Vec<Arc<SourceQueue>>>,
    stop: AtomicBool,
    interner: Arc<Interner>,
    records_written: AtomicU64,
    bytes_written: AtomicU64,
    writer_error: Mutex<Option<String>>,
    writer_thread: Mutex<Option<std::thread::Thread>>,
}

/// Live figures for a status line.
#[derive(Debug, Clone, Default)]
pub struct PipelineStats {
    /// Records written to the trace so far.
    pub records_written: u64,
    /// Bytes written to the trace file so far.
    pub bytes_written: u64,
    /// (source, cause, cumulative count), only non-zero entries
    pub drops: Vec<(Source, DropCause, u64)>,
    /// The writer thread's error, if a write failed (later records count as `WriterStopped` drops).
    pub writer_error: Option<String>,
}

/// The running pipeline: the producers' queues and the writer thread that drains them into the trace.
pub struct Pipeline {
    shared: Arc<Shared>,
    options: PipelineOptions,
    thread: Option<JoinHandle<Result<WriteSummary, TraceError>>>,
}

/// A collector's handle: buffers records and hands them over in batches.
pub struct Producer {
    queue: Arc<SourceQueue>,
    shared: Arc<Shared>,
    buf: Vec<Record>,
    batch: usize,
}

impl Pipeline {
    /// Creates the trace file and starts the writer thread.
    pub fn create(
        path: &Path,
        overwrite: bool,
        info: &TraceInfo,
        options: PipelineOptions,
    ) -> Result<Self, TraceError> {
        let interner = Arc::new(Interner::new());
        let writer = TraceWriter::create(path, overwrite, info, interner.clone(), options.writer.clone())?;
        Ok(Self::start(writer, interner, options))
    }

    /// Starts the writer thread on an existing writer whose strings come from `interner`.
    pub fn start(writer: TraceWriter, interner: Arc<Interner>, options: PipelineOptions) -> Self {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            interner,
            records_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(writer.bytes_written()),
            writer_error: Mutex::new(None),
            writer_thread: Mutex::new(None),
        });
        let s = shared.clone();
        let flush_interval = options.flush_interval;
        let thread = std::thread::Builder::new()
            .name("ghostprof-writer".into())
            .spawn(move || writer_loop(writer, s, flush_interval))
            .expect("spawning the writer thread");
        *lock(&shared.writer_thread) = Some(thread.thread().clone());
        Pipeline { shared, options, thread: Some(thread) }
    }

    /// The string table shared by the producers and the writer (names in records are its ids).
    pub fn interner(&self) -> Arc<Interner> {
        self.shared.interner.clone()
    }

    /// A new producer for `source`, with its own queue.
    pub fn producer(&self, source: Source) -> Producer {
        let queue = Arc::new(SourceQueue {
            source,
            queue: ArrayQueue::new(self.options.queue_batches.max(1)),
            free: ArrayQueue::new(self.options.queue_batches.max(1)),
            drops: Default::default(),
        });
        lock(&self.shared.queues).push(queue.clone());
        Producer {
            queue,
            shared: self.shared.clone(),
            buf: Vec::with_capacity(self.options.batch_records),
            batch: self.options.batch_records.max(1),
        }
    }

    /// Live figures: records and bytes written, drops by source and cause, the writer's error.
    pub fn stats(&self) -> PipelineStats {
        stats(&self.shared)
    }

    /// Stops the writer after it has drained every queue, and finalizes the file. Producers
    /// should be flushed (or dropped) first; records pushed later are counted as dropped.
    pub fn finish(mut self) -> Result<(WriteSummary, PipelineStats), TraceError> {
        self.shared.stop.store(true, Ordering::Release);
        let thread = self.thread.take().expect("finish runs once");
        thread.thread().unpark();
        let result = thread.join().map_err(|_| TraceError::Writer { what: "writer thread panicked".into() })?;
        Ok((result?, stats(&self.shared)))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shared.stop.store(true, Ordering::Release);
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Producer {
    /// Buffers one record; hands the batch to the writer when it reaches the batch size.
    #[inline]
    pub fn push(&mut self, rec: impl Into<Record>) {
        self.buf.push(rec.into());
        if self.buf.len() >= self.batch {
            self.flush();
        }
    }

    /// Hands the buffered records to the writer (collectors call this on their drain timer).
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.shared.stop.load(Ordering::Acquire) {
            self.count_drop(DropCause::WriterStopped, self.buf.len() as u64);
            self.buf.clear();
            return;
        }
        let next = self.queue.free.pop().unwrap_or_else(|| Vec::with_capacity(self.batch));
        let full = std::mem::replace(&mut self.buf, next);
        if let Err(mut full) = self.queue.queue.push(full) {
            self.count_drop(DropCause::QueueFull, full.len() as u64);
            full.clear();
            let spare = std::mem::replace(&mut self.buf, full);
            let _ = self.queue.free.push(spare);
        } else if self.queue.queue.len() * 2 >= self.queue.queue.capacity() {
            // Wake the writer early when the queue is half full.
            if let Some(t) = lock(&self.shared.writer_thread).as_ref() {
                t.unpark();
            }
        }
    }

    /// The id of `s` in the trace's string table (interned once).
    pub fn intern(&self, s: &str) -> u32 {
        self.shared.interner.intern(s)
    }

    /// [`Interner::intern_bounded`]: a name from the untrusted job, within `budget`.
    pub fn intern_bounded(&self, s: &str, budget: &mut crate::trace::NameBudget) -> u32 {
        self.shared.interner.intern_bounded(s, budget)
    }

    /// Records that the collector lost `count` more records to `cause`.
    pub fn count_drop(&self, cause: DropCause, count: u64) {
        self.queue.drops[cause as usize % CAUSES].fetch_add(count, Ordering::Relaxed);
    }

    /// Sets the collector's cumulative loss for `cause` (for counters read from the kernel).
    pub fn set_drops(&self, cause: DropCause, cumulative: u64) {
        self.queue.drops[cause as usize % CAUSES].fetch_max(cumulative, Ordering::Relaxed);
    }

    /// Records pushed but not yet handed over.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.flush();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn stats(shared: &Shared) -> PipelineStats {
    PipelineStats {
        records_written: shared.records_written.load(Ordering::Relaxed),
        bytes_written: shared.bytes_written.load(Ordering::Relaxed),
        drops: drop_totals(&lock(&shared.queues)).into_iter().filter(|(_, _, n)| *n > 0).collect(),
        writer_error: lock(&shared.writer_error).clone(),
    }
}

/// Cumulative drops summed over the queues of each source.
fn drop_totals(queues: &[Arc<SourceQueue>]) -> Vec<(Source, DropCause, u64)> {
    let mut out: Vec<(Source, DropCause, u64)> = Vec::new();
    for q in queues {
        for cause in DropCause::ALL {
            let n = q.drops[*cause as usize % CAUSES].load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            match out.iter_mut().find(|(s, c, _)| *s == q.source && c == cause) {
                Some(e) => e.2 = e.2.saturating_add(n),
                None => out.push((q.source, *cause, n)),
            }
        }
    }
    out.sort();
    out
}

fn writer_loop(
    mut writer: TraceWriter,
    shared: Arc<Shared>,
    flush_interval: Duration,
) -> Result<WriteSummary, TraceError> {
    let mut failed: Option<TraceError> = None;
    let mut last_flush = Instant::now();
    let mut written_drops: Vec<(Source, DropCause, u64)> = Vec::new();
    let mut queues: Vec<Arc<SourceQueue>> = Vec::new();
    // Per queue: records handed to the writer since its last whole chunk. A failed write
    // loses them: they are counted against their source (`WriterStopped`).
    let mut unwritten: Vec<u64> = Vec::new();
    let fail = |e: TraceError, failed: &mut Option<TraceError>, queues: &[Arc<SourceQueue>], unwritten: &mut [u64]| {
        *lock(&shared.writer_error) = Some(e.to_string());
        *failed = Some(e);
        for (q, n) in queues.iter().zip(unwritten.iter_mut()) {
            q.drops[DropCause::WriterStopped as usize].fetch_add(std::mem::take(n), Ordering::Relaxed);
        }
    };
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        {
            let q = lock(&shared.queues);
            if q.len() != queues.len() {
                queues = q.clone();
                unwritten.resize(queues.len(), 0);
            }
        }
        let mut got = 0usize;
        for (qi, q) in queues.iter().enumerate() {
            while let Some(mut batch) = q.queue.pop() {
                got += batch.len();
                let mut taken = 0usize;
                if failed.is_none() {
                    for rec in &batch {
                        taken += 1;
                        unwritten[qi] += 1;
                        match writer.append(*rec) {
                            // a chunk was cut: everything handed over so far is in the file
                            Ok(()) if writer.pending_records() == 0 => unwritten.iter_mut().for_each(|n| *n = 0),
                            Ok(()) => {}
                            Err(e) => {
                                fail(e, &mut failed, &queues, &mut unwritten);
                                break;
                            }
                        }
                    }
                }
                // what was not handed over (the writer had stopped)
                let rest = (batch.len() - taken) as u64;
                if rest > 0 {
                    q.drops[DropCause::WriterStopped as usize].fetch_add(rest, Ordering::Relaxed);
                }
                batch.clear();
                let _ = q.free.push(batch);
            }
        }
        let drained = stopping && got == 0;
        if failed.is_none() && (drained || last_flush.elapsed() >= flush_interval) {
            let totals = drop_totals(&queues);
            if totals != written_drops {
                let t = crate::clock::monotonic_ns();
                for (source, cause, count) in &totals {
                    let rec = Drops { time_ns: t, count: *count, source: *source as u32, cause: *cause as u32 };
                    if let Err(e) = writer.append(Record::Drops(rec)) {
                        fail(e, &mut failed, &queues, &mut unwritten);
                        break;
                    }
                }
                written_drops = totals;
            }
            if failed.is_none() {
                match writer.flush_chunk() {
                    Ok(()) => unwritten.iter_mut().for_each(|n| *n = 0),
                    Err(e) => fail(e, &mut failed, &queues, &mut unwritten),
                }
            }
            last_flush = Instant::now();
        }
        shared.records_written.store(writer.records_written(), Ordering::Relaxed);
        shared.bytes_written.store(writer.bytes_written(), Ordering::Relaxed);
        if drained {
            break;
        }
        if got == 0 {
            std::thread::park_timeout(Duration::from_millis(2));
        }
    }
    if let Some(e) = failed {
        return Err(finish_failed(writer, e, &drop_totals(&queues), &shared));
    }
    let summary = writer.finish()?;
    shared.bytes_written.store(summary.compressed_bytes, Ordering::Relaxed);
    Ok(summary)
}

/// After a failed write: stores the final drop counters, index and seek table in the space the
/// writer kept for them, and returns `error` saying how many records were lost, by source, and
/// whether the trace counts them.
fn finish_failed(
    writer: TraceWriter,
    error: TraceError,
    totals: &[(Source, DropCause, u64)],
    shared: &Shared,
) -> TraceError {
    let t = crate::clock::monotonic_ns();
    let records = totals.iter().map(|(source, cause, count)| {
        Record::Drops(Drops { time_ns: t, count: *count, source: *source as u32, cause: *cause as u32 })
    });
    let stored = writer.finish_failed(records.collect::<Vec<_>>());
    if let Ok(summary) = &stored {
        shared.bytes_written.store(summary.compressed_bytes, Ordering::Relaxed);
    }
    let lost: Vec<(Source, u64)> =
        totals.iter().filter(|(_, c, _)| *c == DropCause::WriterStopped).map(|(s, _, n)| (*s, *n)).collect();
    let by_source = lost.iter().map(|(s, n)| format!("{} {n}", s.name())).collect::<Vec<_>>().join(", ");
    let total: u64 = lost.iter().map(|(_, n)| n).sum();
    let note = match stored {
        Ok(_) => format!(
            "{total} records not written ({}), counted in the trace (`ghostprof info` shows them)",
            if by_source.is_empty() { "none" } else { &by_source }
        ),
        Err(e) => format!(
            "{total} records not written ({}); the trace could not store that count ({})",
            if by_source.is_empty() { "none" } else { &by_source },
            one_line(&e.to_string())
        ),
    };
    match error {
        TraceError::Io { path, source } => {
            TraceError::Io { path, source: std::io::Error::new(source.kind(), format!("{source}; {note}")) }
        }
        TraceError::Writer { what } => TraceError::Writer { what: format!("{what}; {note}") },
        e => TraceError::Writer { what: format!("{e}; {note}") },
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}
