//! Start one process per rank, the way `torchrun` does: the same executable in `worker` mode,
//! with `LD_LIBRARY_PATH` pointing at the staged libraries and the rank's `GPUSIM_*` knobs in
//! its environment (libcuda and libnccl read them like real drivers read theirs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::scenario::Scenario;

/// A run of all ranks.
pub struct Launch<'a> {
    /// The scenario argument as given (name or path), passed to workers.
    pub scenario_arg: &'a str,
    /// Parsed scenario.
    pub scenario: &'a Scenario,
    /// Ranks.
    pub ranks: u32,
    /// Steps.
    pub steps: u32,
    /// Output/run directory.
    pub out_dir: &'a Path,
    /// Staged library directory.
    pub lib_dir: &'a Path,
}

/// Ground-truth path of `rank` in `out_dir`.
pub fn truth_path(out_dir: &Path, rank: u32) -> PathBuf {
    out_dir.join(format!("truth-rank{rank}.json"))
}

/// Environment of one rank's process.
pub fn rank_env(s: &Scenario, rank: u32, lib_dir: &Path) -> Vec<(String, String)> {
    let mut path = lib_dir.display().to_string();
    if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
        if !old.is_empty() {
            path = format!("{path}:{old}");
        }
    }
    vec![
        ("LD_LIBRARY_PATH".into(), path),
        ("GPUSIM_LAUNCH_CPU_NS".into(), s.launch_cpu_ns.to_string()),
        ("GPUSIM_LAUNCH_LATENCY_NS".into(), s.launch_latency_ns.to_string()),
        ("GPUSIM_SLOWDOWN".into(), s.slowdown_of(rank).to_string()),
        ("GPUSIM_NCCL_BUS_BYTES_PER_S".into(), s.bus_bytes_per_s.to_string()),
        ("GPUSIM_PEAK_FLOPS_PER_S".into(), s.peak_flops_per_s.to_string()),
        ("RANK".into(), rank.to_string()),
        ("LOCAL_RANK".into(), rank.to_string()),
    ]
}

/// Spawn all ranks and wait; an error names every rank that failed.
pub fn run(launch: &Launch) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    // A stale id from an earlier run in the same directory would pair ranks with dead peers.
    let _ = std::fs::remove_file(launch.out_dir.join("nccl-unique-id"));
    let mut children: Vec<(u32, Child)> = Vec::new();
    // `GPUSIM_LATE_RANK_MS=N`: the last rank starts N ms after the others (which wait for it
    // in `ncclCommInitRank`), as a rank a launcher restarts or starts late.
    let late = std::env::var("GPUSIM_LATE_RANK_MS").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    for rank in 0..launch.ranks {
        if rank > 0 && rank + 1 == launch.ranks && late > 0 {
            std::thread::sleep(std::time::Duration::from_millis(late));
        }
        let child = Command::new(&exe)
            .arg("worker")
            .args(["--scenario", launch.scenario_arg])
            .args(["--rank", &rank.to_string()])
            .args(["--ranks", &launch.ranks.to_string()])
            .args(["--steps", &launch.steps.to_string()])
            .arg("--out")
            .arg(launch.out_dir)
            .envs(rank_env(launch.scenario, rank, launch.lib_dir))
            .spawn()
            .map_err(|e| format!("cannot start rank {rank} ({}): {e}", exe.display()))?;
        children.push((rank, child));
    }
    let mut failures = Vec::new();
    for (rank, mut child) in children {
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => failures.push(format!("rank {rank} exited with {status}")),
            Err(e) => failures.push(format!("rank {rank}: {e}")),
        }
    }
    remove_stale_segment(launch.out_dir);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Remove the communicator's shared-memory segment if a rank died before releasing it (the
/// last rank to leave normally unlinks it; unlinking twice is harmless).
fn remove_stale_segment(out_dir: &Path) {
    let Ok(id) = std::fs::read(out_dir.join("nccl-unique-id")) else { return };
    let name: Vec<u8> = id.into_iter().take_while(|&b| b != 0).collect();
    if !name.starts_with(b"/gpusim-nccl-") {
        return;
    }
    if let Ok(c_name) = std::ffi::CString::new(name) {
        // SAFETY: shm_unlink with a valid C string; failure (already gone) is fine.
        unsafe { libc::shm_unlink(c_name.as_ptr()) };
    }
}
