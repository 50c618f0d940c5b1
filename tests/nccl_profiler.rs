//! NCCL's algorithm and protocol per collective, through NCCL's profiler plugin API: the
//! injection library is the plugin (`NCCL_PROFILER_PLUGIN`), gpusim's libnccl loads it as NCCL
//! does and describes each collective with the real descriptor layouts; each collective start
//! becomes one `nccl_algo` record that joins the eBPF `nccl` host record of the same call.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use ghostprof::collect::cupti::CuptiCollector;
use ghostprof::pipeline::{Pipeline, PipelineOptions};
use ghostprof::record::session::{record_command, LaunchConfig};
use ghostprof::trace::*;
use ghostprof_ring::{wire, Producer};

use crate::gpusim::truth;

use crate::util::*;

/// A collective record written into a real ring by the producer (as the injection library
/// does) comes out of the collector as an `nccl_algo` record with every field, its strings
/// interned; a truncated or lying record is counted malformed, not decoded.
#[test]
fn nccl_coll_wire_records_become_nccl_algo_records() {
    let dir = tmpdir();
    let pid = 4242u32;
    let mut ring = Producer::create(&dir.path().join(format!("ghostprof-{pid}.ring")), 1 << 16).unwrap();
    let rec = wire::NcclColl {
        time_ns: 5_000_000_123,
        comm_hash: 0x1234_5678_9abc_def0,
        seq: 7,
        count: 50_000_000,
        tid: 4243,
        rank: 1,
        nranks: 2,
        n_channels: 4,
        n_warps: 16,
        api_version: 4,
        func: b"AllReduce",
        datatype: b"ncclBfloat16",
        algo: b"RING",
        proto: b"SIMPLE",
    };
    let mut buf = [0u8; wire::NCCL_COLL_MAX];
    let n = rec.encode(&mut buf);
    assert!(ring.push(wire::NCCL_COLL, &buf[..n]));
    // v1 names through, an unknown function, a negative rank (unknown).
    let old =
        wire::NcclColl { func: b"Gossip", rank: -1, nranks: -1, algo: b"TREE", proto: b"LL", api_version: 1, ..rec };
    let n_old = old.encode(&mut buf);
    assert!(ring.push(wire::NCCL_COLL, &buf[..n_old]));
    assert!(ring.push(wire::NCCL_COLL, &buf[..47]), "shorter than the fixed part");
    let mut lying = buf;
    lying[48] = 200; // func's length runs past the end
    assert!(ring.push(wire::NCCL_COLL, &lying[..n_old]));

    let trace = dir.path().join("t.gptrace");
    let pipeline = Pipeline::create(&trace, false, &TraceInfo::default(), PipelineOptions::default()).unwrap();
    let mut producer = pipeline.producer(Source::Cupti);
    let mut collector = CuptiCollector::new(dir.path(), true);
    collector.scan(&[pid]);
    collector.drain(&mut producer);
    assert_eq!((collector.stats.records, collector.stats.malformed), (4, 2));
    drop(producer);
    pipeline.finish().unwrap();

    let reader = TraceReader::open(&trace).unwrap();
    let mut names = BTreeMap::new();
    reader.for_each_chunk(|c| names.extend(c.strings.iter().cloned())).unwrap();
    let b = reader.read_all().unwrap();
    assert_eq!(b.nccl_algos.len(), 2);
    let a = b.nccl_algos[0];
    let name = |id: u32| names.get(&id).cloned().unwrap_or_default();
    assert_eq!(
        (a.time_ns, a.comm_hash, a.seq, a.count, a.pid, a.tid, a.rank, a.nranks),
        (5_000_000_123, 0x1234_5678_9abc_def0, 7, 50_000_000, pid, 4243, 1, 2)
    );
    assert_eq!((a.op, a.dtype), (CollOp::AllReduce as u32, NcclDtype::Bfloat16 as u32));
    assert_eq!((name(a.algo_id).as_str(), name(a.proto_id).as_str()), ("RING", "SIMPLE"));
    assert_eq!((a.n_channels, a.n_warps, a.api_version), (4, 16, 4));
    let o = b.nccl_algos[1];
    assert_eq!((o.op, o.rank, o.nranks, o.api_version), (u32::MAX, u32::MAX, u32::MAX, 1));
    assert_eq!((name(o.algo_id).as_str(), name(o.proto_id).as_str()), ("TREE", "LL"));
}

