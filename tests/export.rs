//! `ghostprof export --format chrome` writes Kineto-shaped Chrome trace JSON (checked field by
//! field against the records), HTA reads it and its temporal breakdown agrees with ghostprof's
//! accounting, and `report --html` renders a self-contained page that headless Chromium draws.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use ghostprof::analyze::{account, AccountOptions};
use ghostprof::export::chrome::CORRELATION_OFFSET;
use ghostprof::trace::*;
use serde_json::Value;

use crate::util::*;

fn ghostprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ghostprof"))
}

/// An untrusted kernel name: quotes, markup and a newline must survive JSON and HTML intact.
pub const NASTY: &str = "gemm<\"q\"&'a'> </script><script>alert(1)</script>\n\\x";

/// String ids of [`NAMES`] as `write_trace` interns them (id 0 is "no name").
pub const NAMES: [&str; 6] = [
    "train_step",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n",
    "void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>",
    NASTY,
    "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, unsigned long, ncclWork*)",
    "python3",
];
const STEP_NAME: u32 = 1;
const GEMM: u32 = 2;
const GELU: u32 = 3;
const NASTY_ID: u32 = 4;
const NCCL: u32 = 5;

pub const PIDS: [u32; 2] = [31001, 31002];

/// A 2-rank data-parallel job, 10 steps each: a data-loader wait (rank 1 waits longer: the
/// straggler), a host-to-device copy, 24 compute kernels on stream 7 with their launch calls
/// (CUPTI runtime records, `cudaLaunchKernel` as PyTorch's, and eBPF launch probes), an
/// all-reduce on stream 13 (a driver `cuLaunchKernel`) that overlaps the last compute kernels,
/// a memset, NVTX steps, and a launch-bound gap between steps.
pub fn two_rank_job() -> Vec<Record> {
    two_rank_job_of(10)
}

/// [`two_rank_job`] with `steps` steps.
pub fn two_rank_job_of(steps: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut rng = synth::Rng::new(5);
    for (rank, &pid) in PIDS.iter().enumerate() {
        let tid = pid;
        let mut host = 2_000_000_000u64 + rank as u64 * 3_000;
        let mut dev = host;
        let mut corr = 1u32;
        out.push(Record::ProcessInfo(ProcessInfo { time_ns: host, pid, ppid: 1, name_id: 6, cmdline_id: 0 }));
        out.push(Record::ThreadInfo(ThreadInfo { time_ns: host, pid, tid, name_id: 6, reserved: 0 }));
        let api = |start: u64, dur: u64, cbid: u32, corr: u32| {
            Record::ApiCall(ApiCall {
                start_ns: start,
                end_ns: start + dur,
                stream: 0,
                arg: 0,
                pid,
                tid,
                correlation_id: corr,
                call_id: cbid,
                domain: if cbid == 211 { ApiDomain::CudaRuntime } else { ApiDomain::CudaDriver } as u32,
                status: 0,
            })
        };
        for step in 0..steps {
            let step_start = host;
            let wait = 300_000 + rank as u64 * 900_000 + rng.below(50_000);
            out.push(Record::HostStall(HostStall {
                start_ns: host,
                end_ns: host + wait,
                pid,
                tid,
                reason: StallReason::Futex as u32,
                syscall: 202,
            }));
            host += wait;
            out.push(api(host, 6_000, 277, corr));
            let s = host + 9_000;
            out.push(Record::MemOp(MemOp {
                start_ns: s,
                end_ns: s + 110_000,
                bytes: 8 << 20,
                stream: 7,
                correlation_id: corr,
                device: rank as u32,
                kind: MemOpKind::HtoD as u32,
                pid,
            }));
            corr += 1;
            dev = dev.max(s + 110_000);
            host += 8_000;
            let mut nccl_at = 0;
            for i in 0..24u32 {
                let name = match i % 4 {
                    0 | 2 => GEMM,
                    1 => GELU,
                    _ if i == 3 => NASTY_ID,
                    _ => GELU,
                };
                out.push(api(host, 4_000, 211, corr));
                out.push(Record::KernelLaunch(KernelLaunch {
                    time_ns: host,
                    func: 0x1000 + name as u64,
                    stream: 7,
                    pid,
                    tid,
                    grid_x: 128,
                    grid_y: 1,
                    grid_z: 1,
                    block_x: 256,
                    block_y: 1,
                    block_z: 1,
                    shared_mem_bytes: 0,
                    api: ProbedApi::LaunchKernel as u32,
                }));
                let start = dev.max(host + 7_000) + rng.below(2_000);
                let dur = if name == GEMM { 90_000 } else { 30_000 } + rng.below(20_000);
                out.push(Record::KernelExec(KernelExec {
                    start_ns: start,
                    end_ns: start + dur,
                    stream: 7,
                    correlation_id: corr,
                    device: rank as u32,
                    name_id: name,
                    grid_x: 128,
                    grid_y: 1,
                    grid_z: 1,
                    block_x: 256,
                    block_y: 1,
                    block_z: 1,
                    registers_per_thread: 64,
                    shared_mem_bytes: 1024,
                    graph_id: 0,
                    pid,
                    flags: 0,
                }));
                corr += 1;
                dev = start + dur;
                host += 5_000 + rng.below(3_000);
                if i == 20 {
                    nccl_at = start + 20_000;
                }
            }
            // The all-reduce: launched after the last compute launch, runs from inside the last
            // compute kernels to past them.
            out.push(api(host, 5_000, 307, corr));
            out.push(Record::NcclColl(NcclColl {
                start_ns: host,
                end_ns: host + 12_000,
                comm: 0xc0,
                seq: step,
                count: 1 << 20,
                bytes: 2 << 20,
                stream: 13,
                pid,
                tid,
                rank: rank as u32,
                nranks: 2,
                op: CollOp::AllReduce as u32,
                dtype: NcclDtype::Bfloat16 as u32,
                phase: NcclPhase::Host as u32,
                device: rank as u32,
            }));
            let nccl_end = dev + 150_000;
            out.push(Record::KernelExec(KernelExec {
                start_ns: nccl_at,
                end_ns: nccl_end,
                stream: 13,
                correlation_id: corr,
                device: rank as u32,
                name_id: NCCL,
                grid_x: 2,
                grid_y: 1,
                grid_z: 1,
                block_x: 640,
                block_y: 1,
                block_z: 1,
                registers_per_thread: 96,
                shared_mem_bytes: 0,
                graph_id: 0,
                pid,
                flags: 0,
            }));
            corr += 1;
            host += 14_000;
            out.push(api(host, 3_000, 307, corr));
            let ms = nccl_end + 4_000;
            out.push(Record::MemOp(MemOp {
                start_ns: ms,
                end_ns: ms + 20_000,
                bytes: 1 << 20,
                stream: 7,
                correlation_id: corr,
                device: rank as u32,
                kind: MemOpKind::Memset as u32,
                pid,
            }));
            corr += 1;
            dev = ms + 20_000;
            out.push(Record::StepMarker(StepMarker {
                start_ns: step_start,
                end_ns: host + 4_000,
                step,
                pid,
                name_id: STEP_NAME,
                source: StepSource::Nvtx as u32,
                device: 0,
            }));
            // The next step starts when the device is done, plus a launch-bound gap.
            host = dev + 60_000;
        }
    }
    out
}

