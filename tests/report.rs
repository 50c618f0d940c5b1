//! The report's detail on synthetic traces with known answers: NVTX / regex / periodic steps
//! whose categories sum to each step, fixed bins that sum exactly, top kernels, idle gaps with
//! their reason, checkpoint I/O, the model-FLOPs source, collectives and the straggler across
//! two files, and the `report` command line.

use std::path::Path;
use std::process::Command;

use ghostprof::analyze::DetailOptions;
use ghostprof::analyze::{analyze_batch, analyze_file_with, analyze_files, load, FileReport, ReportOptions};
use ghostprof::report::{render_json, render_text, ReportDoc};
use ghostprof::trace::StepSource;
use ghostprof::trace::*;

use crate::util::*;

const MS: u64 = 1_000_000;
const T0: u64 = 5_000_000_000;
const STEP: u64 = 10 * MS;
const PID: u32 = 100;
/// Name ids: interned in this order by `write_trace`.
const NAMES: [&str; 5] = ["gemm_a", "gemm_b", "gemm_c", "ncclDevKernel_AllReduce_Sum_bf16", "train_step"];
const A: u32 = 1;
const B: u32 = 2;
const C: u32 = 3;
const NCCL: u32 = 4;
const STEP_NAME: u32 = 5;

fn kernel(start: u64, end: u64, name_id: u32, pid: u32) -> Record {
    KernelExec { start_ns: start, end_ns: end, name_id, pid, device: 0, ..Default::default() }.into()
}

struct Job {
    rank: u32,
    /// Extra compute time of this rank per step (a straggler's).
    slow_ns: u64,
    markers: bool,
}

/// 10 steps of 10 ms: kernels A 0-2, B 2-3, A 3-5, C 5-6 (+slow), the all-reduce until 8 ms,
/// then 2 ms idle of which the launching thread is off-CPU on a futex for the first 1.5 ms. In
/// step 3 the thread writes 64 MiB (8.0-8.9 ms) and fsyncs (8.9-9.4 ms). A launch at 100 ms
/// closes the window.
fn job_records(job: &Job) -> Vec<Record> {
    let mut v: Vec<Record> = Vec::new();
    let tid = PID;
    for i in 0..10u64 {
        let s = T0 + i * STEP;
        v.push(KernelLaunch { time_ns: s, pid: PID, tid, ..Default::default() }.into());
        v.push(kernel(s, s + 2 * MS, A, PID));
        v.push(kernel(s + 2 * MS, s + 3 * MS, B, PID));
        v.push(kernel(s + 3 * MS, s + 5 * MS, A, PID));
        v.push(kernel(s + 5 * MS, s + 6 * MS + job.slow_ns, C, PID));
        v.push(kernel(s + 6 * MS + job.slow_ns, s + 8 * MS, NCCL, PID));
        v.push(
            NcclColl {
                start_ns: s + MS,
                end_ns: s + MS + 10_000,
                comm: 0xabc0 + job.rank as u64,
                seq: i,
                count: 50_000_000,
                bytes: 100_000_000,
                pid: PID,
                tid,
                rank: job.rank,
                nranks: 2,
                op: CollOp::AllReduce as u32,
                dtype: NcclDtype::Bfloat16 as u32,
                phase: NcclPhase::Host as u32,
                device: u32::MAX,
                ..Default::default()
            }
            .into(),
        );
        v.push(
            HostStall {
                start_ns: s + 8 * MS,
                end_ns: s + 9 * MS + MS / 2,
                pid: PID,
                tid,
                reason: StallReason::Futex as u32,
                syscall: 202,
            }
            .into(),
        );
        if job.markers {
            v.push(
                StepMarker {
                    start_ns: s,
                    end_ns: s + STEP,
                    step: i,
                    pid: PID,
                    name_id: STEP_NAME,
                    source: ghostprof::trace::StepSource::Nvtx as u32,
                    device: 0,
                }
                .into(),
            );
        }
        if i == 3 {
            let io = |start: u64, end: u64, bytes: u64, syscall: i32| -> Record {
                FileIo { start_ns: start, end_ns: end, bytes, pid: PID, tid, fd: 7, syscall }.into()
            };
            v.push(io(s + 8 * MS, s + 8 * MS + 900_000, 64 << 20, 1));
            v.push(io(s + 8 * MS + 900_000, s + 9 * MS + 400_000, 0, 74));
        }
    }
    v.push(KernelLaunch { time_ns: T0 + 10 * STEP, pid: PID, tid, ..Default::default() }.into());
    v.sort_by_key(|r| r.time_ns());
    v
}

fn write_job(dir: &Path, name: &str, job: &Job) -> std::path::PathBuf {
    let path = dir.join(name);
    write_trace(&path, &job_records(job), &NAMES, 37);
    path
}

fn report(path: &Path, detail: DetailOptions) -> FileReport {
    analyze_file_with(path, &ReportOptions { detail, ..Default::default() }).expect("analyzing")
}

