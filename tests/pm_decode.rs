//! PM decode in ghostprof, not in the job (profiler/collect/pmdecode.rs): the decoder's values
//! equal in-process evaluation bit for bit, hostile values and times are refused and counted,
//! the job's libcupti is taken only as the mapped file (no symlink, same inode), and recorded
//! gpusim jobs: the same PM figures in both modes, no evaluation in the job, a decoder running
//! as the job's user with no capability, and a decoder that dies stops PM with a note; a
//! decoder lives in its job's namespaces, and a hostile libcupti it loads cannot reach the host's
//! files or network nor create a user namespace.

use std::ffi::{c_void, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cudarc::cupti::sys as cs;
use ghostprof::collect::pmdecode::{self, Decoders, Outcome, PmRefusals};
use ghostprof_ring::wire;

use crate::util::*;

const TENSOR: &CStr = c"sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed";
const SM: &CStr = c"gr__cycles_active.avg.pct_of_peak_sustained_elapsed";
const AVAILABILITY: &[u8] = b"gpusim-counter-availability GH100\0";

fn setup_blob() -> Vec<u8> {
    wire::PmSetup {
        interval_ns: 50_000,
        chip: b"GH100",
        availability: AVAILABILITY,
        metrics: vec![TENSOR.to_bytes(), SM.to_bytes()],
    }
    .encode()
}

/// A gpusim counter-data image (docs/gpusim.md: `GPSIMPM1`, max, populated, then 32-byte
/// samples `start, end, tensor_active_ns f64, busy_ns f64`) with room for `max` samples.
fn gpusim_image(samples: &[(u64, u64, f64, f64)], max: usize) -> Vec<u8> {
    let mut image = vec![0u8; 64 + 32 * max];
    image[..8].copy_from_slice(b"GPSIMPM1");
    image[8..16].copy_from_slice(&(max as u64).to_le_bytes());
    image[16..24].copy_from_slice(&(samples.len() as u64).to_le_bytes());
    for (i, (a, b, t, busy)) in samples.iter().enumerate() {
        let at = 64 + 32 * i;
        image[at..at + 8].copy_from_slice(&a.to_le_bytes());
        image[at + 8..at + 16].copy_from_slice(&b.to_le_bytes());
        image[at + 16..at + 24].copy_from_slice(&t.to_bits().to_le_bytes());
        image[at + 24..at + 32].copy_from_slice(&busy.to_bits().to_le_bytes());
    }
    image
}

/// Evaluates `image` in this process through the loaded libcupti, as the job does in job mode.
fn evaluate_here(lib: *mut c_void, image: &[u8], n: usize) -> Vec<f64> {
    type F<P> = unsafe extern "C" fn(*mut P) -> u32;
    // SAFETY: symbols of the loaded gpusim libcupti, with the host API's signatures; params
    // zeroed with their size set, buffers alive through each call.
    unsafe {
        let sym = |name: &CStr| {
            let p = libc::dlsym(lib, name.as_ptr());
            assert!(!p.is_null(), "{name:?}");
            p
        };
        let init: F<cs::CUpti_Profiler_Host_Initialize_Params> =
            std::mem::transmute(sym(c"cuptiProfilerHostInitialize"));
        let add: F<cs::CUpti_Profiler_Host_ConfigAddMetrics_Params> =
            std::mem::transmute(sym(c"cuptiProfilerHostConfigAddMetrics"));
        let eval: F<cs::CUpti_Profiler_Host_EvaluateToGpuValues_Params> =
            std::mem::transmute(sym(c"cuptiProfilerHostEvaluateToGpuValues"));
        let mut p: cs::CUpti_Profiler_Host_Initialize_Params = std::mem::zeroed();
        p.structSize = std::mem::size_of_val(&p);
        p.pChipName = c"GH100".as_ptr();
        p.pCounterAvailabilityImage = AVAILABILITY.as_ptr();
        assert_eq!(init(&mut p), 0);
        let mut names = [TENSOR.as_ptr(), SM.as_ptr()];
        let mut a: cs::CUpti_Profiler_Host_ConfigAddMetrics_Params = std::mem::zeroed();
        a.structSize = std::mem::size_of_val(&a);
        (a.pHostObject, a.ppMetricNames, a.numMetrics) = (p.pHostObject, names.as_mut_ptr(), 2);
        assert_eq!(add(&mut a), 0);
        let mut out = Vec::new();
        for i in 0..n {
            let mut v = [0f64; 2];
            let mut e: cs::CUpti_Profiler_Host_EvaluateToGpuValues_Params = std::mem::zeroed();
            e.structSize = std::mem::size_of_val(&e);
            (e.pHostObject, e.pCounterDataImage, e.counterDataImageSize) = (p.pHostObject, image.as_ptr(), image.len());
            (e.rangeIndex, e.ppMetricNames, e.numMetrics, e.pMetricValues) = (i, names.as_mut_ptr(), 2, v.as_mut_ptr());
            assert_eq!(eval(&mut e), 0);
            out.extend(v);
        }
        out
    }
}

fn wait_outcome(d: &mut Decoders) -> Outcome {
    let began = Instant::now();
    loop {
        if let Some(o) = d.ready(Duration::from_millis(100)).into_iter().next() {
            return o;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "no answer from the decoder's thread in 30 s");
    }
}

fn ghostprof_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ghostprof"))
}