pub fn write_job(dir: &Path) -> PathBuf {
    let path = dir.join("job.gptrace");
    write_trace(&path, &two_rank_job(), &NAMES, 300);
    path
}

/// [`write_job`] of `steps` steps, with a launcher process (pid 31000: host events, no NCCL, no
/// device work) as `torchrun` is.
pub fn write_job_with_launcher(dir: &Path, steps: u64) -> PathBuf {
    let path = dir.join(format!("job{steps}.gptrace"));
    let mut records = two_rank_job_of(steps);
    let t = records.iter().map(|r| r.time_ns()).min().unwrap();
    records.push(Record::ProcessInfo(ProcessInfo { time_ns: t, pid: 31000, ppid: 1, name_id: 6, cmdline_id: 0 }));
    records.push(Record::HostStall(HostStall {
        start_ns: t,
        end_ns: t + 5_000_000,
        pid: 31000,
        tid: 31000,
        reason: StallReason::Futex as u32,
        syscall: 61,
    }));
    write_trace(&path, &records, &NAMES, 300);
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `ts`/`dur` in µs back to ns (they are written with exactly 3 decimals).
fn ns(v: &Value) -> u64 {
    (v.as_f64().unwrap() * 1000.0).round() as u64
}

#[test]
fn export_writes_kineto_shaped_events_that_match_the_records() {
    let dir = tmpdir();
    let trace = write_job(dir.path());
    let out = dir.path().join("job.json");
    let run = ghostprof().args(["export", "--format", "chrome"]).arg(&trace).arg("-o").arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("wrote"), "it says what it wrote");
    let v = read_json(&out);
    assert_eq!(v["schemaVersion"], 1);
    assert_eq!(v["distributedInfo"]["world_size"], 2);
    assert!(v["baseTimeNanoseconds"].as_u64().unwrap() > 1_600_000_000_000_000_000, "Unix time in ns");
    let base = v["ghostprof"]["monotonic_base_ns"].as_u64().unwrap();
    let records = two_rank_job();
    assert_eq!(base, records.iter().map(|r| r.time_ns()).min().unwrap());
    let events = v["traceEvents"].as_array().unwrap();
    // The Chrome trace event format's required fields, by phase.
    for e in events {
        let ph = e["ph"].as_str().unwrap_or_else(|| panic!("no ph: {e}"));
        assert!(e["pid"].is_u64() && e["tid"].is_u64() && e["ts"].is_number(), "{e}");
        match ph {
            "X" => assert!(e["name"].is_string() && e["cat"].is_string() && e["dur"].as_f64().unwrap() >= 0.0, "{e}"),
            "s" | "f" => assert!(e["id"].is_u64() && e["cat"] == "ac2g", "{e}"),
            "i" | "C" | "M" => assert!(e["name"].is_string() && e["args"].is_object(), "{e}"),
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    let of = |cat: &str| events.iter().filter(|e| e["cat"] == cat).collect::<Vec<_>>();

    // Every kernel, exactly: pid = device, tid = stream, ns-exact times, Kineto's args.
    let kernels: Vec<&KernelExec> =
        records.iter().filter_map(|r| if let Record::KernelExec(k) = r { Some(k) } else { None }).collect();
    let exported = of("kernel");
    assert_eq!(exported.len(), kernels.len());
    let by_key: HashMap<(u64, u64), &Value> =
        exported.iter().map(|e| ((e["pid"].as_u64().unwrap(), ns(&e["ts"]) + base), *e)).collect();
    for k in &kernels {
        let e = by_key[&(k.device as u64, k.start_ns)];
        assert_eq!(ns(&e["dur"]), k.end_ns - k.start_ns);
        assert_eq!(e["ph"], "X");
        assert_eq!(e["tid"], k.stream);
        assert_eq!(e["args"]["stream"], k.stream);
        assert_eq!(e["args"]["device"], k.device);
        // Correlation ids are offset (HTA stores them in the smallest integer type that holds
        // them, then event indices in that column).
        assert_eq!(e["args"]["correlation"], k.correlation_id as u64 + CORRELATION_OFFSET);
        assert_eq!(e["args"]["External id"], k.correlation_id as u64 + CORRELATION_OFFSET);
        assert_eq!(e["args"]["grid"], serde_json::json!([k.grid_x, 1, 1]));
        assert_eq!(e["args"]["block"], serde_json::json!([k.block_x, 1, 1]));
        assert_eq!(e["name"], NAMES[k.name_id as usize - 1], "names survive JSON escaping");
    }
    assert!(exported.iter().any(|e| e["name"] == NASTY));
    let memops = records.iter().filter(|r| matches!(r, Record::MemOp(_))).count();
    assert_eq!(of("gpu_memcpy").len() + of("gpu_memset").len(), memops);
    assert!(of("gpu_memcpy").iter().all(|e| e["name"].as_str().unwrap().starts_with("Memcpy HtoD")));
    assert!(of("gpu_memset").iter().all(|e| e["name"] == "Memset (Device)" && e["args"]["bytes"] == 1 << 20));

    // Launch calls on the CPU side: pid = process, tid = thread; one ac2g flow per launch
    // from the call to its kernel, with the same id.
    let driver = of("cuda_driver");
    let runtime = of("cuda_runtime");
    assert_eq!(driver.len() + runtime.len(), records.iter().filter(|r| matches!(r, Record::ApiCall(_))).count());
    assert!(driver
        .iter()
        .chain(&runtime)
        .all(|e| PIDS.contains(&(e["pid"].as_u64().unwrap() as u32)) && e["tid"] == e["pid"]));
    assert!(driver.iter().any(|e| e["name"] == "cuLaunchKernel" && e["args"]["cbid"] == 307));
    assert!(runtime.iter().any(|e| e["name"] == "cudaLaunchKernel" && e["args"]["cbid"] == 211));
    let kernel_corr: std::collections::HashSet<&Value> = exported.iter().map(|e| &e["args"]["correlation"]).collect();
    assert!(runtime.iter().all(|e| kernel_corr.contains(&e["args"]["correlation"])), "calls and kernels agree");
    let flows = of("ac2g");
    let starts: Vec<&&Value> = flows.iter().filter(|e| e["ph"] == "s").collect();
    let ends: Vec<&&Value> = flows.iter().filter(|e| e["ph"] == "f").collect();
    assert_eq!(starts.len(), kernels.len() + memops);
    assert_eq!(ends.len(), kernels.len() + memops);
    assert!(ends.iter().all(|e| e["bp"] == "e"));
    let mut ids: Vec<u64> = starts.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    let mut end_ids: Vec<u64> = ends.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    end_ids.sort_unstable();
    assert_eq!(ids, end_ids, "every flow starts at a call and ends at device work");
    ids.dedup();
    assert_eq!(ids.len(), starts.len(), "flow ids are unique across the two processes");

    // Steps: a CPU ProfilerStep per NVTX range and one on each GPU.
    let cpu_steps: Vec<_> = of("user_annotation").into_iter().filter(|e| e["name"] == "ProfilerStep#3").collect();
    assert_eq!(cpu_steps.len(), 2, "one per rank");
    assert_eq!(cpu_steps[0]["args"]["ghostprof step name"], "train_step");
    let gpu_steps = of("gpu_user_annotation");
    assert_eq!(gpu_steps.iter().filter(|e| e["name"].as_str().unwrap().starts_with("ProfilerStep#")).count(), 20);
    assert!(gpu_steps.iter().all(|e| e["args"].get("stream").is_none()), "annotations are not device work");
    let colls = of("user_annotation").into_iter().filter(|e| e["name"] == "nccl:all_reduce").count();
    assert_eq!(colls, 20);
    // Host context: off-CPU waits, and metadata naming the GPU and stream tracks.
    assert_eq!(of("ghostprof_host").len(), 20);
    assert!(events.iter().any(|e| e["ph"] == "M" && e["name"] == "process_name" && e["args"]["name"] == "GPU 1"));
    assert!(events.iter().any(|e| e["name"] == "process_name" && e["args"]["name"] == "python3 (31001)"));
    // Each step's device annotation covers the device work queued in that step, which runs
    // after the host's range ends.
    let last = gpu_steps.iter().filter(|e| e["pid"] == 0).map(|e| ns(&e["ts"]) + ns(&e["dur"])).max().unwrap();
    let last_kernel = kernels.iter().chain(&[]).filter(|k| k.device == 0).map(|k| k.end_ns - base).max().unwrap();
    let last_memset = records
        .iter()
        .filter_map(|r| if let Record::MemOp(m) = r { (m.device == 0).then_some(m.end_ns - base) } else { None })
        .max()
        .unwrap();
    assert_eq!(last, last_kernel.max(last_memset));
    assert!(events.iter().any(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["args"]["name"] == "stream 13"));
    assert_eq!(v["deviceProperties"].as_array().unwrap().len(), 2);
}

#[test]
fn export_to_a_directory_writes_one_file_per_rank_and_pid_selects_one() {
    let dir = tmpdir();
    let trace = write_job(dir.path());
    let outdir = dir.path().join("traces");
    std::fs::create_dir(&outdir).unwrap();
    let run = ghostprof().arg("export").arg(&trace).arg("-o").arg(&outdir).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&outdir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    for (rank, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        // HTA finds the rank with the first line matching `"rank":\s+(\d+)`.
        let first = text.lines().find(|l| l.contains("\"rank\":")).unwrap();
        assert!(first.contains(&format!("\"rank\": {rank},")), "{first}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ghostprof"]["pids"], serde_json::json!([PIDS[rank]]));
        let gpu_pids: Vec<u64> = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["cat"] == "kernel")
            .map(|e| e["pid"].as_u64().unwrap())
            .collect();
        assert!(!gpu_pids.is_empty() && gpu_pids.iter().all(|p| *p == rank as u64), "pid = the rank's device");
    }
    let one = dir.path().join("one.json");
    let run = ghostprof().arg("export").arg(&trace).args(["--pid", "31002", "-o"]).arg(&one).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v = read_json(&one);
    assert_eq!(v["distributedInfo"]["rank"], 1);
    let pids: std::collections::BTreeSet<u64> =
        v["traceEvents"].as_array().unwrap().iter().filter_map(|e| e["pid"].as_u64()).collect();
    assert_eq!(pids, [1u64, 31002].into_iter().collect(), "only pid 31002 and its GPU");
    // A trace cut short (a recording killed) exports its whole chunks, with the reader's warning.
    let cut = dir.path().join("cut.gptrace");
    let third = TraceReader::open(&trace).unwrap().chunks()[2].offset as usize;
    std::fs::write(&cut, &std::fs::read(&trace).unwrap()[..third + 5]).unwrap();
    let run = ghostprof().arg("export").arg(&cut).arg("-o").arg(dir.path().join("cut.json")).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("warning"));
    let kernels = read_json(&dir.path().join("cut.json"))["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["cat"] == "kernel")
        .count();
    let reader = TraceReader::open(&cut).unwrap();
    assert_eq!(kernels, reader.read_all().unwrap().kernels.len());
    assert!(kernels > 0);
    // Errors: one line, non-zero; an unknown format is a usage error (clap's, exit 2, with the
    // formats there are). Nothing is written.
    for (args, code) in [(&["--pid", "7"][..], 1), (&["--format", "perfetto"], 2)] {
        let run = ghostprof().arg("export").arg(&trace).args(args).arg("-o").arg(dir.path().join("x.json")).output();
        let run = run.unwrap();
        assert_eq!(run.status.code(), Some(code), "{args:?}");
        let err = String::from_utf8_lossy(&run.stderr);
        if code == 1 {
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        } else {
            assert!(err.contains("invalid value 'perfetto'") && err.contains("possible values: chrome"), "{err}");
        }
        assert!(!dir.path().join("x.json").exists() && !dir.path().join("x.json.tmp").exists());
    }
}

