//! `ghostprof report`: the accounting of trace files, as text or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::report::{analyze_file, render_json, render_text};

pub struct ReportConfig {
    pub files: Vec<PathBuf>,
    pub json: bool,
}

pub fn run(cfg: &ReportConfig) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for f in &cfg.files {
        reports.push(analyze_file(f)?);
    }
    if cfg.json {
        println!("{}", serde_json::to_string_pretty(&render_json(&reports))?);
    } else {
        print!("{}", render_text(&reports));
    }
    Ok(ExitCode::SUCCESS)
}
