//! Clock alignment by the collectives (docs/metrics.md, "Clock alignment"): a recorded 3-rank
//! gpusim straggler job is split into one trace per rank; two of them are rewritten as if
//! recorded on other hosts, with known clock offsets (+37.2 ms, −4.1 ms) and a drift (+20 ppm).
//! The aligned report gives the unshifted report's skew, straggler and comm.wait, and recovers
//! the offsets; with too few collectives it falls back to CLOCK_REALTIME with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ghostprof::record::session::{record_command, LaunchConfig};
use ghostprof::trace::{Interner, Record, TraceInfo, TraceReader, TraceWriter, WriterOptions};
use serde_json::Value;

use crate::util::*;

/// A clock of another host: `t + offset_ns + drift × (t − anchor_ns)`.
#[derive(Clone, Copy)]
struct Shift {
    offset_ns: i64,
    drift: f64,
    anchor_ns: u64,
}

impl Shift {
    fn apply(&self, t: u64) -> u64 {
        if t == 0 {
            return 0; // "not recorded"
        }
        (t as i64 + self.offset_ns + (self.drift * (t as f64 - self.anchor_ns as f64)).round() as i64) as u64
    }
}

/// Every timestamp of a record (each kind's time fields), through `f`.
fn shift_record(r: &mut Record, f: &dyn Fn(u64) -> u64) {
    match r {
        Record::KernelExec(x) => (x.start_ns, x.end_ns) = (f(x.start_ns), f(x.end_ns)),
        Record::MemOp(x) => (x.start_ns, x.end_ns) = (f(x.start_ns), f(x.end_ns)),
        Record::ApiCall(x) => (x.start_ns, x.end_ns) = (f(x.start_ns), f(x.end_ns)),
        Record::NcclColl(x) => (x.start_ns, x.end_ns) = (f(x.start_ns), f(x.end_ns)),
        Record::HostStall(x) => (x.start_ns, x.end_ns) = (f(x.start_ns), f(x.end_ns)),
        Record::StepMarker(x) => (x.start_ns, x.end_ns) = (f(x.start_ns), f(x.end_ns)),
        Record::FileIo(x) => (x.start_ns, x.end_ns) = (f(x.start_ns), f(x.end_ns)),
        Record::DeviceSample(x) => x.time_ns = f(x.time_ns),
        Record::ProcessInfo(x) => x.time_ns = f(x.time_ns),
        Record::ThreadInfo(x) => x.time_ns = f(x.time_ns),
        Record::LibraryInfo(x) => x.time_ns = f(x.time_ns),
        Record::KernelLaunch(x) => x.time_ns = f(x.time_ns),
        Record::FunctionName(x) => x.time_ns = f(x.time_ns),
        Record::SessionNote(x) => x.time_ns = f(x.time_ns),
        Record::NcclAlgo(x) => x.time_ns = f(x.time_ns),
        Record::Drops(x) => x.time_ns = f(x.time_ns),
        Record::ProfilerCost(x) => x.time_ns = f(x.time_ns),
        // Both readings move by as much: this host's CLOCK_REALTIME is off by the shift (NTP's error).
        Record::ClockSync(x) => {
            let moved = f(x.monotonic_ns);
            x.other_ns = (x.other_ns as i128 + moved as i128 - x.monotonic_ns as i128) as u64;
            x.monotonic_ns = moved;
        }
    }
}

fn pid_of(r: &Record) -> Option<u32> {
    Some(match r {
        Record::KernelExec(x) => x.pid,
        Record::MemOp(x) => x.pid,
        Record::ApiCall(x) => x.pid,
        Record::NcclColl(x) => x.pid,
        Record::HostStall(x) => x.pid,
        Record::StepMarker(x) => x.pid,
        Record::FileIo(x) => x.pid,
        Record::DeviceSample(x) => x.pid,
        Record::ProcessInfo(x) => x.pid,
        Record::ThreadInfo(x) => x.pid,
        Record::LibraryInfo(x) => x.pid,
        Record::KernelLaunch(x) => x.pid,
        Record::FunctionName(x) => x.pid,
        Record::NcclAlgo(x) => x.pid,
        Record::ProfilerCost(x) => x.pid,
        Record::SessionNote(_) | Record::Drops(_) | Record::ClockSync(_) => return None,
    })
}

