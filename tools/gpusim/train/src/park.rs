//! `GPUSIM_PARK_MS=N`: threads parked in blocking calls at a known time, for tests that attach
//! to a job whose threads sit in them (ptrace injection must leave every one of them to resume
//! as if nothing happened). Between its module load and its communicator, each rank:
//!
//! - rank 0 starts a thread blocked in `read` on a pipe (another thread writes 12 bytes after N
//!   ms) and a thread blocked in `cuStreamSynchronize` on N ms of kernels of its own stream,
//!   then waits in `ncclCommInitRank` (the rendezvous) for the other ranks;
//! - every other rank sleeps N ms before joining the communicator: the late peer.
//!
//! Rank 0 prints one line with what each parked call returned (stdout, before its first step),
//! so a run with an attach in the middle can be compared byte for byte with one without.

use std::ffi::c_void;
use std::time::Duration;

use crate::driver::{check, Cuda};
use crate::launch::Launchers;

/// The bytes the writer sends through the pipe.
const MESSAGE: &[u8] = b"gpusim-park\n";

/// `GPUSIM_PARK_MS`, if set and positive.
pub fn park_ms() -> Option<u64> {
    std::env::var("GPUSIM_PARK_MS").ok()?.parse().ok().filter(|ms| *ms > 0)
}

/// Rank 0's parked threads, running.
pub struct Parked {
    read: std::thread::JoinHandle<Result<Vec<u8>, String>>,
    write: std::thread::JoinHandle<Result<(), String>>,
    sync: std::thread::JoinHandle<Result<i32, String>>,
}

/// Starts rank 0's parked threads: `function` (a kernel of `kernel_us`) is launched enough
/// times on a new stream of `ctx` to keep it busy for `ms`.
pub fn start(ctx: *mut c_void, function: *mut c_void, kernel_us: f64, ms: u64) -> Result<Parked, String> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two fds into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("GPUSIM_PARK_MS: pipe: {}", std::io::Error::last_os_error()));
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    let read = std::thread::Builder::new()
        .name("park-read".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a live buffer from our own pipe; closed after.
            let n = unsafe { libc::read(rfd, buf.as_mut_ptr().cast(), buf.len()) };
            let err = std::io::Error::last_os_error();
            // SAFETY: our own fd.
            unsafe { libc::close(rfd) };
            if n < 0 {
                return Err(format!("park read: {err}"));
            }
            Ok(buf[..n as usize].to_vec())
        })
        .map_err(|e| e.to_string())?;
    let write = std::thread::Builder::new()
        .name("park-write".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            // SAFETY: writing a constant to our own pipe; closed after.
            let n = unsafe { libc::write(wfd, MESSAGE.as_ptr().cast(), MESSAGE.len()) };
            // SAFETY: our own fd.
            unsafe { libc::close(wfd) };
            if n == MESSAGE.len() as isize {
                Ok(())
            } else {
                Err(format!("park write: {n}"))
            }
        })
        .map_err(|e| e.to_string())?;
    let (ctx, function) = (ctx as usize, function as usize);
    let launches = ((ms as f64 * 1000.0) / kernel_us.max(1.0)).ceil() as u64;
    let sync = std::thread::Builder::new()
        .name("park-sync".into())
        .spawn(move || {
            let cuda = Cuda::load()?;
            let mut launchers = Launchers::resolve(&cuda, &[])?;
            let mut stream: *mut c_void = std::ptr::null_mut();
            // SAFETY: the rank's context and function handles, a live out-pointer.
            unsafe {
                check("cuCtxSetCurrent", (cuda.ctx_set_current)(ctx as *mut c_void))?;
                check("cuStreamCreate", (cuda.stream_create)(&mut stream, 0))?;
            }
            for _ in 0..launches {
                launchers.launch(function as *mut c_void, stream)?;
            }
            // SAFETY: a stream of this context.
            Ok(unsafe { (cuda.stream_synchronize)(stream) })
        })
        .map_err(|e| e.to_string())?;
    Ok(Parked { read, write, sync })
}

impl Parked {
    /// Waits for the parked threads; the line rank 0 prints.
    pub fn finish(self, rendezvous: &Result<(), String>) -> Result<String, String> {
        let joined = |what: &str| format!("the park's {what} thread panicked");
        let bytes = self.read.join().map_err(|_| joined("read"))??;
        self.write.join().map_err(|_| joined("write"))??;
        let sync = self.sync.join().map_err(|_| joined("synchronize"))??;
        Ok(format!(
            "gpusim-train rank 0 parked: read {} bytes {:?}, cuStreamSynchronize {sync}, ncclCommInitRank {}",
            bytes.len(),
            String::from_utf8_lossy(&bytes),
            if rendezvous.is_ok() { "ok" } else { "failed" }
        ))
    }
}