/// HTA's analyses, per rank, from tools/hta-compare (temporal and idle breakdown, kernel
/// breakdown, comm/comp overlap, launch statistics, queue length, memory bandwidth: each must run);
/// None (with a message) when the HTA environment tools/setup makes is missing.
pub fn hta_breakdown(traces: &Path) -> Option<BTreeMap<u32, Value>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var("GHOSTPROF_HTA_VENV").map(PathBuf::from).unwrap_or(root.join("target/hta-venv"));
    if !venv.join("bin/python").exists() {
        eprintln!("SKIPPED: no HTA virtual environment at {} (tools/setup installs it)", venv.display());
        return None;
    }
    let out = Command::new(root.join("tools/hta-compare")).arg(traces).output().unwrap();
    assert!(out.status.success(), "hta-compare: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .map(|v| (v["rank"].as_u64().unwrap() as u32, v))
            .collect(),
    )
}

/// Compares HTA's idle / compute / non-compute fractions of each rank with ghostprof's
/// accounting over the same window: compute = compute.*, idle = idle.*, non-compute = the rest
/// (comm.* and other.busy: HTA counts NCCL kernels, copies and memsets as non-compute, and
/// like ghostprof gives compute precedence where kernels overlap). Returns the worst
/// difference in points.
/// `all_kept`: every device operation was launched inside a step, so HTA's window is the
/// device's first to last operation (checked); else HTA's window is used as it reports it.
pub fn compare_with_hta(trace: &Path, files: &Path, hta: &BTreeMap<u32, Value>, pids: &[u32], all_kept: bool) -> f64 {
    let mut names = HashMap::new();
    let reader = TraceReader::open(trace).unwrap();
    reader.for_each_chunk(|c| names.extend(c.strings.iter().cloned())).unwrap();
    let mut batch = reader.read_all().unwrap();
    // With steps in the trace, HTA analyzes the device work whose launch call it has (by
    // correlation id): account for the same operations.
    let launched: std::collections::HashSet<(u32, u32)> = batch
        .api_calls
        .iter()
        .filter(|a| a.domain == ApiDomain::CudaDriver as u32 || a.domain == ApiDomain::CudaRuntime as u32)
        .map(|a| (a.pid, a.correlation_id))
        .collect();
    let before = batch.kernels.len() + batch.memops.len();
    batch.kernels.retain(|k| launched.contains(&(k.pid, k.correlation_id)));
    batch.memops.retain(|m| launched.contains(&(m.pid, m.correlation_id)));
    let dropped = before - batch.kernels.len() - batch.memops.len();
    if dropped > 0 {
        eprintln!("{dropped} device operations have no launch call in the trace: HTA leaves them out, so does this comparison");
    }
    let mut worst = 0f64;
    for entry in std::fs::read_dir(files).unwrap() {
        let v = read_json(&entry.unwrap().path());
        let rank = v["distributedInfo"]["rank"].as_u64().unwrap() as u32;
        let pid = v["ghostprof"]["pids"][0].as_u64().unwrap() as u32;
        assert!(pids.contains(&pid));
        let base = v["ghostprof"]["monotonic_base_ns"].as_u64().unwrap();
        let h = &hta[&rank];
        let w0 = base + (h["window_start_us"].as_f64().unwrap() * 1000.0).round() as u64;
        let w1 = base + (h["window_end_us"].as_f64().unwrap() * 1000.0).round() as u64;
        // Where every device operation has its launch call inside a step, HTA keeps them all:
        // its window is the device's first to last operation, as ghostprof's default.
        if all_kept {
            let own = account(&batch, &names, &AccountOptions::default());
            let a = own.iter().find(|a| a.pid == pid).unwrap();
            assert!(a.window_start_ns.abs_diff(w0) <= 1 && a.window_end_ns.abs_diff(w1) <= 1, "HTA kept every kernel");
        }
        // HTA counts every non-NCCL, non-copy kernel as compute; ghostprof books a kernel the
        // PM samples show no FLOPs for as other.busy unless told otherwise.
        let mut opts = AccountOptions { flop_less_below: 0.0, ..AccountOptions::default() };
        opts.windows.insert(pid, ghostprof::analyze::Window::new(w0, w1));
        let acc = account(&batch, &names, &opts);
        let a = acc.iter().find(|a| a.pid == pid).unwrap();
        let w = a.window_ns() as f64;
        let g = |prefix: &str| {
            ghostprof::analyze::Category::NAMES
                .iter()
                .filter(|n| n.starts_with(prefix))
                .map(|n| a.categories.get(n))
                .sum::<u64>() as f64
                / w
        };
        let (compute, idle) = (g("compute."), g("idle."));
        let non_compute = g("comm.") + g("other.");
        let diffs = [
            (h["compute"].as_f64().unwrap() - compute).abs(),
            (h["idle"].as_f64().unwrap() - idle).abs(),
            (h["non_compute"].as_f64().unwrap() - non_compute).abs(),
        ];
        eprintln!(
            "rank {rank} (pid {pid}): HTA compute {:.2}% idle {:.2}% non-compute {:.2}% in {:.2}s; ghostprof {:.2}% {:.2}% {:.2}%",
            h["compute"].as_f64().unwrap() * 100.0,
            h["idle"].as_f64().unwrap() * 100.0,
            h["non_compute"].as_f64().unwrap() * 100.0,
            h["hta_seconds"].as_f64().unwrap(),
            compute * 100.0,
            idle * 100.0,
            non_compute * 100.0
        );
        worst = diffs.iter().fold(worst, |m, d| m.max(*d * 100.0));
    }
    worst
}

