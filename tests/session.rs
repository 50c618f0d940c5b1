//! Recording sessions end to end, as a user meets them (root tier): `record` stopped by Ctrl-C,
//! by a second Ctrl-C, by a full disk; an output path that is a symlink; `attach` for a window
//! whose accounting matches the simulator's ground truth of that window, leaving the job as an
//! unprofiled run leaves it. Plain tier: the NVML sampler on a machine without libnvidia-ml.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::gpusim::truth;

use crate::util::*;

const ROOT: &str = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root";

fn ghostprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ghostprof"))
}

/// `ghostprof record -o trace -- gpusim-train <scenario>` with the injection library, stdout
/// and stderr piped (the job inherits both, so they reach EOF only when the job is gone too).
fn spawn_record(trace: &Path, scenario: &str, steps: u64, truth: &Path, extra: &[&str]) -> Child {
    let built = crate::gpusim::built();
    ghostprof()
        .arg("record")
        .args(extra)
        .arg("--lib-dir")
        .arg(&built.lib_dir)
        .arg("-o")
        .arg(trace)
        .arg("--")
        .args(crate::gpusim::train_command(scenario, 1, steps, truth))
        .env("GHOSTPROF_INJECT_LIB", built.build_dir.join("libghostprof_inject.so"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ghostprof record")
}

/// Reads a pipe to its end on a thread.
fn read_to_end(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

/// The direct children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    ghostprof::record::attach::process_tree(pid).into_iter().filter(|&p| p != pid && ppid_of(p) == Some(pid)).collect()
}

fn ppid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Running (or sleeping), not gone and not a zombie.
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st != "Z" && st != "X")))
        .unwrap_or(false)
}