/// The decoder (a `ghostprof` child, here as root without capabilities) evaluates gpusim images
/// to exactly the values this process gets from the same libcupti; a corrupted image is that
/// image's failure and the decoder goes on; a killed decoder fails the next image, and a
/// stopped one times out.
#[test]
#[ignore = "root tier: the decoder drops its capability bounding set (CAP_SETPCAP)"]
fn root_pm_decoder_values_equal_in_process_evaluation() {
    assert!(is_root(), "run the root tier as root");
    // gpusim's libcupti with a companion beside it, as CUPTI's libnvperf_host.so is (zlib
    // stands in: any library), both loaded by this process, the "job".
    let libs = tmpdir();
    let lib_path = libs.path().join("libcupti.so.12");
    std::fs::copy(crate::gpusim::built().lib_dir.join("libcupti.so.12"), &lib_path).unwrap();
    let companion = libs.path().join("libnvperf_host.so");
    std::fs::copy("/lib/x86_64-linux-gnu/libz.so.1", &companion).unwrap();
    let load = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: loading gpusim's libcupti (no constructor beyond Rust's) and zlib.
        unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) }
    };
    assert!(!load(&companion).is_null());
    let lib = load(&lib_path);
    assert!(!lib.is_null());
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let samples: Vec<(u64, u64, f64, f64)> = (0..500u64)
        .map(|i| {
            let (t, b) = ((next() % 50_000) as f64 + 0.123, (next() % 50_000) as f64 + 0.5);
            (1_000 + i * 50_000, 1_000 + (i + 1) * 50_000, t.min(b), b)
        })
        .collect();
    let image = gpusim_image(&samples, 600);
    let here = evaluate_here(lib, &image, samples.len());

    let me = std::process::id();
    let mut d = Decoders::with_exe(ghostprof_exe());
    let route = d.setup(me, &setup_blob()).expect("a decoder for this process's libcupti");
    let procs = d.processes();
    assert_eq!(procs.len(), 1);
    let times: Vec<(u64, u64)> = samples.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(d.eval(route, me, 7, 2, 0, times.clone(), image.clone()), Ok(true));
    match wait_outcome(&mut d) {
        Outcome::Values { pid, session, values, .. } => {
            assert_eq!((pid, session), (me, 7));
            assert_eq!(values.len(), 1_000);
            let same = values.iter().zip(&here).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "the decoder's values differ from in-process evaluation");
            let mut last = 0;
            let mut refused = PmRefusals::default();
            let kept = pmdecode::validate(&times, 0, &values, 2, (0, u64::MAX), &mut last, &mut refused);
            assert_eq!((kept.len(), refused), (500, PmRefusals::default()));
        }
        o => panic!("{o:?}"),
    }
    // It answered: it has dropped its privileges (it does so itself, after exec).
    let status = std::fs::read_to_string(format!("/proc/{}/status", procs[0].0)).unwrap();
    for (key, want) in [
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("Seccomp:", "2"),
    ] {
        let v = status.lines().find_map(|l| l.strip_prefix(key)).unwrap().trim();
        assert_eq!(v, want, "{key} of the decoder");
    }
    // The decoder loaded the job's libcupti and its companion, the files this process maps.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", procs[0].0)).unwrap();
    for p in [&lib_path, &companion] {
        assert!(
            maps.contains(p.canonicalize().unwrap().to_str().unwrap()),
            "{} not in the decoder's maps",
            p.display()
        );
    }
    // A corrupted image (populated > max): refused by the job's CUPTI, the decoder goes on.
    let mut bad = image.clone();
    bad[16..24].copy_from_slice(&10_000u64.to_le_bytes());
    assert_eq!(d.eval(route, me, 7, 2, 0, times.clone(), bad), Ok(true));
    match wait_outcome(&mut d) {
        Outcome::Failed { why, .. } => assert!(why.contains("could not evaluate"), "{why}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(d.eval(route, me, 7, 2, 0, times[..10].to_vec(), image.clone()), Ok(true));
    assert!(matches!(wait_outcome(&mut d), Outcome::Values { values, .. } if values.len() == 20));
    // Killed: the next image fails, saying so.
    let child = d.processes()[0].0;
    // SAFETY: signalling the decoder this test started.
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    let _ = d.eval(route, me, 7, 2, 0, times.clone(), image.clone());
    match wait_outcome(&mut d) {
        Outcome::Failed { why, .. } => assert!(why.contains("died"), "{why}"),
        o => panic!("{o:?}"),
    }
    assert!(d.processes().is_empty(), "a dead decoder is not listed");
    // A new setup starts a new decoder; stopped (SIGSTOP), it times out and is killed.
    let route = d.setup(me, &setup_blob()).expect("a second decoder");
    assert_eq!(d.eval(route, me, 8, 2, 0, times[..1].to_vec(), image.clone()), Ok(true));
    assert!(matches!(wait_outcome(&mut d), Outcome::Values { .. }), "the second decoder answers");
    let child = d.processes()[0].0;
    // SAFETY: as above.
    unsafe { libc::kill(child as i32, libc::SIGSTOP) };
    let began = Instant::now();
    // 1.3 MB: more than the pipe holds, so the write itself must give up (it blocked for
    // ever before the pipe was written by a deadline).
    let big = gpusim_image(&samples, 40_000);
    assert_eq!(d.eval(route, me, 8, 2, 0, times, big), Ok(true));
    match wait_outcome(&mut d) {
        Outcome::Failed { why, .. } => assert!(why.contains("in time (killed)"), "{why}"),
        o => panic!("{o:?}"),
    }
    assert!(began.elapsed() >= pmdecode::EVAL_TIMEOUT);
    let killed = Instant::now();
    while !zombie_or_gone(child) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(zombie_or_gone(child), "the hung decoder is killed");
    // At the session's end a stopped decoder with images queued is given up at once, not after
    // each image's deadline.
    let route = d.setup(me, &setup_blob()).expect("a third decoder");
    let t: Vec<(u64, u64)> = samples.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(d.eval(route, me, 9, 2, 0, t[..1].to_vec(), image.clone()), Ok(true));
    assert!(matches!(wait_outcome(&mut d), Outcome::Values { .. }));
    let child = d.processes()[0].0;
    // SAFETY: as above.
    unsafe { libc::kill(child as i32, libc::SIGSTOP) };
    for _ in 0..3 {
        assert_eq!(d.eval(route, me, 9, 2, 0, t.clone(), gpusim_image(&samples, 40_000)), Ok(true));
    }
    std::thread::sleep(Duration::from_millis(300));
    let closing = Instant::now();
    d.close();
    assert!(closing.elapsed() < pmdecode::EVAL_TIMEOUT, "close took {:?}", closing.elapsed());
    assert!(zombie_or_gone(child), "the stopped decoder is gone after close");
}

fn zombie_or_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(true)
}

