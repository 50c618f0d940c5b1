//! `ghostprof demo`: the main job on a machine without a GPU. Runs gpusim's 2-rank `straggler`
//! scenario (simulated CUDA, CUPTI and NCCL with real waiting) under `record`, prints the report
//! and puts it next to the simulator's ground truth; writes the HTML report next to the trace.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use clap::Args;

use crate::analyze::analyze_file;
use crate::analyze::{account, AccountOptions, Category, Window};
use crate::record::session::{find_inject_lib, record_command_with_progress, LaunchConfig};
use crate::report::{html, render_text, ReportDoc};

/// `ghostprof demo`'s arguments, used as its configuration.
#[derive(Args, Debug)]
pub struct DemoConfig {
    /// Where to put the trace and the HTML report.
    #[arg(long, default_value = "ghostprof-demo")]
    pub dir: PathBuf,
}

fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.exists().then_some(p)
}

pub fn run(cfg: &DemoConfig) -> anyhow::Result<ExitCode> {
    super::record::require_root()?;
    let train = sibling("gpusim-train")
        .context("gpusim-train is not built next to ghostprof: run tools/demo (it builds the workspace)")?;
    let inject = find_inject_lib().context("libghostprof_inject.so is not built next to ghostprof: run tools/demo")?;
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
    let dir = cfg.dir.canonicalize()?;
    let lib_dir = dir.join("gpusim-lib");
    let truth_dir = dir.join("truth");
    let _ = std::fs::remove_dir_all(&truth_dir);
    let staged = Command::new(&train)
        .arg("stage")
        .arg("--lib-dir")
        .arg(&lib_dir)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !staged.success() {
        bail!("staging gpusim's libraries into {} failed", lib_dir.display());
    }
    let trace = dir.join("demo.gptrace");
    super::out("ghostprof demo: 2 simulated ranks of a training job, rank 1 a 25% straggler, 3 seconds\n")?;
    super::out("  (gpusim: simulated libcuda, libcupti and libnccl with real waiting; no GPU needed)\n\n")?;
    let command: Vec<String> = [
        train.display().to_string(),
        "--scenario".into(),
        "straggler".into(),
        "--ranks".into(),
        "2".into(),
        "--seconds".into(),
        "3".into(),
        "--out".into(),
        truth_dir.display().to_string(),
        "--lib-dir".into(),
        lib_dir.display().to_string(),
    ]
    .into();
    let mut launch = LaunchConfig::new(command, trace.clone());
    launch.overwrite = true;
    launch.quiet_child = true;
    launch.inject_lib = Some(inject);
    launch.library_dirs.push(lib_dir.clone());
    let summary = record_command_with_progress(&launch, &AtomicBool::new(false), &mut |_| {})?;
    if !summary.exit_status.is_some_and(|s| s.success()) {
        bail!("the simulated job failed: {:?}", summary.exit_status);
    }
    let report = [analyze_file(&trace)?];
    super::out(&render_text(&report))?;
    compare_with_truth(&trace, &truth_dir)?;
    let page = dir.join("demo.html");
    // The demo rewrites its own files each run; by the same rules as every output.
    crate::outfile::write_output(
        &page,
        true,
        crate::outfile::sudo_owner(),
        html::render(&ReportDoc::from_reports(&report)).as_bytes(),
    )?;
    super::out(&format!("\ntrace: {}\n", trace.display()))?;
    super::out(&format!("ground truth: {}\n", truth_dir.display()))?;
    super::out(&format!("HTML report: {} (open it in a browser)\n", page.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints each rank's categories next to the simulator's, over the simulator's windows.
fn compare_with_truth(trace: &Path, truth_dir: &Path) -> anyhow::Result<()> {
    let crate::analyze::Loaded { batch, names, .. } = crate::analyze::load(trace)?;
    let mut truths = Vec::new();
    for rank in 0..2 {
        let path = truth_dir.join(format!("truth-rank{rank}.json"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        truths.push(serde_json::from_str::<serde_json::Value>(&text)?);
    }
    let mut opts = AccountOptions::default();
    for t in &truths {
        let pid = t["pid"].as_u64().unwrap_or(0) as u32;
        opts.windows.insert(
            pid,
            Window::new(t["window"]["start_ns"].as_u64().unwrap_or(0), t["window"]["end_ns"].as_u64().unwrap_or(0)),
        );
    }
    let accounts = account(&batch, &names, &opts);
    super::out("\nAgainst gpusim's ground truth (the simulator's own windows), % of the window:\n")?;
    for t in &truths {
        let pid = t["pid"].as_u64().unwrap_or(0) as u32;
        let Some(a) = accounts.iter().find(|a| a.pid == pid) else { continue };
        let w = a.window_ns().max(1) as f64;
        super::out(&format!("  rank {} (pid {pid})         ghostprof   truth\n", t["rank"]))?;
        let mut worst = 0f64;
        for name in Category::NAMES {
            let ours = a.categories.get(name) as f64 / w * 100.0;
            let truth = t["devices"][0]["categories"][name].as_u64().unwrap_or(0) as f64 / w * 100.0;
            worst = worst.max((ours - truth).abs());
            super::out(&format!("    {name:<22} {ours:>6.2}%  {truth:>6.2}%\n"))?;
        }
        super::out(&format!("    largest difference: {worst:.2} points\n"))?;
    }
    Ok(())
}
