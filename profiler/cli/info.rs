//! `ghostprof info`: prints a trace's summary as text or one JSON object.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::trace::summary::{summarize, TraceSummary};
use crate::trace::TraceReader;
use crate::units::{escape_text, human_bytes};

/// `ghostprof info`'s arguments, used as its configuration.
#[derive(Args, Debug)]
pub struct InfoConfig {
    /// The trace file.
    #[arg(value_name = "FILE")]
    pub path: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also join eBPF launch records to CUPTI kernel records (reads every record).
    #[arg(long)]
    pub join: bool,
    /// Decompress and decode every chunk (checking every frame's checksum); one line per
    /// damaged chunk, exit status 1 if any.
    #[arg(long)]
    pub verify: bool,
}

pub fn run(cfg: &InfoConfig) -> anyhow::Result<ExitCode> {
    let reader = TraceReader::open(&cfg.path)?;
    if cfg.verify {
        reader.verify()?;
    }
    let mut summary = summarize(&reader)?;
    summary.verified = cfg.verify;
    for w in &summary.warnings {
        super::say(&format!("ghostprof: warning: {}", escape_text(w)));
    }
    let join = if cfg.join { Some(crate::analyze::join::join_launches(&reader.read_all()?)) } else { None };
    if cfg.json {
        let mut v = serde_json::to_value(&summary).context("serializing the summary")?;
        if let (Some(j), Some(obj)) = (&join, v.as_object_mut()) {
            obj.insert(
                "launch_join".into(),
                serde_json::json!({ "launches": j.launches, "joined": j.joined, "share": j.share() }),
            );
        }
        super::out_json(&(serde_json::to_string_pretty(&v).context("serializing the summary")? + "\n"))?;
    } else {
        super::out(&render(&summary))?;
        if let Some(j) = &join {
            super::out(&format!(
                "launch join {} of {} eBPF launches joined their CUPTI kernel ({:.2}%)\n",
                j.joined,
                j.launches,
                j.share() * 100.0
            ))?;
        }
    }
    if cfg.verify && !summary.damaged_chunks.is_empty() {
        let lost: u64 = summary.damaged_chunks.iter().map(|d| d.records_lost).sum();
        anyhow::bail!(
            "{}: {} of {} chunks are damaged ({} records): the other chunks read back; `report` and `export` skip the damaged ones",
            cfg.path.display(),
            summary.damaged_chunks.len(),
            summary.chunks,
            grouped(lost)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn render(s: &TraceSummary) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "file        {} ({}, {})",
        escape_text(&s.path),
        human_bytes(s.compressed_bytes),
        if s.finalized { "finalized" } else { "NOT finalized: recording was interrupted" }
    );
    let _ = writeln!(
        o,
        "format      {} (written by ghostprof {} on {})",
        s.format_version,
        escape_text(s.ghostprof_version.as_deref().unwrap_or("?")),
        escape_text(s.hostname.as_deref().unwrap_or("?"))
    );
    if !s.command.is_empty() {
        let _ = writeln!(o, "command     {}", escape_text(&s.command.join(" ")));
    }
    let _ = writeln!(
        o,
        "span        {} .. {} ns (CLOCK_MONOTONIC), {:.3} s",
        s.start_ns,
        s.end_ns,
        s.duration_ns as f64 / 1e9
    );
    let _ = writeln!(o, "chunks      {}", s.chunks);
    let _ = writeln!(o, "records     {}", grouped(s.total_records));
    for (k, n) in &s.records {
        if *n > 0 {
            let _ = writeln!(o, "  {k:<12}{:>16}", grouped(*n));
        }
    }
    if s.drops_detail.is_empty() {
        let _ = writeln!(o, "drops       none");
    } else {
        let _ = writeln!(
            o,
            "drops       {} records lost",
            grouped(s.drops.values().fold(0u64, |a, n| a.saturating_add(*n)))
        );
        for d in &s.drops_detail {
            let _ = writeln!(o, "  {:<12}{:>16}  ({})", d.source, grouped(d.count), d.cause);
        }
    }
    for n in &s.notes {
        let _ = writeln!(o, "note        {}", escape_text(n));
    }
    if let Some(from) = s.skipped_from {
        let _ =
            writeln!(o, "skipped     {} bytes from byte {from} to the end: not whole chunks", grouped(s.skipped_bytes));
    }
    for d in &s.damaged_chunks {
        let _ = writeln!(
            o,
            "damaged     chunk {} at byte {}: {} records lost ({})",
            d.chunk,
            d.offset,
            grouped(d.records_lost),
            d.error
        );
    }
    if s.verified && s.damaged_chunks.is_empty() {
        let _ = writeln!(o, "verified    every chunk decompresses (checksums match) and decodes");
    }
    let _ = writeln!(
        o,
        "size        raw {} as fixed rows, {} decoded columns, {} on disk ({:.2} bytes/record)",
        human_bytes(s.raw_bytes),
        human_bytes(s.decoded_bytes),
        human_bytes(s.compressed_bytes),
        s.bytes_per_record
    );
    o
}