#[test]
fn hta_reads_the_export_and_its_temporal_breakdown_agrees_with_ghostprof() {
    let dir = tmpdir();
    let trace = write_job(dir.path());
    let files = dir.path().join("traces");
    let run = ghostprof().arg("export").arg(&trace).arg("-o").arg(format!("{}/", files.display())).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let Some(hta) = hta_breakdown(&files) else { return };
    assert_eq!(hta.keys().copied().collect::<Vec<_>>(), vec![0, 1], "HTA sees both ranks");
    let worst = compare_with_hta(&trace, &files, &hta, &PIDS, true);
    assert!(worst <= 1.0, "HTA and ghostprof differ by {worst:.3} points");
    // The job has all three: compute, non-compute (copies, NCCL) and idle (the straggler's peer).
    for h in hta.values() {
        for k in ["compute", "idle", "non_compute"] {
            assert!(h[k].as_f64().unwrap() > 0.02, "{k}: {h}");
        }
        check_hta_analyses(h, 10);
    }
}

/// The analyses beyond the temporal breakdown, on [`two_rank_job_of`]`(steps)`: HTA sees the
/// three kernel types, the all-reduce overlapping compute, every runtime launch matched to its
/// kernel, both streams queued, and the copies and memsets.
fn check_hta_analyses(h: &Value, steps: u64) {
    let idle: f64 =
        ["host_wait", "kernel_wait", "other"].iter().map(|k| h["idle_breakdown"][k].as_f64().unwrap()).sum();
    assert!((idle - 1.0).abs() < 1e-6, "idle breakdown: {h}");
    for t in ["COMPUTATION", "COMMUNICATION", "MEMORY"] {
        assert!(h["kernel_types"][t].as_f64().unwrap() > 0.0, "kernel type {t}: {h}");
    }
    assert!(h["comm_comp_overlap"].as_f64().unwrap() > 0.0, "the all-reduce overlaps compute: {h}");
    assert_eq!(h["launches"], 24 * steps, "launch statistics of every cudaLaunchKernel: {h}");
    assert_eq!(h["queue_length"]["streams"], 2, "{h}");
    assert!(h["queue_length"]["max"].as_u64().unwrap() >= 1, "{h}");
    assert_eq!(h["memory_ops"], 2 * steps, "a copy and a memset per step: {h}");
}