/// Random bytes as NCCL_COLL records: every one is read, none panics, and a record is kept
/// exactly when its four strings fit in it.
#[test]
fn hostile_nccl_coll_records_are_counted_not_trusted() {
    use ghostprof::trace::synth::Rng;
    let dir = tmpdir();
    let pid = 4_000_777u32;
    let mut ring = Producer::create(&dir.path().join(format!("ghostprof-{pid}.ring")), 1 << 20).unwrap();
    let mut rng = Rng::new(7);
    let mut valid = 0u64;
    for _ in 0..3000 {
        let len = rng.below(120) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if len > 52 && rng.below(2) == 0 {
            p[48..52].fill(0); // four empty strings: well-formed whatever the rest says
        }
        valid += wire::NcclColl::decode(&p).is_some() as u64;
        assert!(ring.push(wire::NCCL_COLL, &p));
    }
    assert!(valid > 500, "{valid}");
    let trace = dir.path().join("t.gptrace");
    let pipeline = Pipeline::create(&trace, false, &TraceInfo::default(), PipelineOptions::default()).unwrap();
    let mut producer = pipeline.producer(Source::Cupti);
    let mut collector = CuptiCollector::new(dir.path(), true);
    collector.scan(&[pid]);
    collector.drain(&mut producer);
    assert_eq!((collector.stats.records, collector.stats.malformed), (3000, 3000 - valid));
    drop(producer);
    pipeline.finish().unwrap();
    assert_eq!(TraceReader::open(&trace).unwrap().read_all().unwrap().nccl_algos.len() as u64, valid);
}

/// Records a gpusim run with the injection library and returns (summary, batch, strings).
fn record(
    command: Vec<String>,
    trace: &std::path::Path,
    user_plugin: Option<&str>,
) -> (ghostprof::record::session::SessionSummary, RecordBatch, BTreeMap<u32, String>) {
    let built = crate::gpusim::built();
    let mut cfg = LaunchConfig::new(command, trace.to_path_buf());
    cfg.library_dirs.push(built.lib_dir.clone());
    cfg.inject_lib = Some(built.build_dir.join("libghostprof_inject.so"));
    cfg.user_nccl_profiler = user_plugin.map(String::from);
    let summary = record_command(&cfg, &AtomicBool::new(false)).expect("recording");
    assert!(summary.exit_status.is_some_and(|s| s.success()), "{:?}", summary.exit_status);
    let reader = TraceReader::open(trace).unwrap();
    let mut names = BTreeMap::new();
    reader.for_each_chunk(|c| names.extend(c.strings.iter().cloned())).unwrap();
    (summary, reader.read_all().unwrap(), names)
}

/// The join the analysis uses (docs/trace-format.md): per process, the k-th `nccl_algo` of a
/// communicator and operation (by `seq`) is the k-th host call of that operation on the
/// communicator; for a call outside a group it was started on the calling thread inside it.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_nccl_algo_records_match_gpusim_and_join_the_host_calls() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let trace = dir.path().join("nccl.gptrace");
    let out = dir.path().join("truth");
    let steps = 5u64;
    let (summary, b, names) = record(crate::gpusim::train_command("balanced", 2, steps, &out), &trace, None);
    assert_eq!((summary.cupti.malformed, summary.cupti.ring_drops), (0, 0), "{:?}", summary.notes);
    let mut hashes = Vec::new();
    for rank in 0..2u32 {
        let t = truth(&out, rank);
        let pid = t["pid"].as_u64().unwrap() as u32;
        let colls = t["devices"][0]["collectives"].as_array().unwrap();
        assert_eq!(colls.len() as u64, steps, "one all-reduce per step");
        let algos: Vec<&NcclAlgo> = b.nccl_algos.iter().filter(|a| a.pid == pid).collect();
        assert_eq!(algos.len(), colls.len(), "rank {rank}: one nccl_algo per collective");
        let mut host: Vec<&NcclColl> =
            b.nccl.iter().filter(|c| c.pid == pid && c.phase == NcclPhase::Host as u32).collect();
        host.sort_by_key(|c| c.seq);
        assert_eq!(host.len(), colls.len(), "rank {rank}: eBPF host calls");
        for (k, (a, c)) in algos.iter().zip(colls).enumerate() {
            assert_eq!(a.seq, k as u64, "NCCL's seqNumber per communicator and operation, from 0");
            assert_eq!((a.op, a.dtype), (CollOp::AllReduce as u32, NcclDtype::Bfloat16 as u32));
            assert_eq!((a.rank, a.nranks, a.api_version), (rank, 2, 4));
            assert_eq!(a.count * 2, c["bytes"].as_u64().unwrap(), "bf16 elements × 2 = the payload");
            assert_eq!(names[&a.algo_id], c["algorithm"].as_str().unwrap(), "gpusim's algorithm");
            assert_eq!(names[&a.proto_id], c["protocol"].as_str().unwrap(), "gpusim's protocol");
            assert_eq!((names[&a.algo_id].as_str(), names[&a.proto_id].as_str()), ("RING", "SIMPLE"), "100 MB");
            // The join: same process, the host call of the same per-operation order, and the
            // event was started on the calling thread inside the call.
            let h = host[k];
            assert_eq!((h.seq, h.op, h.count), (a.seq, a.op, a.count));
            assert_eq!(h.tid, a.tid);
            assert!(h.start_ns <= a.time_ns && a.time_ns <= h.end_ns, "event inside the call: {h:?} {a:?}");
        }
        hashes.extend(algos.iter().map(|a| a.comm_hash));
    }
    hashes.dedup();
    assert_eq!(hashes.len(), 1, "one communicator, the same commHash on both ranks");
    // The report's collectives table names the algorithm of every all-reduce.
    let report = ghostprof::report::render_json(&[ghostprof::analyze::analyze_file(&trace).unwrap()]);
    let colls = report["collectives"].as_array().unwrap();
    assert_eq!(colls.len(), 1, "{colls:?}");
    assert_eq!((colls[0]["op"].as_str(), colls[0]["algorithm"].as_str()), (Some("all_reduce"), Some("RING/SIMPLE")));
    assert_eq!(colls[0]["count"].as_u64(), Some(2 * steps), "both ranks' instances");
}