/// Every step is 10 ms: 6 ms compute (no FLOP source: inefficient), 2 ms all-reduce (one rank:
/// all transfer), 1.5 ms host stall, 0.5 ms launch-bound; categories sum to the step.
fn assert_known_steps(r: &FileReport, source: StepSource) {
    assert_eq!(r.accounts.len(), 1);
    let d = &r.details[0];
    assert_eq!(d.step_source, Some(source));
    assert_eq!(d.steps.len(), 10, "{:?}", d.steps.iter().map(|s| (s.start_ns, s.end_ns)).collect::<Vec<_>>());
    for (i, s) in d.steps.iter().enumerate() {
        assert_eq!(s.start_ns, T0 + i as u64 * STEP);
        assert_eq!(s.len_ns(), STEP);
        assert_eq!(s.categories.total(), s.len_ns(), "step {i} sums to its length");
        assert_eq!(s.categories.get("compute.inefficient"), 6 * MS);
        assert_eq!(s.categories.get("comm.transfer"), 2 * MS);
        assert_eq!(s.categories.get("idle.host_stall"), 3 * MS / 2);
        assert_eq!(s.categories.get("idle.launch_bound"), MS / 2);
        assert_eq!(s.busy_ns, 8 * MS);
    }
}

#[test]
fn nvtx_steps_account_each_step_exactly() {
    let dir = tmpdir();
    let path = write_job(dir.path(), "nvtx.gptrace", &Job { rank: 0, slow_ns: 0, markers: true });
    let r = report(&path, DetailOptions::default());
    assert_known_steps(&r, StepSource::Nvtx);
    let a = &r.accounts[0];
    assert_eq!(a.window_ns(), 10 * STEP);
    assert_eq!(a.categories.total(), a.window_ns());
}

#[test]
fn regex_steps_start_at_each_matching_kernel() {
    let dir = tmpdir();
    let path = write_job(dir.path(), "regex.gptrace", &Job { rank: 0, slow_ns: 0, markers: false });
    // gemm_a runs twice a step: the regex picks the one after the idle time only if anchored
    // on a kernel that runs once; gemm_b does.
    let detail = DetailOptions { step_regex: Some(regex::Regex::new("^gemm_b").unwrap()), ..Default::default() };
    let r = report(&path, detail);
    let d = &r.details[0];
    assert_eq!(d.step_source, Some(StepSource::KernelRegex));
    // Steps start at gemm_b (2 ms into each step): 9 whole steps and a last one to the window end.
    assert_eq!(d.steps.len(), 10);
    for (i, s) in d.steps.iter().enumerate() {
        assert_eq!(s.start_ns, T0 + i as u64 * STEP + 2 * MS);
        assert_eq!(s.categories.total(), s.len_ns());
    }
    assert_eq!(d.steps[9].len_ns(), 8 * MS);
    let first = &d.steps[0].categories;
    assert_eq!(first.get("compute.inefficient"), 6 * MS);
    assert_eq!(first.get("idle.host_stall"), 3 * MS / 2);
}

#[test]
fn periodicity_finds_the_repeating_kernel_sequence() {
    let dir = tmpdir();
    let path = write_job(dir.path(), "period.gptrace", &Job { rank: 0, slow_ns: 0, markers: false });
    let r = report(&path, DetailOptions::default());
    // A B A C repeats: period 4, phase at the first A (the kernel after the idle time).
    assert_known_steps(&r, StepSource::Periodicity);
    let off = report(&path, DetailOptions { detect_periodicity: false, ..Default::default() });
    assert_eq!(off.details[0].step_source, None);
    assert!(off.details[0].steps.is_empty());
}

#[test]
fn bins_sum_exactly_to_each_bin() {
    let dir = tmpdir();
    let path = write_job(dir.path(), "bins.gptrace", &Job { rank: 0, slow_ns: 0, markers: true });
    // Default: 200 bins over the 100 ms window.
    let r = report(&path, DetailOptions::default());
    let d = &r.details[0];
    assert_eq!(d.bin_ns, MS / 2);
    assert_eq!(d.bins.len(), 200);
    for width in [MS, 7_777, 1_000] {
        let r = report(&path, DetailOptions { bin_ns: Some(width), ..Default::default() });
        let d = &r.details[0];
        assert_eq!(d.bin_ns, width);
        assert_eq!(d.bins.len() as u64, (100 * MS).div_ceil(width));
        let mut total = [0u64; 8];
        for b in &d.bins {
            assert_eq!(b.categories.total(), b.len_ns(), "bin at {} sums to its width", b.start_ns);
            for (t, v) in total.iter_mut().zip(b.categories.ns) {
                *t += v;
            }
        }
        assert_eq!(total, r.accounts[0].categories.ns, "bins add up to the window's categories");
        if width == MS {
            // Bin 0 is all compute, bin 6 all-reduce, bin 8 host stall, bin 9 half stall half launch-bound.
            assert_eq!(d.bins[0].categories.get("compute.inefficient"), MS);
            assert_eq!(d.bins[6].categories.get("comm.transfer"), MS);
            assert_eq!(d.bins[8].categories.get("idle.host_stall"), MS);
            assert_eq!(d.bins[9].categories.get("idle.launch_bound"), MS / 2);
        }
    }
}

