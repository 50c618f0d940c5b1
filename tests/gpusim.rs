//! gpusim (tools/gpusim): the simulated CUDA/CUPTI/NCCL stack keeps its promises — injection
//! like the real driver, ground truth that sums to the window, straggler waits of the configured
//! size, exact launch counts, uprobe-friendly exports, and (root tier) a real uprobe count.
//!
//! The gpusim crates are cdylibs and a separate binary, which the root package's tests cannot
//! depend on, so the first test to need them runs `cargo build -p gpusim-…` into its own target
//! dir, `target/gpusim-test` (a separate dir avoids waiting on the lock of the `cargo test` that
//! runs us), then stages the libraries under their real names with `gpusim-train stage`. Set
//! `GPUSIM_TEST_BUILD_DIR` to a directory with prebuilt artifacts to skip the build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// Built gpusim artifacts.
pub(crate) struct Built {
    /// Where cargo put the binaries and cdylibs.
    pub(crate) build_dir: PathBuf,
    /// Where the libraries are staged under real names.
    pub(crate) lib_dir: PathBuf,
}

pub(crate) fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let build_dir = match std::env::var_os("GPUSIM_TEST_BUILD_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let target = root.join("target").join("gpusim-test");
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let status = Command::new(cargo)
                    .current_dir(root)
                    .args(["build", "--quiet", "--target-dir"])
                    .arg(&target)
                    .args(["-p", "gpusim-cuda", "-p", "gpusim-nccl", "-p", "gpusim-cupti"])
                    .args(["-p", "gpusim-train", "-p", "gpusim-testinject", "-p", "ghostprof-inject"])
                    .status()
                    .expect("run cargo to build the gpusim crates");
                assert!(status.success(), "building gpusim crates failed: {status}");
                target.join("debug")
            }
        };
        let lib_dir = build_dir.join("gpusim-lib");
        let out = Command::new(build_dir.join("gpusim-train"))
            .arg("stage")
            .arg("--lib-dir")
            .arg(&lib_dir)
            .output()
            .expect("run gpusim-train stage");
        assert!(out.status.success(), "stage failed: {}", String::from_utf8_lossy(&out.stderr));
        Built { build_dir, lib_dir }
    })
}

/// The command line of a gpusim-train run over the staged libraries, for tests that record it.
pub(crate) fn train_command(scenario: &str, ranks: u32, steps: u64, out: &Path) -> Vec<String> {
    let b = built();
    let mut cmd = vec![b.build_dir.join("gpusim-train").display().to_string()];
    for (flag, value) in [
        ("--scenario", scenario.to_string()),
        ("--ranks", ranks.to_string()),
        ("--steps", steps.to_string()),
        ("--out", out.display().to_string()),
        ("--lib-dir", b.lib_dir.display().to_string()),
    ] {
        cmd.push(flag.into());
        cmd.push(value);
    }
    cmd
}

