//! Root tier: the host collector (cuda.bpf.c uprobes) against gpusim's multi-rank workload.
//! Every launch, synchronize and collective the ground truth counts is in the trace, exactly,
//! per rank; children started by the launcher are followed; names and ranks are resolved.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

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
    assert!(is_root(), "run the root tier as root (tools/test does when it can)");
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let trace = dir.path().join(format!("{scenario}.gptrace"));
    let out = dir.path().join("truth");
    let command = vec![
        built.build_dir.join("gpusim-train").display().to_string(),
        "--scenario".into(),
        scenario.into(),
        "--ranks".into(),
        ranks.to_string(),
        "--steps".into(),
        steps.to_string(),
        "--out".into(),
        out.display().to_string(),
        "--lib-dir".into(),
        built.lib_dir.display().to_string(),
    ];
    let mut cfg = LaunchConfig::new(command, trace.clone());
    cfg.library_dirs.push(built.lib_dir.clone());
    let summary = record_command(&cfg, &AtomicBool::new(false)).expect("recording gpusim-train");
    assert!(summary.exit_status.is_some_and(|s| s.success()), "gpusim-train failed: {:?}", summary.exit_status);
    let reader = TraceReader::open(&trace).unwrap();
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
    let ranks = 2;
    let rec = record_scenario(scenario, ranks, 12);
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
