//! `overhead`: what profiling costs a training job, as the job's own step time, with a 95%
//! interval (root: the `record` modes load eBPF).
//!
//! gpusim's `gpusim-train` runs a scenario (`launch-bound`, `balanced`) under each mode:
//!
//! | mode | what runs |
//! |---|---|
//! | `plain` | the job alone |
//! | `dormant` | `CUDA_INJECTION64_PATH=libghostprof_inject.so`, no `GHOSTPROF_ENABLE`: the library waits for an `attach` |
//! | `ebpf` | `ghostprof record --no-cupti`: the eBPF collectors only |
//! | `bare` | `CUDA_INJECTION64_PATH=libgpusim_testinject.so GPUSIM_TESTINJECT_BARE=1`: the cheapest CUPTI client collecting the same activity kinds (the floor of CUPTI tracing) |
//! | `full` | `ghostprof record` |
//! | `full-nopm` | `ghostprof record` with `GHOSTPROF_PM_INTERVAL_NS=0` (no PM sampling) |
//! | `watch` | `ghostprof watch` running (started before the job, stopped after it), the job started with the dormant library as the service's docs deploy it: eBPF always, CUPTI duty-cycled |
//! | `watch-inject` | the same, the job started without the library: watch loads it live and starts a session in it at each window (only with `--modes`) |
//!
//! `watch`'s duty cycle is shortened with the defaults' ratio (`--sample 100ms --period 3s`, as
//! 2 s of 60 s; `--watch-sample`/`--watch-period` change it), and its runs are
//! `--watch-steps-factor` (10) times longer than the other modes' (~10 s), so that every run
//! holds about three windows: a 1 s run under a 60 s period would hit a window in one run of
//! sixty. Each window also keeps CUPTI on for the ~150 ms the libraries take to notice and the
//! 50 ms poll after it, so CUPTI is on ~9 % of the time here against ~3.6 % at the defaults: the
//! figure is an upper bound of the defaults' cost.
//!
//! The modes are **interleaved**: repetition r runs every mode once, in an order rotated by r,
//! so a drift of the machine spreads over all modes. A run's figure is its mean step time from
//! the job's own ground truth (`truth-rank0.json`: the host interval from the second step's
//! start to the last step's end, divided by the steps in it; the first step warms up). Per mode:
//! the median over the runs, and the ratio of medians to `plain` and to `bare` with a 95%
//! percentile-bootstrap interval ([`crate::stats`], fixed seed).
//!
//! The job and ghostprof are pinned to separate cores (taskset) on a machine with at least 4;
//! with fewer nothing is pinned (said in the output).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::flag;
use crate::gpusim_build::{build_gpusim, stage};
use crate::probe::machine;
use crate::stats::{median, ratio_of_medians_ci, RatioCi};

/// The modes, in their base order.
const MODES: [&str; 8] = ["plain", "dormant", "ebpf", "bare", "full", "full-nopm", "watch", "watch-inject"];
/// The modes run without `--modes` (`watch-inject` only when asked: its runs are long too).
const DEFAULT_MODES: [&str; 7] = ["plain", "dormant", "ebpf", "bare", "full", "full-nopm", "watch"];

/// Seed of the bootstrap (fixed: the same runs give the same interval).
const SEED: u64 = 0x6f76_6572_6865_6164;

struct Config {
    reps: usize,
    /// Steps per run for each scenario (None: the scenario's own default here).
    steps: Option<u32>,
    scenarios: Vec<String>,
    modes: Vec<String>,
    resamples: usize,
    dir: PathBuf,
    /// `watch` mode: its --sample and --period, and how many times longer its runs are.
    watch_sample: String,
    watch_period: String,
    watch_steps_factor: u32,
}

