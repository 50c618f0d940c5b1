//! `ghostprof report`: the accounting of trace files, as text or JSON, and as an HTML page.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::report::{analyze_file, html, render_json, render_text};

pub struct ReportConfig {
    pub files: Vec<PathBuf>,
    pub json: bool,
    /// Also write the HTML report here.
    pub html: Option<PathBuf>,
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
    if let Some(path) = &cfg.html {
        std::fs::write(path, html::render(&render_json(&reports)))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("ghostprof: HTML report written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