/// Older NCCLs (2.23 looks up v1 only, 2.24 v2, 2.26 v3) get the same records through the
/// older descriptor layouts, v1's numeric ids included; NCCL_ALGO / NCCL_PROTO force the choice.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_older_plugin_api_versions_give_the_same_records() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    for version in 1..=3u32 {
        let dir = tmpdir();
        let trace = dir.path().join("old.gptrace");
        let out = dir.path().join("truth");
        let mut command: Vec<String> = ["env", "NCCL_ALGO=TREE", "NCCL_PROTO=LL128"].map(String::from).to_vec();
        command.push(format!("GPUSIM_NCCL_PROFILER_MAX_VERSION={version}"));
        command.extend(crate::gpusim::train_command("balanced", 1, 3, &out));
        let (_summary, b, names) = record(command, &trace, None);
        let t = truth(&out, 0);
        let pid = t["pid"].as_u64().unwrap() as u32;
        let algos: Vec<&NcclAlgo> = b.nccl_algos.iter().filter(|a| a.pid == pid).collect();
        assert_eq!(algos.len(), 3, "v{version}");
        for (k, a) in algos.iter().enumerate() {
            assert_eq!((a.seq, a.api_version, a.rank), (k as u64, version, 0), "v{version}");
            assert_eq!(a.nranks, u32::MAX, "v{version}: no nranks before v4");
            assert_eq!((a.op, a.dtype), (CollOp::AllReduce as u32, NcclDtype::Bfloat16 as u32), "v{version}");
            assert_eq!((names[&a.algo_id].as_str(), names[&a.proto_id].as_str()), ("TREE", "LL128"), "v{version}");
            assert_ne!(a.comm_hash, 0, "v{version}: commHash from the descriptor");
        }
        let c = &t["devices"][0]["collectives"][0];
        assert_eq!((c["algorithm"].as_str(), c["protocol"].as_str()), (Some("TREE"), Some("LL128")));
    }
}

/// A user's own NCCL_PROFILER_PLUGIN wins: the job keeps it (here "none"), the recording is
/// otherwise complete, no nccl_algo records, and a session note says why. One that names the
/// injection library already is ours: records, no note.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_a_users_own_nccl_profiler_plugin_is_kept_and_noted() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let trace = dir.path().join("own.gptrace");
    let out = dir.path().join("truth");
    let (summary, b, _names) = record(crate::gpusim::train_command("balanced", 1, 3, &out), &trace, Some("none"));
    let pid = truth(&out, 0)["pid"].as_u64().unwrap() as u32;
    assert!(b.nccl_algos.is_empty(), "the user's plugin, not ours: {:?}", b.nccl_algos.first());
    assert_eq!(b.nccl.iter().filter(|c| c.pid == pid && c.phase == NcclPhase::Host as u32).count(), 3);
    assert!(b.kernels.iter().any(|k| k.pid == pid), "the CUPTI device timeline is still there");
    let note: Vec<&String> =
        summary.notes.iter().filter(|n| n.contains("NCCL_PROFILER_PLUGIN is set (none)")).collect();
    assert_eq!(note.len(), 1, "{:?}", summary.notes);
    assert!(TraceReader::open(&trace).unwrap().notes().unwrap().contains(note[0]), "stored in the trace");

    // Already naming the injection library (through another path to it): ours, no note.
    let trace = dir.path().join("same.gptrace");
    let out = dir.path().join("truth-same");
    let built = crate::gpusim::built();
    let via = dir.path().join("inject-link.so");
    std::os::unix::fs::symlink(built.build_dir.join("libghostprof_inject.so"), &via).unwrap();
    let (summary, b, _names) =
        record(crate::gpusim::train_command("balanced", 1, 3, &out), &trace, Some(via.to_str().unwrap()));
    let pid = truth(&out, 0)["pid"].as_u64().unwrap() as u32;
    assert_eq!(b.nccl_algos.iter().filter(|a| a.pid == pid).count(), 3);
    assert!(!summary.notes.iter().any(|n| n.contains("NCCL_PROFILER_PLUGIN")), "{:?}", summary.notes);
}

