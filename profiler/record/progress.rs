//! Live progress of a recording session: the figures handed to the caller's status line
//! ([`Progress`]) and the timer that produces them from the pipeline's counters.

use std::time::{Duration, Instant};

use crate::pipeline::{Pipeline, PipelineStats};

/// Live figures for a status line, handed to the progress callback about once a second.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Time since the session started.
    pub elapsed: Duration,
    /// Records written to the trace so far.
    pub records_written: u64,
    /// Bytes written to the trace file so far.
    pub bytes_written: u64,
    /// Records written per second since the previous report.
    pub records_per_s: f64,
    /// Records lost so far, all sources and causes together.
    pub drops: u64,
    /// Processes traced now.
    pub processes: usize,
    /// CUPTI rings found so far.
    pub cupti_rings: usize,
    /// The writer's error, if a write failed.
    pub writer_error: Option<String>,
}

/// Calls the progress callback about once a second with live figures.
pub(crate) struct Ticker {
    started: Instant,
    last: Instant,
    last_records: u64,
}

impl Ticker {
    pub(crate) fn new() -> Self {
        Ticker { started: Instant::now(), last: Instant::now(), last_records: 0 }
    }

    /// Reports if a second has passed; returns the pipeline's figures when it did.
    pub(crate) fn tick(
        &mut self,
        pipeline: &Pipeline,
        processes: usize,
        cupti_rings: usize,
        progress: &mut dyn FnMut(&Progress),
    ) -> Option<PipelineStats> {
        if self.last.elapsed() < Duration::from_secs(1) {
            return None;
        }
        let stats = pipeline.stats();
        let dt = self.last.elapsed().as_secs_f64();
        progress(&Progress {
            elapsed: self.started.elapsed(),
            records_written: stats.records_written,
            bytes_written: stats.bytes_written,
            records_per_s: (stats.records_written - self.last_records) as f64 / dt,
            drops: stats.drops.iter().fold(0u64, |a, d| a.saturating_add(d.2)),
            processes,
            cupti_rings,
            writer_error: stats.writer_error.clone(),
        });
        self.last_records = stats.records_written;
        self.last = Instant::now();
        Some(stats)
    }
}