/// Hostile decoder output and hostile job times, through the one validation function the
/// collector uses: each refused sample counted under its source.
#[test]
fn hostile_pm_values_and_times_are_refused_and_counted() {
    let times: Vec<(u64, u64)> = (0..8u64).map(|i| (1_000 + i * 100, 1_100 + i * 100)).collect();
    let values = [
        50.0,
        40.0, // kept
        f64::NAN,
        1.0, // decoder: not finite
        f64::INFINITY,
        1.0, // decoder
        150.0,
        1.0, // decoder: not a percentage
        -5.0,
        1.0, // decoder
        100.9,
        -0.9, // kept: within the tolerance
        1.0,
        1e300, // decoder
        0.0,
        0.0, // kept
    ];
    let (mut last, mut refused) = (0, PmRefusals::default());
    let kept = pmdecode::validate(&times, 10, &values, 2, (0, u64::MAX), &mut last, &mut refused);
    assert_eq!(kept.len(), 3);
    assert_eq!(refused, PmRefusals { decoder: 5, job: 0 });
    assert_eq!(kept[0].start_ns, 1_010, "CUPTI time + the clock offset");
    assert_eq!(last, 1_800);
    // The wrong number of values: every sample refused (the decoder's).
    let mut r = PmRefusals::default();
    assert!(pmdecode::validate(&times, 0, &values[..15], 2, (0, u64::MAX), &mut 0, &mut r).is_empty());
    assert_eq!(r, PmRefusals { decoder: 8, job: 0 });
    // The job's times: before the last sample, empty, reversed, outside the session.
    let times = [(500, 600), (1_800, 1_900), (2_000, 2_000), (2_100, 2_050), (5, 50), (3_000, 9_000), (2_100, 2_200)];
    let values = [1.0; 14];
    let mut r = PmRefusals::default();
    let mut last = 1_000;
    let kept = pmdecode::validate(&times, 0, &values, 2, (100, 5_000), &mut last, &mut r);
    assert_eq!(kept.iter().map(|s| s.start_ns).collect::<Vec<_>>(), vec![1_800, 2_100]);
    assert_eq!(r, PmRefusals { decoder: 0, job: 5 });
}

/// A copy of gpusim's libcupti, mapped by this process as a job maps its libcupti.
struct Mapped {
    dir: tempfile::TempDir,
    path: PathBuf,
    _map: memmap2::Mmap,
}

