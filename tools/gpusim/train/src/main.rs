//! `gpusim-train`: the simulated training job of gpusim (see docs/gpusim.md).
//!
//! - [`args`]: the command line.
//! - [`scenario`]: scenario files.
//! - [`stage`]: real library names on disk.
//! - [`launcher`]: one process per rank.
//! - [`driver`]: dlopen of libcuda.so.1 / libnccl.so.2 by soname.
//! - [`launch`]: kernel launches through the entry points a scenario names.
//! - [`rank`]: the training loop of one rank.
//! - [`truth`]: the ground-truth JSON.
//! - [`launch_loop`]: a timed cuLaunchKernel loop for `tools/bench probe`.

mod args;
mod driver;
mod launch;
mod launch_loop;
mod launcher;
mod park;
mod rank;
mod scenario;
mod stage;
mod truth;

use std::path::PathBuf;
use std::process::ExitCode;

use args::Command;
use scenario::Scenario;

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Help => println!("{}", args::USAGE),
        Command::List => {
            for name in scenario::built_in_names() {
                let s = Scenario::load(name)?;
                println!("{name:14} {}", s.description);
            }
        }
        Command::Stage { lib_dir } => {
            let lib_dir = lib_dir.map_or_else(stage::default_lib_dir, Ok)?;
            stage::stage(&stage::build_dir()?, &lib_dir)?;
            println!("{}", lib_dir.display());
        }
        Command::LaunchLoop { calls, threads } => launch_loop::run(calls, threads)?,
        Command::Worker(w) => {
            let scenario = Scenario::load(&w.scenario)?;
            rank::run(&rank::RankConfig {
                scenario,
                rank: w.rank,
                ranks: w.ranks.max(1),
                steps: w.steps,
                truth_path: launcher::truth_path(&w.out, w.rank),
                run_dir: w.out,
            })
            .map_err(|e| format!("rank {}: {e}", w.rank))?;
        }
        Command::Run(r) => {
            let scenario = Scenario::load(&r.scenario)?;
            let ranks = r.ranks.unwrap_or(scenario.ranks).max(1);
            let steps = match (r.steps, r.seconds) {
                (Some(steps), _) => steps,
                (None, Some(seconds)) => {
                    ((seconds * 1e9) / scenario.estimated_step_ns(ranks) as f64).ceil().max(1.0) as u32
                }
                (None, None) => scenario.steps,
            };
            // --out, else GPUSIM_OUT, else a fresh temp dir.
            let out = r.out.or_else(|| std::env::var_os("GPUSIM_OUT").map(PathBuf::from)).unwrap_or_else(|| {
                std::env::temp_dir().join(format!("gpusim-{}-{}", scenario.name, std::process::id()))
            });
            std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            let lib_dir: PathBuf = r.lib_dir.map_or_else(stage::default_lib_dir, Ok)?;
            stage::stage(&stage::build_dir()?, &lib_dir)?;
            launcher::run(&launcher::Launch {
                scenario_arg: &r.scenario,
                scenario: &scenario,
                ranks,
                steps,
                out_dir: &out,
                lib_dir: &lib_dir,
            })?;
            for rank in 0..ranks {
                println!("{}", launcher::truth_path(&out, rank).display());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match args::parse(std::env::args().skip(1).collect()).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpusim-train: {e}");
            ExitCode::FAILURE
        }
    }
}