/// Waits (up to 20 s) until ghostprof has launched its command; returns the command's pid.
fn wait_for_job(ghostprof_pid: u32) -> u32 {
    for _ in 0..400 {
        if let Some(&job) = children_of(ghostprof_pid).first() {
            let comm = std::fs::read_to_string(format!("/proc/{job}/comm")).unwrap_or_default();
            if comm.trim() == "gpusim-train" {
                return job;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("ghostprof {ghostprof_pid} never started its command");
}

fn info_json(trace: &Path) -> (Value, String) {
    let out = ghostprof().args(["info", "--json"]).arg(trace).output().unwrap();
    assert!(out.status.success(), "info: {}", String::from_utf8_lossy(&out.stderr));
    (serde_json::from_slice(&out.stdout).expect("info --json prints one JSON object"), stderr(&out.stderr))
}

fn stderr(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// SIGKILL to `pid` and every process under it.
fn kill_tree(pid: u32) {
    for p in ghostprof::record::attach::process_tree(pid) {
        // SAFETY: kill has no memory preconditions; these are processes this test started.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}

/// Removes the ring directories a ghostprof that left at once could not remove.
fn remove_private_rings(ghostprof_pid: u32) {
    if let Ok(entries) = std::fs::read_dir("/dev/shm") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("ghostprof-{ghostprof_pid}-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_record_ctrl_c_finalizes_the_trace_and_the_job_goes_on() {
    assert!(is_root(), "{ROOT}");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let (trace, truth_dir) = (dir.path().join("run.gptrace"), dir.path().join("truth"));
    // ~17 ms per step: about 25 s of job, interrupted after 2 s. The report of those 2 s takes a
    // second or two of a debug build on a quiet machine, and up to 7.4 s beside two CPU hogs and
    // compilers (with 500 steps the job then ended first, and the test could not tell that
    // ghostprof had left it running).
    let mut gp = spawn_record(&trace, "balanced", 1500, &truth_dir, &[]);
    let (out, err) = (read_to_end(gp.stdout.take().unwrap()), read_to_end(gp.stderr.take().unwrap()));
    let job = wait_for_job(gp.id());
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signalling the child we spawned.
    assert_eq!(unsafe { libc::kill(gp.id() as i32, libc::SIGINT) }, 0);
    let status = gp.wait().unwrap();
    let job_alive_after_ghostprof = is_running(job);
    // Both pipes end when the job, which inherited them, is gone too.
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert_eq!(status.code(), Some(130), "Ctrl-C: exit status 130\n{err}");
    assert!(err.contains(&format!("stopped by Ctrl-C; the job goes on (pid {job})")), "{err}");
    assert!(out.contains("points of divergence"), "the report of what was recorded: {out}");
    if !nvml_present() {
        let said = err.matches("ghostprof: note: NVML (libnvidia-ml.so.1) is not available: no device samples").count();
        assert_eq!(said, 1, "the session says once that NVML is absent: {err}");
    }
    // The job was not signalled by ghostprof: it ran all its steps and succeeded after the stop.
    assert!(job_alive_after_ghostprof, "the job goes on after ghostprof left");
    assert!(out.contains("truth-rank0.json"), "the job printed its success line: {out}");
    assert_eq!(truth(&truth_dir, 0)["steps"], 1500);
    let (info, info_err) = info_json(&trace);
    assert_eq!(info["finalized"], Value::Bool(true), "{info_err}");
    let records = info["total_records"].as_u64().unwrap();
    let kernels = info["records"]["kernel"].as_u64().unwrap_or(0);
    let job_kernels = truth(&truth_dir, 0)["totals"]["kernels"].as_u64().unwrap();
    eprintln!("ctrl-c: {records} records, {kernels} of the job's {job_kernels} kernels before the stop");
    assert!(records > 0 && kernels > 0, "{info}");
    assert!(kernels < job_kernels, "only the part before Ctrl-C is in the trace");
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_record_second_ctrl_c_leaves_at_once_and_the_file_reads_to_its_last_chunk() {
    assert!(is_root(), "{ROOT}");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let (trace, truth_dir) = (dir.path().join("run.gptrace"), dir.path().join("truth"));
    let mut gp = spawn_record(&trace, "balanced", 500, &truth_dir, &[]);
    let (out, err) = (read_to_end(gp.stdout.take().unwrap()), read_to_end(gp.stderr.take().unwrap()));
    let pid = gp.id();
    let job = wait_for_job(pid);
    // Chunks are cut every 500 ms: after 2 s several are on disk.
    std::thread::sleep(Duration::from_secs(2));
    // Two SIGINTs at once. Sent to two threads (the main one and the writer), they cannot merge
    // into one pending signal, and the writer handles its own before it could finish the file.
    let writer = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).is_ok_and(|c| c.trim() == "ghostprof-write")
        })
        .expect("the writer thread");
    for tid in [pid as i32, writer] {
        // SAFETY: tgkill to threads of the child we spawned.
        assert_eq!(unsafe { libc::syscall(libc::SYS_tgkill, pid as i32, tid, libc::SIGINT) }, 0);
    }
    let status = gp.wait().unwrap();
    let job_alive = is_running(job);
    // The job goes on; this test has seen enough of it.
    kill_tree(job);
    let (_out, err) = (out.join().unwrap(), err.join().unwrap());
    remove_private_rings(pid);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!err.contains("ghostprof: wrote"), "left at once, without finishing the file: {err}");
    assert!(job_alive, "the job goes on");
    let (info, info_err) = info_json(&trace);
    assert_eq!(info["finalized"], Value::Bool(false), "not finalized: {info}");
    assert!(info_err.contains("warning") && info_err.contains("did not finish cleanly"), "{info_err}");
    let records = info["total_records"].as_u64().unwrap();
    let chunks = info["chunks"].as_u64().unwrap();
    eprintln!("second ctrl-c: {records} records in {chunks} whole chunks read back");
    assert!(records > 0 && chunks >= 2, "{info}");
    // Every whole chunk decodes.
    let batch = ghostprof::trace::TraceReader::open(&trace).unwrap().read_all().unwrap();
    assert_eq!(batch.len() as u64, records);
}

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        assert!(st.is_ok_and(|s| s.success()), "mount -t tmpfs failed");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_record_into_a_full_disk_stops_with_a_clear_error_and_a_readable_file() {
    assert!(is_root(), "{ROOT}");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let _mounted = Tmpfs::mount(&disk, "1m");
    // The trace compresses to ~0.5 KiB per step of this job: leave it 64 KiB (~2 s).
    std::fs::write(disk.join("filler"), vec![1u8; 1024 * 1024 - 64 * 1024]).unwrap();
    let (trace, truth_dir) = (disk.join("run.gptrace"), dir.path().join("truth"));
    // ~25 s of job: ghostprof stops at the full disk after ~2 s and must have left it running
    // (600 steps ended first when ghostprof's exit took 11-14 s on a loaded machine).
    let mut gp = spawn_record(&trace, "balanced", 1500, &truth_dir, &[]);
    let (out, err) = (read_to_end(gp.stdout.take().unwrap()), read_to_end(gp.stderr.take().unwrap()));
    let job = wait_for_job(gp.id());
    let status = gp.wait().unwrap();
    let job_alive = is_running(job);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert_eq!(status.code(), Some(1), "{err}");
    let line = err.lines().find(|l| l.starts_with("ghostprof: error:")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("No space left on device") && line.contains("disk full"), "{line}");
    assert!(line.contains("readable up to its last whole chunk"), "{line}");
    assert!(line.contains(&format!("the command goes on (pid {job})")), "says what became of the job: {line}");
    assert!(job_alive, "the job was not killed");
    assert!(out.contains("truth-rank0.json"), "the job ran to its end and succeeded: {out}");
    let size = std::fs::metadata(&trace).unwrap().len();
    let (info, info_err) = info_json(&trace);
    // The space kept for the trailer took the final counters, the index and the seek table.
    assert_eq!(info["finalized"], Value::Bool(true), "{info}");
    let records = info["total_records"].as_u64().unwrap();
    eprintln!("full disk: {size} bytes on a 1 MiB tmpfs, {records} records read back; {line}; {info_err}");
    assert!(records > 0, "{info}");
    // (the writer stops a chunk early: the space for the trailer, ~20 KiB here, stays free
    // until the end)
    assert!(size > 16 * 1024, "the disk really filled: {size}");
    // The records that never reached the file are counted by source, in the trace and in the
    // error line, with the same numbers.
    let lost: Vec<(String, u64)> = info["drops_detail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["cause"] == "writer_stopped")
        .map(|d| (d["source"].as_str().unwrap().to_string(), d["count"].as_u64().unwrap()))
        .collect();
    let total: u64 = lost.iter().map(|l| l.1).sum();
    assert!(total > 0, "the job went on writing after the disk filled: {info}");
    let by_source = lost.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ");
    assert!(
        line.contains(&format!("{total} records not written ({by_source}), counted in the trace")),
        "{line} / {by_source}"
    );
    let (text, _) = {
        let out = ghostprof().arg("info").arg(&trace).output().unwrap();
        (String::from_utf8_lossy(&out.stdout).to_string(), out.status)
    };
    assert!(!text.contains("drops       none") && text.contains("writer_stopped"), "{text}");
}

/// The pipeline alone on a full disk (a 256 KiB tmpfs): every record pushed is either in the
/// file or counted as lost against its source, in the file, although the disk was full when
/// they were lost.
#[test]
#[ignore = "root tier: mounts a tmpfs"]
fn root_pipeline_on_a_full_disk_counts_every_lost_record_in_the_trace() {
    use ghostprof::pipeline::{Pipeline, PipelineOptions};
    use ghostprof::trace::{DropCause, HostStall, Source, TraceInfo, TraceReader};
    assert!(is_root(), "{ROOT}");
    let dir = tmpdir();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let _mounted = Tmpfs::mount(&disk, "256k");
    let path = disk.join("p.gptrace");
    let options = PipelineOptions { flush_interval: Duration::from_millis(5), ..Default::default() };
    let pipeline = Pipeline::create(&path, false, &TraceInfo::default(), options).unwrap();
    let per_source = 300_000u64;
    let sources = [Source::Ebpf, Source::Cupti];
    let mut producers: Vec<_> = sources.iter().map(|s| pipeline.producer(*s)).collect();
    let mut rng = ghostprof::trace::synth::Rng::new(3);
    for n in 0..per_source {
        for (i, p) in producers.iter_mut().enumerate() {
            // random durations: the records do not compress to nothing
            let d = rng.below(1 << 20);
            p.push(HostStall { start_ns: n * 4_096, end_ns: n * 4_096 + d, pid: i as u32, ..Default::default() });
        }
        if n % 20_000 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(producers);
    let err = pipeline.finish().expect_err("the disk is too small for 600,000 records").to_string();
    assert!(err.contains("No space left on device") && !err.contains('\n'), "{err}");
    let reader = TraceReader::open(&path).unwrap();
    assert!(reader.is_finalized() && reader.warnings().is_empty(), "{:?}", reader.warnings());
    let batch = reader.read_all().unwrap();
    let drops = reader.drops().unwrap();
    for (i, source) in sources.iter().enumerate() {
        let kept = batch.stalls.iter().filter(|s| s.pid == i as u32).count() as u64;
        let lost: u64 = drops.iter().filter(|d| d.0 == *source as u32).map(|d| d.2).sum();
        eprintln!("{}: {kept} records in the file, {lost} counted lost", source.name());
        assert!(kept > 0 && lost > 0, "{}: {kept} kept, {lost} lost", source.name());
        assert_eq!(kept + lost, per_source, "{}: every record is in the file or counted", source.name());
    }
    let total_lost: u64 = drops.iter().filter(|d| d.1 == DropCause::WriterStopped as u32).map(|d| d.2).sum();
    assert!(err.contains(&format!("{total_lost} records not written (")), "{err}");
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_record_and_attach_refuse_a_symlinked_output_even_with_force() {
    assert!(is_root(), "{ROOT}");
    let dir = tmpdir();
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, b"do not touch\n").unwrap();
    let link = dir.path().join("run.gptrace");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = dir.path().join("dangling.gptrace");
    let nowhere = dir.path().join("nowhere.txt");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    let before = std::fs::metadata(&target).unwrap();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let sleeper_pid = sleeper.id().to_string();
    for output in [&link, &dangling] {
        for args in [
            vec!["record", "--quiet", "-o", output.to_str().unwrap(), "--", "true"],
            vec!["record", "--quiet", "--force", "-o", output.to_str().unwrap(), "--", "true"],
            vec!["attach", "--quiet", "--force", "--pid", &sleeper_pid, "-o", output.to_str().unwrap()],
        ] {
            let out = ghostprof().args(&args).output().unwrap();
            let err = stderr(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains("is a symlink") && err.contains("never writes a trace through a symlink"),
                "{args:?}: {err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        }
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(std::fs::read(&target).unwrap(), b"do not touch\n");
    let after = std::fs::metadata(&target).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((after.mode(), after.uid(), after.mtime_nsec()), (before.mode(), before.uid(), before.mtime_nsec()));
    assert!(!nowhere.exists(), "nothing created through the dangling link");
}

#[test]
fn the_pipeline_refuses_to_write_through_a_symlink_with_overwrite() {
    // The writer's O_NOFOLLOW: the last line of defence if a symlink appears after the CLI's check.
    let dir = tmpdir();
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("x.gptrace");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let info = ghostprof::trace::TraceInfo::default();
    let err = ghostprof::pipeline::Pipeline::create(&link, true, &info, Default::default()).err().expect("refused");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

/// Starts `cmd` with `envs` added, stdout and stderr piped.
fn spawn_job(cmd: &[String], envs: &[(&str, &Path)]) -> Child {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_attach_window_matches_the_truth_of_that_window_and_the_job_ends_as_unprofiled() {
    use ghostprof::analyze::{account, AccountOptions, Category};
    assert!(is_root(), "{ROOT}");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let truth_dir = dir.path().join("truth");
    let (ranks, steps) = (2u32, 250u64);
    let cmd = crate::gpusim::train_command("straggler", ranks, steps, &truth_dir);

    // The same job unprofiled, for comparison.
    let plain = spawn_job(&cmd, &[]);
    let plain = plain.wait_with_output().unwrap();
    assert!(plain.status.success(), "{}", stderr(&plain.stderr));
    let plain_truths: Vec<Value> = (0..ranks).map(|r| truth(&truth_dir, r)).collect();
    std::fs::remove_dir_all(&truth_dir).unwrap();

    // Started with the dormant injection library, attached to for 2 s after 1 s.
    let rings = dir.path().join("rings");
    std::fs::create_dir(&rings).unwrap();
    let inject = built.build_dir.join("libghostprof_inject.so");
    let job = spawn_job(&cmd, &[("CUDA_INJECTION64_PATH", &inject), ("GHOSTPROF_RING_DIR", &rings)]);
    std::thread::sleep(Duration::from_secs(1));
    let trace = dir.path().join("attach.gptrace");
    let t0 = ghostprof::clock::monotonic_ns();
    let attached = ghostprof()
        .args(["attach", "--quiet", "--duration", "2s", "--pid", &job.id().to_string(), "-o"])
        .arg(&trace)
        .env("GHOSTPROF_RING_DIR", &rings)
        .output()
        .unwrap();
    let t1 = ghostprof::clock::monotonic_ns();
    assert!(attached.status.success(), "{}", stderr(&attached.stderr));
    let job = job.wait_with_output().unwrap();

    // Detaching left the job exactly as an unprofiled run: exit code, stdout, and what it did.
    assert_eq!(job.status.code(), plain.status.code());
    assert_eq!(String::from_utf8_lossy(&job.stdout), String::from_utf8_lossy(&plain.stdout));
    let truths: Vec<Value> = (0..ranks).map(|r| truth(&truth_dir, r)).collect();
    for (t, p) in truths.iter().zip(&plain_truths) {
        for key in ["kernels", "launches", "launches_by_api", "syncs", "collectives", "bytes", "flops", "memcpys"] {
            assert_eq!(t["totals"][key], p["totals"][key], "rank {}: totals.{key}", t["rank"]);
        }
    }

    // The report covers the attached window only.
    let report = ghostprof().args(["report", "--json"]).arg(&trace).output().unwrap();
    assert!(report.status.success(), "{}", stderr(&report.stderr));
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let devices = report["devices"].as_array().unwrap();
    assert_eq!(devices.len(), ranks as usize, "one device per rank");
    let ghostprof::analyze::Loaded { batch, names, .. } = ghostprof::analyze::load(&trace).unwrap();
    let mut opts = AccountOptions::default();
    let mut window_truth = Vec::new();
    for t in &truths {
        let pid = t["pid"].as_u64().unwrap();
        let d = devices.iter().find(|d| d["pid"].as_u64() == Some(pid)).expect("a device for every rank");
        let (w0, w1) = (d["window_start_ns"].as_u64().unwrap(), d["window_end_ns"].as_u64().unwrap());
        eprintln!(
            "rank {}: report window {:.3} s of an attach of {:.3} s",
            t["rank"],
            (w1 - w0) as f64 / 1e9,
            (t1 - t0) as f64 / 1e9
        );
        assert!(w0 >= t0 && w1 <= t1, "inside the attach: {w0}..{w1} vs {t0}..{t1}");
        assert!(w1 - w0 >= 1_500_000_000, "about the 2 s asked for: {} ns", w1 - w0);
        // The truth of the whole steps inside the window (50 ms in from each edge, where the
        // probes and rings were switched on and off): the sum of those steps' categories.
        let inside: Vec<&Value> = crate::gpusim::truth_steps_inside(t, w0, w1, 50_000_000);
        assert!(inside.len() >= 40, "rank {}: {} whole steps inside the window", t["rank"], inside.len());
        let (s0, s1) = (inside[0]["start_ns"].as_u64().unwrap(), inside.last().unwrap()["end_ns"].as_u64().unwrap());
        opts.windows.insert(pid as u32, ghostprof::analyze::Window::new(s0, s1));
        let sums: Vec<u64> = Category::NAMES
            .iter()
            .map(|c| inside.iter().map(|s| s["categories"][*c].as_u64().unwrap()).sum())
            .collect();
        window_truth.push((pid as u32, t["rank"].clone(), inside.len(), sums));
    }
    let accounts = account(&batch, &names, &opts);
    for (pid, rank, n, sums) in &window_truth {
        let acc = accounts.iter().find(|a| a.pid == *pid).expect("an account per rank");
        let w = acc.window_ns() as f64;
        let mut worst = (0.0f64, "");
        let mut line = String::new();
        let comm = |get: &dyn Fn(&str) -> f64| get("comm.wait") + get("comm.transfer");
        let ours_comm = comm(&|n| acc.categories.get(n) as f64);
        let truth_comm = comm(&|n| sums[Category::NAMES.iter().position(|c| *c == n).unwrap()] as f64);
        // An attach after the communicators were created (ncclCommInitRank) does not learn
        // their rank, size or sequence numbers: the ranks' collective kernels are matched by
        // their common end instead (analyze::inputs::comm_waits), so comm.wait is checked too.
        for (name, truth_ns) in Category::NAMES.iter().zip(sums) {
            let ours = acc.categories.get(name) as f64;
            let err = (ours - *truth_ns as f64).abs() / w;
            line.push_str(&format!(" {name} {:.2}/{:.2}ms", ours / 1e6, *truth_ns as f64 / 1e6));
            if err > worst.0 {
                worst = (err, name);
            }
        }
        eprintln!(
            "attach rank {rank}: {n} steps, {:.3} s; worst {} off by {:.3}% of the window;{line}",
            w / 1e9,
            worst.1,
            worst.0 * 100.0
        );
        let comm_err = (ours_comm - truth_comm).abs() / w;
        eprintln!(
            "attach rank {rank}: comm.* {:.2}/{:.2} ms, off by {:.3}%",
            ours_comm / 1e6,
            truth_comm / 1e6,
            comm_err * 100.0
        );
        assert!(worst.0 <= 0.02, "rank {rank}: {} off by {:.2}% of the window", worst.1, worst.0 * 100.0);
        assert!(comm_err <= 0.02, "rank {rank}: comm.wait + comm.transfer off by {:.2}%", comm_err * 100.0);
        // The steps leave a few µs of loop overhead between them; the truth misses only that.
        let gap = w - sums.iter().sum::<u64>() as f64;
        assert!((0.0..=0.001 * w).contains(&gap), "rank {rank}: {gap} ns between steps");
    }
}

/// Runs the NVML sampler with `library` for a few periods into a trace; returns its notes,
/// whether it ran, and the device samples written.
fn nvml_run(library: &str) -> (Vec<String>, bool, usize) {
    use ghostprof::collect::nvml::NvmlSampler;
    use ghostprof::pipeline::{Pipeline, PipelineOptions};
    let dir = tmpdir();
    let path = dir.path().join("nvml.gptrace");
    let pipeline =
        Pipeline::create(&path, false, &ghostprof::trace::TraceInfo::default(), PipelineOptions::default()).unwrap();
    let mut nvml =
        NvmlSampler::start_with(library, pipeline.producer(ghostprof::trace::Source::Nvml), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(100));
    let running = nvml.running();
    nvml.stop();
    let notes = nvml.notes();
    pipeline.finish().unwrap();
    let batch = ghostprof::trace::TraceReader::open(&path).unwrap().read_all().unwrap();
    (notes, running, batch.samples.len())
}

/// Whether this machine has the NVIDIA driver's NVML library.
fn nvml_present() -> bool {
    let name = std::ffi::CString::new(ghostprof::collect::nvml::LIBRARY).unwrap();
    // SAFETY: dlopen/dlclose with a valid C string.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if !h.is_null() {
        // SAFETY: closing the handle just opened.
        unsafe { libc::dlclose(h) };
    }
    !h.is_null()
}

#[test]
fn nvml_without_libnvidia_ml_says_so_once_and_records_nothing() {
    if nvml_present() {
        // A machine with the NVIDIA driver: every GPU is sampled every period.
        let (notes, running, samples) = nvml_run(ghostprof::collect::nvml::LIBRARY);
        eprintln!("nvml: {samples} samples; notes {notes:?}");
        assert!(running && samples > 0, "{notes:?}");
        return;
    }
    let (notes, running, samples) = nvml_run(ghostprof::collect::nvml::LIBRARY);
    assert!(!running, "no sampling thread without the library");
    assert_eq!(samples, 0);
    assert_eq!(notes.len(), 1, "said once: {notes:?}");
    assert!(notes[0].starts_with("NVML (libnvidia-ml.so.1) is not available: no device samples ("), "{notes:?}");
}

#[test]
fn nvml_refuses_a_library_that_is_not_nvml_without_panicking() {
    // libc loads, but has no NVML entry points.
    let (notes, running, samples) = nvml_run("libc.so.6");
    assert!(!running);
    assert_eq!(samples, 0);
    assert_eq!(notes, vec!["NVML (libc.so.6) is not available: no device samples (libc.so.6 has no nvmlInit_v2)"]);
}

#[test]
fn nvml_samples_every_device_with_the_real_layouts_through_a_stand_in_library() {
    // tests/data/fake_nvml.c: the nvml.h signatures and structs, two devices with fixed
    // readings, GPM on device 0 only, no power reading on device 1.
    let dir = tmpdir();
    let lib = dir.path().join("libfake-nvml.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fake_nvml.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc).args(["-shared", "-fPIC", "-O1", "-o"]).arg(&lib).arg(&src).status();
    assert!(built.is_ok_and(|s| s.success()), "{cc} could not build {}", src.display());
    use ghostprof::collect::nvml::NvmlSampler;
    use ghostprof::pipeline::{Pipeline, PipelineOptions};
    use ghostprof::trace::Metric;
    let path = dir.path().join("nvml.gptrace");
    let pipeline =
        Pipeline::create(&path, false, &ghostprof::trace::TraceInfo::default(), PipelineOptions::default()).unwrap();
    let mut nvml = NvmlSampler::start_with(
        lib.to_str().unwrap(),
        pipeline.producer(ghostprof::trace::Source::Nvml),
        Duration::from_millis(20),
    );
    assert!(nvml.running(), "{:?}", nvml.notes());
    std::thread::sleep(Duration::from_millis(300));
    nvml.stop();
    let (stats, notes) = (nvml.stats(), nvml.notes());
    pipeline.finish().unwrap();
    assert_eq!((stats.devices, stats.gpm_devices), (2, 1));
    assert_eq!(notes, vec!["NVML device 1: power is not available (Not Supported (NVML error 3))".to_string()]);
    let batch = ghostprof::trace::TraceReader::open(&path).unwrap().read_all().unwrap();
    let rounds = stats.rounds as usize;
    assert!(rounds >= 3, "{rounds} rounds");
    // Per round: device 0 gives 6 NVML metrics and, from its second round on, 4 GPM metrics;
    // device 1 gives 5 (no power).
    assert_eq!(batch.samples.len(), rounds * 6 + (rounds - 1) * 4 + rounds * 5);
    assert_eq!(stats.samples as usize, batch.samples.len());
    let values = |device: u32, metric: Metric| -> Vec<f64> {
        batch.samples.iter().filter(|s| s.device == device && s.metric == metric as u32).map(|s| s.value).collect()
    };
    let expect = [
        (0, Metric::GpuUtilPercent, 37.0),
        (1, Metric::GpuUtilPercent, 38.0),
        (0, Metric::MemUtilPercent, 12.0),
        (0, Metric::MemUsedBytes, (5u64 << 30) as f64),
        (1, Metric::MemUsedBytes, ((5u64 << 30) + 1) as f64),
        (0, Metric::SmClockMhz, 1980.0),
        (0, Metric::MemClockMhz, 2619.0),
        (0, Metric::PowerWatts, 412.345),
        (0, Metric::SmActive, 0.715),
        (0, Metric::SmOccupancy, 0.33),
        (0, Metric::TensorActive, 0.4225),
        (0, Metric::DramBandwidth, 0.58),
    ];
    for (device, metric, value) in expect {
        let v = values(device, metric);
        assert!(!v.is_empty() && v.iter().all(|x| *x == value), "device {device} {metric:?}: {v:?} != {value}");
    }
    assert!(values(1, Metric::PowerWatts).is_empty() && values(1, Metric::TensorActive).is_empty());
    assert!(batch.samples.iter().all(|s| s.pid == 0), "host-wide samples");
}