impl Config {
    fn parse(args: &[String]) -> Result<Self> {
        let num = |name: &str| -> Result<Option<u64>> {
            flag(args, name).map(|s| s.parse::<u64>().with_context(|| format!("{name} {s:?}"))).transpose()
        };
        let list = |name: &str, default: &[&str]| -> Vec<String> {
            flag(args, name).map_or_else(
                || default.iter().map(|s| s.to_string()).collect(),
                |s| s.split(',').map(str::to_string).collect(),
            )
        };
        let modes = list("--modes", &DEFAULT_MODES);
        for m in &modes {
            ensure!(MODES.contains(&m.as_str()), "unknown mode {m:?}: use some of {}", MODES.join(","));
        }
        let dir = flag(args, "--dir").map_or_else(std::env::temp_dir, PathBuf::from);
        Ok(Config {
            reps: num("--reps")?.unwrap_or(7).max(2) as usize,
            steps: num("--steps")?.map(|s| s.clamp(3, 1_000_000) as u32),
            scenarios: list("--scenarios", &["launch-bound", "balanced"]),
            modes,
            resamples: num("--resamples")?.unwrap_or(2000).max(100) as usize,
            dir: dir.join(format!("ghostprof-bench-overhead-{}", std::process::id())),
            watch_sample: flag(args, "--watch-sample").unwrap_or_else(|| "100ms".into()),
            watch_period: flag(args, "--watch-period").unwrap_or_else(|| "3s".into()),
            watch_steps_factor: num("--watch-steps-factor")?.unwrap_or(10).clamp(1, 1000) as u32,
        })
    }
}

/// Steps per run when not given: about a second of each scenario on the 2-core test VM.
fn default_steps(scenario: &str) -> u32 {
    match scenario {
        "launch-bound" => 100,
        _ => 50,
    }
}

struct Setup {
    bin_dir: PathBuf,
    lib_dir: PathBuf,
    /// `taskset -c` lists for (job, ghostprof), when pinned.
    pin: Option<(String, String)>,
}