#[test]
fn top_kernels_gaps_and_checkpoint() {
    let dir = tmpdir();
    let path = write_job(dir.path(), "top.gptrace", &Job { rank: 0, slow_ns: 0, markers: true });
    let r = report(&path, DetailOptions::default());
    let d = &r.details[0];
    let top: Vec<(&str, u64, u64)> =
        d.top_kernels.iter().map(|k| (r.kernel_names[&k.name_id].as_str(), k.count, k.total_ns)).collect();
    assert_eq!(
        top,
        vec![
            ("gemm_a", 20, 40 * MS),
            ("ncclDevKernel_AllReduce_Sum_bf16", 10, 20 * MS),
            ("gemm_b", 10, 10 * MS),
            ("gemm_c", 10, 10 * MS)
        ]
    );
    assert_eq!(d.top_idle_gaps.len(), 10);
    for g in &d.top_idle_gaps {
        assert_eq!(g.end_ns - g.start_ns, 2 * MS);
        assert_eq!(g.category, "idle.host_stall");
        assert_eq!(g.reason, "futex");
    }
    // write 0.9 ms + fsync 0.5 ms, 64 MiB.
    assert_eq!(d.checkpoint.io_ns, 1_400_000);
    assert_eq!(d.checkpoint.bytes, 64 << 20);
    let v = render_json(std::slice::from_ref(&r));
    let dev = &v["devices"][0];
    assert_eq!(dev["step_source"], "nvtx");
    assert_eq!(dev["steps"].as_array().unwrap().len(), 10);
    assert_eq!(dev["steps"][3]["index"], 3);
    let sum: f64 = dev["steps"][3]["categories"].as_object().unwrap().values().map(|x| x.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-9);
    assert_eq!(dev["bins"]["items"].as_array().unwrap().len(), 200);
    assert_eq!(dev["top_kernels"][0]["name"], "gemm_a");
    assert!((dev["top_kernels"][0]["share"].as_f64().unwrap() - 0.4).abs() < 1e-12);
    assert_eq!(dev["top_idle_gaps"][0]["reason"], "futex");
    assert!((dev["checkpoint"]["fraction"].as_f64().unwrap() - 0.014).abs() < 1e-12);
    assert_eq!(dev["steps"][0]["mfu"], serde_json::Value::Null);
}

#[test]
fn flops_per_step_spreads_model_flops_over_compute_kernels() {
    let dir = tmpdir();
    let path = write_job(dir.path(), "flops.gptrace", &Job { rank: 0, slow_ns: 0, markers: true });
    // 3 ms of useful time per step at peak: half of each step's 6 ms of compute.
    let peak = 989.4e12;
    let detail =
        DetailOptions { flops_per_step: Some(peak * 0.003), peak_flops: Some(peak), ..DetailOptions::default() };
    let r = report(&path, detail);
    let a = &r.accounts[0];
    assert_eq!(a.flop_source.name(), "flops_per_step");
    assert!((a.mfu().unwrap() - 0.3).abs() < 1e-9, "{:?}", a.mfu());
    for s in &r.details[0].steps {
        assert!(s.categories.get("compute.useful").abs_diff(3 * MS) <= 1);
        assert!(s.categories.get("compute.inefficient").abs_diff(3 * MS) <= 1);
        assert_eq!(s.categories.total(), STEP);
    }
    let text = render_text(std::slice::from_ref(&r));
    assert!(text.contains("FLOP source: flops_per_step"), "{text}");
}

#[test]
fn straggler_across_two_files() {
    let dir = tmpdir();
    // Same pid in both files (two hosts); rank 1's compute runs 1 ms longer every step.
    let f0 = write_job(dir.path(), "rank0.gptrace", &Job { rank: 0, slow_ns: 0, markers: true });
    let f1 = write_job(dir.path(), "rank1.gptrace", &Job { rank: 1, slow_ns: MS, markers: true });
    let reports = analyze_files(&[f0.clone(), f1.clone()], &ReportOptions::default()).unwrap();
    let v = render_json(&reports);
    assert_eq!(v["straggler_rank"], 1);
    let skew = v["skew"].as_array().unwrap();
    assert_eq!(skew.len(), 2);
    assert_eq!(skew[0]["rank"], 0);
    assert_eq!(skew[0]["mean_arrival_skew_ns"].as_f64(), Some(0.0));
    assert_eq!(skew[1]["rank"], 1);
    assert_eq!(skew[1]["mean_arrival_skew_ns"].as_f64(), Some(MS as f64));
    assert_eq!(skew[1]["max_arrival_skew_ns"], MS);
    assert_eq!(skew[1]["late_count"], 10);
    assert_eq!(skew[1]["file"], f1.display().to_string());
    // While rank 0 waited, rank 1's GPU was computing and its host thread was on-CPU.
    assert_eq!(v["straggler_activity"], "GPU busy 100%; host on-CPU 100%");
    let colls = v["collectives"].as_array().unwrap();
    assert_eq!(colls.len(), 1);
    let c = &colls[0];
    assert_eq!(c["op"], "all_reduce");
    assert_eq!(c["size_bucket"], "64MiB-256MiB");
    assert_eq!(c["count"], 20);
    assert_eq!(c["bytes"], 2_000_000_000u64);
    // rank 0: 2 ms kernels, 1 ms waiting for rank 1; rank 1: 1 ms kernels, no wait.
    assert_eq!(c["time_ns"], 30 * MS);
    assert_eq!(c["wait_ns"], 10 * MS);
    assert_eq!(c["transfer_ns"], 20 * MS);
    // busBw = bytes × 2(n−1)/n ÷ transfer time = 2e9 × 1 ÷ 20e6 ns = 100 GB/s.
    assert!((c["bus_bandwidth_gbps"].as_f64().unwrap() - 100.0).abs() < 1e-9);
    let text = render_text(&reports);
    assert!(text.contains("straggler: rank 1"), "{text}");
    // The accounting of each file books the cross-file wait: rank 0 waits 1 ms a step.
    assert_eq!(reports[0].accounts[0].categories.get("comm.wait"), 10 * MS);
    assert_eq!(reports[0].accounts[0].categories.get("comm.transfer"), 10 * MS);
    assert_eq!(reports[1].accounts[0].categories.get("comm.wait"), 0);
    // One file alone has no peer: no straggler.
    assert_eq!(render_json(&reports[..1])["straggler_rank"], serde_json::Value::Null);
}