/// A rank's file of more than 32,767 events: HTA used to fail to load it ("Invalid value ...
/// for dtype 'int16'") when its correlation ids were all below 32,768, as CUPTI's are in a
/// short run (the README demo's export). A launcher without NCCL is not a rank.
#[test]
fn hta_loads_a_long_export_and_runs_every_analysis() {
    let dir = tmpdir();
    let trace = write_job_with_launcher(dir.path(), 300);
    let files = dir.path().join("traces/");
    let run = ghostprof().arg("export").arg(&trace).arg("-o").arg(&files).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("rank 0 of 2") && stdout.contains("rank 1 of 2"), "{stdout}");
    for entry in std::fs::read_dir(&files).unwrap() {
        let v = read_json(&entry.unwrap().path());
        let events = v["traceEvents"].as_array().unwrap();
        assert!(events.len() > 40_000, "{} events", events.len());
        assert_eq!(v["distributedInfo"]["world_size"], 2);
        let max_corr = events.iter().filter_map(|e| e["args"]["correlation"].as_u64()).max().unwrap();
        assert!(max_corr > 32_767, "HTA's correlation column is wider than int16: {max_corr}");
    }
    let Some(hta) = hta_breakdown(&files) else { return };
    assert_eq!(hta.keys().copied().collect::<Vec<_>>(), vec![0, 1], "HTA sees both ranks");
    for h in hta.values() {
        check_hta_analyses(h, 300);
    }
}