fn map_a_libcupti() -> Mapped {
    let dir = tmpdir();
    let path = dir.path().join("libcupti.so.12");
    std::fs::write(&path, b"\x7fELF not really a library, 4096 bytes of it".repeat(100)).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: a read-only private mapping of a file this test made.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    Mapped { dir, path, _map: map }
}

/// The job's libcupti is opened only as the file it maps: not through a symlink planted at its
/// path (which would resolve on ghostprof's side), not a file swapped in at its path.
#[test]
fn the_jobs_libcupti_must_be_the_mapped_file() {
    let m = map_a_libcupti();
    let me = std::process::id();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let lib = pmdecode::find_cupti(&maps).expect("the mapping");
    assert_eq!(Path::new(&lib.path), m.path.canonicalize().unwrap());
    assert!(pmdecode::open_job_library(me, &lib).is_ok());
    // A symlink at the path, to the very file mapped (same inode): refused all the same.
    let moved = m.dir.path().join("real.so");
    std::fs::rename(&m.path, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &m.path).unwrap();
    let e = pmdecode::open_job_library(me, &lib).unwrap_err();
    assert!(e.contains("symlink"), "{e}");
    // A copy at the path: another inode.
    std::fs::remove_file(&m.path).unwrap();
    std::fs::copy(&moved, &m.path).unwrap();
    let e = pmdecode::open_job_library(me, &lib).unwrap_err();
    assert!(e.contains("not the file the process has mapped"), "{e}");
    // A directory on the way that is a symlink.
    let real_dir = m.dir.path().join("d");
    std::fs::create_dir(&real_dir).unwrap();
    std::fs::rename(&moved, real_dir.join("libcupti.so.12")).unwrap();
    let via = m.dir.path().join("via");
    std::os::unix::fs::symlink(&real_dir, &via).unwrap();
    let mut through = lib.clone();
    through.path = via.join("libcupti.so.12").display().to_string();
    let e = pmdecode::open_job_library(me, &through).unwrap_err();
    assert!(e.contains("symlink"), "{e}");
}

/// One `ghostprof record` of a 1-rank gpusim `balanced` job; `job_mode` evaluates in the job.
struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    trace: PathBuf,
    truth: serde_json::Value,
    /// `cuptiProfilerHostEvaluateToGpuValues` calls per process that made any.
    evaluations: Vec<(u32, u64)>,
    /// (pid, status text) of each decoder seen while it ran.
    decoders: Vec<(u32, String)>,
}

fn record(dir: &Path, steps: u64, job_mode: bool, as_nobody: bool, kill_decoder_after: Option<Duration>) -> Run {
    let built = crate::gpusim::built();
    let out = dir.join("truth");
    let trace = dir.join("run.gptrace");
    let evals = dir.join("evals");
    std::fs::create_dir_all(&evals).unwrap();
    for d in [dir, &evals] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    }
    let mut cmd = Command::new(ghostprof_exe());
    cmd.args(["record", "--force", "--lib-dir"]).arg(&built.lib_dir).arg("-o").arg(&trace).arg("--");
    cmd.args(crate::gpusim::train_command("balanced", 1, steps, &out));
    cmd.env("GPUSIM_PM_EVAL_DIR", &evals).env("GHOSTPROF_PM_INTERVAL_NS", "100000");
    if job_mode {
        cmd.env("GHOSTPROF_PM_DECODE", "job");
    } else {
        cmd.env("GHOSTPROF_PM_DECODE", "collector");
    }
    if as_nobody {
        cmd.env("SUDO_UID", "65534").env("SUDO_GID", "65534");
    }
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let me = child.id();
    let mut decoders = Vec::new();
    let began = Instant::now();
    let mut killed = false;
    let watcher = std::thread::spawn(move || {
        // Our ghostprof's decoder children, by their argument.
        while began.elapsed() < Duration::from_secs(120) {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(|v| v.trim().to_string());
                if ppid.as_deref() == Some(&me.to_string())
                    && cmdline.windows(pmdecode::DECODER_ARG.len()).any(|w| w == pmdecode::DECODER_ARG.as_bytes())
                {
                    // The last status seen: a decoder drops its privileges itself, after exec.
                    match decoders.iter_mut().find(|(p, _)| *p == pid) {
                        Some(d) => d.1 = status,
                        None => decoders.push((pid, status)),
                    }
                    if let Some(after) = kill_decoder_after {
                        if !killed && began.elapsed() >= after {
                            // SAFETY: the decoder of the ghostprof this test started.
                            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                            killed = true;
                        }
                    }
                }
            }
            if !Path::new(&format!("/proc/{me}")).exists() || zombie_or_gone(me) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        decoders
    });
    let output = child.wait_with_output().unwrap();
    let decoders = watcher.join().unwrap();
    let truth = serde_json::from_str(&std::fs::read_to_string(out.join("truth-rank0.json")).unwrap()).unwrap();
    let evaluations = std::fs::read_dir(&evals)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().strip_prefix("evaluate-")?.parse().ok()?;
            Some((pid, std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()?))
        })
        .collect();
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into(),
        stderr: String::from_utf8_lossy(&output.stderr).into(),
        trace,
        truth,
        evaluations,
        decoders,
    }
}