/// Categories may differ by a nanosecond or two between the two paths: the streaming sweep
/// cuts segments at its slice boundaries, which changes the floating-point sums' rounding.
fn assert_close(a: &[u64; 8], b: &[u64; 8], what: &str) {
    for (x, y) in a.iter().zip(b) {
        assert!(x.abs_diff(*y) <= 2, "{what}: {a:?} vs {b:?}");
    }
}

fn assert_same_analysis(streamed: &FileReport, in_memory: &FileReport) {
    assert_eq!(streamed.accounts.len(), in_memory.accounts.len());
    for ((sa, sd), (ma, md)) in
        streamed.accounts.iter().zip(&streamed.details).zip(in_memory.accounts.iter().zip(&in_memory.details))
    {
        assert_eq!(
            (sa.pid, sa.device, sa.window_start_ns, sa.window_end_ns),
            (ma.pid, ma.device, ma.window_start_ns, ma.window_end_ns)
        );
        assert_eq!(sa.busy_ns, ma.busy_ns);
        assert_eq!(sa.flop_source, ma.flop_source);
        assert_close(&sa.categories.ns, &ma.categories.ns, "window");
        assert_eq!(sd.step_source, md.step_source);
        assert_eq!(sd.steps.len(), md.steps.len());
        for (x, y) in sd.steps.iter().zip(&md.steps).chain(sd.bins.iter().zip(&md.bins)) {
            assert_eq!((x.start_ns, x.end_ns, x.busy_ns), (y.start_ns, y.end_ns, y.busy_ns));
            assert_eq!(x.categories.total(), x.len_ns());
            assert_close(&x.categories.ns, &y.categories.ns, "step or bin");
        }
        assert_eq!(sd.bins.len(), md.bins.len());
        assert_eq!(sd.top_idle_gaps, md.top_idle_gaps);
        assert_eq!(sd.checkpoint, md.checkpoint);
        let names = |d: &ghostprof::analyze::DeviceDetail| {
            d.top_kernels.iter().map(|k| (k.name_id, k.count, k.total_ns)).collect::<Vec<_>>()
        };
        assert_eq!(names(sd), names(md));
        for (x, y) in sd.top_kernels.iter().zip(&md.top_kernels) {
            assert!(x.useful_ns.abs_diff(y.useful_ns) <= 2);
        }
    }
    assert_eq!(streamed.activity, in_memory.activity);
}

#[test]
fn streaming_equals_in_memory() {
    let dir = tmpdir();
    // The synthetic training stream (NVTX steps, futex stalls, memcpys, kernels), 300k records
    // in chunks of 4096.
    let path = dir.path().join("train.gptrace");
    let (records, names) = training_records(300_000);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_trace(&path, &records, &names, 4096);
    // And the two-rank job (a straggler, checkpoint writes) in one file.
    let two = dir.path().join("two.gptrace");
    let mut both = job_records(&Job { rank: 0, slow_ns: 0, markers: false });
    let other: Vec<Record> = job_records(&Job { rank: 1, slow_ns: MS, markers: false })
        .into_iter()
        .map(|mut r| {
            match &mut r {
                Record::KernelExec(k) => k.pid = PID + 1,
                Record::KernelLaunch(l) => (l.pid, l.tid) = (PID + 1, PID + 1),
                Record::NcclColl(n) => (n.pid, n.tid) = (PID + 1, PID + 1),
                Record::HostStall(s) => (s.pid, s.tid) = (PID + 1, PID + 1),
                Record::FileIo(f) => (f.pid, f.tid) = (PID + 1, PID + 1),
                _ => {}
            }
            r
        })
        .collect();
    both.extend(other);
    both.sort_by_key(|r| r.time_ns());
    write_trace(&two, &both, &NAMES, 50);
    for (p, detail) in [
        (&path, DetailOptions::default()),
        (&path, DetailOptions { bin_ns: Some(1_000_000), ..Default::default() }),
        (&two, DetailOptions::default()),
        (&two, DetailOptions { flops_per_step: Some(2e12), peak_flops: Some(1e15), ..Default::default() }),
    ] {
        let opts = ReportOptions { detail, ..Default::default() };
        let streamed = analyze_files(std::slice::from_ref(p), &opts).unwrap().remove(0);
        let ghostprof::analyze::Loaded { batch, names, warnings } = load(p).unwrap();
        let in_memory = analyze_batch(p.display().to_string(), &batch, &names, warnings, &opts);
        assert!(streamed.warnings.is_empty(), "{:?}", streamed.warnings);
        assert_same_analysis(&streamed, &in_memory);
    }
    let v = render_json(&analyze_files(std::slice::from_ref(&two), &ReportOptions::default()).unwrap());
    assert_eq!(v["straggler_rank"], 1);
    assert_eq!(v["devices"][0]["step_source"], "periodicity");
}

fn ghostprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ghostprof"))
}