/// Ranks are NCCL's: a launcher (no NCCL, no device work) in a single-file export is not a
/// rank, so the file says rank 0 of world size 2, and the export warns that HTA wants one file
/// per rank; `--pid` of the launcher alone is no rank (world size 1).
#[test]
fn export_ranks_come_from_nccl_and_a_launcher_is_not_one() {
    let dir = tmpdir();
    let trace = write_job_with_launcher(dir.path(), 3);
    let out = dir.path().join("all.json");
    let run = ghostprof().arg("export").arg(&trace).arg("-o").arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("pid 31000, 31001, 31002; ranks 0, 1 of 2"), "{stdout}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("holds 2 ranks") && stderr.contains("-o DIR/"), "{stderr}");
    let v = read_json(&out);
    assert_eq!(v["distributedInfo"], serde_json::json!({"backend": "nccl", "rank": 0, "world_size": 2}));
    assert_eq!(v["ghostprof"]["pids"], serde_json::json!([31000, 31001, 31002]));
    let one = dir.path().join("launcher.json");
    let run = ghostprof().arg("export").arg(&trace).args(["--pid", "31000", "-o"]).arg(&one).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("pid 31000; no rank"));
    assert_eq!(read_json(&one)["distributedInfo"]["world_size"], 1);
    let two = dir.path().join("rank1.json");
    let run = ghostprof().arg("export").arg(&trace).args(["--pid", "31002", "-o"]).arg(&two).output().unwrap();
    assert!(run.status.success() && run.stderr.is_empty(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(read_json(&two)["distributedInfo"], serde_json::json!({"backend": "nccl", "rank": 1, "world_size": 2}));
}

/// A report JSON with every field of the schema (docs/report-schema.md), as the analysis writes
/// it: 2 ranks, rank 1 the straggler, a kernel with an untrusted name.
pub fn full_report_fixture() -> Value {
    let cats = |u: f64, i: f64, t: f64, w: f64, o: f64, lb: f64, hs: f64| {
        serde_json::json!({"compute.useful": u, "compute.inefficient": i, "comm.transfer": t, "comm.wait": w,
            "other.busy": o, "idle.launch_bound": lb, "idle.host_stall": hs,
            "idle.other": (1.0 - u - i - t - w - o - lb - hs).max(0.0)})
    };
    let device = |pid: u32, dev: u32, wait: f64| {
        let bins: Vec<Value> = (0..200)
            .map(|b| {
                let phase = (b as f64 / 12.0).sin().abs();
                serde_json::json!({"start_ns": 1_000_000_000u64 + b * 5_000_000, "busy": 0.55 + 0.4 * phase,
                    "mfu": if b % 50 == 49 { Value::Null } else { serde_json::json!(0.2 + 0.25 * phase) },
                    "categories": cats(0.2 + 0.25 * phase, 0.2, 0.05, wait * phase, 0.05, 0.1 * (1.0 - phase), 0.05)})
            })
            .collect();
        let steps: Vec<Value> = (0..12)
            .map(|s| {
                serde_json::json!({"index": s, "start_ns": 1_000_000_000u64 + s * 80_000_000, "end_ns": 1_080_000_000u64 + s * 80_000_000,
                    "busy": 0.8, "mfu": 0.35, "categories": cats(0.35, 0.2, 0.05, wait, 0.05, 0.1, 0.1 - wait / 2.0)})
            })
            .collect();
        serde_json::json!({
            "file": format!("rank{dev}<b>.gptrace"), "pid": pid, "device": dev,
            "window_start_ns": 1_000_000_000u64, "window_end_ns": 2_000_000_000u64,
            "busy": 0.82, "busy_ns": 820_000_000u64, "mfu": 0.31, "divergence": 0.51, "flop_source": "pm_sampling",
            "categories": cats(0.31, 0.3, 0.06, wait, 0.05, 0.1, 0.1 - wait / 2.0),
            "categories_ns": {"compute.useful": 310_000_000u64},
            "steps": steps, "step_source": "nvtx",
            "bins": {"width_ns": 5_000_000u64, "items": bins},
            "top_kernels": [
                {"name": NASTY, "count": 1200, "total_ns": 300_000_000u64, "mean_ns": 250_000.0, "share": 0.3, "useful_ns": 120_000_000u64},
                {"name": NAMES[1], "count": 2400, "total_ns": 200_000_000u64, "mean_ns": 83_333.3, "share": 0.2, "useful_ns": 150_000_000u64}
            ],
            "top_idle_gaps": [{"start_ns": 1_200_000_000u64, "end_ns": 1_230_000_000u64, "duration_ns": 30_000_000u64,
                "category": "idle.host_stall", "reason": "futex"}],
            "checkpoint": {"io_ns": 40_000_000u64, "fraction": 0.04, "bytes": 1u64 << 30}
        })
    };
    serde_json::json!({
        "schema": "ghostprof.report.v1",
        "devices": [device(31001, 0, 0.15), device(31002, 1, 0.01)],
        "ranks": [31001, 31002],
        "warnings": ["a <warning>"],
        "collectives": [{"op": "all_reduce", "size_bucket": "1MiB-4MiB", "count": 120, "bytes": 251_658_240u64,
            "time_ns": 90_000_000u64, "transfer_ns": 30_000_000u64, "wait_ns": 60_000_000u64, "bus_bandwidth_gbps": 140.5, "algorithm": "ring"}],
        "skew": [
            {"rank": 0, "pid": 31001, "file": "rank0.gptrace", "mean_arrival_skew_ns": 120_000.0, "max_arrival_skew_ns": 400_000u64, "late_count": 3},
            {"rank": 1, "pid": 31002, "file": "rank1.gptrace", "mean_arrival_skew_ns": 9_100_000.0, "max_arrival_skew_ns": 14_000_000u64, "late_count": 117}
        ],
        "straggler_rank": 1,
        "straggler_activity": "off-CPU: file I/O 80%, on-CPU 20%"
    })
}

/// [`full_report_fixture`] read as a report document, as `html::render` takes it.
fn full_report_doc() -> ghostprof::report::ReportDoc<'static> {
    serde_json::from_value(full_report_fixture()).unwrap()
}