/// (PM samples, compute.useful ns, window ns) of the run's one process over the truth's window.
fn pm_figures(run: &Run) -> (usize, f64, f64) {
    use ghostprof::analyze::{account, AccountOptions, Window};
    let reader = ghostprof::trace::TraceReader::open(&run.trace).unwrap();
    let mut names = std::collections::HashMap::new();
    reader.for_each_chunk(|c| names.extend(c.strings.iter().cloned())).unwrap();
    let batch = reader.read_all().unwrap();
    let pid = run.truth["pid"].as_u64().unwrap() as u32;
    let w = (run.truth["window"]["start_ns"].as_u64().unwrap(), run.truth["window"]["end_ns"].as_u64().unwrap());
    let mut opts = AccountOptions::default();
    opts.windows.insert(pid, Window::new(w.0, w.1));
    let accounts = account(&batch, &names, &opts);
    let acc = accounts.iter().find(|a| a.pid == pid).unwrap();
    let samples = batch
        .samples
        .iter()
        .filter(|s| s.pid == pid && s.metric == ghostprof::trace::Metric::TensorActive as u32)
        .count();
    (samples, acc.categories.get("compute.useful") as f64, acc.window_ns() as f64)
}

/// (a), (b), (c): the same job recorded with evaluation in the job and in ghostprof's decoder
/// (the job run as `nobody`): both recover the truth's `compute.useful` within 2 % of the
/// window with full sample coverage; the job makes one evaluate call per sample in job mode
/// and none in collector mode; the decoder runs as the job's uid, gid and groups, without
/// capabilities or new privileges, and `record` says what it cost ghostprof.
#[test]
#[ignore = "root tier: records gpusim jobs with eBPF, one as another user"]
fn root_pm_decode_in_ghostprof_gives_the_jobs_figures_and_costs_it_nothing() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let (a, b) = (tmpdir(), tmpdir());
    let job = record(a.path(), 100, true, false, None);
    let ours = record(b.path(), 100, false, true, None);
    for (name, run) in [("job", &job), ("collector", &ours)] {
        assert!(run.status.success(), "{name}: {:?} {}", run.status, run.stderr);
        let (samples, useful, window) = pm_figures(run);
        let truth_useful = run.truth["devices"][0]["categories"]["compute.useful"].as_f64().unwrap();
        let err = (useful - truth_useful).abs() / window;
        eprintln!(
            "{name}: {samples} PM samples, useful {:.3} ms vs truth {:.3} ms ({:.3}% of the window), evaluations {:?}",
            useful / 1e6,
            truth_useful / 1e6,
            err * 100.0,
            run.evaluations
        );
        assert!(err < 0.02, "{name}: compute.useful off by {:.2}% of the window", err * 100.0);
        // 100 µs samples over the window, at least 90 % of them.
        assert!(samples as f64 >= 0.9 * window / 100_000.0, "{name}: {samples} samples in {window} ns");
    }
    let job_pid = job.truth["pid"].as_u64().unwrap() as u32;
    let (job_samples, _, _) = pm_figures(&job);
    let in_job = job.evaluations.iter().find(|e| e.0 == job_pid).map_or(0, |e| e.1);
    assert!(in_job as usize >= job_samples, "job mode: {in_job} evaluations for {job_samples} samples");
    let our_pid = ours.truth["pid"].as_u64().unwrap() as u32;
    assert!(
        !ours.evaluations.iter().any(|e| e.0 == our_pid),
        "collector mode evaluated in the job: {:?}",
        ours.evaluations
    );
    assert!(job.decoders.is_empty(), "job mode started a decoder");
    assert_eq!(ours.decoders.len(), 1, "one decoder for the job's libcupti and uid");
    let status = &ours.decoders[0].1;
    let field =
        |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").split_whitespace().collect::<Vec<_>>();
    assert_eq!(field("Uid:"), vec!["65534"; 4], "{status}");
    assert_eq!(field("Gid:"), vec!["65534"; 4], "{status}");
    assert_eq!(field("Groups:"), vec!["65534"], "{status}");
    for k in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(k), vec!["0000000000000000"], "{k}");
    }
    assert_eq!(field("NoNewPrivs:"), vec!["1"]);
    let all = format!("{}{}", ours.stdout, ours.stderr);
    assert!(all.contains("PM samples evaluated by ghostprof's decoder, not in the job"), "{all}");
    assert!(!all.contains("PM sampling stopped"), "{all}");
}