#[test]
fn report_command_line_flags() {
    let dir = tmpdir();
    let path = write_job(dir.path(), "cli.gptrace", &Job { rank: 0, slow_ns: 0, markers: false });
    let out = ghostprof()
        .args(["report", "--json", "--bin", "5ms", "--step-regex", "^gemm_b", "--flops-per-step", "2.9682e12"])
        .args(["--gpu", "NVIDIA H100 80GB HBM3"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dev = &v["devices"][0];
    assert_eq!(dev["bins"]["width_ns"], 5 * MS);
    assert_eq!(dev["bins"]["items"].as_array().unwrap().len(), 20);
    assert_eq!(dev["step_source"], "regex");
    assert_eq!(dev["flop_source"], "flops_per_step");
    // 2.9682e12 FLOPs at 989.4 TFLOP/s = 3 ms per step.
    assert!(dev["steps"][0]["mfu"].as_f64().unwrap() > 0.29);
    let text = ghostprof().args(["report"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for want in ["steps (periodicity): 10 steps", "top kernels:", "longest idle gaps:", "checkpoint I/O", "futex"] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    for (args, msg) in [
        (vec!["--bin", "500ns"], "below 1 µs"),
        (vec!["--bin", "10parsecs"], "give a unit"),
        (vec!["--step-regex", "(unclosed"], "not a valid regular expression"),
        (vec!["--flops-per-step", "1e15"], "needs the device's peak"),
        (vec!["--flops-per-step", "1e15", "--gpu", "GTX 1080"], "no built-in peak"),
    ] {
        let out = ghostprof().arg("report").args(&args).arg(&path).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg) && err.lines().count() == 1, "{args:?}: {err}");
    }
}

#[test]
fn reorder_window_bounds_what_is_held_and_counts_late_records() {
    use ghostprof::analyze::stream::{summarize, sweep_file, StreamOptions};
    let dir = tmpdir();
    let path = dir.path().join("late.gptrace");
    // Step 0's first kernel is written last, as if a collector drained it 100 ms late, and so is
    // a 0.2 ms off-CPU interval of the launching thread (9.6-9.8 ms, in the step's launch-bound
    // tail).
    let mut records = job_records(&Job { rank: 0, slow_ns: 0, markers: true });
    let first = records.iter().position(|r| matches!(r, Record::KernelExec(_))).unwrap();
    let late = records.remove(first);
    records.push(late);
    let short: Record = HostStall {
        start_ns: T0 + 9_600_000,
        end_ns: T0 + 9_800_000,
        pid: PID,
        tid: PID,
        reason: StallReason::Futex as u32,
        syscall: 202,
    }
    .into();
    records.push(short);
    write_trace(&path, &records, &NAMES, 37);
    let reader = TraceReader::open(&path).unwrap();
    let run = |reorder_window_ns: u64| {
        let mut opts = StreamOptions { reorder_window_ns, ..StreamOptions::default() };
        let sk = summarize(&reader, &opts).unwrap();
        opts.account.windows = sk.windows.clone();
        sweep_file(&reader, &sk, &opts, &Default::default(), &Default::default()).unwrap()
    };
    // Within the reorder window (default 5 s): nothing is late, step 0 is whole.
    let (whole, late_records) = run(5_000_000_000);
    assert_eq!(late_records, 0);
    let step0 = &whole[0].detail.steps[0].categories;
    assert_eq!(step0.get("compute.inefficient"), 6 * MS);
    assert_eq!(step0.get("idle.host_stall"), 1_700_000, "the 1.5 ms futex and the 0.2 ms one");
    // A 1 ms window: the kernel, later than that, was kept by the summary pass (late device
    // records are) and is swept in time; the short host interval, too short to be kept (under
    // half the window), is counted and left out.
    let (cut, late_records) = run(MS);
    assert_eq!(late_records, 1);
    let step0 = &cut[0].detail.steps[0].categories;
    assert_eq!(step0.get("compute.inefficient"), 6 * MS);
    assert_eq!(step0.get("idle.host_stall"), 1_500_000);
    assert_eq!(step0.total(), STEP);
}

/// A launching thread blocked for 10 s is recorded when it wakes, so its record comes ~10 s
/// after records of later times: more than the 5 s reorder window. The summary pass keeps such
/// long blocks and the sweep takes them in time: the whole block is `idle.host_stall` (futex),
/// nothing is left out, and the result equals the in-memory analysis.
#[test]
fn a_block_longer_than_the_reorder_window_is_accounted_in_full() {
    let dir = tmpdir();
    let path = dir.path().join("long-block.gptrace");
    let tid = PID;
    let mut records: Vec<Record> = Vec::new();
    // 1 s of 10 ms kernels, a 10 s block of the launching thread (GPU idle), 1 s of kernels.
    let block = (T0 + 1_000 * MS, T0 + 11_000 * MS);
    for i in 0..200u64 {
        let s = if i < 100 { T0 + i * STEP } else { block.1 + (i - 100) * STEP };
        records.push(KernelLaunch { time_ns: s, pid: PID, tid, ..Default::default() }.into());
        records.push(kernel(s, s + 9 * MS, A, PID));
    }
    // Written where a collector would write it: after everything up to its wake-up.
    let stall: Record = HostStall {
        start_ns: block.0,
        end_ns: block.1,
        pid: PID,
        tid,
        reason: StallReason::Futex as u32,
        syscall: 202,
    }
    .into();
    records.push(stall);
    write_trace(&path, &records, &NAMES, 20);
    let opts = ReportOptions::default();
    let streamed = analyze_files(std::slice::from_ref(&path), &opts).unwrap().remove(0);
    assert!(streamed.warnings.is_empty(), "nothing left out: {:?}", streamed.warnings);
    let a = &streamed.accounts[0];
    // The block to the nanosecond (the 1 ms before it, after the last kernel, is launch-bound).
    assert_eq!(a.categories.get("idle.host_stall"), block.1 - block.0, "{:?}", a.categories);
    let gap = &streamed.details[0].top_idle_gaps[0];
    assert_eq!((gap.category, gap.reason), ("idle.host_stall", "futex"), "{gap:?}");
    let ghostprof::analyze::Loaded { batch, names, warnings } = load(&path).unwrap();
    let in_memory = analyze_batch(path.display().to_string(), &batch, &names, warnings, &opts);
    assert_same_analysis(&streamed, &in_memory);
}

#[test]
fn random_records_never_panic_the_report() {
    // Every bit pattern is a valid record: ends before starts, huge times, unknown enums.
    let dir = tmpdir();
    let mut rng = ghostprof::trace::synth::Rng::new(7);
    let gemm = regex::Regex::new("gemm").unwrap();
    for round in 0..4 {
        let path = dir.path().join(format!("random{round}.gptrace"));
        let mut records: Vec<Record> = Vec::new();
        for i in 0..3000 {
            let kind = Kind::ALL[i % Kind::ALL.len()];
            let mut r = random_record(kind, &mut rng);
            // Keep some records in a narrow time range and a few pids so they interact.
            if round % 2 == 1 {
                match &mut r {
                    Record::KernelExec(k) => {
                        k.pid %= 3;
                        k.device %= 2;
                        k.start_ns %= 1 << 20;
                        k.end_ns = k.start_ns.wrapping_add(k.end_ns % (1 << 12)).wrapping_sub(1 << 10);
                        k.name_id %= 6;
                    }
                    Record::NcclColl(n) => {
                        n.pid %= 3;
                        n.seq %= 4;
                        n.nranks %= 4;
                        n.phase %= 2;
                        n.start_ns %= 1 << 20;
                    }
                    Record::KernelLaunch(l) => l.pid %= 3,
                    Record::HostStall(s) => s.pid %= 3,
                    Record::StepMarker(s) => s.pid %= 3,
                    _ => {}
                }
            }
            records.push(r);
        }
        write_trace(&path, &records, &NAMES, 500);
        let detail = DetailOptions { step_regex: Some(gemm.clone()), ..Default::default() };
        if let Ok(reports) = analyze_files(std::slice::from_ref(&path), &ReportOptions { detail, ..Default::default() })
        {
            let _ = render_text(&reports);
            let _ = render_json(&reports);
        }
        if let Ok(ghostprof::analyze::Loaded { batch, names, warnings }) = load(&path) {
            let r = analyze_batch(path.display().to_string(), &batch, &names, warnings, &ReportOptions::default());
            let _ = render_json(std::slice::from_ref(&r));
        }
    }
}

/// The memory cgroup (v1 or v2) this process is in, for a child group with a memory limit.
fn memory_cgroup_dir() -> Option<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    if let Some(path) = own.lines().find_map(|l| l.split_once(":memory:").map(|x| x.1.to_string())) {
        let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup/memory{path}"));
        return dir.join("memory.limit_in_bytes").exists().then_some(dir);
    }
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup{path}"));
    let controllers = std::fs::read_to_string(dir.join("cgroup.subtree_control")).ok()?;
    controllers.split_whitespace().any(|c| c == "memory").then_some(dir)
}

/// The streaming analysis holds what overlaps the records not yet swept, not the trace: a trace
/// file larger than the memory the report may use (a memory cgroup's limit, page cache
/// included) is analyzed, and gives the same report as without the limit.
#[test]
#[ignore = "root tier: needs root (creates a memory cgroup); tools/test runs it when root"]
fn root_a_trace_larger_than_the_memory_limit_is_analyzed() {
    assert!(is_root(), "run the root tier as root");
    let Some(parent) = memory_cgroup_dir() else {
        eprintln!(
            "SKIPPED root_a_trace_larger_than_the_memory_limit_is_analyzed: no memory cgroup to create a child in"
        );
        return;
    };
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let path = dir.path().join("big.gptrace");
    // 12 M records of the training stream without NVTX markers and NCCL (their copies are what
    // the summary keeps per step and per collective; steps come from periodicity instead).
    let interner = std::sync::Arc::new(Interner::new());
    let stream = synth::TrainingStream::new(5, &interner)
        .filter(|r| !matches!(r, Record::StepMarker(_) | Record::NcclColl(_)))
        .take(12_000_000);
    let info = TraceInfo { command: vec!["test".into()], ..Default::default() };
    let mut w = TraceWriter::create(&path, false, &info, interner.clone(), WriterOptions::default()).unwrap();
    w.append_all(stream).unwrap();
    w.finish().unwrap();
    let file = std::fs::metadata(&path).unwrap().len();
    let limit: u64 = 40 << 20;
    assert!(file > limit + (4 << 20), "the trace ({file} bytes) is larger than the limit");
    let free = ghostprof().args(["report", "--json"]).arg(&path).output().unwrap();
    assert!(free.status.success(), "{}", String::from_utf8_lossy(&free.stderr));
    let group = parent.join(format!("ghostprof-test-{}", std::process::id()));
    std::fs::create_dir_all(&group).unwrap();
    let v2 = group.join("memory.max").exists();
    let (limit_file, swap_file) =
        if v2 { ("memory.max", "memory.swap.max") } else { ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes") };
    std::fs::write(group.join(limit_file), limit.to_string()).unwrap();
    let _ = std::fs::write(group.join(swap_file), if v2 { "0".to_string() } else { limit.to_string() });
    // The file leaves the page cache, so the limited run reads it in, charged to its group.
    let f = std::fs::File::open(&path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: a valid descriptor; advice only.
    let rc = unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
    let procs = group.join("cgroup.procs");
    let mut cmd = ghostprof();
    cmd.args(["report", "--json"]).arg(&path);
    // SAFETY: the child only writes its pid to the group's file before exec (async-signal-safe
    // calls: getpid, open, write, close).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let pid = format!("{}", libc::getpid());
            std::fs::write(&procs, pid)?;
            Ok(())
        });
    }
    let limited = cmd.output().unwrap();
    let peak = ["memory.max_usage_in_bytes", "memory.peak"]
        .iter()
        .find_map(|f| std::fs::read_to_string(group.join(f)).ok())
        .unwrap_or_default();
    let _ = std::fs::remove_dir(&group);
    assert!(
        limited.status.success(),
        "under a {limit}-byte limit, {file}-byte trace: {:?} {} (peak {peak})",
        limited.status,
        String::from_utf8_lossy(&limited.stderr)
    );
    assert_eq!(limited.stdout, free.stdout, "the same report with and without the limit");
    let v: serde_json::Value = serde_json::from_slice(&limited.stdout).unwrap();
    assert_eq!(v["devices"][0]["step_source"], "periodicity");
    eprintln!("{file}-byte trace analyzed under a {limit}-byte memory limit (peak usage {})", peak.trim());
}