/// `tools/bench overhead [--reps N] [--steps K] [--scenarios A,B] [--modes M,…] [--resamples R] [--dir D]
/// [--watch-sample S] [--watch-period P] [--watch-steps-factor F]`.
pub fn bench_overhead(args: &[String]) -> Result<()> {
    let cfg = Config::parse(args)?;
    // SAFETY: geteuid has no preconditions.
    if cfg.modes.iter().any(|m| m == "ebpf" || m.starts_with("full") || m.starts_with("watch"))
        && unsafe { libc_geteuid() } != 0
    {
        bail!("the record modes load eBPF: run tools/bench overhead as root (or pick --modes plain,dormant,bare)");
    }
    let bin_dir = build_gpusim(&["ghostprof-inject", "gpusim-testinject", "ghostprof"])?;
    let lib_dir = cfg.dir.join("lib");
    stage(&bin_dir, &lib_dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // ghostprof on core 0, the job on the others (its injected threads go with it: they are the
    // job's cost).
    let pin = (cores >= 4).then(|| (format!("1-{}", cores - 1), "0".to_string()));
    let setup = Setup { bin_dir, lib_dir, pin };
    let result = measure(&cfg, &setup, cores);
    let _ = std::fs::remove_dir_all(&cfg.dir);
    result
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn measure(cfg: &Config, setup: &Setup, cores: usize) -> Result<()> {
    let pinned = match &setup.pin {
        Some((job, gp)) => format!("job on cores {job}, ghostprof on core {gp}"),
        None => format!("none ({cores} cores: fewer than 4)"),
    };
    eprintln!("pinning: {pinned}");
    let mut scenarios = serde_json::Map::new();
    let mut headline = Value::Null;
    for scenario in &cfg.scenarios {
        let steps = cfg.steps.unwrap_or_else(|| default_steps(scenario));
        // samples[mode] = mean step time (ns) of each run.
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cfg.modes.len()];
        // windows[mode] = sample windows watch analyzed in each run (watch modes).
        let mut windows: Vec<Vec<u64>> = vec![Vec::new(); cfg.modes.len()];
        for rep in 0..cfg.reps {
            for k in 0..cfg.modes.len() {
                let i = (k + rep) % cfg.modes.len();
                let mode = &cfg.modes[i];
                let steps = if mode.starts_with("watch") { steps * cfg.watch_steps_factor } else { steps };
                let (step_ns, w) = run_once(cfg, setup, scenario, mode, steps, rep)
                    .with_context(|| format!("{scenario}, mode {mode}, repetition {}", rep + 1))?;
                samples[i].push(step_ns);
                windows[i].extend(w);
            }
            eprintln!(
                "{scenario} rep {}: {}",
                rep + 1,
                cfg.modes
                    .iter()
                    .zip(&samples)
                    .map(|(m, s)| format!("{m} {:.3} ms", s[rep] / 1e6))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let by = |name: &str| cfg.modes.iter().position(|m| m == name).map(|i| samples[i].as_slice());
        let ci = |a: &str, b: &str| -> Option<RatioCi> { ratio_of_medians_ci(by(a)?, by(b)?, cfg.resamples, SEED) };
        let ci_json = |r: Option<RatioCi>| match r {
            Some(r) => (json!(r.ratio), json!([r.lo, r.hi])),
            None => (Value::Null, Value::Null),
        };
        let mut modes = serde_json::Map::new();
        println!("{scenario}: {} steps per run, {} repetitions, interleaved", steps, cfg.reps);
        println!("  {:<12} {:>12} {:>26} {:>26}", "mode", "step ms", "vs plain [95% CI]", "vs bare [95% CI]");
        for (i, mode) in cfg.modes.iter().enumerate() {
            let med = median(&samples[i]);
            let (vp, vb) = (ci(mode, "plain"), ci(mode, "bare"));
            let show = |r: Option<RatioCi>| {
                r.map_or_else(|| "-".to_string(), |r| format!("{:.4} [{:.4}, {:.4}]", r.ratio, r.lo, r.hi))
            };
            println!("  {:<12} {:>12.4} {:>26} {:>26}", mode, med / 1e6, show(vp), show(vb));
            let (vp_r, vp_ci) = ci_json(vp);
            let (vb_r, vb_ci) = ci_json(vb);
            modes.insert(
                mode.clone(),
                json!({
                    "median_step_ns": med,
                    "step_ns": samples[i],
                    "vs_plain_ratio": vp_r, "vs_plain_ci95": vp_ci,
                    "vs_bare_ratio": vb_r, "vs_bare_ci95": vb_ci,
                    "sample_windows": if mode.starts_with("watch") { json!(windows[i]) } else { Value::Null },
                }),
            );
        }
        let (fb, fb_ci) = ci_json(ci("full", "bare"));
        let (ep, ep_ci) = ci_json(ci("ebpf", "plain"));
        let (bp, bp_ci) = ci_json(ci("bare", "plain"));
        let (wp, wp_ci) = ci_json(ci("watch", "plain"));
        let (wip, wip_ci) = ci_json(ci("watch-inject", "plain"));
        let summary = json!({
            "steps_per_run": steps,
            "watch_vs_plain_ratio": wp, "watch_vs_plain_ci95": wp_ci,
            "watch_inject_vs_plain_ratio": wip, "watch_inject_vs_plain_ci95": wip_ci,
            "full_vs_bare_ratio": fb, "full_vs_bare_ci95": fb_ci,
            "ebpf_only_vs_plain_ratio": ep, "ebpf_only_vs_plain_ci95": ep_ci,
            "bare_vs_plain_ratio": bp, "bare_vs_plain_ci95": bp_ci,
            "modes": modes,
        });
        if headline.is_null() || scenario == "launch-bound" {
            headline = summary.clone();
        }
        scenarios.insert(scenario.clone(), summary);
    }
    let field = |k: &str| headline.get(k).cloned().unwrap_or(Value::Null);
    let medians: serde_json::Map<String, Value> = headline
        .get("modes")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v["median_step_ns"].clone())).collect())
        .unwrap_or_default();
    let out = json!({
        "bench": "overhead",
        "headline_scenario": if scenarios.contains_key("launch-bound") { "launch-bound" } else { cfg.scenarios[0].as_str() },
        "full_vs_bare_ratio": field("full_vs_bare_ratio"),
        "full_vs_bare_ci95": field("full_vs_bare_ci95"),
        "ebpf_only_vs_plain_ratio": field("ebpf_only_vs_plain_ratio"),
        "ebpf_only_vs_plain_ci95": field("ebpf_only_vs_plain_ci95"),
        "watch_vs_plain_ratio": field("watch_vs_plain_ratio"),
        "watch_vs_plain_ci95": field("watch_vs_plain_ci95"),
        "watch_inject_vs_plain_ratio": field("watch_inject_vs_plain_ratio"),
        "watch_inject_vs_plain_ci95": field("watch_inject_vs_plain_ci95"),
        "median_step_ns": medians,
        "targets": { "full_vs_bare_ci95_hi": 1.02, "ebpf_only_vs_plain_ci95_hi": 1.01, "watch_vs_plain_ci95_hi": 1.01 },
        "watch_harness": {
            "sample": cfg.watch_sample, "period": cfg.watch_period, "steps_factor": cfg.watch_steps_factor,
            "job": "started with the dormant library (CUDA_INJECTION64_PATH), watch following the bench's process tree",
        },
        "reps": cfg.reps,
        "resamples": cfg.resamples,
        "bootstrap_seed": SEED,
        "pinned": pinned,
        "scenarios": scenarios,
        "machine": machine(),
    });
    println!("{out}");
    Ok(())
}