/// (e) A decoder killed mid-run: PM stops for the job with a note in the trace, the samples
/// before stay, `record` finishes normally, the job too.
#[test]
#[ignore = "root tier: records a gpusim job with eBPF"]
fn root_pm_decoder_that_dies_stops_pm_with_a_note() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let run = record(dir.path(), 250, false, false, Some(Duration::from_millis(1_500)));
    assert!(run.status.success(), "{:?} {}", run.status, run.stderr);
    assert_eq!(run.decoders.len(), 1);
    let notes = ghostprof::trace::TraceReader::open(&run.trace).unwrap().notes().unwrap();
    assert!(
        notes.iter().any(|n| n.contains("PM sampling stopped: the decoder died") && n.contains("PM samples end here")),
        "{notes:?}"
    );
    let (samples, _, window) = pm_figures(&run);
    assert!(samples > 0, "the samples before the decoder died are kept");
    assert!((samples as f64) < 0.9 * window / 100_000.0, "{samples} samples: PM went on after the decoder died");
    assert_eq!(run.truth["steps"].as_u64(), Some(250), "the job ran all its steps");
}

/// A hostile job's PM parts through a real ring and the collector: parts cut short, out of
/// place, over the blob cap, an image of a session whose setup never came, a setup with one
/// metric, a blob continued as another: each refused and counted (`malformed`,
/// `pm_refused.job`), no decoder started, no sample recorded.
#[test]
fn hostile_pm_parts_are_refused_and_counted() {
    use ghostprof::collect::cupti::CuptiCollector;
    use ghostprof::pipeline::{Pipeline, PipelineOptions};
    use ghostprof::trace::{Source, TraceInfo, TraceReader};
    let dir = tmpdir();
    let pid = std::process::id();
    let mut ring =
        ghostprof_ring::Producer::create(&dir.path().join(format!("ghostprof-{pid}.ring")), 1 << 20).unwrap();
    let trace = dir.path().join("t.gptrace");
    let pipeline = Pipeline::create(&trace, false, &TraceInfo::default(), PipelineOptions::default()).unwrap();
    let mut out = pipeline.producer(Source::Cupti);
    let mut collector = CuptiCollector::new(dir.path(), false);
    collector.scan(&[pid]);
    assert_eq!(collector.stats.rings, 1);
    let part = |session: u32, seq: u32, total: u32, offset: u32, bytes: &[u8]| {
        let mut p = Vec::new();
        for v in [session, seq, total, offset] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p.extend_from_slice(bytes);
        p
    };
    let one_metric =
        wire::PmSetup { interval_ns: 1, chip: b"GH100", availability: b"x", metrics: vec![b"m".as_slice()] }.encode();
    let image = wire::PmImage::encode(&[(1, 2)], &[1, 2, 3]);
    let hostile: Vec<Vec<u8>> = vec![
        vec![0u8; 15],                                          // shorter than the header
        part(1, 0, 100, 50, &[0; 10]),                          // a middle part with no start
        part(1, 0, 10, 0, &[0; 11]),                            // more bytes than its total
        part(1, 0, (wire::PM_BLOB_MAX + 1) as u32, 0, &[0; 8]), // over the blob cap
        part(2, 1, image.len() as u32, 0, &image),              // an image of a session with no setup
        part(3, 0, one_metric.len() as u32, 0, &one_metric),    // a setup with one metric
        part(4, 0, 20, 0, &[0; 10]),                            // a blob started (taken)...
        part(4, 1, 20, 10, &[0; 10]),                           // ...and continued as another one
        part(4, 0, 20, 10, &[0; 10]),                           // its own rest, after that: gone
    ];
    for p in &hostile {
        assert!(ring.push(wire::PM_PART, p));
    }
    collector.drain(&mut out);
    let stats = collector.stats.clone();
    // Every part but the one start: 8 refused, each once as malformed and once as the job's.
    assert_eq!(stats.malformed, 8, "{stats:?}");
    assert_eq!(stats.pm_refused.job, 8, "{stats:?}");
    assert!(collector.pm_decoders().is_empty());
    drop(out);
    pipeline.finish().unwrap();
    let batch = TraceReader::open(&trace).unwrap().read_all().unwrap();
    assert!(batch.samples.is_empty());
}

/// A C file compiled with `cc` into `out` (extra arguments after); None (and a message) when
/// there is no C compiler.
fn cc(dir: &Path, name: &str, source: &str, args: &[&str]) -> Option<PathBuf> {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipped: no C compiler (cc) to build the test's {name}");
        return None;
    }
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let built = Command::new("cc").args(args).arg("-o").arg(&out).arg(&src).output().unwrap();
    assert!(built.status.success(), "cc {name}: {}", String::from_utf8_lossy(&built.stderr));
    Some(out)
}

