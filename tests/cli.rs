//! The `ghostprof` binary as a user meets it: `info` in text and JSON on real files, clear
//! errors on bad ones, `report` as text, JSON and HTML.

use std::process::Command;

use ghostprof::trace::Kind;

use crate::util::*;

fn ghostprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ghostprof"))
}

#[test]
fn info_json_reports_exactly_what_was_written() {
    let dir = tmpdir();
    let path = dir.path().join("run.gptrace");
    let (records, names) = training_records(123_457);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let summary = write_trace(&path, &records, &names, 20_000);
    let out = ghostprof().args(["info", "--json"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for kind in Kind::ALL {
        let expected = records.iter().filter(|r| r.kind() == *kind).count() as u64;
        assert_eq!(v["records"][kind.key()].as_u64(), Some(expected), "{}", kind.key());
    }
    assert_eq!(v["total_records"].as_u64(), Some(123_457));
    assert_eq!(v["chunks"].as_u64(), Some(summary.chunks as u64));
    assert_eq!(v["compressed_bytes"].as_u64(), Some(std::fs::metadata(&path).unwrap().len()));
    let raw: u64 = records.iter().map(|r| r.kind().record_size() as u64).sum();
    assert_eq!(v["raw_bytes"].as_u64(), Some(raw));
    let start = records.iter().map(|r| r.time_ns()).min().unwrap();
    assert_eq!(v["start_ns"].as_u64(), Some(start));
    assert!(v["end_ns"].as_u64().unwrap() > start);
    assert_eq!(v["drops"], serde_json::json!({}));
    assert_eq!(v["finalized"], serde_json::json!(true));
    assert_eq!(v["warnings"], serde_json::json!([]));
}

#[test]
fn info_text_names_counts_and_sizes() {
    let dir = tmpdir();
    let path = dir.path().join("run.gptrace");
    let (mut records, mut names) = training_records(9_999);
    // The recording session's note (stored at its end): `info` lists it, and `report` repeats it.
    names.push("NVML sees no devices: NVML_ERROR_LIBRARY_NOT_FOUND".into());
    let end = records.iter().map(|r| r.time_ns()).max().unwrap();
    records.push(ghostprof::trace::SessionNote { time_ns: end, pid: 0, text_id: names.len() as u32 }.into());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_trace(&path, &records, &names, 4_000);
    let out = ghostprof().arg("info").arg(&path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("note        NVML sees no devices: NVML_ERROR_LIBRARY_NOT_FOUND"), "{text}");
    let report = ghostprof().arg("report").arg(&path).output().unwrap();
    let report = String::from_utf8(report.stdout).unwrap();
    assert!(report.contains("recording note: NVML sees no devices"), "{report}");
    assert!(text.contains("records     10,000"), "{text}");
    assert!(text.contains("chunks      3"), "{text}");
    assert!(text.contains("drops       none"), "{text}");
    assert!(text.contains("finalized"), "{text}");
}

#[test]
fn info_on_a_cut_file_warns_and_still_reports() {
    let dir = tmpdir();
    let path = dir.path().join("run.gptrace");
    let (records, _) = training_records(10_000);
    write_trace(&path, &records, &[], 4_000);
    let third = ghostprof::trace::TraceReader::open(&path).unwrap().chunks()[2].offset as usize;
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..third + 5]).unwrap();
    let out = ghostprof().args(["info", "--json"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning") && stderr.contains("interrupted"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["finalized"], serde_json::json!(false));
    assert_eq!(v["total_records"].as_u64(), Some(8_000), "two whole chunks of 4,000 survive");
}

#[test]
fn bad_files_exit_non_zero_with_a_one_line_reason() {
    let dir = tmpdir();
    let empty = dir.path().join("empty.gptrace");
    std::fs::write(&empty, b"").unwrap();
    let out = ghostprof().arg("info").arg(&empty).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ghostprof: error:") && err.contains("empty file"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let out = ghostprof().args(["info", "/nonexistent/trace.gptrace"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
}

#[test]
fn report_html_and_export_of_a_missing_file_fail_with_one_line() {
    for args in [
        &["report", "--html", "x.html", "/nonexistent/x.gptrace"][..],
        &["export", "/nonexistent/x.gptrace", "-o", "x.json"],
    ] {
        let out = ghostprof().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No such file") && err.trim_end().lines().count() == 1, "{args:?}: {err}");
    }
}

#[test]
fn record_refuses_a_bad_duration_and_non_root_clearly() {
    let out = ghostprof().args(["record", "--duration", "fortnight", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad duration") || err.contains("CAP_BPF"), "{err}");
    if is_root() {
        // As nobody: the capability message, before anything is created.
        let dir = tmpdir();
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_ghostprof"))
            .args(["record", "-o"])
            .arg(dir.path().join("x.gptrace"))
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("sudo"), "{err}");
        assert!(!dir.path().join("x.gptrace").exists());
    }
}

#[test]
fn help_shows_every_subcommand_and_examples() {
    let out = ghostprof().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for sub in ["record", "attach", "report", "export", "info", "demo", "EXAMPLES"] {
        assert!(text.contains(sub), "--help lacks {sub}");
    }
}

#[test]
fn every_argument_of_every_subcommand_has_help_text() {
    for sub in ["record", "attach", "report", "export", "info", "demo"] {
        let out = ghostprof().args([sub, "--help"]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        // Argument lines: "  -o, --output <OUTPUT>  Output trace file [default: ...]", "  <FILE>  The trace file".
        for line in text
            .lines()
            .filter(|l| l.starts_with("  ") && (l.trim_start().starts_with('-') || l.trim_start().starts_with('<')))
        {
            let words: Vec<&str> = line.split("  ").map(str::trim).filter(|w| !w.is_empty()).collect();
            assert!(words.len() >= 2, "`ghostprof {sub}`: no help for {line:?}");
        }
    }
    // Closed sets are clap value enums: a bad value is a usage error naming the choices; case is
    // ignored for --dtype, as the peak table does.
    let out = ghostprof().args(["report", "--dtype", "int4", "x.gptrace"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: bf16, fp16, tf32, fp8"));
    let out = ghostprof().args(["report", "--dtype", "BF16", "/nonexistent.gptrace"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "parsed; the missing file is the error");
}

#[test]
fn report_json_accounts_a_trace_and_sums_to_the_window() {
    let dir = tmpdir();
    let path = dir.path().join("run.gptrace");
    let (records, names) = training_records(60_000);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_trace(&path, &records, &names, 20_000);
    let out = ghostprof().args(["report", "--json"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "one process, one device");
    let d = &devices[0];
    let sum: f64 = d["categories"].as_object().unwrap().values().map(|x| x.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-9, "fractions sum to 1: {sum}");
    let (w0, w1) = (d["window_start_ns"].as_u64().unwrap(), d["window_end_ns"].as_u64().unwrap());
    let ns_sum: u64 = d["categories_ns"].as_object().unwrap().values().map(|x| x.as_u64().unwrap()).sum();
    assert_eq!(ns_sum, w1 - w0, "nanoseconds sum to the window exactly");
    // Busy = the union of kernel and copy intervals, computed here independently.
    let mut spans: Vec<(u64, u64)> = records
        .iter()
        .filter_map(|r| match r {
            ghostprof::trace::Record::KernelExec(k) => Some((k.start_ns, k.end_ns)),
            ghostprof::trace::Record::MemOp(m) => Some((m.start_ns, m.end_ns)),
            _ => None,
        })
        .collect();
    spans.sort_unstable();
    let (mut busy, mut cursor) = (0u64, 0u64);
    for (s, e) in spans {
        let s = s.max(cursor);
        if e > s {
            busy += e - s;
            cursor = e;
        }
    }
    assert_eq!(d["busy_ns"].as_u64(), Some(busy));
    // The synthetic stream has no PM intervals: no FLOP source, no MFU, and it says so.
    assert_eq!(d["flop_source"], "none");
    assert!(d["mfu"].is_null());
    let text = String::from_utf8(ghostprof().arg("report").arg(&path).output().unwrap().stdout).unwrap();
    assert!(text.contains("GPU 0 (pid 4242) busy") && text.contains("MFU needs a FLOP source"), "{text}");
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON) and the workspace built (tools/test does both)"]
fn root_demo_reports_the_straggler_and_matches_the_ground_truth() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let out = ghostprof().args(["demo", "--dir"]).arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("points of divergence").count(), 2, "a headline per rank: {text}");
    let diffs: Vec<f64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("largest difference: "))
        .map(|l| l.trim_end_matches(" points").parse().unwrap())
        .collect();
    assert_eq!(diffs.len(), 2, "{text}");
    assert!(diffs.iter().all(|d| *d <= 2.0), "every category within 2 points of the truth: {diffs:?}");
    // The straggler's peer waits: a comm.wait line above 10 % for one rank.
    let waits: Vec<f64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("comm.wait"))
        .filter_map(|l| l.split_whitespace().next()?.trim_end_matches('%').parse().ok())
        .collect();
    assert!(waits.iter().any(|w| *w > 10.0), "ghost compute on the straggler's peer: {waits:?}");
    assert!(dir.path().join("demo.gptrace").exists());
    let html = std::fs::read_to_string(dir.path().join("demo.html")).expect("the demo writes its HTML report");
    assert!(text.contains("HTML report: ") && html.contains("points</span> of divergence"), "{text}");

    // The README's export of the demo: one file per rank, ranks 0 and 1 of 2 (the launcher is
    // none), and HTA loads it (each rank's file has far more than 32,767 events) and runs every
    // analysis tools/hta-compare asks of it.
    let files = dir.path().join("hta/");
    let run = ghostprof().arg("export").arg(dir.path().join("demo.gptrace")).arg("-o").arg(&files).output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(said.contains("rank 0 of 2") && said.contains("rank 1 of 2") && said.lines().count() == 2, "{said}");
    let Some(hta) = crate::export::hta_breakdown(&files) else { return };
    assert_eq!(hta.keys().copied().collect::<Vec<_>>(), vec![0, 1], "HTA sees both ranks");
    for h in hta.values() {
        assert!(h["compute"].as_f64().unwrap() > 0.3 && h["queue_length"]["streams"].as_u64().unwrap() >= 1, "{h}");
    }
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_record_writes_a_private_trace_and_prints_the_report() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let out_dir = dir.path().join("truth");
    let trace = dir.path().join("rec.gptrace");
    let built = crate::gpusim::built();
    let cmd = crate::gpusim::train_command("balanced", 1, 5, &out_dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ghostprof"))
        .args(["record", "--quiet", "--lib-dir"])
        .arg(&built.lib_dir)
        .arg("-o")
        .arg(&trace)
        .arg("--")
        .args(&cmd)
        .env("GHOSTPROF_INJECT_LIB", built.build_dir.join("libghostprof_inject.so"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("points of divergence"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&trace).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the trace is private");
    // An existing output is refused without --force.
    let again = ghostprof().args(["record", "--quiet", "-o"]).arg(&trace).args(["--", "true"]).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

#[test]
fn attach_to_a_missing_pid_or_a_process_without_cuda_fails_with_one_line() {
    if !is_root() {
        let out = ghostprof().args(["attach", "--pid", "1"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_BPF"));
        return;
    }
    let out = ghostprof().args(["attach", "--pid", "4999999"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("process 4999999 does not exist"), "{err}");
    let out = ghostprof().args(["attach", "--pid", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("whole machine"));
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let out = ghostprof().args(["attach", "--pid", &sleeper.id().to_string()]).output().unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no CUDA or NCCL library mapped") && err.contains("libc.so"), "{err}");
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_attach_mid_run_records_the_attached_window_and_leaves_the_job_alone() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let rings = dir.path().join("rings");
    std::fs::create_dir(&rings).unwrap();
    let cmd = crate::gpusim::train_command("balanced", 2, 150, &dir.path().join("truth"));
    let mut job = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("CUDA_INJECTION64_PATH", built.build_dir.join("libghostprof_inject.so"))
        .env("GHOSTPROF_RING_DIR", &rings)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let trace = dir.path().join("attach.gptrace");
    let t0 = ghostprof::clock::monotonic_ns();
    let out = ghostprof()
        .args(["attach", "--quiet", "--duration", "1s", "--pid", &job.id().to_string(), "-o"])
        .arg(&trace)
        .env("GHOSTPROF_RING_DIR", &rings)
        // as if run through sudo by uid 65534: the trace is given to that user
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .output()
        .unwrap();
    let t1 = ghostprof::clock::monotonic_ns();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(&trace).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o600), "the invoking user's, mode 0600");
    }
    let status = job.wait().unwrap();
    assert!(status.success(), "the job finishes normally after the detach: {status}");
    let b = ghostprof::trace::TraceReader::open(&trace).unwrap().read_all().unwrap();
    assert!(!b.launches.is_empty() && !b.kernels.is_empty(), "eBPF and CUPTI both recorded");
    let pids: std::collections::BTreeSet<u32> = b.launches.iter().map(|l| l.pid).collect();
    assert_eq!(pids.len(), 2, "both ranks under the launcher were traced: {pids:?}");
    assert!(b.launches.iter().all(|l| l.time_ns >= t0 && l.time_ns <= t1), "only the attached window");
    assert!(String::from_utf8_lossy(&out.stdout).contains("points of divergence"));
}
