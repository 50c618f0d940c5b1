//! `ghostprof export`: a trace in another format (Chrome trace JSON for Perfetto and HTA), or
//! the analysis of traces as Parquet tables (`--format parquet OUT_DIR TRACE...`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::analyze::ReportOptions;
use crate::export::{export_chrome, export_parquet, ChromeOptions, ParquetOptions};
use crate::outfile::sudo_owner;
use crate::units::escape_text;

/// The formats `export` writes.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Chrome trace event JSON, as PyTorch's profiler writes (Perfetto, chrome://tracing, HTA).
    Chrome,
    /// The analysis `report` makes, as Parquet tables in a directory (docs/parquet-schema.md).
    Parquet,
}

/// `ghostprof export`'s arguments, used as its configuration.
#[derive(Args, Debug)]
pub struct ExportConfig {
    /// The trace file (chrome); OUT_DIR then the trace files (parquet, without -o).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format: chrome (Chrome trace event JSON, as PyTorch's profiler writes) or parquet
    /// (the report's tables for fleet analysis).
    #[arg(long, value_enum, default_value = "chrome", hide_possible_values = true)]
    pub format: ExportFormat,
    /// Output file; a directory (existing, or ending in /) gets one file per process. Parquet:
    /// the output directory (else the first FILE).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Only this process (chrome).
    #[arg(long)]
    pub pid: Option<u32>,
    /// The job's name in every Parquet row (default: a hash of the traces' headers).
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Parquet: width of the timeline bins, as `report --bin` (e.g. 1ms).
    #[arg(long, value_name = "DURATION")]
    pub bin: Option<String>,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cfg: &ExportConfig) -> anyhow::Result<ExitCode> {
    if cfg.format == ExportFormat::Parquet {
        return run_parquet(cfg);
    }
    if cfg.job.is_some() || cfg.bin.is_some() {
        anyhow::bail!("--job and --bin are options of --format parquet");
    }
    let (Some(output), [file]) = (&cfg.output, cfg.files.as_slice()) else {
        anyhow::bail!("export --format chrome takes one trace file and -o OUTPUT (several traces: --format parquet)");
    };
    let cfg = ChromeArgs { file, output, pid: cfg.pid, force: cfg.force };
    // A directory (existing, or named with a trailing slash) gets one file per process: the
    // layout HTA reads, one file per rank.
    // (A symlink is not taken for a directory: it is refused as an output file.)
    let per_process = std::fs::symlink_metadata(cfg.output).is_ok_and(|m| m.is_dir())
        || cfg.output.as_os_str().to_string_lossy().ends_with('/');
    if !per_process {
        // Said before the trace is read (export_chrome checks again when it creates the file).
        crate::outfile::check_output(cfg.output, cfg.force)?;
    }
    let opts = ChromeOptions { pid: cfg.pid, per_process, force: cfg.force, owner: sudo_owner() };
    let summary = export_chrome(cfg.file, cfg.output, &opts)?;
    for w in &summary.warnings {
        super::say(&format!("ghostprof: warning: {}", escape_text(w)));
    }
    for f in &summary.files {
        let pids: Vec<String> = f.pids.iter().map(u32::to_string).collect();
        let ranks = match f.ranks.as_slice() {
            [] => "no rank".to_string(),
            [r] => format!("rank {r} of {}", f.world_size),
            rs => {
                let rs: Vec<String> = rs.iter().map(u32::to_string).collect();
                format!("ranks {} of {}", rs.join(", "), f.world_size)
            }
        };
        super::out(&format!(
            "wrote {} ({} events; pid {}; {ranks})\n",
            escape_text(&f.path.display().to_string()),
            f.events,
            pids.join(", "),
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The Chrome export's arguments, checked.
struct ChromeArgs<'a> {
    file: &'a PathBuf,
    output: &'a PathBuf,
    pid: Option<u32>,
    force: bool,
}

/// `export --format parquet [-o] OUT_DIR TRACE...`.
fn run_parquet(cfg: &ExportConfig) -> anyhow::Result<ExitCode> {
    if cfg.pid.is_some() {
        anyhow::bail!("--pid is an option of --format chrome: the Parquet tables hold every process");
    }
    let (out_dir, traces) = match (&cfg.output, cfg.files.as_slice()) {
        (Some(dir), traces) => (dir, traces),
        (None, [dir, traces @ ..]) if !traces.is_empty() => (dir, traces),
        _ => anyhow::bail!(
            "export --format parquet needs OUT_DIR and at least one trace: export --format parquet OUT_DIR TRACE..."
        ),
    };
    let bin_ns = cfg.bin.as_deref().map(super::report::parse_bin).transpose()?;
    let mut report = ReportOptions::default();
    report.detail.bin_ns = bin_ns;
    let opts = ParquetOptions { job: cfg.job.clone(), report, force: cfg.force, owner: sudo_owner() };
    let started = std::time::Instant::now();
    let summary = export_parquet(traces, out_dir, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    for w in &summary.warnings {
        super::say(&format!("ghostprof: warning: {}", escape_text(w)));
    }
    for f in &summary.files {
        super::out(&format!("wrote {} ({} rows)\n", escape_text(&f.path.display().to_string()), f.rows))?;
    }
    super::out(&format!(
        "job {}: {} records of {} trace(s) in {:.2} s ({:.0} records/s)\n",
        escape_text(&summary.job),
        summary.records,
        traces.len(),
        secs,
        summary.records as f64 / secs.max(1e-9)
    ))?;
    Ok(ExitCode::SUCCESS)
}