/// A job that maps the library it is given (dlopen) and waits.
const JOB_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    void *h = argc > 1 ? dlopen(argv[1], RTLD_NOW | RTLD_LOCAL) : 0;
    printf("%s\n", h ? "loaded" : dlerror());
    fflush(stdout);
    for (;;) pause();
}
"#;

/// A child killed when dropped (a failed assertion too); for `unshare --kill-child`, the job
/// goes with it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        crate::util::kill_tree(&mut self.0);
    }
}

/// A job in its own pid, mount (private /tmp) and network namespaces that maps `lib` as
/// `/tmp/<name>` (copied into its /tmp) and waits; (unshare's process, the job's pid).
fn job_in_namespaces(dir: &Path, lib: &Path, name: &str) -> Option<(KillOnDrop, u32)> {
    let job = cc(dir, "job", JOB_C, &[])?;
    // The files are read through descriptors opened before /tmp is replaced.
    let script = format!(
        "exec 3<\"$0\" 4<\"$1\"; mount -t tmpfs tmpfs /tmp && cat <&3 >/tmp/{name} && cat <&4 >/tmp/job \
         && chmod +x /tmp/job && exec /tmp/job /tmp/{name}"
    );
    let mut child = KillOnDrop(
        Command::new("unshare")
            .args([
                "--pid",
                "--mount",
                "--net",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .arg(lib)
            .arg(&job)
            .env("GP_HOSTILE_JOB", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.0.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "loaded", "the job maps {name}");
    let ppid = format!("PPid:\t{}", child.0.id());
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| s.lines().any(|l| l == ppid)))
        .expect("the job under unshare");
    Some((child, pid))
}

fn ns_of(pid: &str, name: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}")).unwrap().display().to_string()
}

/// A job in its own mount, network and pid namespaces: its decoder lives in them (its
/// `/proc/PID/ns/{mnt,net,pid,ipc,uts}` are the job's, not ghostprof's) and still evaluates.
#[test]
#[ignore = "root tier: namespaces, and the decoder enters the job's"]
fn root_pm_decoder_lives_in_the_jobs_namespaces() {
    assert!(is_root(), "run the root tier as root");
    let dir = tmpdir();
    let lib = crate::gpusim::built().lib_dir.join("libcupti.so.12");
    let Some((_unshare, job)) = job_in_namespaces(dir.path(), &lib, "libcupti.so.12") else { return };
    let mut d = Decoders::with_exe(ghostprof_exe());
    let route = d.setup(job, &setup_blob()).expect("a decoder for the job");
    let image = gpusim_image(&[(1_000, 51_000, 10_000.0, 25_000.0)], 4);
    assert_eq!(d.eval(route, job, 1, 2, 0, vec![(1_000, 51_000)], image), Ok(true));
    match wait_outcome(&mut d) {
        Outcome::Values { values, .. } => assert_eq!(values.len(), 2),
        o => panic!("{o:?}"),
    }
    let decoder = d.processes()[0].0.to_string();
    let job = job.to_string();
    for name in ["mnt", "net", "pid", "ipc", "uts"] {
        assert_eq!(ns_of(&decoder, name), ns_of(&job, name), "the decoder's {name} namespace is the job's");
    }
    for name in ["mnt", "net", "pid"] {
        assert_ne!(ns_of(&decoder, name), ns_of("self", name), "the decoder's {name} namespace is ghostprof's");
    }
    d.close();
}

