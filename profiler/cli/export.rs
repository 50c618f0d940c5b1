//! `ghostprof export`: a trace in another format (Chrome trace JSON for Perfetto and HTA).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use crate::report::chrome::{export_chrome, ChromeOptions};

pub struct ExportConfig {
    pub file: PathBuf,
    pub format: String,
    pub output: PathBuf,
    pub pid: Option<u32>,
}

pub fn run(cfg: &ExportConfig) -> anyhow::Result<ExitCode> {
    if cfg.format != "chrome" {
        bail!("unknown export format {:?} (supported: chrome)", cfg.format);
    }
    // A directory (existing, or named with a trailing slash) gets one file per process: the
    // layout HTA reads, one file per rank.
    let per_process = cfg.output.is_dir() || cfg.output.as_os_str().to_string_lossy().ends_with('/');
    let summary = export_chrome(&cfg.file, &cfg.output, &ChromeOptions { pid: cfg.pid, per_process })?;
    for w in &summary.warnings {
        eprintln!("ghostprof: warning: {w}");
    }
    for f in &summary.files {
        let pids: Vec<String> = f.pids.iter().map(u32::to_string).collect();
        println!(
            "wrote {} ({} events; pid {}; rank {} of {})",
            f.path.display(),
            f.events,
            pids.join(", "),
            f.rank,
            f.world_size
        );
    }
    Ok(ExitCode::SUCCESS)
}
