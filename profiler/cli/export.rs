//! `ghostprof export`: a trace in another format (Chrome trace JSON for Perfetto and HTA).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::export::{export_chrome, ChromeOptions};
use crate::outfile::sudo_owner;
use crate::units::escape_text;

/// The formats `export` writes.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Chrome trace event JSON, as PyTorch's profiler writes (Perfetto, chrome://tracing, HTA).
    Chrome,
}

/// `ghostprof export`'s arguments, used as its configuration.
#[derive(Args, Debug)]
pub struct ExportConfig {
    /// The trace file.
    pub file: PathBuf,
    /// Output format (chrome: Chrome trace event JSON, as PyTorch's profiler writes).
    #[arg(long, value_enum, default_value = "chrome", hide_possible_values = true)]
    pub format: ExportFormat,
    /// Output file; a directory (existing, or ending in /) gets one file per process.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cfg: &ExportConfig) -> anyhow::Result<ExitCode> {
    let ExportFormat::Chrome = cfg.format;
    // A directory (existing, or named with a trailing slash) gets one file per process: the
    // layout HTA reads, one file per rank.
    // (A symlink is not taken for a directory: it is refused as an output file.)
    let per_process = std::fs::symlink_metadata(&cfg.output).is_ok_and(|m| m.is_dir())
        || cfg.output.as_os_str().to_string_lossy().ends_with('/');
    if !per_process {
        // Said before the trace is read (export_chrome checks again when it creates the file).
        crate::outfile::check_output(&cfg.output, cfg.force)?;
    }
    let opts = ChromeOptions { pid: cfg.pid, per_process, force: cfg.force, owner: sudo_owner() };
    let summary = export_chrome(&cfg.file, &cfg.output, &opts)?;
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
