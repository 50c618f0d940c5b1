//! Root tier: the host collector (cuda.bpf.c uprobes) against gpusim's multi-rank workload.
//! Every launch, synchronize and collective the ground truth counts is in the trace, exactly,
//! per rank; children started by the launcher are followed; names and ranks are resolved.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use ghostprof::collect::host::UprobeLinks;
use ghostprof::record::session::{record_command, LaunchConfig};
use ghostprof::trace::*;
use serde_json::Value;

use crate::util::*;

struct Recorded {
    batch: RecordBatch,
    truths: Vec<Value>,
    summary: ghostprof::record::session::SessionSummary,
    names: BTreeMap<u32, String>,
}

fn record_scenario(scenario: &str, ranks: u32, steps: u32) -> Recorded {
    record_scenario_under(&[], scenario, ranks, steps)
}

/// [`record_scenario`] with the job started through `prefix` (e.g. `setarch -R`).
fn record_scenario_under(prefix: &[&str], scenario: &str, ranks: u32, steps: u32) -> Recorded {
    record_scenario_with(prefix, scenario, ranks, steps, UprobeLinks::detect())
}

/// [`record_scenario_under`] with the uprobes placed as `links` says.
fn record_scenario_with(prefix: &[&str], scenario: &str, ranks: u32, steps: u32, links: UprobeLinks) -> Recorded {
    assert!(is_root(), "run the root tier as root (tools/test does when it can)");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let trace = dir.path().join(format!("{scenario}.gptrace"));
    let out = dir.path().join("truth");
    let mut command: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    command.extend(crate::gpusim::train_command(scenario, ranks, steps.into(), &out));
    let mut cfg = LaunchConfig::new(command, trace.clone());
    cfg.library_dirs.push(built.lib_dir.clone());
    // These tests count what the uprobes see: keep the per-launch ones where CUPTI sees the
    // launches too.
    cfg.launches_always = true;
    cfg.uprobe_links = links;
    let summary = record_command(&cfg, &AtomicBool::new(false)).expect("recording gpusim-train");
    assert!(summary.exit_status.is_some_and(|s| s.success()), "gpusim-train failed: {:?}", summary.exit_status);
    let reader = TraceReader::open(&trace).unwrap();
    assert!(reader.is_finalized() && reader.warnings().is_empty(), "the target exited: a clean, finalized trace");
    let mut names = BTreeMap::new();
    reader
        .for_each_chunk(|c| {
            for (id, s) in &c.strings {
                names.insert(*id, s.clone());
            }
        })
        .unwrap();
    let batch = reader.read_all().unwrap();
    let truths = (0..ranks)
        .map(|r| {
            let text = std::fs::read_to_string(out.join(format!("truth-rank{r}.json"))).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect();
    Recorded { batch, truths, summary, names }
}

fn is_sync(call: &ApiCall) -> bool {
    call.domain == ApiDomain::Probe as u32
        && matches!(
            ProbedApi::from_u32(call.call_id),
            Some(ProbedApi::StreamSynchronize | ProbedApi::CtxSynchronize | ProbedApi::EventSynchronize)
        )
}

fn check_exact_counts(scenario: &str) {
    check_exact_counts_with(scenario, UprobeLinks::detect());
}

fn check_exact_counts_with(scenario: &str, links: UprobeLinks) {
    let ranks = 2;
    let rec = record_scenario_with(&[], scenario, ranks, 12, links);
    assert_eq!(rec.summary.host.ringbuf_drops, 0, "{scenario}: ring buffer drops");
    assert_eq!(rec.summary.pipeline.drops, vec![], "{scenario}: pipeline drops");
    for truth in &rec.truths {
        let pid = truth["pid"].as_u64().unwrap() as u32;
        let totals = &truth["totals"];
        let launches: Vec<&KernelLaunch> = rec.batch.launches.iter().filter(|l| l.pid == pid).collect();
        assert_eq!(launches.len() as u64, totals["launches"].as_u64().unwrap(), "{scenario} pid {pid}: launches");
        for (api, n) in totals["launches_by_api"].as_object().unwrap() {
            let got = launches.iter().filter(|l| ProbedApi::name_of(l.api) == *api).count() as u64;
            assert_eq!(got, n.as_u64().unwrap(), "{scenario} pid {pid}: {api}");
        }
        let syncs = rec.batch.api_calls.iter().filter(|c| c.pid == pid && is_sync(c)).count() as u64;
        assert_eq!(syncs, totals["syncs"].as_u64().unwrap(), "{scenario} pid {pid}: syncs");
        let colls: Vec<&NcclColl> = rec.batch.nccl.iter().filter(|c| c.pid == pid).collect();
        assert_eq!(colls.len() as u64, totals["collectives"].as_u64().unwrap(), "{scenario} pid {pid}: collectives");
        eprintln!(
            "{scenario} pid {pid}: {} launches, {syncs} syncs, {} collectives, {} names: equal to the ground truth",
            launches.len(),
            colls.len(),
            rec.batch.functions.iter().filter(|f| f.pid == pid).count()
        );
        // Ranks come from ncclCommInitRank; sequence numbers count up from 0 per communicator.
        let rank = truth["rank"].as_u64().unwrap() as u32;
        assert!(colls.iter().all(|c| c.rank == rank && c.nranks == ranks), "{scenario} pid {pid}: ranks");
        let seqs: Vec<u64> = colls.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, (0..colls.len() as u64).collect::<Vec<_>>(), "{scenario} pid {pid}: sequence");
        // Blocking calls last as long as the host really waited (> 0).
        assert!(rec.batch.api_calls.iter().filter(|c| c.pid == pid && is_sync(c)).all(|c| c.end_ns > c.start_ns));
        // Every launched function has a name from cuModuleGetFunction.
        let named: BTreeMap<u64, u32> =
            rec.batch.functions.iter().filter(|f| f.pid == pid).map(|f| (f.func, f.name_id)).collect();
        for l in &launches {
            let id = named.get(&l.func).unwrap_or_else(|| panic!("{scenario}: function {:#x} has no name", l.func));
            assert!(!rec.names[id].is_empty());
        }
    }
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_host_counts_balanced_exactly() {
    check_exact_counts("balanced");
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_host_counts_straggler_exactly() {
    check_exact_counts("straggler");
}

/// The fallback for kernels without `uprobe_multi` links (before 6.6): one perf-event uprobe per
/// function counts the same (the other tests use the kernel's choice, `uprobe_multi` here).
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_host_counts_straggler_exactly_with_a_uprobe_per_function() {
    check_exact_counts_with("straggler", UprobeLinks::PerFunction);
}

/// Union length of `intervals` clipped to [lo, hi].
fn union_ns(mut intervals: Vec<(u64, u64)>, lo: u64, hi: u64) -> u64 {
    intervals.sort_unstable();
    let (mut total, mut cur) = (0u64, None::<(u64, u64)>);
    for (s, e) in intervals {
        let (s, e) = (s.max(lo), e.min(hi));
        if s >= e {
            continue;
        }
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    total + cur.map_or(0, |(s, e)| e - s)
}

/// The main thread's stalls as ghostprof sees them (off-CPU, not preempted, plus time inside
/// file I/O syscalls) against the simulator's measured blocking intervals, NCCL calls left out
/// of both (waiting for peers is comm.wait, booked by the analysis from the device side).
fn check_stalls(scenario: &str) {
    // One rank keeps the NCCL rendezvous out; the comparison is with every interval the
    // simulator's host thread was blocked (`host_blocked_by_reason`), whatever the device did.
    let rec = record_scenario(scenario, 1, 12);
    assert_eq!(rec.summary.sched.ringbuf_drops, 0, "{scenario}: sched ring buffer drops");
    for truth in &rec.truths {
        let pid = truth["pid"].as_u64().unwrap() as u32;
        let (lo, hi) = (truth["window"]["start_ns"].as_u64().unwrap(), truth["window"]["end_ns"].as_u64().unwrap());
        let blocked = truth["devices"][0]["host_blocked_by_reason"].as_object().unwrap();
        let truth_ns: u64 = blocked.iter().filter(|(k, _)| !k.contains("nccl")).map(|(_, v)| v.as_u64().unwrap()).sum();
        let mut intervals: Vec<(u64, u64)> = rec
            .batch
            .stalls
            .iter()
            .filter(|s| s.pid == pid && s.tid == pid && s.reason != StallReason::Preempted as u32)
            .map(|s| (s.start_ns, s.end_ns))
            .collect();
        intervals.extend(rec.batch.file_io.iter().filter(|f| f.tid == pid).map(|f| (f.start_ns, f.end_ns)));
        let nccl: Vec<(u64, u64)> =
            rec.batch.nccl.iter().filter(|c| c.tid == pid).map(|c| (c.start_ns, c.end_ns)).collect();
        let with_nccl: Vec<(u64, u64)> = intervals.iter().chain(&nccl).copied().collect();
        let measured = union_ns(with_nccl, lo, hi) - union_ns(nccl, lo, hi);
        let err = (measured as f64 - truth_ns as f64).abs() / truth_ns as f64;
        eprintln!(
            "{scenario} pid {pid}: stalls measured {:.2} ms, ground truth {:.2} ms ({:.2}% off) {blocked:?}",
            measured as f64 / 1e6,
            truth_ns as f64 / 1e6,
            err * 100.0
        );
        assert!(err <= 0.05, "{scenario} pid {pid}: stall time off by {:.2}%", err * 100.0);

        let written: u64 = rec
            .batch
            .file_io
            .iter()
            .filter(|f| f.pid == pid && WRITE_SYSCALLS.contains(&f.syscall) && f.start_ns >= lo && f.end_ns <= hi)
            .map(|f| f.bytes)
            .sum();
        let ckpt = truth["totals"]["checkpoint_bytes"].as_u64().unwrap();
        if ckpt > 0 {
            let err = (written as f64 - ckpt as f64).abs() / ckpt as f64;
            eprintln!("{scenario} pid {pid}: checkpoint bytes measured {written}, ground truth {ckpt}");
            assert!(err <= 0.01, "{scenario} pid {pid}: checkpoint bytes {written} vs {ckpt}");
        }
    }
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_host_stalls_of_io_stall_match_the_ground_truth() {
    check_stalls("io-stall");
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_host_stalls_and_checkpoint_bytes_match_the_ground_truth() {
    check_stalls("checkpoint");
}

/// A process that maps no library yet, then dlopens gpusim's libcuda from a directory nobody
/// told ghostprof about, waits, and launches: the rescan of its maps finds and probes the
/// library, and every launch after that is in the trace.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_host_finds_a_library_dlopened_after_attach() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    // A private copy, so no earlier probe of the staged file counts.
    let dir = tmpdir();
    let lib = dir.path().join("libcuda.so.1");
    std::fs::copy(built.lib_dir.join("libcuda.so.1"), &lib).unwrap();
    let script = r#"
import ctypes, sys, time
time.sleep(0.3)
cu = ctypes.CDLL(sys.argv[1])
time.sleep(1.0)
assert cu.cuInit(0) == 0
dev = ctypes.c_int(); assert cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
ctx = ctypes.c_void_p(); assert cu.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0
mod = ctypes.c_void_p(); assert cu.cuModuleLoadData(ctypes.byref(mod), b"gpusim-module v1\nlate_kernel 1000 0\n\0") == 0
fn = ctypes.c_void_p(); assert cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"late_kernel") == 0
for i in range(250):
    assert cu.cuLaunchKernel(fn, 1, 1, 1, 32, 1, 2, 128, None, None, None) == 0
assert cu.cuCtxSynchronize() == 0
"#;
    let trace = dir.path().join("late.gptrace");
    let command = vec!["python3".to_string(), "-c".into(), script.into(), lib.display().to_string()];
    let mut cfg = LaunchConfig::new(command, trace.clone());
    cfg.launches_always = true;
    let summary = record_command(&cfg, &AtomicBool::new(false)).unwrap();
    assert!(summary.exit_status.is_some_and(|s| s.success()), "{:?}", summary.exit_status);
    let report = summary.libraries.iter().find(|r| r.path.ends_with("libcuda.so.1")).expect("libcuda found by rescan");
    assert!(report.attached.iter().any(|s| s == "cuLaunchKernel"), "{report:?}");
    let reader = TraceReader::open(&trace).unwrap();
    assert!(reader.is_finalized(), "the target exited and the trace was finalized");
    let batch = reader.read_all().unwrap();
    assert_eq!(batch.launches.len(), 250, "every launch after the dlopen");
    // Arguments 7-9 (block z, shared memory, stream) come from the user stack.
    assert!(batch
        .launches
        .iter()
        .all(|l| (l.grid_x, l.block_x, l.block_z, l.shared_mem_bytes, l.stream) == (1, 32, 2, 128, 0)));
    assert_eq!(batch.functions.len(), 1, "the kernel's name");
    assert!(batch.libraries.iter().any(|l| l.lib == LibKind::Cuda as u32), "a library record for the late libcuda");
    let syncs = batch.api_calls.iter().filter(|c| c.call_id == ProbedApi::CtxSynchronize as u32).count();
    assert_eq!(syncs, 1);
}

#[test]
fn attaching_to_a_missing_pid_or_a_process_without_cuda_says_why() {
    use ghostprof::collect::gpu_libraries_of;
    // Pids above pid_max (4194304 at most) never exist.
    let err = gpu_libraries_of(4_999_999).unwrap_err().to_string();
    assert!(err.contains("process 4999999 does not exist"), "{err}");
    // This test process maps libc but no CUDA library.
    let err = gpu_libraries_of(std::process::id()).unwrap_err().to_string();
    assert!(err.contains("no CUDA or NCCL library mapped") && err.contains("libc.so"), "{err}");
}

#[test]
fn a_kernel_without_btf_or_uprobes_is_named() {
    let root = tmpdir();
    let err = ghostprof::collect::preflight_at(root.path()).unwrap_err().to_string();
    assert!(err.contains("no BTF") && err.contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    std::fs::create_dir_all(root.path().join("sys/kernel/btf")).unwrap();
    std::fs::write(root.path().join("sys/kernel/btf/vmlinux"), b"").unwrap();
    let err = ghostprof::collect::preflight_at(root.path()).unwrap_err().to_string();
    assert!(err.contains("no uprobe support"), "{err}");
    std::fs::create_dir_all(root.path().join("sys/bus/event_source/devices/uprobe")).unwrap();
    ghostprof::collect::preflight_at(root.path()).expect("both present");
}

/// ncclComm_t values are addresses in each process, and two ranks may hold the same one (the
/// same binary without address-space randomization often does). Their sequence numbers and
/// ranks stay their own (the eBPF maps are keyed by process and communicator). gpusim places
/// both communicators at one address (`GPUSIM_COMM_ADDR`): with ASLR off alone, the ranks' heaps
/// were equal only as long as nothing timing-dependent allocated before the communicator.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_ranks_with_the_same_communicator_address_keep_their_own_sequence() {
    let ranks = 2;
    let rec = record_scenario_under(&["env", "GPUSIM_COMM_ADDR=0x7e5500000000"], "balanced", ranks, 8);
    let mut comms = Vec::new();
    for truth in &rec.truths {
        let pid = truth["pid"].as_u64().unwrap() as u32;
        let rank = truth["rank"].as_u64().unwrap() as u32;
        let colls: Vec<&NcclColl> = rec.batch.nccl.iter().filter(|c| c.pid == pid).collect();
        assert_eq!(colls.len() as u64, truth["totals"]["collectives"].as_u64().unwrap());
        let seqs: Vec<u64> = colls.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, (0..colls.len() as u64).collect::<Vec<_>>(), "pid {pid}: its own sequence");
        assert!(colls.iter().all(|c| c.rank == rank && c.nranks == ranks), "pid {pid}: its own rank");
        comms.push(colls[0].comm);
    }
    assert_eq!(comms, [0x7e55_0000_0000; 2], "both ranks' communicators are at the one address");
}
