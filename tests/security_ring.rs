//! The CUPTI rings as an attack surface (issue 16): a job cannot make root ghostprof read
//! another user's ring, open a file of its choice read-write, map a huge ring, die of SIGBUS,
//! or write through a planted temporary name; stale rings and ring directories are swept.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ghostprof::collect::cupti::CuptiCollector;
use ghostprof_ring::{Header, Producer};

use crate::util::*;

/// A live process to name rings after (killed when dropped).
struct Proc(Child);

impl Proc {
    fn sleeper(uid: Option<u32>) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new("sleep");
        c.arg("60");
        if let Some(uid) = uid {
            c.uid(uid).gid(uid);
        }
        Proc(c.spawn().expect("spawn sleep"))
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pid that no process has (a child that already exited and was reaped).
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// A valid ring at `path` with a few records in it.
fn make_ring(path: &Path) -> Producer {
    let mut p = Producer::create(path, 4096).unwrap();
    for i in 0..4u8 {
        assert!(p.push(1, &[i; 24]));
    }
    p
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

/// A ring's `enabled` and `consumer_pid` words: set by any consumer that opened it.
fn switched_on(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    let at = |off: usize| u32::from_ne_bytes(b[off..off + 4].try_into().unwrap());
    (at(std::mem::offset_of!(Header, enabled)), at(std::mem::offset_of!(Header, consumer_pid)))
}

fn notes_about(c: &CuptiCollector, pid: u32) -> Vec<String> {
    c.notes.iter().filter(|n| n.contains(&format!("process {pid}"))).cloned().collect()
}

/// The two ways rings are looked for: `record` (every traced pid's ring in its directory) and
/// `attach` (the rings of the traced pids).
fn scan_both(dir: &Path, pids: &[u32]) -> Vec<CuptiCollector> {
    let mut record = CuptiCollector::new(dir, true);
    record.only_traced();
    record.add_traced(pids);
    record.scan_dir();
    let mut attach = CuptiCollector::new(dir, false);
    attach.scan(pids);
    vec![record, attach]
}

#[test]
#[ignore = "root tier: needs root (chown to another uid, CAP_BPF for record)"]
fn root_ring_symlinks_to_another_users_ring_or_a_root_file_are_refused() {
    assert!(is_root(), "run the root tier as root");
    let (rings, elsewhere) = (tmpdir(), tmpdir());
    // Another user's live ring, and a root-owned 0600 file (a valid ring header, so a consumer
    // that opened it would write its control words into it).
    let victim = elsewhere.path().join("ghostprof-999999.ring");
    let _victim_producer = make_ring(&victim);
    chown(&victim, 65534);
    let root_file = elsewhere.path().join("secret");
    let _root_producer = make_ring(&root_file);
    assert_eq!(std::fs::metadata(&root_file).unwrap().permissions().mode() & 0o777, 0o600);
    std::thread::sleep(Duration::from_millis(20));
    let mtime = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec())
    };
    let (root_bytes, root_mtime) = (std::fs::read(&root_file).unwrap(), mtime(&root_file));
    let (job1, job2) = (Proc::sleeper(None), Proc::sleeper(None));
    std::os::unix::fs::symlink(&victim, rings.path().join(format!("ghostprof-{}.ring", job1.pid()))).unwrap();
    std::os::unix::fs::symlink(&root_file, rings.path().join(format!("ghostprof-{}.ring", job2.pid()))).unwrap();
    for c in scan_both(rings.path(), &[job1.pid(), job2.pid()]) {
        assert_eq!(c.stats.rings, 0, "nothing opened: {:?}", c.notes);
        for pid in [job1.pid(), job2.pid()] {
            let n = notes_about(&c, pid);
            assert_eq!(n.len(), 1, "{:?}", c.notes);
            assert!(n[0].contains("refused: a symbolic link"), "{n:?}");
        }
        assert_eq!(c.refused_rings(), 2);
    }
    assert_eq!(switched_on(&victim), (0, 0), "the other user's ring was not opened");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(std::fs::read(&root_file).unwrap(), root_bytes, "the root file's bytes");
    assert_eq!(mtime(&root_file), root_mtime, "the root file's mtime");
}

