//! Issue 12 item 5: coexisting with another CUPTI client. CUPTI before 13.3 takes one
//! subscriber: ghostprof records eBPF only and says so in the trace. From 13.3
//! (CUPTI_API_VERSION 130300) subscribers that all use `cuptiSubscribe_v2` allowing it share
//! CUPTI, each with its own activity buffers: ghostprof records every kernel alongside the
//! other tool, which still gets every kernel too. gpusim models both by the version it reports
//! (`GPUSIM_CUPTI_VERSION`; docs/gpusim.md).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use ghostprof::record::session::{record_command, LaunchConfig};
use ghostprof::trace::*;
use serde_json::Value;

use crate::util::*;

/// What one recorded run gave.
struct Run {
    notes: Vec<String>,
    stored_notes: Vec<String>,
    kernels: u64,
    named: u64,
    launches: u64,
    /// Launches CUPTI reported (the library's launch callbacks).
    cupti_launches: u64,
    truth: Value,
    /// The job's stderr (the holder's count line).
    stderr: String,
}

/// `record` of a 1-rank `balanced` gpusim job whose CUPTI is held from its start by
/// `GPUSIM_HOLD_CUPTI=<hold>` (`1`: the unversioned cuptiSubscribe, as Kineto today;
/// `shared`: cuptiSubscribe_v2 allowing others, with its own kernel buffers), gpusim reporting
/// CUPTI_API_VERSION `version`.
fn record_held(dir: &Path, hold: &str, version: u32) -> Run {
    let built = crate::gpusim::built();
    let name = format!("{hold}-{version}");
    let trace = dir.join(format!("{name}.gptrace"));
    let out = dir.join(&name);
    let stderr_path = dir.join(format!("{name}.stderr"));
    let job = crate::gpusim::train_command("balanced", 1, 4, &out).join(" ");
    let command = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("exec env GPUSIM_HOLD_CUPTI={hold} GPUSIM_CUPTI_VERSION={version} {job} 2>{}", stderr_path.display()),
    ];
    let mut cfg = LaunchConfig::new(command, trace.clone());
    cfg.library_dirs.push(built.lib_dir.clone());
    cfg.inject_lib = Some(built.build_dir.join("libghostprof_inject.so"));
    let summary = record_command(&cfg, &AtomicBool::new(false)).expect("recording");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(summary.exit_status.is_some_and(|s| s.success()), "{:?}: {stderr}", summary.exit_status);
    let truth: Value = serde_json::from_str(&std::fs::read_to_string(out.join("truth-rank0.json")).unwrap()).unwrap();
    let pid = truth["pid"].as_u64().unwrap() as u32;
    let stored_notes = TraceReader::open(&trace).unwrap().notes().unwrap();
    let ghostprof::analyze::Loaded { batch: b, names, .. } = ghostprof::analyze::load(&trace).unwrap();
    let kernels: Vec<_> = b.kernels.iter().filter(|k| k.pid == pid).collect();
    let named = kernels.iter().filter(|k| names.get(&k.name_id).is_some_and(|n| !n.is_empty())).count() as u64;
    Run {
        notes: summary.notes,
        stored_notes,
        kernels: kernels.len() as u64,
        named,
        launches: b.launches.iter().filter(|l| l.pid == pid).count() as u64,
        cupti_launches: b.api_calls.iter().filter(|a| a.pid == pid && a.is_launch()).count() as u64,
        truth,
        stderr,
    }
}

/// The holder's own kernel count, from its line on the job's stderr.
fn holder_kernels(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("gpusim-train: CUPTI holder received "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// CUPTI 13.2 (one subscriber; the V2 flag ignored) held by a V2 tool, and CUPTI 13.3 held by
/// an unversioned subscriber (V1 and V2 do not mix): eBPF only, one plain note stored in the
/// trace, every launch recorded; the holder keeps every kernel.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_cupti_held_without_sharing_records_ebpf_only_with_the_note() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    for (hold, version) in [("shared", 130_200), ("1", 130_300)] {
        let run = record_held(dir.path(), hold, version);
        let held: Vec<&String> = run.notes.iter().filter(|n| n.contains("held by another subscriber")).collect();
        assert_eq!(held.len(), 1, "{hold} {version}: one plain message: {:?}", run.notes);
        assert!(run.stored_notes.contains(held[0]), "{hold} {version}: stored in the trace: {:?}", run.stored_notes);
        assert_eq!(run.kernels, 0, "{hold} {version}: no CUPTI kernels while CUPTI is held");
        // CUPTI sees no launch: the per-launch uprobes stay placed throughout.
        assert_eq!(run.cupti_launches, 0, "{hold} {version}");
        assert_eq!(run.launches, run.truth["totals"]["launches"].as_u64().unwrap(), "{hold} {version}: eBPF launches");
        if hold == "shared" {
            assert_eq!(
                holder_kernels(&run.stderr),
                run.truth["totals"]["kernels"].as_u64(),
                "the holder's own kernels: {}",
                run.stderr
            );
        } else {
            // CUPTI 13.3 names the unversioned holder in its refusal.
            assert!(held[0].contains("(CUPTI)") && held[0].contains("does not share it"), "{}", held[0]);
        }
    }
}