#[test]
fn html_report_draws_every_section_of_a_full_report_and_escapes_names() {
    let html = ghostprof::report::html::render(&full_report_doc());
    for want in [
        "busy <span class=\"big\">82.0%</span> vs MFU <span class=\"big\">31.0%</span>: <span class=\"big\">51.0 points</span>",
        "Busy vs MFU over time",
        "Where the time went, over time",
        "12 steps (found by: nvtx)",
        "Top kernels",
        "all_reduce",
        "140.5 GB/s",
        "Straggler: <span class=\"big\">rank 1</span>",
        "off-CPU: file I/O 80%",
        "Checkpoint I/O",
    ] {
        assert!(html.contains(want), "missing {want:?}");
    }
    assert!(!html.contains("<p class=\"absent\">"), "every section has data");
    // Untrusted strings are escaped, nothing executes or loads.
    assert!(html.contains("gemm&lt;&quot;q&quot;&amp;&#39;a&#39;&gt; &lt;/script&gt;&lt;script&gt;alert(1)"));
    assert!(!html.contains("<script") && !html.contains("<b>") && !html.contains("src=") && !html.contains("href="));
    assert_eq!(html.matches("<svg").count(), 2 * 4 + 2 + 1, "per device: a bar and 3 charts; 2 headline bars; skew");
}