#[test]
#[ignore = "root tier: needs root (chown to another uid, CAP_BPF for record)"]
fn root_ring_owned_by_another_uid_than_its_process_is_refused() {
    assert!(is_root(), "run the root tier as root");
    let rings = tmpdir();
    // A root process whose "ring" belongs to nobody, and a nobody process whose ring is root's.
    let (root_job, nobody_job) = (Proc::sleeper(None), Proc::sleeper(Some(65534)));
    let ring_of = |pid: u32| rings.path().join(format!("ghostprof-{pid}.ring"));
    let _p1 = make_ring(&ring_of(root_job.pid()));
    chown(&ring_of(root_job.pid()), 65534);
    let _p2 = make_ring(&ring_of(nobody_job.pid()));
    for c in scan_both(rings.path(), &[root_job.pid(), nobody_job.pid()]) {
        assert_eq!(c.stats.rings, 0, "{:?}", c.notes);
        let n = notes_about(&c, root_job.pid());
        assert!(n.len() == 1 && n[0].contains("refused: owned by uid 65534"), "{n:?}");
        let n = notes_about(&c, nobody_job.pid());
        assert!(n.len() == 1 && n[0].contains("refused: owned by uid 0"), "{n:?}");
        assert_eq!(c.refused_rings(), 2);
    }
    assert_eq!(switched_on(&ring_of(root_job.pid())), (0, 0));
    assert_eq!(switched_on(&ring_of(nobody_job.pid())), (0, 0));
    // Each process's own ring is taken.
    chown(&ring_of(root_job.pid()), 0);
    chown(&ring_of(nobody_job.pid()), 65534);
    let mut attach = CuptiCollector::new(rings.path(), false);
    attach.scan(&[root_job.pid(), nobody_job.pid()]);
    assert_eq!((attach.stats.rings, attach.refused_rings()), (2, 0), "{:?}", attach.notes);
}

#[test]
fn ring_hard_links_and_fifos_are_refused_by_the_collector() {
    let rings = tmpdir();
    let (a, b, f) = (Proc::sleeper(None), Proc::sleeper(None), Proc::sleeper(None));
    let ring_of = |pid: u32| rings.path().join(format!("ghostprof-{pid}.ring"));
    let _p = make_ring(&ring_of(a.pid()));
    std::fs::hard_link(ring_of(a.pid()), ring_of(b.pid())).unwrap();
    let fifo = std::ffi::CString::new(ring_of(f.pid()).into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid C path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let t = Instant::now();
    for c in scan_both(rings.path(), &[a.pid(), b.pid(), f.pid()]) {
        assert_eq!(c.stats.rings, 0, "{:?}", c.notes);
        assert!(notes_about(&c, a.pid())[0].contains("refused: 2 hard links"), "{:?}", c.notes);
        assert!(notes_about(&c, b.pid())[0].contains("refused: 2 hard links"), "{:?}", c.notes);
        assert!(notes_about(&c, f.pid())[0].contains("refused: not a regular file"), "{:?}", c.notes);
        assert_eq!(c.refused_rings(), 3);
    }
    assert!(t.elapsed() < Duration::from_secs(2), "no hang on the FIFO: {:?}", t.elapsed());
    assert_eq!(switched_on(&ring_of(a.pid())), (0, 0));
}

#[test]
fn ring_directory_scan_takes_only_the_traced_pids() {
    let rings = tmpdir();
    let (traced, other) = (Proc::sleeper(None), Proc::sleeper(None));
    let ring_of = |pid: u32| rings.path().join(format!("ghostprof-{pid}.ring"));
    let (_p1, _p2) = (make_ring(&ring_of(traced.pid())), make_ring(&ring_of(other.pid())));
    let mut c = CuptiCollector::new(rings.path(), false);
    c.only_traced();
    c.add_traced(&[traced.pid()]);
    c.scan_dir();
    c.scan_dir();
    assert_eq!((c.stats.rings, c.refused_rings()), (1, 1), "{:?}", c.notes);
    let n = notes_about(&c, other.pid());
    assert!(n.len() == 1 && n[0].contains("not a process of the traced job"), "{n:?}");
    assert_eq!(switched_on(&ring_of(other.pid())), (0, 0), "the untraced ring was not opened");
    assert_eq!(switched_on(&ring_of(traced.pid())).0, 1);
}

/// VmRSS of this process.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn ring_of_1_gib_is_refused_by_the_collector_with_a_note() {
    use std::os::unix::fs::FileExt;
    let rings = tmpdir();
    let job = Proc::sleeper(None);
    let path = rings.path().join(format!("ghostprof-{}.ring", job.pid()));
    let _p = make_ring(&path);
    let capacity: u64 = 1 << 30;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(4096 + capacity).unwrap();
    f.write_all_at(&capacity.to_ne_bytes(), std::mem::offset_of!(Header, capacity) as u64).unwrap();
    f.write_all_at(&(capacity - 8).to_ne_bytes(), std::mem::offset_of!(Header, head) as u64).unwrap();
    let before = rss();
    let mut c = CuptiCollector::new(rings.path(), false);
    c.scan(&[job.pid()]);
    c.scan(&[job.pid()]);
    let grew = rss().saturating_sub(before);
    eprintln!("1 GiB ring refused; RSS grew by {grew} bytes");
    assert_eq!((c.stats.rings, c.refused_rings()), (0, 1), "{:?}", c.notes);
    let n = notes_about(&c, job.pid());
    assert!(n.len() == 1 && n[0].contains("refused: 1073741824 data bytes, more than the 67108864"), "{n:?}");
    assert!(grew < 16 << 20, "RSS grew by {grew} bytes");
}