/// Attached to a running job started with the dormant injection library: with
/// NCCL_PROFILER_PLUGIN naming it, nccl_algo records flow while attached (NCCL's seq does not
/// start at 0, the eBPF seq does: rule 1 of the join aligns them, and the offset is constant);
/// without it, a session note says why there are none.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_attach_records_nccl_algo_when_the_job_names_the_plugin_and_notes_when_not() {
    use ghostprof::record::attach::{attach, AttachConfig};
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let inject = built.build_dir.join("libghostprof_inject.so");
    for with_plugin in [true, false] {
        let dir = tmpdir();
        let rings = dir.path().join("rings");
        std::fs::create_dir(&rings).unwrap();
        let out = dir.path().join("truth");
        let cmd = crate::gpusim::train_command("balanced", 1, 200, &out);
        let mut job = std::process::Command::new(&cmd[0]);
        job.args(&cmd[1..]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        job.env("CUDA_INJECTION64_PATH", &inject).env("GHOSTPROF_RING_DIR", &rings).env_remove("NCCL_PROFILER_PLUGIN");
        if with_plugin {
            job.env("NCCL_PROFILER_PLUGIN", &inject);
        }
        let mut job = job.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let trace = dir.path().join("attach.gptrace");
        let mut cfg = AttachConfig::new(job.id(), trace.clone());
        cfg.ring_dir = rings.clone();
        cfg.max_duration = Some(std::time::Duration::from_millis(1500));
        let summary = attach(&cfg, &AtomicBool::new(false), &mut |_| {}).expect("attach");
        assert!(job.wait().unwrap().success());
        let pid = truth(&out, 0)["pid"].as_u64().unwrap() as u32;
        let b = TraceReader::open(&trace).unwrap().read_all().unwrap();
        let algos: Vec<&NcclAlgo> = b.nccl_algos.iter().filter(|a| a.pid == pid).collect();
        let noted = summary.notes.iter().any(|n| n.contains("started without NCCL_PROFILER_PLUGIN"));
        if !with_plugin {
            assert!(algos.is_empty());
            assert!(noted, "{:?}", summary.notes);
            continue;
        }
        assert!(!noted, "{:?}", summary.notes);
        assert!(algos.len() >= 5, "collectives while attached: {}", algos.len());
        assert!(algos[0].seq > 0, "attached mid-run: NCCL's seq goes on from the job's start");
        assert!(algos.windows(2).all(|w| w[1].seq == w[0].seq + 1), "none lost while attached");
        let host: Vec<&NcclColl> =
            b.nccl.iter().filter(|c| c.pid == pid && c.phase == NcclPhase::Host as u32).collect();
        // The rings are on a little longer than the host probes (switched on before them and
        // drained after them): the calls at the window's two edges have no host record.
        let mut paired = Vec::new();
        for (i, a) in algos.iter().enumerate() {
            let inside: Vec<&&NcclColl> =
                host.iter().filter(|h| h.tid == a.tid && h.start_ns <= a.time_ns && a.time_ns <= h.end_ns).collect();
            if let [h] = inside[..] {
                assert_eq!((h.op, h.count), (a.op, a.count));
                paired.push((i, a.seq - h.seq));
            }
        }
        let (first, last) = (paired[0].0, paired[paired.len() - 1].0);
        assert_eq!(paired.len(), last - first + 1, "every call between the edges pairs");
        assert!(paired.len() * 2 >= algos.len(), "{} of {} paired", paired.len(), algos.len());
        let mut offsets: Vec<u64> = paired.iter().map(|p| p.1).collect();
        offsets.dedup();
        assert_eq!(offsets.len(), 1, "one constant seq offset per communicator: {offsets:?}");
    }
}
