//! Root tier: the eBPF build chain is real. The `sched` program, compiled by build.rs and
//! loaded through its libbpf-rs skeleton, sees a child process's sleeps as off-CPU intervals
//! of the right length and reason.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use ghostprof::collect::sched::{run_offcpu, OffCpuConfig};
use ghostprof::pipeline::{Pipeline, PipelineOptions};
use ghostprof::trace::*;

use crate::util::*;

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_sched_program_sees_a_child_sleep_ten_times() {
    assert!(is_root(), "run the root tier as root (tools/test does when it can)");
    // Not beside the heavy jobs (watch, attach): under that load one of the ten sleeps once
    // went missing from the records (9 of 10, no ring-buffer drop), cause not yet found.
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let path = dir.path().join("offcpu.gptrace");
    // The child waits for a line on stdin, then sleeps 10 × 50 ms.
    let mut child = Command::new("python3")
        .args(["-c", "import sys, time\nsys.stdin.readline()\nfor _ in range(10): time.sleep(0.05)\n"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let pipeline = Pipeline::create(&path, false, &TraceInfo::default(), PipelineOptions::default()).unwrap();
    let stop = AtomicBool::new(false);
    let (ready_tx, ready_rx) = mpsc::channel();
    let stats = std::thread::scope(|s| {
        let mut producer = pipeline.producer(Source::Ebpf);
        let stop = &stop;
        let h = s.spawn(move || {
            let cfg = OffCpuConfig { target_tgid: pid, drain_interval: Duration::from_millis(5) };
            run_offcpu(&cfg, stop, &mut producer, Some(ready_tx))
        });
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            panic!("collector did not attach: {:?}", h.join().unwrap().err());
        }
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(child.wait().unwrap().success());
        stop.store(true, Ordering::Release);
        h.join().unwrap().expect("collector ran")
    });
    pipeline.finish().unwrap();
    let stalls = TraceReader::open(&path).unwrap().read_all().unwrap().stalls;
    assert_eq!(stats.ringbuf_drops, 0);
    assert!(stalls.iter().all(|s| s.pid == pid), "only the target is traced");
    let sleeps: Vec<&HostStall> = stalls
        .iter()
        .filter(|s| s.reason == StallReason::Sleep as u32 && s.end_ns - s.start_ns >= 45_000_000)
        .collect();
    assert_eq!(sleeps.len(), 10, "ten 50 ms sleeps, got {:?}", sleeps);
    for s in &sleeps {
        let ms = (s.end_ns - s.start_ns) as f64 / 1e6;
        assert!((49.0..80.0).contains(&ms), "a 50 ms sleep measured {ms:.2} ms");
        assert!(s.syscall == 230 || s.syscall == 35, "nanosleep syscalls, got {}", s.syscall);
    }
}

#[test]
fn non_root_is_told_which_capabilities_to_get() {
    if is_root() {
        // Drop to `nobody` in a child of this very test binary to see the real message.
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
            .arg(exe)
            .args(["--exact", "bpf::non_root_is_told_which_capabilities_to_get", "--nocapture"])
            .env("GHOSTPROF_EXPECT_NONROOT", "1")
            .output()
            .expect("setpriv (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "non-root run failed: {text}");
        assert!(text.contains("capability message checked"), "{text}");
        return;
    }
    let pipeline_dir = tmpdir();
    let pipeline = Pipeline::create(
        &pipeline_dir.path().join("x.gptrace"),
        false,
        &TraceInfo::default(),
        PipelineOptions::default(),
    )
    .unwrap();
    let mut producer = pipeline.producer(Source::Ebpf);
    let cfg = OffCpuConfig { target_tgid: 1, drain_interval: Duration::from_millis(5) };
    let err = run_offcpu(&cfg, &AtomicBool::new(true), &mut producer, None).expect_err("non-root cannot load eBPF");
    let msg = err.to_string();
    assert!(msg.contains("CAP_BPF") && msg.contains("CAP_PERFMON") && msg.contains("sudo"), "{msg}");
    if std::env::var_os("GHOSTPROF_EXPECT_NONROOT").is_some() {
        println!("capability message checked: {msg}");
    }
}