/// Run a scenario and return each rank's ground truth.
fn run_scenario(scenario: &str, ranks: u32, steps: u32) -> Vec<Value> {
    let b = built();
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(b.build_dir.join("gpusim-train"))
        .args(["--scenario", scenario, "--ranks", &ranks.to_string(), "--steps", &steps.to_string()])
        .arg("--out")
        .arg(out_dir.path())
        .arg("--lib-dir")
        .arg(&b.lib_dir)
        .output()
        .expect("run gpusim-train");
    assert!(out.status.success(), "gpusim-train {scenario} failed: {}", String::from_utf8_lossy(&out.stderr));
    (0..ranks)
        .map(|rank| {
            let path = out_dir.path().join(format!("truth-rank{rank}.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{scenario}: no ground truth {}: {e}", path.display()));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

fn category(truth: &Value, name: &str) -> u64 {
    truth["devices"][0]["categories"][name].as_u64().unwrap_or_else(|| panic!("category {name} missing in {truth}"))
}

fn window_ns(truth: &Value) -> u64 {
    truth["window"]["duration_ns"].as_u64().expect("window.duration_ns")
}

fn total(truth: &Value, name: &str) -> u64 {
    truth["totals"][name].as_u64().unwrap_or_else(|| panic!("totals.{name} missing"))
}

/// The categories of docs/metrics.md, as ghostprof's accounting names them.
use ghostprof::analyze::Category;

fn assert_sums_to_window(scenario: &str, truth: &Value) {
    let sum: u64 = Category::NAMES.iter().map(|c| category(truth, c)).sum();
    let window = window_ns(truth);
    let (start, end) = (truth["window"]["start_ns"].as_u64(), truth["window"]["end_ns"].as_u64());
    assert_eq!(end.zip(start).map(|(e, s)| e - s), Some(window), "{scenario}: window fields");
    assert_eq!(sum, window, "{scenario} rank {}: categories must sum to the window", truth["rank"]);
    let by_reason = truth["devices"][0]["host_stall_by_reason"].as_object().expect("host_stall_by_reason");
    let reasons_ns: u64 = by_reason.values().map(|v| v.as_u64().expect("ns")).sum();
    assert_eq!(reasons_ns, category(truth, "idle.host_stall"), "{scenario}: stall reasons sum to the category");
    let collectives = truth["devices"][0]["collectives"].as_array().expect("collectives");
    assert_eq!(collectives.len() as u64, total(truth, "collectives"), "{scenario}");
}

#[test]
fn gpusim_injection_calls_initialize_injection_once() {
    let b = built();
    let out = Command::new(b.build_dir.join("gpusim-inject-check"))
        .env("LD_LIBRARY_PATH", &b.lib_dir)
        .env("CUDA_INJECTION64_PATH", b.build_dir.join("libgpusim_testinject.so"))
        .output()
        .expect("run gpusim-inject-check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "inject check failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    // cuInit ran twice; the driver must call InitializeInjection exactly once.
    assert_eq!(stdout.trim(), "initialize_injection_calls=1");
}

#[test]
fn gpusim_every_scenario_sums_to_its_window() {
    for (scenario, ranks, steps) in
        [("balanced", 2, 8), ("straggler", 2, 8), ("launch-bound", 1, 8), ("io-stall", 2, 6), ("checkpoint", 2, 10)]
    {
        let truths = run_scenario(scenario, ranks, steps);
        for truth in &truths {
            assert_sums_to_window(scenario, truth);
            assert_eq!(truth["scenario"], scenario);
            assert_eq!(truth["steps"], steps);
        }
        let t = &truths[0];
        let share = |name: &str| category(t, name) as f64 / window_ns(t) as f64;
        match scenario {
            // Each scenario's signature category dominates (thresholds far from the measured
            // shares: launch-bound ~0.80, io-stall ~0.48, checkpoint ~0.55).
            "launch-bound" => assert!(share("idle.launch_bound") > 0.5, "{t}"),
            "io-stall" => assert!(share("idle.host_stall") > 0.3, "{t}"),
            "checkpoint" => {
                // On the rank whose checkpoint took longer: with the disk loaded (a CI run), one
                // rank's slow fsync made rank 0 wait for it at the next all-reduce (232 ms of
                // comm.wait), and rank 0's host stall share fell to 0.18.
                let stall = |t: &Value| category(t, "idle.host_stall") as f64 / window_ns(t) as f64;
                let most = truths.iter().map(stall).fold(0.0, f64::max);
                assert!(most > 0.2, "{truths:?}");
                assert_eq!(total(t, "checkpoint_bytes"), 2 * 64 * 1024 * 1024);
            }
            // balanced: compute ~83% of the window, almost no waiting.
            _ => assert!(share("compute.useful") + share("compute.inefficient") > 0.6, "{t}"),
        }
    }
}

#[test]
fn gpusim_straggler_wait_matches_the_configured_slowdown() {
    let steps = 40;
    let truths = run_scenario("straggler", 2, steps);
    let (fast, slow) = (&truths[0], &truths[1]);
    assert_eq!(fast["slowdown"].as_f64(), Some(1.0));
    assert_eq!(slow["slowdown"].as_f64(), Some(1.25));
    // scenarios/straggler.json: device time per step between two all-reduces on a normal rank =
    // 6×800 + 6×40 + 6×1600 + 6×60 + 2×300 = 15 600 µs of kernels, all 25% slower on rank 1:
    // rank 1 reaches each all-reduce 3.9 ms after rank 0, so rank 0 waits 3.9 ms per step.
    let configured_per_step_ns = 3_900_000u64;
    let (fast_c, slow_c) = (&fast["devices"][0]["collectives"], &slow["devices"][0]["collectives"]);
    let field = |c: &Value, k: usize, name: &str| c[k][name].as_u64().unwrap_or_else(|| panic!("{name} of {k}"));
    let mut waits_ns: Vec<u64> = Vec::new();
    let mut rank1_last = 0;
    for k in 0..steps as usize {
        assert_eq!(fast_c[k]["sequence"], slow_c[k]["sequence"]);
        // One last-arrival time per collective, on every rank.
        assert_eq!(field(fast_c, k, "last_arrival_ns"), field(slow_c, k, "last_arrival_ns"), "collective {k}");
        waits_ns.push(field(fast_c, k, "last_arrival_ns") - field(fast_c, k, "arrival_ns"));
        rank1_last += usize::from(field(slow_c, k, "arrival_ns") == field(slow_c, k, "last_arrival_ns"));
        if k > 0 {
            // Exact: arrival skew minus the measured host-noise idle skew is the configured
            // slowdown of the kernels between two collectives, to the nanosecond.
            let skew = field(slow_c, k, "arrival_ns") as i64 - field(fast_c, k, "arrival_ns") as i64;
            let idle_skew = field(slow_c, k, "idle_before_ns") as i64 - field(fast_c, k, "idle_before_ns") as i64;
            assert_eq!(skew - idle_skew, configured_per_step_ns as i64, "collective {k}");
        }
    }
    // The comm.wait category is exactly the sum of per-collective waits.
    assert_eq!(category(fast, "comm.wait"), waits_ns.iter().sum::<u64>());
    // Headline number, with real scheduling noise left in: the median wait is the configured
    // 3.9 ms within 25% (measured: 3.90 ms idle machine, 3.45 ms with two CPU hogs on 2 cores),
    // and rank 1 is the last to arrive at >= 75% of collectives (measured 90-100%).
    waits_ns.sort_unstable();
    let median_ns = waits_ns[waits_ns.len() / 2] as f64;
    let configured = configured_per_step_ns as f64;
    assert!((median_ns - configured).abs() < 0.25 * configured, "median wait {median_ns} ns vs {configured}");
    assert!(rank1_last * 4 >= 3 * steps as usize, "rank 1 last at only {rank1_last}/{steps}");
}

#[test]
fn gpusim_counts_launches_kernels_syncs_and_collectives() {
    let steps = 5;
    let truths = run_scenario("balanced", 2, steps);
    for t in &truths {
        // balanced: 12 forward + 12 backward + 2 optimizer launches per step.
        let launches = 26 * steps as u64;
        assert_eq!(total(t, "launches"), launches);
        assert_eq!(t["totals"]["launches_by_api"]["cuLaunchKernel"].as_u64(), Some(launches));
        assert_eq!(total(t, "collectives"), steps as u64);
        assert_eq!(total(t, "kernels"), launches + steps as u64);
        // One cuStreamSynchronize per step plus the final cuCtxSynchronize.
        assert_eq!(total(t, "syncs"), steps as u64 + 1);
        // 8 MiB input per step + 100 MB all-reduce per step.
        assert_eq!(total(t, "bytes"), steps as u64 * (8 * 1024 * 1024 + 100_000_000));
        // FLOPs = useful fraction × duration × peak, summed over launches.
        let per_step = 6.0 * 0.62 * 800e-6 * 989e12 + 6.0 * 0.58 * 1600e-6 * 989e12 + 2.0 * 0.05 * 300e-6 * 989e12;
        let flops = total(t, "flops") as f64;
        assert!((flops - steps as f64 * per_step).abs() / flops < 1e-6, "flops {flops}");
    }
}

/// Exported, defined functions of an ELF64 little-endian shared object with the first 4 bytes
/// of their code, and its DT_SONAME.
fn exported_functions(path: &Path) -> (Vec<(String, [u8; 4])>, Option<String>) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes")) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes")) as usize;
    assert_eq!(&data[..5], b"\x7fELF\x02", "{} is not ELF64", path.display());
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3A), u16_at(0x3C));
    // (type, addr, offset, size, link)
    let sections: Vec<(usize, usize, usize, usize, usize)> = (0..shnum)
        .map(|i| {
            let h = shoff + i * shentsize;
            (u32_at(h + 4), u64_at(h + 16), u64_at(h + 24), u64_at(h + 32), u32_at(h + 40))
        })
        .collect();
    let c_string = |offset: usize| {
        let end = data[offset..].iter().position(|&b| b == 0).expect("NUL") + offset;
        String::from_utf8_lossy(&data[offset..end]).into_owned()
    };
    let file_offset = |vaddr: usize| {
        sections.iter().find(|s| s.0 != 8 && s.1 != 0 && s.1 <= vaddr && vaddr < s.1 + s.3).map(|s| s.2 + (vaddr - s.1))
    };
    let mut functions = Vec::new();
    let mut soname = None;
    for &(kind, _, offset, size, link) in &sections {
        let strtab = sections[link].2;
        if kind == 11 {
            // SHT_DYNSYM
            for sym in (offset..offset + size).step_by(24) {
                let (name, info, shndx, value) = (u32_at(sym), data[sym + 4], u16_at(sym + 6), u64_at(sym + 8));
                if info & 0xf == 2 && shndx != 0 {
                    let code = file_offset(value).expect("function inside a section");
                    functions.push((c_string(strtab + name), data[code..code + 4].try_into().expect("4")));
                }
            }
        } else if kind == 6 {
            // SHT_DYNAMIC: DT_SONAME = 14
            for entry in (offset..offset + size).step_by(16) {
                if u64_at(entry) == 14 {
                    soname = Some(c_string(strtab + u64_at(entry + 8)));
                }
            }
        }
    }
    (functions, soname)
}

