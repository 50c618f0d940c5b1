//! Command line, parsed by hand into plain structs (clap lives only in the profiler's CLI).

use std::path::PathBuf;

/// Usage text.
pub const USAGE: &str = "\
gpusim-train: run a simulated multi-rank training job over gpusim's libcuda.so.1 / libnccl.so.2
and write each rank's ground truth.

USAGE:
  gpusim-train [run] --scenario NAME|FILE [--ranks N] [--seconds S | --steps K] [--out DIR] [--lib-dir DIR]
  gpusim-train stage [--lib-dir DIR]     copy the built libraries under their real names, print the dir
  gpusim-train list                      list built-in scenarios
  gpusim-train launch-loop [--calls N] [--threads T]
                                         cuLaunchKernel N times in a tight loop (tools/bench probe)

EXAMPLES:
  gpusim-train --scenario straggler --ranks 2 --seconds 3 --out /tmp/gs
      -> /tmp/gs/truth-rank0.json, /tmp/gs/truth-rank1.json
  CUDA_INJECTION64_PATH=$PWD/target/debug/libghostprof_cuda.so gpusim-train --scenario balanced

Ground truth goes to <out>/truth-rank<R>.json; --out defaults to $GPUSIM_OUT, else a new
directory under $TMPDIR. Libraries are looked up next to this executable (target/<profile>/libgpusim_*.so, or
GPUSIM_BUILD_DIR) and staged into --lib-dir (default <that dir>/gpusim-lib).";

/// What to do.
#[derive(Debug)]
pub enum Command {
    /// Launch all ranks.
    Run(RunArgs),
    /// Internal: be one rank.
    Worker(WorkerArgs),
    /// Stage libraries.
    Stage {
        /// Target directory.
        lib_dir: Option<PathBuf>,
    },
    /// List scenarios.
    List,
    /// A timed `cuLaunchKernel` loop for the probe benchmark.
    LaunchLoop {
        /// Timed launches (default 1 000 000).
        calls: u64,
        /// Threads the launches are split over (default 1).
        threads: u64,
    },
    /// Print usage.
    Help,
}

/// `run` arguments.
#[derive(Debug, Default)]
pub struct RunArgs {
    /// Scenario name or file.
    pub scenario: String,
    /// Ranks (default: the scenario's).
    pub ranks: Option<u32>,
    /// Wall-time target.
    pub seconds: Option<f64>,
    /// Steps (wins over seconds).
    pub steps: Option<u32>,
    /// Output directory.
    pub out: Option<PathBuf>,
    /// Staged library directory.
    pub lib_dir: Option<PathBuf>,
}

/// `worker` arguments.
#[derive(Debug, Default)]
pub struct WorkerArgs {
    /// Scenario name or file.
    pub scenario: String,
    /// This rank.
    pub rank: u32,
    /// All ranks.
    pub ranks: u32,
    /// Steps.
    pub steps: u32,
    /// Run directory.
    pub out: PathBuf,
}

fn value<T: std::str::FromStr>(flag: &str, raw: Option<String>) -> Result<T, String> {
    let raw = raw.ok_or_else(|| format!("{flag} needs a value"))?;
    raw.parse().map_err(|_| format!("{flag}: cannot parse {raw:?}"))
}

/// Parse `args` (without the program name).
pub fn parse(args: Vec<String>) -> Result<Command, String> {
    let mut it = args.into_iter().peekable();
    let sub = match it.peek().map(String::as_str) {
        Some("run" | "worker" | "stage" | "list" | "help" | "launch-loop") => it.next().unwrap_or_default(),
        _ => "run".to_string(),
    };
    let mut run = RunArgs::default();
    let mut worker = WorkerArgs::default();
    let (mut calls, mut threads) = (1_000_000u64, 1u64);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--scenario" => {
                run.scenario = value(&flag, it.next())?;
                worker.scenario = run.scenario.clone();
            }
            "--ranks" => {
                let n: u32 = value(&flag, it.next())?;
                run.ranks = Some(n);
                worker.ranks = n;
            }
            "--seconds" => run.seconds = Some(value(&flag, it.next())?),
            "--steps" => {
                let n: u32 = value(&flag, it.next())?;
                run.steps = Some(n);
                worker.steps = n;
            }
            "--rank" => worker.rank = value(&flag, it.next())?,
            "--out" => {
                let dir: PathBuf = value(&flag, it.next())?;
                run.out = Some(dir.clone());
                worker.out = dir;
            }
            "--lib-dir" => run.lib_dir = Some(value(&flag, it.next())?),
            "--calls" => calls = value(&flag, it.next())?,
            "--threads" => threads = value(&flag, it.next())?,
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(match sub.as_str() {
        "help" => Command::Help,
        "list" => Command::List,
        "stage" => Command::Stage { lib_dir: run.lib_dir },
        "worker" => Command::Worker(worker),
        "launch-loop" => Command::LaunchLoop { calls, threads },
        _ if run.scenario.is_empty() => return Err(format!("--scenario is required\n\n{USAGE}")),
        _ => Command::Run(run),
    })
}
