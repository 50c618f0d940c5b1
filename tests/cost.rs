//! Root tier: what the CUPTI injection library costs the job, measured inside it
//! (`GHOSTPROF_TEST_BURN_NS`, a test-only knob, makes each launch callback spin for a known
//! time): `record` prints it, the trace stores it, `report` shows it.

use std::process::Command;

use serde_json::Value;

use crate::util::*;

/// Each launch callback spins 100 µs; gpusim's launch-bound scenario launches 420 kernels a step
/// (two callbacks each: enter and exit), so 10 steps spin 0.84 s. The reported callback time is
/// within 10% of calls × burn (measured: +1% to +4%, the callback's own work in a debug build on
/// the loaded 2-core VM), the calls are exactly the launches' enters and exits, and the printed
/// cost covers it.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_profiler_cost_matches_a_known_callback_burn() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let trace = dir.path().join("cost.gptrace");
    let out = dir.path().join("truth");
    let burn_ns = 100_000u64;
    let run = Command::new(env!("CARGO_BIN_EXE_ghostprof"))
        .args(["record", "--lib-dir"])
        .arg(&built.lib_dir)
        .arg("-o")
        .arg(&trace)
        .arg("--")
        .args(crate::gpusim::train_command("launch-bound", 1, 10, &out))
        .env("GHOSTPROF_INJECT_LIB", built.build_dir.join("libghostprof_inject.so"))
        .env("GHOSTPROF_TEST_BURN_NS", burn_ns.to_string())
        // PM sampling's decode in gpusim is costly and not what this test measures.
        .env("GHOSTPROF_PM_INTERVAL_NS", "0")
        .output()
        .expect("run ghostprof record");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "record failed: {}\n{stdout}", String::from_utf8_lossy(&run.stderr));
    let truth: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("truth-rank0.json")).expect("truth")).expect("json");
    let launches = truth["totals"]["launches"].as_u64().expect("launches");
    assert_eq!(launches, 4200);
    let calls = 2 * launches;
    let expected = calls * burn_ns;

    let report = ghostprof::analyze::analyze_file(&trace).expect("analyze");
    assert_eq!(report.profiler_cost.len(), 1, "one traced process: {:?}", report.profiler_cost);
    let c = report.profiler_cost[0];
    // Calls are counted per thread in steps of 17 (the sampling period; one launching thread here).
    assert!(calls - c.callbacks < 17, "{} callbacks counted, {calls} made", c.callbacks);
    let err = (c.callback_ns as f64 - expected as f64).abs() / expected as f64;
    assert!(
        err < 0.10,
        "callback CPU {} ns vs {calls} × {burn_ns} ns = {expected} ns: {:.1}% off",
        c.callback_ns,
        err * 100.0
    );
    assert!(c.job_cpu_ns >= c.total_ns(), "the job's CPU {} covers the cost {}", c.job_cpu_ns, c.total_ns());

    // `record` printed the line, and `report --json` has the same figures.
    let line =
        stdout.lines().find(|l| l.contains("profiler cost:")).unwrap_or_else(|| panic!("no cost line in {stdout}"));
    let ms: f64 = line
        .split("profiler cost: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("ms");
    assert!(ms * 1e6 >= expected as f64 * 0.9, "{line}: below {} ms", expected as f64 / 1e6);
    let json =
        Command::new(env!("CARGO_BIN_EXE_ghostprof")).args(["report", "--json"]).arg(&trace).output().expect("report");
    let doc: Value = serde_json::from_slice(&json.stdout).expect("report json");
    let cost = &doc["profiler_cost"][0];
    assert_eq!(cost["callback_ns"].as_u64(), Some(c.callback_ns));
    assert_eq!(cost["callbacks"].as_u64(), Some(c.callbacks));
    let fraction = cost["fraction_of_job_cpu"].as_f64().expect("fraction");
    assert!(fraction > 0.0 && fraction <= 1.0, "{fraction}");
}