#[test]
fn gpusim_exports_real_sonames_and_no_endbr64_prologues() {
    let b = built();
    for (file, soname, must_export) in [
        (
            "libcuda.so.1",
            "libcuda.so.1",
            &[
                "cuInit",
                "cuLaunchKernel",
                "cuLaunchKernel_ptsz",
                "cuLaunchKernelEx",
                "cuGraphLaunch",
                "cuStreamSynchronize",
                "cuGetProcAddress_v2",
                "cuMemcpyHtoDAsync_v2",
            ][..],
        ),
        (
            "libnccl.so.2",
            "libnccl.so.2",
            &["ncclAllReduce", "ncclCommInitRank", "ncclGroupEnd", "ncclSend", "ncclRecv"][..],
        ),
        (
            "libcupti.so.12",
            "libcupti.so.12",
            &["cuptiActivityEnable", "cuptiActivityGetNextRecord", "cuptiGetTimestamp"][..],
        ),
    ] {
        let (functions, found_soname) = exported_functions(&b.lib_dir.join(file));
        assert_eq!(found_soname.as_deref(), Some(soname), "{file}");
        for name in must_export {
            assert!(functions.iter().any(|(n, _)| n == name), "{file} must export {name}");
        }
        for (name, bytes) in &functions {
            // endbr64 would make every uprobe hit single-stepped (~10 µs).
            assert_ne!(bytes, &[0xf3, 0x0f, 0x1e, 0xfa], "{file}: {name} starts with endbr64");
        }
    }
    assert!(b.lib_dir.join("libcupti.so").exists(), "libcupti.so symlink");
}