#[test]
fn report_html_writes_a_page_for_traces_without_the_new_fields() {
    let dir = tmpdir();
    let trace = write_job(dir.path());
    let page = dir.path().join("r.html");
    let out = ghostprof().args(["report", "--html"]).arg(&page).arg(&trace).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("GPU 0 (pid 31001) busy"), "the text report still prints");
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTML report written to"));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<h2>GPU ").count(), 2, "a section per device");
    assert!(html.contains("MFU unknown"), "no FLOP source in this trace");
}

/// Headless Chromium's screenshot of `html`: (share of non-white pixels, distinct colours);
/// None (with a message) without Chromium.
fn screenshot(html: &str, dir: &Path) -> Option<(f64, usize)> {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        eprintln!("SKIPPED: no chromium binary (tools/setup installs the Debian package `chromium`)");
        return None;
    };
    let page = dir.join("page.html");
    let png = dir.join("shot.png");
    std::fs::write(&page, html).unwrap();
    let _ = std::fs::remove_file(&png);
    // `timeout`: a browser that hangs fails the test instead of stalling the suite.
    let out = Command::new("timeout")
        .args(["120", chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg("--window-size=1100,1800")
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(png.exists(), "{chromium} wrote no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3 && info.bit_depth == png::BitDepth::Eight, "{:?} {:?}", info.color_type, info.bit_depth);
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let non_white = pixels.iter().filter(|p| p[..3].iter().any(|c| *c < 235)).count();
    let colours: std::collections::HashSet<[u8; 3]> = pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    Some((non_white as f64 / pixels.len() as f64, colours.len()))
}

#[test]
fn html_report_is_drawn_by_headless_chromium() {
    let dir = tmpdir();
    let Some((ink, colours)) = screenshot(&ghostprof::report::html::render(&full_report_doc()), dir.path()) else {
        return;
    };
    eprintln!("screenshot: {:.1}% non-white pixels, {colours} distinct colours", ink * 100.0);
    assert!(ink > 0.10, "the page is mostly blank: {:.1}% non-white", ink * 100.0);
    assert!(colours >= 10, "charts in several colours: {colours}");
    // A blank page, for contrast, is measured as blank.
    let (blank, _) = screenshot("<!DOCTYPE html><html><body></body></html>", dir.path()).unwrap();
    assert!(blank < 0.01, "{blank}");
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_hta_agrees_with_ghostprof_on_a_recorded_gpusim_job() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let trace = dir.path().join("run.gptrace");
    let mut cfg = ghostprof::record::session::LaunchConfig::new(
        crate::gpusim::train_command("straggler", 2, 10, &dir.path().join("truth")),
        trace.clone(),
    );
    cfg.library_dirs.push(built.lib_dir.clone());
    cfg.inject_lib = Some(built.build_dir.join("libghostprof_inject.so"));
    let summary = ghostprof::record::session::record_command(&cfg, &std::sync::atomic::AtomicBool::new(false))
        .expect("recording");
    assert!(summary.exit_status.is_some_and(|s| s.success()), "{:?}", summary.exit_status);
    // One file with the launcher and both ranks: rank 0 of 2 (the launcher is not a rank).
    let one = dir.path().join("all.json");
    let run = ghostprof().arg("export").arg(&trace).arg("-o").arg(&one).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v = read_json(&one);
    assert_eq!(v["distributedInfo"]["world_size"], 2, "{}", v["distributedInfo"]);
    assert_eq!(v["ghostprof"]["pids"].as_array().unwrap().len(), 3, "the launcher and two ranks");
    let files = dir.path().join("traces/");
    let run = ghostprof().arg("export").arg(&trace).arg("-o").arg(&files).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let Some(hta) = hta_breakdown(&files) else { return };
    assert_eq!(hta.len(), 2, "HTA sees both ranks: {hta:?}");
    let pids: Vec<u32> = TraceReader::open(&trace).unwrap().read_all().unwrap().kernels.iter().map(|k| k.pid).collect();
    let worst = compare_with_hta(&trace, &files, &hta, &pids, false);
    assert!(worst <= 1.0, "HTA and ghostprof differ by {worst:.3} points");
}
