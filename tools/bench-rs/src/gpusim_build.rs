//! gpusim for the benchmarks that drive `gpusim-train launch-loop` (`probe`, `cupti`): build it
//! (and any ghostprof crate the benchmark injects) with this binary's profile, stage a private
//! copy of its libraries, and run the loop process through its ready/go protocol.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

/// One timed loop, as the loop process reported it.
pub struct LoopRun {
    /// Wall time of the loop.
    pub elapsed_ns: u64,
    /// CPU time of the loop thread, uprobe handling included, preemption by other work not.
    pub cpu_ns: u64,
    /// CPU time of the whole loop process over the loop, every thread (CUPTI's included), with
    /// CUPTI's buffered records delivered before the clock was read. None from an older
    /// `gpusim-train`.
    pub process_cpu_ns: Option<u64>,
    /// Whether the loop flushed CUPTI around the window (a CUPTI client had loaded libcupti).
    pub cupti_flushed: bool,
    /// Launches before the window (their records are not the window's).
    pub warmup_calls: u64,
}

/// The loop process, stopped at its go-ahead.
pub struct LoopProcess {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl LoopProcess {
    /// Starts `gpusim-train launch-loop` over the staged libraries in `lib_dir`, with `env` on
    /// top of ours, and waits for its `ready` line.
    pub fn spawn(
        gpusim_train: &Path,
        lib_dir: &Path,
        calls: u64,
        threads: u64,
        env: &[(&str, String)],
    ) -> Result<Self> {
        let mut child = Command::new(gpusim_train)
            .args(["launch-loop", "--calls", &calls.to_string(), "--threads", &threads.to_string()])
            .env("LD_LIBRARY_PATH", lib_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", gpusim_train.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the loop process has no stdin/stdout pipes");
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).context("reading the loop's ready line")?;
        let Some(pid) = line.strip_prefix("ready ").and_then(|p| p.trim().parse().ok()) else {
            let status = child.wait().context("waiting for the loop process")?;
            bail!("the loop process did not get ready ({status}); it said {line:?}");
        };
        Ok(LoopProcess { child, stdin, stdout, pid })
    }

    pub fn go(&mut self) -> Result<()> {
        self.stdin.write_all(b"go\n").and_then(|()| self.stdin.flush()).context("starting the loop")
    }

    /// Waits for the loop's report (its last line) and its exit.
    pub fn finish(mut self, calls: u64) -> Result<LoopRun> {
        let mut text = String::new();
        for line in self.stdout.by_ref().lines() {
            text = line.context("reading the loop's report")?;
        }
        let status = self.child.wait().context("waiting for the loop process")?;
        ensure!(status.success(), "the loop process failed ({status}); last line {text:?}");
        let report: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("the loop's report {text:?}"))?;
        ensure!(report["calls"].as_u64() == Some(calls), "the loop ran {} calls, not {calls}", report["calls"]);
        let field = |name: &str| report[name].as_u64().with_context(|| format!("{name} missing in {text:?}"));
        Ok(LoopRun {
            elapsed_ns: field("elapsed_ns")?,
            cpu_ns: field("cpu_ns")?,
            process_cpu_ns: report["process_cpu_ns"].as_u64(),
            cupti_flushed: report["cupti_flushed"].as_bool().unwrap_or(false),
            warmup_calls: report["warmup_calls"].as_u64().unwrap_or(0),
        })
    }
}

/// Builds gpusim's libraries and `gpusim-train`, plus the workspace packages in `extra`, with
/// this binary's profile into this binary's target dir (cargo released its lock before running
/// us), and returns that profile's dir.
pub fn build_gpusim(extra: &[&str]) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let bin_dir = exe.parent().context("this executable has no directory")?.to_path_buf();
    let target_dir = bin_dir.parent().context("this executable is not in a cargo target dir")?;
    let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => bail!("cannot tell the cargo profile from {}", bin_dir.display()),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let packages = ["gpusim-cuda", "gpusim-nccl", "gpusim-cupti", "gpusim-train"].iter().chain(extra);
    eprintln!("building gpusim ({profile}) ...");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "--profile", profile, "--target-dir"])
        .arg(target_dir)
        .args(packages.flat_map(|p| ["-p", p]))
        .status()
        .context("running cargo to build gpusim")?;
    ensure!(status.success(), "building gpusim failed ({status})");
    Ok(bin_dir)
}

/// A private copy of the libraries: probes are on this copy's inode, so nothing else on the
/// machine (another test's gpusim) is traced or slowed.
pub fn stage(bin_dir: &Path, lib_dir: &Path) -> Result<()> {
    let out = Command::new(bin_dir.join("gpusim-train"))
        .arg("stage")
        .arg("--lib-dir")
        .arg(lib_dir)
        .output()
        .context("running gpusim-train stage")?;
    ensure!(out.status.success(), "gpusim-train stage failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