#[test]
fn gpusim_cupti_records_callbacks_and_pm_samples_match_the_ground_truth() {
    let b = built();
    let dir = tempfile::tempdir().expect("tempdir");
    let cupti_out = dir.path().join("cupti.json");
    let steps = 5;
    let out = Command::new(b.build_dir.join("gpusim-train"))
        .args(["--scenario", "balanced", "--ranks", "1", "--steps", &steps.to_string()])
        .arg("--out")
        .arg(dir.path())
        .arg("--lib-dir")
        .arg(&b.lib_dir)
        .env("CUDA_INJECTION64_PATH", b.build_dir.join("libgpusim_testinject.so"))
        .env("GPUSIM_TESTINJECT_OUT", &cupti_out)
        .output()
        .expect("run gpusim-train");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let truth: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("truth-rank0.json")).expect("truth"))
            .expect("truth json");
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(&cupti_out).expect("cupti summary")).expect("json");
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"));
    // Every kernel (compute and NCCL) arrives once as a 208-byte Kernel9 record with a name.
    assert_eq!(n(&seen, "kernels"), total(&truth, "kernels"));
    assert_eq!(n(&seen, "kernels_without_name"), 0);
    assert_eq!(n(&seen, "bad_intervals"), 0);
    assert_eq!(n(&seen, "launch_api_calls"), total(&truth, "launches"));
    assert_eq!(n(&seen, "memcpys"), total(&truth, "memcpys"));
    assert_eq!(n(&seen, "syncs"), total(&truth, "syncs"));
    assert_eq!((n(&seen, "marker_starts"), n(&seen, "marker_ends")), (steps, steps));
    // Kernel time = compute + comm + the FLOP-less kernels (other.busy minus the 8 MiB input
    // copies: 5 × (2 µs + 8 MiB / 25 GB/s) = 5 × 337.544 µs).
    let kernel_ns: u64 = ["compute.useful", "compute.inefficient", "comm.transfer", "comm.wait", "other.busy"]
        .iter()
        .map(|c| category(&truth, c))
        .sum::<u64>()
        - steps * 337_544;
    assert_eq!(n(&seen, "kernel_ns"), kernel_ns);
    // Callback API: cuLaunchKernel enter and exit fire once per launch with symbolName,
    // cuLaunchKernel_params and CUDA_SUCCESS, under the correlation ids of the API records.
    assert_eq!(
        (n(&seen, "callback_enters"), n(&seen, "callback_exits")),
        (total(&truth, "launches"), total(&truth, "launches"))
    );
    assert_eq!(n(&seen, "callback_bad"), 0);
    assert_eq!(n(&seen, "callback_correlation_sum"), n(&seen, "launch_api_correlation_sum"));
    // PM sampling (1 ms samples): tensor-pipe % × sample time adds up to compute.useful, and
    // graphics-busy % × sample time to the union of device ops (floating-point rounding only).
    assert!(n(&seen, "pm_samples") > 0, "{seen}");
    let pm_tensor_ns = seen["pm_tensor_active_ns"].as_f64().expect("pm_tensor_active_ns");
    let useful_ns = category(&truth, "compute.useful") as f64;
    assert!((pm_tensor_ns - useful_ns).abs() < 1e-6 * useful_ns, "PM tensor {pm_tensor_ns} vs useful {useful_ns}");
    let pm_busy_ns = seen["pm_busy_ns"].as_f64().expect("pm_busy_ns");
    let busy_ns = truth["devices"][0]["busy_ns"].as_u64().expect("busy_ns") as f64;
    assert!((pm_busy_ns - busy_ns).abs() < 1.0, "PM busy {pm_busy_ns} vs busy {busy_ns}");
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON)"]
fn root_gpusim_uprobes_count_exactly_the_ground_truth_calls() {
    use ghostprof::collect::bpf::launch_count::LaunchCountSkelBuilder;
    use libbpf_rs::skel::{OpenSkel, SkelBuilder};
    use libbpf_rs::UprobeOpts;

    let b = built();
    // A private copy of the libraries: only this run's processes map these files, so the probes
    // count nothing from other tests.
    let lib_dir = tempfile::tempdir().expect("tempdir");
    let staged = Command::new(b.build_dir.join("gpusim-train"))
        .arg("stage")
        .arg("--lib-dir")
        .arg(lib_dir.path())
        .output()
        .expect("run gpusim-train stage");
    assert!(staged.status.success(), "{}", String::from_utf8_lossy(&staged.stderr));

    let mut storage = std::mem::MaybeUninit::uninit();
    let open = LaunchCountSkelBuilder::default().open(&mut storage).expect("open launch_count");
    let skel = open.load().expect("load launch_count: run as root (CAP_BPF, CAP_PERFMON)");
    // (library, function) per counter slot = attach cookie.
    let probes = [
        ("libcuda.so.1", "cuLaunchKernel"),
        ("libcuda.so.1", "cuStreamSynchronize"),
        ("libnccl.so.2", "ncclAllReduce"),
    ];
    let _links: Vec<_> = probes
        .iter()
        .enumerate()
        .map(|(slot, (lib, func))| {
            let opts = UprobeOpts { func_name: Some(func.to_string()), cookie: slot as u64, ..UprobeOpts::default() };
            skel.progs
                .count_call
                .attach_uprobe_with_opts(-1, lib_dir.path().join(lib), 0, opts)
                .unwrap_or_else(|e| panic!("attach a uprobe to gpusim's {lib}:{func}: {e}"))
        })
        .collect();

    let out_dir = tempfile::tempdir().expect("tempdir");
    let steps = 10;
    let run = Command::new(b.build_dir.join("gpusim-train"))
        .args(["--scenario", "straggler", "--ranks", "2", "--steps", &steps.to_string()])
        .arg("--out")
        .arg(out_dir.path())
        .arg("--lib-dir")
        .arg(lib_dir.path())
        .output()
        .expect("run gpusim-train");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let truths: Vec<Value> = (0..2)
        .map(|rank| {
            let path = out_dir.path().join(format!("truth-rank{rank}.json"));
            serde_json::from_str(&std::fs::read_to_string(&path).expect("truth")).expect("json")
        })
        .collect();
    let sum = |f: &dyn Fn(&Value) -> u64| truths.iter().map(f).sum::<u64>();
    let launches = sum(&|t| t["totals"]["launches_by_api"]["cuLaunchKernel"].as_u64().expect("cuLaunchKernel"));
    // Every sync but the final cuCtxSynchronize is a cuStreamSynchronize.
    let stream_syncs = sum(&|t| total(t, "syncs") - 1);
    let collectives = sum(&|t| total(t, "collectives"));
    // straggler: 26 launches, one stream sync and one all-reduce per step per rank.
    assert_eq!((launches, stream_syncs, collectives), (2 * 26 * steps, 2 * steps, 2 * steps));
    let counts = skel.maps.bss_data.as_deref().expect("bss of launch_count").counts;
    assert_eq!(counts[..3], [launches, stream_syncs, collectives], "uprobe hits vs ground truth");
}