#[test]
fn ring_directory_sweep_removes_only_dead_sessions_directories() {
    let base = tmpdir();
    let (dead, live) = (dead_pid(), Proc::sleeper(None));
    let mk = |name: String| {
        let d = base.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(d.join(format!("ghostprof-{dead}.ring")), vec![0u8; 8192]).unwrap();
        d
    };
    let stale = mk(format!("ghostprof-{dead}-123456-0"));
    // A link inside the stale directory to a file elsewhere: removed itself, never followed.
    let keep = tmpdir();
    std::fs::write(keep.path().join("precious"), b"x").unwrap();
    std::os::unix::fs::symlink(keep.path(), stale.join("link")).unwrap();
    let alive = mk(format!("ghostprof-{}-123456-0", live.pid()));
    // A symlink named like a dead session's directory: not followed, not removed.
    let planted = base.path().join(format!("ghostprof-{dead}-1-1"));
    std::os::unix::fs::symlink(keep.path(), &planted).unwrap();
    let removed = ghostprof::record::session::sweep_stale_ring_dirs(base.path());
    assert_eq!(removed, 1);
    assert!(!stale.exists(), "the dead session's directory is gone");
    assert!(alive.join(format!("ghostprof-{dead}.ring")).exists(), "a live session's directory is kept");
    assert!(std::fs::symlink_metadata(&planted).is_ok());
    assert_eq!(std::fs::read(keep.path().join("precious")).unwrap(), b"x");
}

/// The `.ring` files in `dir`.
fn rings_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".ring") || n.ends_with(".tmp"))
        .collect();
    v.sort();
    v
}