/// Test helper, not a user feature: writes `pid`'s records of `src` (and the records of no
/// process) to `dst`, chunk by chunk as in `src`, every timestamp through `shift`, with
/// `host_id` in the header; records from `until` on (shifted clock) are left out.
fn rewrite(src: &Path, dst: &Path, pid: u32, shift: Shift, host_id: &str, until: u64) {
    let reader = TraceReader::open(src).unwrap();
    let mut names: Vec<(u32, String)> = Vec::new();
    reader.for_each_chunk(|c| names.extend(c.strings.iter().cloned())).unwrap();
    names.sort_unstable();
    let interner = Arc::new(Interner::new());
    for (id, s) in &names {
        assert_eq!(interner.intern(s), *id, "string ids are dense from 1");
    }
    let mut info = TraceInfo { command: vec!["split".into()], target_pids: vec![pid], ..Default::default() };
    info.extra.insert("host_id".into(), host_id.into());
    let mut w = TraceWriter::create(dst, true, &info, interner, WriterOptions::default()).unwrap();
    let f = |t: u64| shift.apply(t);
    let mut err = None;
    reader
        .for_each_chunk(|c| {
            for mut r in c.records.iter() {
                if pid_of(&r).is_some_and(|p| p != pid) {
                    continue;
                }
                shift_record(&mut r, &f);
                if r.time_ns() >= until {
                    continue;
                }
                if let Err(e) = w.append(r) {
                    err.get_or_insert(e);
                }
            }
            if let Err(e) = w.flush_chunk() {
                err.get_or_insert(e);
            }
        })
        .unwrap();
    assert!(err.is_none(), "{err:?}");
    w.finish().unwrap();
}

fn report(files: &[PathBuf], clock: Option<&str>) -> (Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostprof"));
    cmd.args(["report", "--json"]);
    if let Some(c) = clock {
        cmd.args(["--clock", c]);
    }
    let out = cmd.args(files).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = Command::new(env!("CARGO_BIN_EXE_ghostprof"))
        .arg("report")
        .args(clock.map(|c| vec!["--clock", c]).unwrap_or_default())
        .args(files)
        .output()
        .unwrap();
    (serde_json::from_slice(&out.stdout).unwrap(), String::from_utf8_lossy(&text.stdout).into_owned())
}

/// comm.wait per pid, ns.
fn comm_wait(v: &Value) -> HashMap<u64, f64> {
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["pid"].as_u64().unwrap(), d["categories_ns"]["comm.wait"].as_f64().unwrap()))
        .collect()
}

/// mean arrival skew per rank, ns.
fn skew(v: &Value) -> HashMap<u64, f64> {
    v["skew"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["rank"].as_u64().unwrap(), s["mean_arrival_skew_ns"].as_f64().unwrap()))
        .collect()
}

/// Whether `a` and `b` agree within 1 % (of `scale` when that is larger: a near-zero figure).
fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 0.01 * b.abs().max(scale)
}