/// `report --json` streams the document (`write_json`): the same bytes as the whole document
/// pretty-printed, steps and bins included.
#[test]
fn streamed_json_is_the_document_byte_for_byte() {
    let dir = tmpdir();
    let a = write_job(dir.path(), "a.gptrace", &Job { rank: 0, slow_ns: 0, markers: true });
    let b = write_job(dir.path(), "b.gptrace", &Job { rank: 1, slow_ns: MS, markers: false });
    let opts = ReportOptions { detail: DetailOptions { bin_ns: Some(MS), ..Default::default() }, ..Default::default() };
    let reports = analyze_files(&[a, b], &opts).unwrap();
    let whole = serde_json::to_string_pretty(&render_json(&reports)).unwrap();
    let mut streamed = Vec::new();
    ghostprof::report::write_json(&reports, &mut streamed).unwrap();
    assert_eq!(String::from_utf8(streamed).unwrap(), whole);
    let v = render_json(&reports);
    assert_eq!(v["devices"][0]["steps"].as_array().unwrap().len(), 10);
    assert_eq!(v["devices"][0]["bins"]["items"].as_array().unwrap().len(), 100);
    // The document read back is the same document, and draws the same page.
    let read: ReportDoc = serde_json::from_str(&whole).unwrap();
    assert_eq!(serde_json::to_string_pretty(&read).unwrap(), whole);
    let html = ghostprof::report::html::render(&ReportDoc::from_reports(&reports));
    assert_eq!(ghostprof::report::html::render(&read), html);
}

