//! Asking a running `watch` for a trigger: `SIGUSR1`, or `ghostprof watch trigger` through a
//! Unix socket that only root may use (mode 0600, created fresh, and every peer's uid checked
//! with `SO_PEERCRED`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// The control socket's default path.
pub const DEFAULT_SOCKET: &str = "/run/ghostprof/watch.sock";
/// Longest request line read from the socket.
const MAX_LINE: u64 = 256;

static USR1: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    USR1.store(true, Ordering::SeqCst);
}

/// Installs the SIGUSR1 handler (it only sets a flag).
pub fn install_sigusr1() {
    // SAFETY: an async-signal-safe handler (one atomic store).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

/// True once per SIGUSR1 received since the last call.
pub fn take_sigusr1() -> bool {
    USR1.swap(false, Ordering::SeqCst)
}

/// Makes a request's free text safe for a note and a file name: letters, digits, space, `.-_`,
/// at most 64 characters.
pub fn clean_reason(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || " .-_".contains(*c))
        .take(64)
        .collect::<String>()
        .trim()
        .to_string()
}

/// The uid of the process at the other end of `s`.
fn peer_uid(s: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt fills `cred` of the size we pass.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

/// The control socket's server thread.
pub struct Control {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Connections refused because the peer was not root.
    pub refused: Arc<AtomicU64>,
}

impl Control {
    /// Creates the socket at `path` (its directory 0700 if missing; an old socket there is
    /// replaced only if it is a socket owned by root, anything else is refused) and serves it;
    /// each accepted request's reason goes to `requests`.
    pub fn start(path: &Path, requests: SyncSender<String>) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            crate::outfile::create_output_dir(dir, None)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() && m.uid() == 0 => std::fs::remove_file(path)?,
            Ok(_) => anyhow::bail!(
                "{} exists and is not a root-owned socket: remove it or give another --socket",
                path.display()
            ),
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)?;
        // Root-only at once; the SO_PEERCRED check below holds whatever the mode.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), refused.clone());
        let thread = std::thread::Builder::new().name("ghostprof-control".into()).spawn(move || {
            while !s.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer(stream, &requests, &r)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
        Ok(Control { path: path.to_path_buf(), stop, thread: Some(thread), refused })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one `trigger [reason]` line from a root peer and queues it.
fn answer(mut stream: UnixStream, requests: &SyncSender<String>, refused: &AtomicU64) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if peer_uid(&stream) != Some(0) {
        refused.fetch_add(1, Ordering::Relaxed);
        let _ = stream.write_all(b"error: only root may ask ghostprof watch for a trigger\n");
        return;
    }
    let mut line = String::new();
    let Ok(clone) = stream.try_clone() else { return };
    let mut reader = BufReader::new(std::io::Read::take(clone, MAX_LINE));
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = match line.trim_end().strip_prefix("trigger") {
        Some(rest) => {
            let reason = clean_reason(rest);
            let reason = if reason.is_empty() { "manual".to_string() } else { format!("manual {reason}") };
            match requests.try_send(reason) {
                Ok(()) => "ok: trigger queued\n".to_string(),
                Err(TrySendError::Full(_)) => "error: too many triggers queued; try again later\n".to_string(),
                Err(TrySendError::Disconnected(_)) => "error: watch is stopping\n".to_string(),
            }
        }
        None => "error: unknown request (only `trigger [reason]`)\n".to_string(),
    };
    let _ = stream.write_all(reply.as_bytes());
}

/// Sends `trigger reason` to the watch listening at `path` and returns its answer.
pub fn send_trigger(path: &Path, reason: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut s = UnixStream::connect(path).with_context(|| {
        format!("cannot reach ghostprof watch at {} (is it running? give its --socket)", path.display())
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("trigger {}\n", clean_reason(reason)).as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    Ok(answer.trim_end().to_string())
}

/// A bounded queue of trigger requests (the socket's thread → the watch loop).
pub fn channel() -> (SyncSender<String>, Receiver<String>) {
    std::sync::mpsc::sync_channel(16)
}