/// One run of `scenario` under `mode`: its mean step time (ns) from its ground truth, and the
/// sample windows watch analyzed (watch modes).
fn run_once(
    cfg: &Config,
    setup: &Setup,
    scenario: &str,
    mode: &str,
    steps: u32,
    rep: usize,
) -> Result<(f64, Option<u64>)> {
    let out = cfg.dir.join(format!("{scenario}-{mode}-{rep}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let train = setup.bin_dir.join("gpusim-train");
    let mut job: Vec<String> = Vec::new();
    if let Some((cores, _)) = &setup.pin {
        job.extend(["taskset".into(), "-c".into(), cores.clone()]);
    }
    job.push(train.display().to_string());
    job.extend(["--scenario".into(), scenario.into(), "--steps".into(), steps.to_string()]);
    job.extend(["--out".into(), out.display().to_string(), "--lib-dir".into(), setup.lib_dir.display().to_string()]);
    let inject = setup.bin_dir.join("libghostprof_inject.so");
    let mut cmd = if matches!(mode, "ebpf" | "full" | "full-nopm") {
        let mut c = match &setup.pin {
            Some((_, gp)) => {
                let mut c = Command::new("taskset");
                c.args(["-c", gp]).arg(setup.bin_dir.join("ghostprof"));
                c
            }
            None => Command::new(setup.bin_dir.join("ghostprof")),
        };
        c.args(["record", "--quiet", "--force"]);
        if mode == "ebpf" {
            c.arg("--no-cupti");
        }
        c.arg("--lib-dir").arg(&setup.lib_dir).arg("-o").arg(out.join("trace.gptrace")).arg("--").args(&job);
        c.env("GHOSTPROF_INJECT_LIB", &inject);
        if mode == "full-nopm" {
            c.env("GHOSTPROF_PM_INTERVAL_NS", "0");
        }
        c
    } else {
        let mut c = Command::new(&job[0]);
        c.args(&job[1..]);
        match mode {
            "dormant" | "watch" => {
                c.env("CUDA_INJECTION64_PATH", &inject).env("GHOSTPROF_RING_DIR", &out);
            }
            "bare" => {
                c.env("CUDA_INJECTION64_PATH", setup.bin_dir.join("libgpusim_testinject.so"))
                    .env("GPUSIM_TESTINJECT_BARE", "1");
            }
            _ => {}
        }
        c
    };
    // Nothing of ours leaks into a mode that should not have it.
    for k in ["GHOSTPROF_ENABLE", "GPUSIM_TESTINJECT_OUT"] {
        cmd.env_remove(k);
    }
    if !matches!(mode, "dormant" | "bare" | "watch") {
        cmd.env_remove("CUDA_INJECTION64_PATH");
    }
    let watch = if mode.starts_with("watch") { Some(Watch::start(cfg, setup, &out)?) } else { None };
    let output = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().context("starting the run");
    let windows = match watch {
        Some(w) => Some(w.stop()?),
        None => None,
    };
    let output = output?;
    ensure!(output.status.success(), "the run failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    let step_ns = mean_step_ns(&out.join("truth-rank0.json"))?;
    // Traces of the record modes are large next to what is kept: removed run by run.
    let _ = std::fs::remove_dir_all(&out);
    Ok((step_ns, windows))
}

/// Mean step time of a run from its ground truth: (last step's end − second step's start) /
/// (steps − 1), the first step being a warm-up.
pub fn mean_step_ns(truth: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(truth).with_context(|| format!("reading {}", truth.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", truth.display()))?;
    let ranges = v["step_ranges"].as_array().with_context(|| format!("{} has no step_ranges", truth.display()))?;
    ensure!(ranges.len() >= 3, "{} has {} steps; at least 3 are needed", truth.display(), ranges.len());
    let at = |i: usize, k: &str| ranges[i][k].as_u64().with_context(|| format!("step {i} has no {k}"));
    let (start, end) = (at(1, "start_ns")?, at(ranges.len() - 1, "end_ns")?);
    ensure!(end > start, "{}: steps end before they start", truth.display());
    Ok((end - start) as f64 / (ranges.len() - 1) as f64)
}

/// A `ghostprof watch` for one run of the `watch` mode.
struct Watch {
    child: std::process::Child,
    log: PathBuf,
}

impl Watch {
    /// Starts it (following this process's tree: the job is our child) and waits until its
    /// endpoint answers, which it does once its probes can be placed.
    fn start(cfg: &Config, setup: &Setup, out: &Path) -> Result<Watch> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut c = match &setup.pin {
            Some((_, gp)) => {
                let mut c = Command::new("taskset");
                c.args(["-c", gp]).arg(setup.bin_dir.join("ghostprof"));
                c
            }
            None => Command::new(setup.bin_dir.join("ghostprof")),
        };
        let log = out.join("watch.log");
        c.arg("watch")
            .args(["--pid", &std::process::id().to_string(), "--sample", &cfg.watch_sample])
            .args(["--period", &cfg.watch_period, "--no-socket", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--dir")
            .arg(out.join("watch"))
            .env("GHOSTPROF_RING_DIR", out)
            .env("GHOSTPROF_INJECT_LIB", setup.bin_dir.join("libghostprof_inject.so"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let mut child = c.spawn().context("starting ghostprof watch")?;
        let t = std::time::Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let mut answer = String::new();
                if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.1 200")
                {
                    return Ok(Watch { child, log });
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("ghostprof watch exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if t.elapsed() > std::time::Duration::from_secs(60) {
                let _ = child.kill();
                bail!("ghostprof watch did not serve /metrics within 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGTERM, and its exit waited for (removing its probes takes the kernel seconds);
    /// returns the sample windows it analyzed (its last line says).
    fn stop(mut self) -> Result<u64> {
        // SAFETY: kill on our own child's pid.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let status = self.child.wait()?;
        ensure!(
            status.success(),
            "ghostprof watch failed ({status}): {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .find_map(|l| l.split("watch stopped: ").nth(1)?.split(' ').next()?.parse().ok())
            .with_context(|| format!("no summary line from ghostprof watch: {log}"))
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