/// The window rule (docs/metrics.md, "Window"): a final checkpoint written after the last
/// device operation (write 101–115 ms, fsync 115–118 ms) ends the window at its end; a read of
/// the launching thread and a write of a thread that launches nothing, both later, do not.
#[test]
fn the_window_ends_with_the_launching_threads_last_blocking_interval() {
    window_ends_with_the_launching_threads_last_blocking_interval(false);
}

/// The same where CUPTI, not eBPF, saw the launches: `record` leaves the per-launch uprobes
/// off for a process whose CUPTI sees its launches, and the injection library's launch
/// callback records (driver API, exit time) name the launching thread instead.
#[test]
fn cupti_launch_records_name_the_launching_thread_as_uprobes_do() {
    window_ends_with_the_launching_threads_last_blocking_interval(true);
}

fn window_ends_with_the_launching_threads_last_blocking_interval(cupti_launches: bool) {
    let dir = tmpdir();
    let path = dir.path().join("edge.gptrace");
    let mut records = job_records(&Job { rank: 0, slow_ns: 0, markers: false });
    if cupti_launches {
        let mut n = 0;
        for r in records.iter_mut() {
            if let Record::KernelLaunch(l) = *r {
                n += 1;
                *r = ApiCall {
                    start_ns: l.time_ns,
                    end_ns: l.time_ns,
                    pid: l.pid,
                    tid: l.tid,
                    correlation_id: n,
                    call_id: 307, // cuLaunchKernel
                    domain: ApiDomain::CudaDriver as u32,
                    ..Default::default()
                }
                .into();
            }
        }
        assert!(n > 0, "the job has launches");
    }
    let end = T0 + 10 * STEP;
    if cupti_launches {
        // A launch CUPTI reported after the last kernel it recorded (CUPTI switched off before
        // that kernel ran, as at a detach): it must not end the window (it ended 12 ms late).
        let pid = records.iter().find_map(|r| if let Record::ApiCall(a) = r { Some((a.pid, a.tid)) } else { None });
        let (pid, tid) = pid.unwrap();
        records.push(
            ApiCall {
                start_ns: end + 30 * MS,
                end_ns: end + 30 * MS,
                pid,
                tid,
                correlation_id: 1 << 30,
                call_id: 307,
                domain: ApiDomain::CudaDriver as u32,
                ..Default::default()
            }
            .into(),
        );
    }
    let io = |start: u64, stop: u64, bytes: u64, tid: u32, syscall: i32| -> Record {
        FileIo { start_ns: start, end_ns: stop, bytes, pid: PID, tid, fd: 9, syscall }.into()
    };
    records.push(io(end + MS, end + 15 * MS, 64 << 20, PID, 1));
    records.push(io(end + 15 * MS, end + 18 * MS, 0, PID, 74));
    records.push(io(end + 19 * MS, end + 25 * MS, 1 << 20, PID, 0));
    records.push(io(end + 19 * MS, end + 40 * MS, 1 << 20, PID + 1, 1));
    records.sort_by_key(|r| r.time_ns());
    write_trace(&path, &records, &NAMES, 37);
    let streamed = report(&path, DetailOptions::default());
    let ghostprof::analyze::Loaded { batch: b, names: n, warnings: w } = load(&path).unwrap();
    let in_memory = analyze_batch(String::new(), &b, &n, w, &ReportOptions::default());
    for r in [&streamed, &in_memory] {
        let a = &r.accounts[0];
        assert_eq!((a.window_start_ns, a.window_end_ns), (T0, end + 18 * MS));
        assert_eq!(a.categories.total(), a.window_ns());
        // Ten 1.5 ms futex waits and the final 17 ms of checkpoint I/O; the 1 ms before it
        // is launch-bound like every step's last 0.5 ms.
        assert_eq!(a.categories.get("idle.host_stall"), 15 * MS + 17 * MS);
        assert_eq!(a.categories.get("idle.launch_bound"), 5 * MS + MS);
        assert_eq!(r.details[0].checkpoint.bytes, 2 * (64 << 20));
    }
}

