//! Issue 12 item 7: the cross-rank view (collectives table, arrival skew, straggler) after an
//! `attach` is as good as after a `record`. An attach after `ncclCommInitRank` learns no
//! communicator, rank count or sequence numbers from the host probes, so the ranks' collective
//! kernels are matched by their common end: the same matching serves the per-device
//! `comm.wait`, the skew and straggler, and the table's wait and busBw.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::gpusim::truth;

use crate::util::*;

const ROOT: &str = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root";

fn ghostprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ghostprof"))
}

fn spawn_job(cmd: &[String], envs: &[(&str, &Path)]) -> Child {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// One rank's part of one collective, from the ground truth.
struct TruthColl {
    sequence: u64,
    arrival: u64,
    last_arrival: u64,
    end: u64,
    bytes: u64,
}

fn truth_collectives(t: &Value) -> Vec<TruthColl> {
    t["devices"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["collectives"].as_array().unwrap().iter())
        .map(|c| TruthColl {
            sequence: c["sequence"].as_u64().unwrap(),
            arrival: c["arrival_ns"].as_u64().unwrap(),
            last_arrival: c["last_arrival_ns"].as_u64().unwrap(),
            end: c["end_ns"].as_u64().unwrap(),
            bytes: c["bytes"].as_u64().unwrap(),
        })
        .collect()
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_attach_cross_rank_view_matches_the_truth() {
    assert!(is_root(), "{ROOT}");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let truth_dir = dir.path().join("truth");
    let (ranks, steps) = (2u32, 250u64);
    let cmd = crate::gpusim::train_command("straggler", ranks, steps, &truth_dir);

    // Started with the dormant library (and NCCL's profiler plugin, as docs/user-guide.md says
    // for a job to attach to), never enabled; attached to for 2 s after 1 s.
    let rings = dir.path().join("rings");
    std::fs::create_dir(&rings).unwrap();
    let inject = built.build_dir.join("libghostprof_inject.so");
    let job = spawn_job(
        &cmd,
        &[("CUDA_INJECTION64_PATH", &inject), ("NCCL_PROFILER_PLUGIN", &inject), ("GHOSTPROF_RING_DIR", &rings)],
    );
    std::thread::sleep(Duration::from_secs(1));
    let trace = dir.path().join("attach.gptrace");
    let attached = ghostprof()
        .args(["attach", "--quiet", "--duration", "2s", "--pid", &job.id().to_string(), "-o"])
        .arg(&trace)
        .env("GHOSTPROF_RING_DIR", &rings)
        .output()
        .unwrap();
    assert!(attached.status.success(), "{}", String::from_utf8_lossy(&attached.stderr));
    let job = job.wait_with_output().unwrap();
    assert!(job.status.success(), "{}", String::from_utf8_lossy(&job.stderr));
    let truths: Vec<Value> = (0..ranks).map(|r| truth(&truth_dir, r)).collect();

    // The straggler of the truth: the rank with the largest mean arrival skew.
    let colls: Vec<Vec<TruthColl>> = truths.iter().map(truth_collectives).collect();
    let mean_skew = |r: usize| -> f64 {
        let first: std::collections::HashMap<u64, u64> = colls[r]
            .iter()
            .map(|c| {
                (
                    c.sequence,
                    colls
                        .iter()
                        .filter_map(|o| o.iter().find(|x| x.sequence == c.sequence))
                        .map(|x| x.arrival)
                        .min()
                        .unwrap(),
                )
            })
            .collect();
        colls[r].iter().map(|c| (c.arrival - first[&c.sequence]) as f64).sum::<f64>() / colls[r].len() as f64
    };
    let truth_straggler = (0..ranks as usize).max_by(|&a, &b| mean_skew(a).total_cmp(&mean_skew(b))).unwrap();

    let report = ghostprof().args(["report", "--json"]).arg(&trace).output().unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    eprintln!("skew: {}", report["skew"]);
    eprintln!("collectives: {}", report["collectives"]);
    assert_eq!(report["straggler_rank"].as_u64(), Some(truth_straggler as u64), "straggler_rank");
    let straggler_pid = truths[truth_straggler]["pid"].as_u64();
    let skew = report["skew"].as_array().unwrap();
    assert_eq!(skew.len(), ranks as usize, "one skew entry per rank");
    let late = skew.iter().find(|s| s["rank"].as_u64() == Some(truth_straggler as u64)).expect("the straggler's skew");
    assert_eq!(late["pid"].as_u64(), straggler_pid, "the straggler is the slow rank's process");
    assert!(late["late_count"].as_u64().unwrap() >= 40, "the straggler arrived last {} times", late["late_count"]);

    // The table against the truth of the same rank-collectives: those whose kernels the table
    // counted (a kernel's start is the truth's arrival, up to the clock pairs' few µs).
    let ghostprof::analyze::Loaded { batch, names, .. } = ghostprof::analyze::load(&trace).unwrap();
    let mut counted: std::collections::HashMap<u32, Vec<u64>> = Default::default();
    for i in ghostprof::analyze::collectives::instances(&batch, &names) {
        if let Some((start, _)) = i.kernel {
            counted.entry(i.pid).or_default().push(start);
        }
    }
    let near = |starts: &[u64], t: u64| starts.iter().any(|&s| s.abs_diff(t) <= 50_000);
    let (mut t_time, mut t_wait, mut t_transfer, mut t_bus, mut n) = (0u64, 0u64, 0u64, 0f64, 0u64);
    for (t, cs) in truths.iter().zip(&colls) {
        let starts = counted.get(&(t["pid"].as_u64().unwrap() as u32)).cloned().unwrap_or_default();
        for c in cs.iter().filter(|c| near(&starts, c.arrival)) {
            let time = c.end - c.arrival;
            let wait = c.last_arrival.saturating_sub(c.arrival).min(time);
            (t_time, t_wait, t_transfer) = (t_time + time, t_wait + wait, t_transfer + time - wait);
            // all-reduce on 2 ranks: NCCL's busBw factor 2(n-1)/n = 1
            t_bus += c.bytes as f64 * 2.0 * (ranks as f64 - 1.0) / ranks as f64;
            n += 1;
        }
    }
    assert!(n >= 80, "{n} rank-collectives of the truth found in the trace");
    let table = report["collectives"].as_array().unwrap();
    let sum = |key: &str| table.iter().map(|c| c[key].as_u64().unwrap()).sum::<u64>();
    let (count, time, wait, transfer) = (sum("count"), sum("time_ns"), sum("wait_ns"), sum("transfer_ns"));
    let bw = t_bus / t_transfer as f64;
    let ours_bw = table
        .iter()
        .map(|c| c["bus_bandwidth_gbps"].as_f64().unwrap() * c["transfer_ns"].as_u64().unwrap() as f64)
        .sum::<f64>()
        / transfer.max(1) as f64;
    eprintln!(
        "table: {count} rank-collectives, time {:.3} ms, wait {:.3} ms, transfer {:.3} ms, busBw {ours_bw:.2} GB/s; \
         truth: {n}, {:.3} ms, {:.3} ms, {:.3} ms, {bw:.2} GB/s",
        time as f64 / 1e6,
        wait as f64 / 1e6,
        transfer as f64 / 1e6,
        t_time as f64 / 1e6,
        t_wait as f64 / 1e6,
        t_transfer as f64 / 1e6
    );
    assert_eq!(count, n, "the table counts the same rank-collectives");
    assert_eq!(time, t_time, "kernel time is CUPTI's, to the nanosecond");
    let rel = |a: f64, b: f64| (a - b).abs() / b;
    assert!(rel(wait as f64, t_wait as f64) <= 0.02, "wait {wait} vs truth {t_wait}");
    assert!(rel(ours_bw, bw) <= 0.02, "busBw {ours_bw:.2} vs truth {bw:.2} GB/s");
}