/// CUPTI 13.3 held by a tool that shares it: ghostprof subscribes alongside and records every
/// kernel (count = the truth's), named, with a note saying whom it shares CUPTI with; the other
/// tool's own buffers still get every kernel (per-subscriber activity).
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_cupti_13_3_shared_records_every_kernel_alongside_the_holder() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let run = record_held(dir.path(), "shared", 130_300);
    let truth_kernels = run.truth["totals"]["kernels"].as_u64().unwrap();
    assert!(truth_kernels > 100, "{truth_kernels}");
    assert!(!run.notes.iter().any(|n| n.contains("held by another")), "{:?}", run.notes);
    let shared: Vec<&String> = run.notes.iter().filter(|n| n.contains("CUPTI is shared with")).collect();
    assert_eq!(shared.len(), 1, "{:?}", run.notes);
    assert!(shared[0].contains("CUPTI for gpusim-holder"), "{}", shared[0]);
    assert_eq!(run.kernels, truth_kernels, "every kernel recorded alongside the holder");
    assert_eq!(run.named, run.kernels, "every kernel named");
    // Every launch from CUPTI's launch callbacks (the uprobes are removed once they come).
    assert_eq!(run.cupti_launches, run.truth["totals"]["launches"].as_u64().unwrap(), "CUPTI launches");
    assert_eq!(holder_kernels(&run.stderr), Some(truth_kernels), "the holder's own kernels: {}", run.stderr);
}

/// Two jobs under one `record`: one whose CUPTI is ours (its launch records come), one whose
/// CUPTI another tool holds (none come). The per-launch uprobes are removed only while every
/// process using the GPU has CUPTI launch records, so the second job's launches are all
/// recorded by uprobe; a rule of "some process has them" would have removed the probes and
/// lost them. The first job's launches are all in its CUPTI records.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_launch_probes_stay_for_a_process_whose_cupti_is_held_beside_one_whose_is_not() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let trace = dir.path().join("two.gptrace");
    let (ours, held) = (dir.path().join("ours"), dir.path().join("held"));
    let job = |out: &Path, steps: u64| crate::gpusim::train_command("launch-bound", 1, steps, out).join(" ");
    // The held job starts when the other is well under way (the probes removed 2 s after its
    // launch records came), and first launches 200 ms after cuInit, as a real job loads its
    // model first: time for the loop to see its ring (every 10 ms turn while the probes are
    // off) and place them again.
    let script = format!(
        "{} & sleep 3.5; env GPUSIM_HOLD_CUPTI=1 GPUSIM_STARTUP_MS=200 {} & wait",
        job(&ours, 500),
        job(&held, 60)
    );
    let mut cfg = LaunchConfig::new(vec!["sh".into(), "-c".into(), script], trace.clone());
    cfg.library_dirs.push(built.lib_dir.clone());
    cfg.inject_lib = Some(built.build_dir.join("libghostprof_inject.so"));
    let summary = record_command(&cfg, &AtomicBool::new(false)).expect("recording");
    assert!(summary.exit_status.is_some_and(|s| s.success()), "{:?}", summary.exit_status);
    let b = TraceReader::open(&trace).unwrap().read_all().unwrap();
    let of = |out: &Path| -> (u32, u64) {
        let t: Value = serde_json::from_str(&std::fs::read_to_string(out.join("truth-rank0.json")).unwrap()).unwrap();
        (t["pid"].as_u64().unwrap() as u32, t["totals"]["launches"].as_u64().unwrap())
    };
    let ((ours_pid, ours_n), (held_pid, held_n)) = (of(&ours), of(&held));
    let probed = |pid: u32| b.launches.iter().filter(|l| l.pid == pid).count() as u64;
    let cupti = |pid: u32| b.api_calls.iter().filter(|a| a.pid == pid && a.is_launch()).count() as u64;
    eprintln!(
        "ours: {ours_n} launches, {} CUPTI, {} probed; held: {held_n} launches, {} CUPTI, {} probed; notes {:?}",
        cupti(ours_pid),
        probed(ours_pid),
        cupti(held_pid),
        probed(held_pid),
        summary.notes
    );
    assert_eq!(cupti(ours_pid), ours_n, "the first job's CUPTI has every launch");
    assert_eq!(cupti(held_pid), 0, "the held job's CUPTI is not ours");
    assert_eq!(probed(held_pid), held_n, "every launch of the held job by uprobe");
    assert!(
        summary.notes.iter().any(|n| n.contains("per-launch uprobes were off")),
        "the probes were off before the held job came: {:?}",
        summary.notes
    );
    // It came while they were off, and its CUPTI never reported a launch: said, naming it.
    let missing: Vec<&String> = summary.notes.iter().filter(|n| n.contains("may be missing")).collect();
    assert_eq!(missing.len(), 1, "{:?}", summary.notes);
    assert!(missing[0].starts_with(&format!("process {held_pid} was seen using the GPU")), "{}", missing[0]);
}
