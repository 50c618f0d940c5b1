//! The job is untrusted: its text cannot drive root's terminal, no output path (symlink,
//! device, FIFO, another user's file, a predictable temporary name) makes ghostprof write where
//! it should not, inputs that are not trace files give one line, and `record` under sudo runs
//! the job with its user's groups and environment.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ghostprof::trace::*;

use crate::util::*;

fn ghostprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ghostprof"))
}

const PID: u32 = 4100;
/// A kernel name and a session note as a hostile job would write them: clear the screen, set
/// the window title, a one-byte CSI (C1), a line of its own.
const EVIL_KERNEL: &str = "gemm\x1b[2J\u{9b}31m_kernel";
const EVIL_NOTE: &str = "note\x1b]0;pwned\x07\nghostprof: error: forged line";

/// A one-process trace: evil-named kernels, a session note, and file I/O with a read, a write,
/// an fsync and an fdatasync; `extra_notes` more (distinct) notes make the output long.
fn hostile_trace(path: &Path, extra_notes: usize) {
    let mut names: Vec<String> = ["python3", EVIL_KERNEL, EVIL_NOTE].map(String::from).into();
    names.extend((0..extra_notes).map(|i| format!("note {i}: {}", "x".repeat(60))));
    let mut r: Vec<Record> = vec![ProcessInfo { time_ns: 1_000, pid: PID, ppid: 1, name_id: 1, cmdline_id: 0 }.into()];
    for i in 0..20u64 {
        let s = 10_000 + i * 100_000;
        r.push(
            KernelExec { start_ns: s, end_ns: s + 60_000, name_id: 2, pid: PID, device: 0, ..Default::default() }
                .into(),
        );
    }
    for (i, sc) in [0, 1, 74, 75, 257, 77, 285].into_iter().enumerate() {
        let s = 3_000_000 + i as u64 * 10_000;
        r.push(FileIo { start_ns: s, end_ns: s + 5_000, bytes: 4096, pid: PID, tid: PID, fd: 9, syscall: sc }.into());
    }
    for i in 0..=extra_notes as u32 {
        r.push(SessionNote { time_ns: 4_000_000 + i as u64, pid: 0, text_id: 3 + i }.into());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_trace(path, &r, &names, 100_000);
}

/// Runs `cmd`, killing it after `limit`: (output, elapsed); None for the output when it hung.
fn run_with_limit(cmd: &mut Command, limit: Duration) -> (Option<Output>, Duration) {
    let t = Instant::now();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (Some(child.wait_with_output().unwrap()), t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (None, t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts a clean failure: exit 1, one `ghostprof: error:` line containing `want`, no panic.
fn assert_one_line_error(out: &Output, want: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "exit 1: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("ghostprof: error: ") && err.contains(want), "{want:?} in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// (bytes, mode, uid, gid, inode) of a file, to show it was not touched.
fn fingerprint(p: &Path) -> (Vec<u8>, u32, u32, u32, u64) {
    let m = std::fs::metadata(p).unwrap();
    (std::fs::read(p).unwrap(), m.mode(), m.uid(), m.gid(), m.ino())
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

// ---- item 6: job text reaches the terminal escaped ----

#[test]
fn report_and_info_escape_the_jobs_control_characters() {
    let dir = tmpdir();
    let trace = dir.path().join("evil.gptrace");
    hostile_trace(&trace, 0);
    for args in [&["report"][..], &["info"][..]] {
        let out = ghostprof().args(args).arg(&trace).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        let controls: Vec<char> =
            text.chars().filter(|c| c.is_control() && *c != '\n' || ('\u{80}'..='\u{9f}').contains(c)).collect();
        assert!(controls.is_empty(), "{args:?}: raw control characters {controls:?} in\n{text}");
        assert!(text.contains(r"note\x1b]0;pwned\x07\nghostprof: error: forged line"), "{args:?}: {text}");
        assert!(!text.lines().any(|l| l.starts_with("ghostprof: error")), "{args:?}: a forged line: {text}");
        if args[0] == "report" {
            assert!(text.contains(r"gemm\x1b[2J\u{9b}31m_kernel"), "{text}");
        }
    }
}

#[test]
fn json_output_is_terminal_safe_and_reads_back_the_same_strings() {
    let dir = tmpdir();
    let trace = dir.path().join("evil.gptrace");
    hostile_trace(&trace, 0);
    for args in [&["info", "--json"][..], &["report", "--json"][..]] {
        let out = ghostprof().args(args).arg(&trace).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        // serde_json leaves DEL, C1 (U+009B is a one-byte CSI) and bidi overrides raw.
        let raw: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
        assert!(raw.is_empty(), "{args:?}: raw control characters {raw:?}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        let all = v.to_string();
        assert!(all.contains(r"note\u001b]0;pwned\u0007\nghostprof: error: forged line"), "{args:?}: {all}");
        if args[0] == "report" {
            assert!(all.contains("gemm\\u001b[2J\u{9b}31m_kernel"), "{args:?}: the kernel name decodes exactly: {all}");
        }
    }
}

// ---- item 16: fsync is not a "file read" ----

#[test]
fn export_names_fsync_fdatasync_and_truncations() {
    let dir = tmpdir();
    let trace = dir.path().join("io.gptrace");
    hostile_trace(&trace, 0);
    let json = dir.path().join("io.json");
    let out = ghostprof().arg("export").arg(&trace).arg("-o").arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut io: Vec<(i64, String)> = v["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["args"]["fd"] == 9)
        .map(|e| (e["args"]["syscall"].as_i64().unwrap(), e["name"].as_str().unwrap().to_string()))
        .collect();
    io.sort();
    let want: Vec<(i64, String)> = [
        (0, "file read"),
        (1, "file write"),
        (74, "fsync"),
        (75, "fdatasync"),
        (77, "ftruncate"),
        (257, "open (truncating)"),
        (285, "fallocate"),
    ]
    .map(|(n, s)| (n, s.into()))
    .into();
    assert_eq!(io, want);
}

// ---- item 9: outputs ----

/// The export and HTML outputs, as (name, arguments before the output path, after it).
fn writers(trace: &Path) -> Vec<(&'static str, Vec<String>)> {
    let t = trace.display().to_string();
    vec![("export", vec!["export".into(), t.clone(), "-o".into()]), ("html", vec!["report".into(), t, "--html".into()])]
}

#[test]
fn an_existing_output_is_refused_without_force_and_replaced_fresh_with_it() {
    let dir = tmpdir();
    let trace = dir.path().join("t.gptrace");
    hostile_trace(&trace, 0);
    for (what, args) in writers(&trace) {
        let out_path = dir.path().join(format!("{what}.out"));
        std::fs::write(&out_path, b"precious").unwrap();
        std::fs::set_permissions(&out_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let before = fingerprint(&out_path);
        let run = ghostprof().args(&args).arg(&out_path).output().unwrap();
        assert_one_line_error(&run, "exists");
        assert_eq!(fingerprint(&out_path), before, "{what}: untouched without --force");
        let run = ghostprof().args(&args).arg(&out_path).arg("--force").output().unwrap();
        assert!(run.status.success(), "{what}: {}", String::from_utf8_lossy(&run.stderr));
        let after = fingerprint(&out_path);
        assert!(after.0.len() > 100 && after.0 != before.0, "{what}: rewritten");
        assert_eq!(after.1 & 0o7777, 0o600, "{what}: mode 0600, not the old file's 0644");
        assert_ne!(after.4, before.4, "{what}: a fresh inode, not the old file truncated");
    }
    // Nothing but the trace and the two outputs: no temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn no_output_is_written_through_a_symlink_or_a_predictable_temporary_name() {
    let dir = tmpdir();
    let trace = dir.path().join("t.gptrace");
    hostile_trace(&trace, 0);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"root's file").unwrap();
    let before = fingerprint(&victim);
    for (what, args) in writers(&trace) {
        // The output itself a symlink: refused with and without --force.
        let link = dir.path().join(format!("{what}-link.json"));
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        for force in [false, true] {
            let mut c = ghostprof();
            c.args(&args).arg(&link);
            if force {
                c.arg("--force");
            }
            assert_one_line_error(&c.output().unwrap(), "symlink");
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        }
        // Every temporary name the old code used, planted as a symlink to the victim.
        let out_path = dir.path().join(format!("{what}.json"));
        for tmp in [out_path.with_extension("json.tmp"), dir.path().join(format!("{what}.json.tmp"))] {
            let _ = std::os::unix::fs::symlink(&victim, &tmp);
        }
        let run = ghostprof().args(&args).arg(&out_path).output().unwrap();
        assert!(run.status.success(), "{what}: {}", String::from_utf8_lossy(&run.stderr));
        assert!(std::fs::symlink_metadata(&out_path).unwrap().file_type().is_file(), "{what}");
        assert_eq!(fingerprint(&victim), before, "{what}: the victim is untouched");
    }
    // `export -o LINK/` (one file per process) through a symlink to another directory.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let dir_link = dir.path().join("ranks");
    std::os::unix::fs::symlink(&elsewhere, &dir_link).unwrap();
    let run = ghostprof().arg("export").arg(&trace).arg("-o").arg(format!("{}/", dir_link.display())).output().unwrap();
    assert_one_line_error(&run, "is a symlink, not a directory");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing written through the link");
}

#[test]
fn fifo_and_directory_outputs_are_refused_even_with_force() {
    let dir = tmpdir();
    let trace = dir.path().join("t.gptrace");
    hostile_trace(&trace, 0);
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let subdir = dir.path().join("a-dir");
    std::fs::create_dir(&subdir).unwrap();
    for (what, args) in writers(&trace) {
        for force in [false, true] {
            let mut c = ghostprof();
            c.args(&args).arg(&fifo);
            if force {
                c.arg("--force");
            }
            // The old code opened the FIFO for writing: it waited for a reader for ever.
            let (out, took) = run_with_limit(&mut c, Duration::from_secs(5));
            let out = out.unwrap_or_else(|| panic!("{what}: hung on the FIFO ({took:?})"));
            assert_one_line_error(&out, "a FIFO, not a regular file");
            assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        }
    }
    // `report --html DIR --force` (export takes a directory as "one file per process").
    let run = ghostprof().arg("report").arg(&trace).arg("--html").arg(&subdir).arg("--force").output().unwrap();
    assert_one_line_error(&run, "a directory, not a regular file");
    assert!(subdir.is_dir() && std::fs::read_dir(&subdir).unwrap().count() == 0);
}

#[test]
fn the_trace_writer_refuses_a_fifo_even_with_overwrite() {
    let dir = tmpdir();
    let fifo = dir.path().join("t.gptrace");
    mkfifo(&fifo);
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    // The old writer opened it O_WRONLY|O_CREAT|O_TRUNC: blocked for ever, waiting for a reader.
    std::thread::spawn(move || {
        let r = Pipeline_create(&path);
        let _ = tx.send(r);
    });
    let err = rx.recv_timeout(Duration::from_secs(3)).expect("returns at once, not blocked on the FIFO");
    assert!(err.contains("a FIFO, not a regular file"), "{err}");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[allow(non_snake_case)]
fn Pipeline_create(path: &Path) -> String {
    match ghostprof::pipeline::Pipeline::create(path, true, &TraceInfo::default(), Default::default()) {
        Ok(p) => {
            let _ = p.finish();
            "created".into()
        }
        Err(e) => e.to_string(),
    }
}

// ---- item 14: inputs and arguments ----

#[test]
fn non_trace_inputs_give_one_line_at_once() {
    let dir = tmpdir();
    let fifo = dir.path().join("in.fifo");
    mkfifo(&fifo);
    let subdir = dir.path().join("d.gptrace");
    std::fs::create_dir(&subdir).unwrap();
    let out_json = dir.path().join("x.json");
    for (input, want) in [
        (fifo.as_path(), "is a FIFO, not a regular file"),
        (Path::new("/dev/zero"), "is a character device, not a regular file"),
        (subdir.as_path(), "is a directory, not a regular file"),
    ] {
        let cmds: [Vec<&std::ffi::OsStr>; 3] = [
            vec!["info".as_ref(), input.as_os_str()],
            vec!["report".as_ref(), input.as_os_str()],
            vec!["export".as_ref(), input.as_os_str(), "-o".as_ref(), out_json.as_os_str()],
        ];
        for args in cmds {
            let (out, took) = run_with_limit(ghostprof().args(&args), Duration::from_secs(5));
            let out = out.unwrap_or_else(|| panic!("{args:?} hung ({took:?})"));
            assert!(took < Duration::from_secs(2), "{args:?} took {took:?}");
            let err = assert_one_line_error(&out, want);
            assert_eq!(err.matches("not a regular file").count(), 1, "said once: {err}");
            assert!(!err.contains("empty file"), "{err}");
        }
    }
    assert!(!out_json.exists());
}

#[test]
fn an_overflowing_duration_is_one_line_not_a_panic() {
    for d in ["99999999999999999999999h", "1e400", "184467440737095516160s"] {
        let out = ghostprof().args(["record", "--duration", d, "--", "true"]).output().unwrap();
        assert_one_line_error(&out, "bad duration");
    }
}

#[test]
fn a_reader_that_leaves_early_ends_the_output_quietly() {
    let dir = tmpdir();
    let trace = dir.path().join("big.gptrace");
    // 3,000 notes of ~75 bytes: 220 KB of text, more than a pipe holds.
    hostile_trace(&trace, 3_000);
    for args in [&["info"][..], &["report"][..], &["info", "--json"][..], &["report", "--json"][..]] {
        let mut child =
            ghostprof().args(args).arg(&trace).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // `| head -1`: read one line, then close the pipe.
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!first.is_empty(), "{args:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}: nothing on stderr");
        assert_eq!(out.status.code(), Some(141), "{args:?}: 128 + SIGPIPE, as the docs say");
    }
}

// ---- root tier: devices, other users' files, sudo ----

fn mknod_null(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; a scratch char device (1,3), never the real /dev/null.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
}

#[test]
#[ignore = "root tier: mknod of a scratch device node needs root"]
fn root_a_device_node_is_never_replaced() {
    assert!(is_root(), "run the root tier as root");
    let dir = tmpdir();
    let trace = dir.path().join("t.gptrace");
    hostile_trace(&trace, 0);
    let node = dir.path().join("null");
    mknod_null(&node);
    let rdev = std::fs::metadata(&node).unwrap().rdev();
    for (what, args) in writers(&trace) {
        for force in [false, true] {
            let mut c = ghostprof();
            c.args(&args).arg(&node);
            if force {
                c.arg("--force");
            }
            assert_one_line_error(&c.output().unwrap(), "a character device, not a regular file");
            let m = std::fs::symlink_metadata(&node).unwrap();
            assert!(m.file_type().is_char_device() && m.rdev() == rdev, "{what}: still the device node");
        }
    }
    // The trace writer (record, attach), with overwrite.
    let err = Pipeline_create(&node);
    assert!(err.contains("a character device, not a regular file"), "{err}");
    assert!(std::fs::symlink_metadata(&node).unwrap().file_type().is_char_device());
}

#[test]
#[ignore = "root tier: chown to another uid needs root"]
fn root_force_onto_another_users_file_makes_a_fresh_file_for_the_sudo_user() {
    assert!(is_root(), "run the root tier as root");
    let dir = tmpdir();
    let trace = dir.path().join("t.gptrace");
    hostile_trace(&trace, 0);
    let (uid, gid) = (4242u32, 4343u32);
    for (what, args) in writers(&trace) {
        let out_path = dir.path().join(format!("{what}.out"));
        std::fs::write(&out_path, b"nobody's").unwrap();
        std::os::unix::fs::chown(&out_path, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&out_path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let run = ghostprof()
            .args(&args)
            .arg(&out_path)
            .arg("--force")
            .env("SUDO_UID", uid.to_string())
            .env("SUDO_GID", gid.to_string())
            .output()
            .unwrap();
        assert!(run.status.success(), "{what}: {}", String::from_utf8_lossy(&run.stderr));
        let m = std::fs::metadata(&out_path).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, uid, gid), "{what}");
    }
    // The per-process export directory and its files are the user's too.
    let per = dir.path().join("per-rank/");
    let run = ghostprof()
        .arg("export")
        .arg(&trace)
        .arg("-o")
        .arg(&per)
        .env("SUDO_UID", uid.to_string())
        .env("SUDO_GID", gid.to_string())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let m = std::fs::metadata(&per).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o700, uid, gid));
    for f in std::fs::read_dir(&per).unwrap() {
        let m = f.unwrap().metadata().unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, uid, gid));
    }
    // The trace writer with overwrite: a fresh 0600 file of the caller, not nobody's 0666 one.
    let old = dir.path().join("old.gptrace");
    std::fs::write(&old, b"nobody's").unwrap();
    std::os::unix::fs::chown(&old, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(Pipeline_create(&old), "created");
    let m = std::fs::metadata(&old).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o600, 0));
}

/// A user and a supplementary group made for one test, removed when dropped.
struct TestUser {
    name: String,
    group: String,
}

impl TestUser {
    fn create() -> TestUser {
        let tag = std::process::id() % 100_000;
        let (name, group) = (format!("gpt{tag}"), format!("gptg{tag}"));
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        assert!(ok(Command::new("groupadd").arg(&group)), "groupadd {group}");
        let u = TestUser { name: name.clone(), group: group.clone() };
        assert!(
            ok(Command::new("useradd").args([
                "-M",
                "-d",
                &format!("/nonexistent/{name}"),
                "-s",
                "/bin/sh",
                "-G",
                &group,
                &name
            ])),
            "useradd {name}"
        );
        u
    }

    fn id(&self, flag: &str) -> u32 {
        let out = Command::new("id").arg(flag).arg(&self.name).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

#[test]
#[ignore = "root tier: useradd/groupadd and recording need root"]
fn root_record_under_sudo_runs_the_job_with_its_users_groups_and_home() {
    assert!(is_root(), "run the root tier as root");
    let _serial = heavy_test_lock();
    let user = TestUser::create();
    let (uid, gid) = (user.id("-u"), user.id("-g"));
    let sup: u32 = {
        let out = Command::new("getent").args(["group", &user.group]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split(':').nth(2).unwrap().parse().unwrap()
    };
    let dir = tmpdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let ids: PathBuf = dir.path().join("ids");
    let script = format!(
        "id -G > {0}; printf '%s|%s|%s|%s\\n' \"$HOME\" \"$USER\" \"$LOGNAME\" \"$SHELL\" >> {0}",
        ids.display()
    );
    let trace = dir.path().join("t.gptrace");
    let out = ghostprof()
        .args(["record", "--quiet", "-o"])
        .arg(&trace)
        .args(["--", "/bin/sh", "-c", &script])
        // What sudo leaves: root's HOME/USER/LOGNAME, the invoking user in SUDO_*.
        .env("HOME", "/root")
        .env("USER", "root")
        .env("LOGNAME", "root")
        .env("SHELL", "/bin/bash")
        .env("SUDO_UID", uid.to_string())
        .env("SUDO_GID", gid.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&ids).expect("the job wrote its ids");
    let mut lines = text.lines();
    let groups: Vec<u32> = lines.next().unwrap().split_whitespace().map(|g| g.parse().unwrap()).collect();
    assert!(groups.contains(&gid) && groups.contains(&sup), "groups {groups:?}: {gid} and {sup}");
    assert!(!groups.contains(&0), "no root group left: {groups:?}");
    assert_eq!(
        lines.next().unwrap(),
        format!("/nonexistent/{0}|{0}|{0}|/bin/sh", user.name),
        "HOME|USER|LOGNAME|SHELL"
    );
    assert_eq!(std::fs::metadata(&ids).unwrap().uid(), uid, "the job ran as the user");
    assert_eq!(std::fs::metadata(&trace).unwrap().uid(), uid, "the trace is the user's");
}