#[test]
fn ring_library_sweeps_stale_rings_and_removes_its_own_at_exit() {
    let built = crate::gpusim::built();
    let rings = tmpdir();
    let (dead, dead2, live) = (dead_pid(), dead_pid(), Proc::sleeper(None));
    let stale = rings.path().join(format!("ghostprof-{dead}.ring"));
    let _s = make_ring(&stale);
    let stale_tmp = rings.path().join(format!("ghostprof-{dead}.tmp"));
    std::fs::write(&stale_tmp, b"old temp file").unwrap();
    let live_ring = rings.path().join(format!("ghostprof-{}.ring", live.pid()));
    let _l = make_ring(&live_ring);
    let elsewhere = tmpdir();
    let victim = elsewhere.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let planted = rings.path().join(format!("ghostprof-{dead2}.ring"));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let out = rings.path().join("truth");
    let status = Command::new(built.build_dir.join("gpusim-train"))
        .args(["--scenario", "balanced", "--ranks", "1", "--steps", "5", "--out"])
        .arg(&out)
        .arg("--lib-dir")
        .arg(&built.lib_dir)
        .env("CUDA_INJECTION64_PATH", built.build_dir.join("libghostprof_inject.so"))
        .env("GHOSTPROF_RING_DIR", rings.path())
        .env_remove("GHOSTPROF_ENABLE")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let mut want = vec![format!("ghostprof-{}.ring", live.pid()), format!("ghostprof-{dead2}.ring")];
    want.sort();
    assert_eq!(rings_in(rings.path()), want, "the dead pid's ring and temp file and the job's own ring are gone");
    assert!(std::fs::symlink_metadata(&planted).unwrap().file_type().is_symlink(), "a symlink is not swept");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(switched_on(&live_ring), (0, 0));
}