/// A hostile libcupti: its constructor, run by the decoder, tries to reach outside the job.
const HOSTILE_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
__attribute__((constructor)) static void hostile(void) {
    if (getenv("GP_HOSTILE_JOB")) return; /* the job maps it too */
    char line[256];
    int n = 0;
    int fd = open(HOST_FILE, O_WRONLY | O_CREAT | O_EXCL, 0644);
    n += snprintf(line + n, sizeof line - n, "file=%d ", fd >= 0 ? 0 : errno);
    int c = -1, s = socket(AF_INET, SOCK_STREAM, 0);
    if (s >= 0) {
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(PORT);
        a.sin_addr.s_addr = htonl(0x7f000001);
        c = connect(s, (struct sockaddr *)&a, sizeof a);
    }
    n += snprintf(line + n, sizeof line - n, "connect=%d ", c == 0 ? 0 : errno);
    int u = unshare(CLONE_NEWUSER);
    n += snprintf(line + n, sizeof line - n, "unshare=%d\n", u == 0 ? 0 : errno);
    int r = open(REPORT, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (r >= 0) { write(r, line, n); close(r); }
}
"#;

/// A job in its own namespaces maps a hostile `libcupti.so.13`; its decoder runs the library's
/// constructor, which tries to create a file in a host directory the job cannot see, connect
/// to a listener on the host's 127.0.0.1 and create a user namespace: all three fail (no file,
/// no connection, unshare refused), as the library's own report (in the job's /tmp) says.
#[test]
#[ignore = "root tier: namespaces, and the decoder enters the job's"]
fn root_pm_decoder_confines_a_hostile_libcupti() {
    assert!(is_root(), "run the root tier as root");
    let dir = tmpdir();
    let host_dir = tmpdir();
    let host_file = host_dir.path().join("written-by-the-job");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let report = format!("/tmp/gp-hostile-report-{}", std::process::id());
    let defines = [
        format!("-DHOST_FILE=\"{}\"", host_file.display()),
        format!("-DPORT={port}"),
        format!("-DREPORT=\"{report}\""),
    ];
    let mut args = vec!["-shared", "-fPIC"];
    args.extend(defines.iter().map(String::as_str));
    let Some(lib) = cc(dir.path(), "libcupti.so.13", HOSTILE_C, &args) else { return };
    let Some((unshare, job)) = job_in_namespaces(dir.path(), &lib, "libcupti.so.13") else { return };
    let mut d = Decoders::with_exe(ghostprof_exe());
    let _ = d.setup(job, &setup_blob()).expect("a decoder for the job");
    match wait_outcome(&mut d) {
        Outcome::Failed { why, .. } => assert!(why.contains("no cuptiProfilerHostInitialize"), "{why}"),
        o => panic!("{o:?}"),
    }
    d.close();
    // The report is in the job's /tmp (in ghostprof's /tmp when the decoder ran outside).
    let in_job = std::fs::read_to_string(format!("/proc/{job}/root{report}"));
    let on_host = std::fs::read_to_string(&report);
    let _ = std::fs::remove_file(&report);
    drop(unshare);
    let text = in_job.as_ref().or(on_host.as_ref()).expect("the library's constructor ran and reported").clone();
    eprintln!("the hostile library's report: {text}");
    assert!(on_host.is_err(), "the decoder wrote to ghostprof's /tmp: {text}");
    assert!(!host_file.exists(), "the library created a file in a host directory: {text}");
    assert!(listener.accept().is_err(), "the library connected to the host's 127.0.0.1: {text}");
    let field = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k)).map(|v| v.parse::<i32>().unwrap());
    assert!(field("file=").is_some_and(|e| e != 0), "{text}");
    assert!(field("connect=").is_some_and(|e| e != 0), "{text}");
    assert_eq!(field("unshare="), Some(libc::EPERM), "unshare(CLONE_NEWUSER) refused: {text}");
}

/// An attach session's last PM tick: the library decodes it after ghostprof cleared the ring's
/// control word, and shipped it only while the word was set, so up to 50 ms of samples before
/// the end were lost in collector mode (gaps of 5.0 and 15.5 ms, 39.1 and 0.0 ms seen). Now the
/// PM samples reach the last kernels: attached 1 s to each of two jobs, the last tensor sample
/// is within 10 ms of the last kernel's end (0.0 and 0.0 ms, 0.0 and 2.9 ms seen; the old code
/// passes with a chance of about (10/50)², its gap being the tick's phase).
#[test]
#[ignore = "root tier: attaches to a gpusim job (ptrace, eBPF)"]
fn root_attach_ships_the_last_partial_pm_tick() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let dir = tmpdir();
    let mut gaps = Vec::new();
    // One attach per job: a second attach to the same job has ended PM 0.3-0.9 s short of its
    // last kernels, with and without this fix (not understood yet; not this test's subject).
    for round in 0..2 {
        let cmd = crate::gpusim::train_command("balanced", 1, 30_000, &dir.path().join(format!("truth-{round}")));
        let mut job = KillOnDrop(
            Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(800));
        let trace = dir.path().join(format!("attach-{round}.gptrace"));
        let out = Command::new(ghostprof_exe())
            .args(["attach", "--quiet", "--duration", "1s", "--pid", &job.0.id().to_string(), "-o"])
            .arg(&trace)
            .env("GHOSTPROF_INJECT_LIB", crate::gpusim::built().build_dir.join("libghostprof_inject.so"))
            .env("GHOSTPROF_PM_DECODE", "collector")
            .output()
            .unwrap();
        assert!(out.status.success(), "attach {round}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(job.0.try_wait().unwrap().is_none(), "the job outlived attach {round}");
        let batch = ghostprof::trace::TraceReader::open(&trace).unwrap().read_all().unwrap();
        let last_kernel = batch.kernels.iter().map(|k| k.end_ns).max().expect("kernels");
        let last_sample = batch
            .samples
            .iter()
            .filter(|s| s.metric == ghostprof::trace::Metric::TensorActive as u32)
            .map(|s| s.time_ns)
            .max()
            .expect("PM samples");
        gaps.push(last_kernel.saturating_sub(last_sample) as f64 / 1e6);
    }
    eprintln!("last kernel end - last PM sample, ms: {gaps:?}");
    assert!(gaps.iter().all(|&g| g < 10.0), "PM samples end before the last kernels: {gaps:?} ms");
}