#[test]
fn gpusim_every_launch_entry_point_is_counted_through_get_proc_address() {
    let apis = [
        "cuLaunchKernel",
        "cuLaunchKernel_ptsz",
        "cuLaunchKernelEx",
        "cuLaunchKernelEx_ptsz",
        "cuLaunchCooperativeKernel",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scenario: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tools/gpusim/scenarios/balanced.json")).expect("balanced.json"),
    )
    .expect("scenario json");
    scenario["launch_apis"] = serde_json::json!(apis);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mixed.json");
    std::fs::write(&path, scenario.to_string()).expect("write scenario");
    let steps = 2;
    let truth = &run_scenario(path.to_str().expect("utf-8 path"), 1, steps)[0];
    assert_sums_to_window("mixed launches", truth);
    // 26 launches per step rotate over the five entry points (resolved with
    // cuGetProcAddress_v2, `_ptsz` through the per-thread-default-stream flag).
    let launches = 26 * steps as usize;
    for (i, api) in apis.iter().enumerate() {
        let expected = (launches / apis.len() + usize::from(i < launches % apis.len())) as u64;
        assert_eq!(truth["totals"]["launches_by_api"][api].as_u64(), Some(expected), "{api}: {truth}");
    }
    assert_eq!(total(truth, "launches"), launches as u64);
}

/// Rank `rank`'s ground truth (`truth-rankN.json`) that gpusim-train wrote under `dir`.
pub(crate) fn truth(dir: &Path, rank: u32) -> Value {
    let path = dir.join(format!("truth-rank{rank}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The truth's whole steps inside [`w0`, `w1`], `margin_ns` in from each edge (where probes and
/// rings were switched on and off).
pub(crate) fn truth_steps_inside(t: &Value, w0: u64, w1: u64, margin_ns: u64) -> Vec<&Value> {
    t["step_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["start_ns"].as_u64().unwrap() >= w0 + margin_ns)
        .filter(|s| s["end_ns"].as_u64().unwrap() + margin_ns <= w1)
        .collect()
}