#[test]
#[ignore = "root tier: needs root (chown to another uid, CAP_BPF for record)"]
fn root_ring_producer_refuses_a_final_name_held_by_another_user() {
    assert!(is_root(), "run the root tier as root");
    let dir = tmpdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let path = dir.path().join("ghostprof-4242.ring");
    std::fs::write(&path, b"someone else's").unwrap();
    chown(&path, 65534);
    let e = Producer::create(&path, 4096).err().expect("refused").to_string();
    assert!(e.contains("belongs to uid 65534"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    assert_eq!(rings_in(dir.path()), vec!["ghostprof-4242.ring".to_string()], "no temporary file left");
}

/// The processes under `pid` (and itself) that map a ghostprof ring: (pid, map_files entry).
fn ring_mappings(pid: u32) -> Vec<(u32, PathBuf)> {
    let mut out = Vec::new();
    for p in ghostprof::record::attach::process_tree(pid) {
        let maps = std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap_or_default();
        for l in maps.lines() {
            if l.contains("/ghostprof-") && l.contains(".ring") {
                let range = l.split_whitespace().next().unwrap();
                out.push((p, PathBuf::from(format!("/proc/{p}/map_files/{range}"))));
            }
        }
    }
    out
}

/// The job truncates its ring while `record` has it mapped. The old consumer died of SIGBUS
/// (exit 135, trace unfinalized); now that ring's timeline ends with a note, the session goes
/// on, finalizes, and exits with the job's status. Also: a killed session's ring directory is
/// swept at this start, a live one's is kept.
#[test]
#[ignore = "root tier: needs root (chown to another uid, CAP_BPF for record)"]
fn root_ring_shrunk_mid_record_ends_its_timeline_and_the_session_finalizes() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let (dead, live) = (dead_pid(), Proc::sleeper(None));
    let shm = Path::new("/dev/shm");
    let stale = shm.join(format!("ghostprof-{dead}-424242-0"));
    let alive = shm.join(format!("ghostprof-{}-424242-0", live.pid()));
    for d in [&stale, &alive] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(d.join("ghostprof-1.ring"), vec![0u8; 4096]).unwrap();
    }
    let dir = tmpdir();
    let trace = dir.path().join("shrunk.gptrace");
    let record = Command::new(env!("CARGO_BIN_EXE_ghostprof"))
        .arg("record")
        .arg("--lib-dir")
        .arg(&built.lib_dir)
        .arg("-o")
        .arg(&trace)
        .arg("--")
        .args(crate::gpusim::train_command("balanced", 1, 300, &dir.path().join("truth")))
        .env("GHOSTPROF_INJECT_LIB", built.build_dir.join("libghostprof_inject.so"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let gp = record.id();
    // Once ghostprof has opened the ring (it unlinks it then), the job truncates it.
    let t0 = Instant::now();
    let (job, entry) = loop {
        let maps = ring_mappings(gp);
        if let Some((p, e)) = maps.iter().find(|(p, _)| *p != gp) {
            if maps.iter().any(|(p, _)| *p == gp) {
                break (*p, e.clone());
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no ring mapped by both sides");
        std::thread::sleep(Duration::from_millis(5));
    };
    // The job stops pushing while its ring is short (its own writes would fault too), then
    // grows it back (zero pages) and runs on.
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&entry).unwrap();
    let len = file.metadata().unwrap().len();
    // SAFETY: signals to our own test job.
    unsafe { libc::kill(job as i32, libc::SIGSTOP) };
    file.set_len(0).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    file.set_len(len).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(job as i32, libc::SIGCONT) };
    let out = record.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "ghostprof exits with the job's status: {:?}\n{stderr}", out.status);
    let reader = ghostprof::trace::TraceReader::open(&trace).expect("a finalized trace");
    let notes = reader.notes().unwrap();
    let note = format!("process {job}: shrank its CUPTI ring: its device timeline ends here");
    assert_eq!(notes.iter().filter(|n| **n == note).count(), 1, "{notes:?}");
    let b = reader.read_all().unwrap();
    assert!(!b.launches.is_empty(), "the eBPF timeline goes on");
    assert!(!stale.exists(), "the killed session's ring directory was swept");
    assert!(alive.exists(), "a live session's ring directory is kept");
    let _ = std::fs::remove_dir_all(&alive);
}

/// `attach` to a dormant gpusim job whose ring (in the ring directory given as
/// `AttachConfig::ring_dir`) belongs to another uid than the process: refused with a note, never
/// switched on; the eBPF timeline is recorded and the job ends normally.
#[test]
#[ignore = "root tier: needs root (chown to another uid, CAP_BPF for record)"]
fn root_ring_attach_refuses_a_ring_owned_by_another_uid() {
    use ghostprof::record::attach::{attach, AttachConfig};
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let built = crate::gpusim::built();
    let dir = tmpdir();
    let rings = dir.path().join("rings");
    std::fs::create_dir(&rings).unwrap();
    let cmd = crate::gpusim::train_command("balanced", 1, 600, &dir.path().join("truth"));
    let mut job = Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("CUDA_INJECTION64_PATH", built.build_dir.join("libghostprof_inject.so"))
        .env("GHOSTPROF_RING_DIR", &rings)
        .env_remove("GHOSTPROF_ENABLE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let ring = loop {
        if let Some(r) = rings_in(&rings).into_iter().find(|n| n.ends_with(".ring")) {
            break rings.join(r);
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the dormant library made no ring");
        std::thread::sleep(Duration::from_millis(5));
    };
    chown(&ring, 65534);
    // Held open: the library removes its ring when the job exits.
    let held = std::fs::File::open(&ring).unwrap();
    let ring_pid = ghostprof_ring::ring_file_pid(&ring.file_name().unwrap().to_string_lossy()).unwrap();
    let trace = dir.path().join("attach.gptrace");
    let mut cfg = AttachConfig::new(job.id(), trace.clone());
    cfg.ring_dir = rings.clone();
    cfg.max_duration = Some(Duration::from_millis(800));
    let summary = attach(&cfg, &std::sync::atomic::AtomicBool::new(false), &mut |_| {}).expect("attach");
    let mut header = [0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut header, 0).unwrap();
    // A detach clears the control words; head and tail stay: the library never collected.
    let word = |off: usize| u64::from_ne_bytes(header[off..off + 8].try_into().unwrap());
    let (head, tail) = (word(std::mem::offset_of!(Header, head)), word(std::mem::offset_of!(Header, tail)));
    assert_eq!((head, tail), (0, 0), "the ring was never switched on");
    assert!(job.wait().unwrap().success());
    assert_eq!(summary.cupti.rings, 0, "{:?}", summary.notes);
    let want =
        format!("cannot read the CUPTI ring of process {ring_pid}: {}: refused: owned by uid 65534", ring.display());
    assert_eq!(summary.notes.iter().filter(|n| n.starts_with(&want)).count(), 1, "{:?}", summary.notes);
    let b = ghostprof::trace::TraceReader::open(&trace).unwrap().read_all().unwrap();
    assert!(b.kernels.is_empty(), "no device records from the refused ring");
    assert!(!b.launches.is_empty(), "the eBPF timeline is recorded");
}