/// A CPU-only process (no device records): the report gives its host figures per process and
/// thread (docs/metrics.md, "Host figures") in text, JSON and HTML instead of nothing. The main
/// thread, launched at 0, sleeps 1–41 ms (woken at 40), reads 8 MiB 50–53 ms, waits on a futex
/// 60–70 ms and ends at 100 ms: on-CPU 100 − 40 − 10 = 50 ms (a read from the page cache is
/// on-CPU: file I/O time is its own figure). A second thread polls 10–20 ms and writes 1 MiB.
#[test]
fn a_cpu_only_process_gets_its_host_figures() {
    let dir = tmpdir();
    let path = dir.path().join("cpu.gptrace");
    let (pid, worker) = (4242u32, 4243u32);
    let stall = |tid: u32, s: u64, e: u64, reason: StallReason, syscall: i32| -> Record {
        HostStall { start_ns: T0 + s, end_ns: T0 + e, pid, tid, reason: reason as u32, syscall }.into()
    };
    let io = |tid: u32, s: u64, e: u64, bytes: u64, syscall: i32| -> Record {
        FileIo { start_ns: T0 + s, end_ns: T0 + e, bytes, pid, tid, fd: 3, syscall }.into()
    };
    let mut records = vec![
        ProcessInfo { time_ns: T0, pid, ppid: 1, name_id: 0, cmdline_id: 0 }.into(),
        stall(pid, MS, 40 * MS, StallReason::Sleep, 230),
        stall(pid, 40 * MS, 41 * MS, StallReason::RunQueue, 230),
        io(pid, 50 * MS, 53 * MS, 8 << 20, 0),
        stall(pid, 60 * MS, 70 * MS, StallReason::Futex, 202),
        io(pid, 99 * MS, 100 * MS, 0, 0),
        stall(worker, 10 * MS, 20 * MS, StallReason::Poll, 7),
        io(worker, 20 * MS, 22 * MS, 1 << 20, 1),
    ];
    records.sort_by_key(|r| r.time_ns());
    write_trace(&path, &records, &NAMES, 37);
    let streamed = report(&path, DetailOptions::default());
    let ghostprof::analyze::Loaded { batch: b, names: n, warnings: w } = load(&path).unwrap();
    let in_memory = analyze_batch(String::new(), &b, &n, w, &ReportOptions::default());
    for r in [&streamed, &in_memory] {
        assert!(r.accounts.is_empty());
        assert_eq!(r.host.len(), 1);
        let p = &r.host[0];
        assert_eq!(p.pid, pid);
        let main = &p.threads.iter().find(|t| t.0 == pid).unwrap().1;
        assert_eq!((main.start_ns, main.end_ns), (T0, T0 + 100 * MS));
        assert_eq!(main.on_cpu_ns, 50 * MS);
        assert_eq!(main.off_cpu_ns[StallReason::Sleep as usize], 39 * MS);
        assert_eq!(main.off_cpu_ns[StallReason::RunQueue as usize], MS);
        assert_eq!(main.off_cpu_ns[StallReason::Futex as usize], 10 * MS);
        assert_eq!((main.file_read_bytes, main.file_read_ns), (8 << 20, 4 * MS));
        let worker_figures = &p.threads.iter().find(|t| t.0 == worker).unwrap().1;
        assert_eq!((worker_figures.on_cpu_ns, worker_figures.file_write_bytes), (2 * MS, 1 << 20));
        assert_eq!(p.total.on_cpu_ns, 52 * MS);
        assert_eq!(p.total.off_cpu_total_ns(), 60 * MS);
    }
    let text = render_text(std::slice::from_ref(&streamed));
    assert!(text.contains("host, pid 4242 (2 threads, 100.000 ms seen): on-CPU 52.000 ms (52.0%), off-CPU 60.000 ms (sleep 39.000 ms, futex 10.000 ms, poll 10.000 ms, run_queue 1.000 ms); file I/O: read 8.0 MiB in 4.000 ms, wrote 1.0 MiB in 2.000 ms"), "{text}");
    let v = render_json(std::slice::from_ref(&streamed));
    let h = &v["hosts"][0];
    assert_eq!(h["pid"], pid);
    assert_eq!(h["on_cpu_ns"], 52 * MS);
    assert_eq!(h["off_cpu_ns"]["sleep"], 39 * MS);
    assert_eq!(h["file_io"]["read_bytes"], 8u64 << 20);
    assert_eq!(h["threads"].as_array().unwrap().len(), 2);
    let html = ghostprof::report::html::render(&ReportDoc::from_reports(std::slice::from_ref(&streamed)));
    assert!(html.contains("<h2>Host</h2>") && html.contains("52.00 ms"), "{html}");
}