#[test]
#[ignore = "root tier: records a gpusim job with eBPF"]
fn root_clocks_aligned_by_collectives_recover_offsets_drift_and_the_straggler() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let trace = dir.path().join("job.gptrace");
    let mut cfg =
        LaunchConfig::new(crate::gpusim::train_command("straggler", 3, 40, &dir.path().join("truth")), trace.clone());
    cfg.library_dirs.push(built.lib_dir.clone());
    cfg.inject_lib = Some(built.build_dir.join("libghostprof_inject.so"));
    let summary = record_command(&cfg, &AtomicBool::new(false)).expect("recording");
    assert!(summary.exit_status.is_some_and(|s| s.success()), "{:?}", summary.exit_status);

    // the ranks' pids, by NCCL rank
    let batch = TraceReader::open(&trace).unwrap().read_all().unwrap();
    let mut ranks: Vec<(u32, u32)> = batch.nccl.iter().map(|n| (n.rank, n.pid)).collect();
    ranks.sort_unstable();
    ranks.dedup();
    assert_eq!(ranks.len(), 3, "{ranks:?}");
    let t0 = batch.kernels.iter().map(|k| k.start_ns).min().unwrap();
    let t1 = batch.kernels.iter().map(|k| k.end_ns).max().unwrap();

    let none = Shift { offset_ns: 0, drift: 0.0, anchor_ns: t0 };
    // rank 1 (the straggler) on a host 4.1 ms behind whose clock runs 20 ppm fast; rank 2 37.2 ms ahead
    let shifts =
        [none, Shift { offset_ns: -4_100_000, drift: 20e-6, anchor_ns: t0 }, Shift { offset_ns: 37_200_000, ..none }];
    let path = |name: &str, r: usize| dir.path().join(format!("{name}-rank{r}.gptrace"));
    let (mut plain, mut moved) = (Vec::new(), Vec::new());
    for (r, &(_, pid)) in ranks.iter().enumerate() {
        rewrite(&trace, &path("plain", r), pid, none, "host-a", u64::MAX);
        rewrite(&trace, &path("moved", r), pid, shifts[r], ["host-a", "host-b", "host-c"][r], u64::MAX);
        plain.push(path("plain", r));
        moved.push(path("moved", r));
    }

    // one host: CLOCK_REALTIME, which is exact here
    let (base, _) = report(&plain, None);
    assert_eq!(base["clock_alignment"]["method"], "realtime");
    assert_eq!(base["straggler_rank"], 1, "{}", base["skew"]);
    // three hosts: the collectives
    let (aligned, text) = report(&moved, None);
    assert_eq!(aligned["clock_alignment"]["method"], "collectives", "{}", aligned["warnings"]);
    assert!(text.contains("clocks aligned by the collectives' end times"), "{text}");
    assert_eq!(aligned["straggler_rank"], base["straggler_rank"]);
    let (bs, als) = (skew(&base), skew(&aligned));
    let scale = bs.values().cloned().fold(0.0, f64::max);
    assert!(scale > 1e6, "the straggler is late by more than a millisecond: {bs:?}");
    for (rank, b) in &bs {
        assert!(close(als[rank], *b, scale), "rank {rank}: skew {} vs {b} (unshifted)", als[rank]);
    }
    let (bw, aw) = (comm_wait(&base), comm_wait(&aligned));
    let wscale = bw.values().cloned().fold(0.0, f64::max);
    assert!(wscale > 1e7, "the others wait more than 10 ms in all: {bw:?}");
    for (pid, b) in &bw {
        assert!(close(aw[pid], *b, wscale), "pid {pid}: comm.wait {} vs {b} (unshifted)", aw[pid]);
    }
    // the recovered clocks: each file's map undoes its shift within 20 µs over the whole run
    let files = aligned["clock_alignment"]["files"].as_array().unwrap();
    assert_eq!(files[0]["reference"], true);
    for r in 1..3 {
        let f = &files[r];
        assert!(f["matched"].as_u64().unwrap() >= 35, "{f}");
        assert!(f["residual_ns"].as_f64().unwrap() < 20_000.0, "{f}");
        let map = |t: u64| {
            t as f64
                + f["offset_ns"].as_f64().unwrap()
                + f["drift_ppm"].as_f64().unwrap() * 1e-6 * (t as f64 - f["anchor_ns"].as_f64().unwrap())
        };
        for t in [t0, (t0 + t1) / 2, t1] {
            let err = map(shifts[r].apply(t)) - t as f64;
            assert!(err.abs() < 20_000.0, "rank {r} at {t}: off by {err} ns ({f})");
        }
        // the offset at the start is the applied one, undone
        let at_start = map(shifts[r].apply(t0)) - shifts[r].apply(t0) as f64;
        assert!((at_start + shifts[r].offset_ns as f64).abs() < 20_000.0, "rank {r}: {at_start} ({f})");
    }
    eprintln!("skew {bs:?} -> {als:?}\ncomm.wait {bw:?} -> {aw:?}\nclocks {}", aligned["clock_alignment"]);
    let drift = files[1]["drift_ppm"].as_f64().unwrap();
    assert!((drift + 20.0).abs() < 3.0, "rank 1's drift undone: {drift} ppm");

    // CLOCK_REALTIME would have been wrong by the offsets: rank 2 looks late, by ~37 ms
    let (realtime, _) = report(&moved, Some("realtime"));
    assert_eq!(realtime["clock_alignment"]["method"], "realtime");
    assert_eq!(realtime["straggler_rank"], 2, "{}", realtime["skew"]);

    // Too few collectives (the first 5 of each rank): CLOCK_REALTIME, with a warning.
    let fifth = {
        let mut ends: Vec<u64> = batch.nccl.iter().filter(|n| n.pid == ranks[0].1).map(|n| n.end_ns).collect();
        ends.sort_unstable();
        ends[4] + 1
    };
    let mut few = Vec::new();
    for (r, &(_, pid)) in ranks.iter().enumerate() {
        // cut at the same instant of each host's clock
        rewrite(&trace, &path("few", r), pid, shifts[r], ["host-a", "host-b", "host-c"][r], shifts[r].apply(fifth));
        few.push(path("few", r));
    }
    let (fallback, text) = report(&few, None);
    assert_eq!(fallback["clock_alignment"]["method"], "realtime");
    let warnings = fallback["warnings"].to_string();
    assert!(warnings.contains("clocks not aligned by collectives") && warnings.contains("fewer than 8"), "{warnings}");
    assert!(text.contains("warning: clocks not aligned by collectives"), "{text}");
}

#[test]
fn clock_and_jobs_flags_refuse_bad_values_in_one_line() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_ghostprof")).args(args).output().unwrap();
    let out = run(&["report", "--clock", "sideways", "x.gptrace"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: realtime, collectives"));
    let out = run(&["report", "--jobs", "0", "x.gptrace"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--jobs 0: give at least 1 thread"), "{err}");
}
