//! Every file ghostprof writes, and every trace it reads, is opened here, by one set of rules.
//! ghostprof runs as root next to a job it does not trust, in directories that job (or another
//! user) may write to, so a path is never taken at its word:
//!
//! - an existing output is refused unless `--force`; a symlink is never followed (`O_NOFOLLOW`,
//!   refused even with `--force`); a device, FIFO, socket or directory is never replaced;
//! - whole files (export, HTML) are written to a temporary file with an unpredictable name in
//!   the same directory (`O_CREAT|O_EXCL|O_NOFOLLOW`) and renamed into place when complete; a
//!   trace is written in place (a cut trace must be readable where it was asked for) after
//!   `--force` unlinked the old file, so it is always a fresh inode: mode 0600, never someone
//!   else's file truncated with their owner and mode;
//! - under sudo the file is given to the invoking user (`SUDO_UID`/`SUDO_GID`) through its
//!   descriptor (`fchown`), never through the path;
//! - an input is opened without blocking (a FIFO would hang) and must be a regular file.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Who gets an output file: (uid, gid).
pub type Owner = (u32, u32);

/// The invoking user under sudo (`SUDO_UID`/`SUDO_GID`, not root), to own what root writes.
pub fn sudo_owner() -> Option<Owner> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    (uid != 0).then_some((uid, gid))
}

/// What kind of file a non-regular path is, in words.
fn kind_name(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "an unknown kind of file"
    }
}

fn refused(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

/// Checks what is at `path` now: Ok when nothing is there, or a regular file and `force`.
fn check_target(path: &Path, force: bool) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_symlink() => Err(refused(
            io::ErrorKind::InvalidInput,
            "is a symlink: ghostprof never writes through a symlink (refused even with --force); give the real path"
                .into(),
        )),
        Ok(m) if !m.file_type().is_file() => Err(refused(
            io::ErrorKind::InvalidInput,
            format!(
                "is {}, not a regular file: ghostprof writes only regular files (refused even with --force)",
                kind_name(m.file_type())
            ),
        )),
        Ok(_) if !force => Err(refused(
            io::ErrorKind::AlreadyExists,
            "exists: choose another path or pass --force to replace it".into(),
        )),
        Ok(_) => Ok(()),
    }
}

/// Checks an output path before a long job starts (the writers check again when they open):
/// refuses a symlink, a non-regular file, and an existing file without `force`.
pub fn check_output(path: &Path, force: bool) -> io::Result<()> {
    check_target(path, force).map_err(|e| at(path, e))
}

/// Opens `path` as a new file: `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600, given to `owner`.
fn create_new(path: &Path, owner: Option<Owner>) -> io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path; the fd returned is owned by the File below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    // The umask may have taken bits away, never added: 0600 exactly either way.
    // SAFETY: fchmod/fchown on our own descriptor.
    unsafe { libc::fchmod(file.as_raw_fd(), 0o600) };
    if let Some((uid, gid)) = owner {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 && unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } != 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    Ok(file)
}

/// Adds the path in front of an error's message (one line: `PATH: what`).
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Creates `path` for writing in place (a trace: readable where it is while it grows). An
/// existing regular file is refused without `force` and unlinked with it, so the file is
/// always new: mode 0600, owned by `owner` (else by the caller). Errors do not name the path
/// (the trace writer's errors do).
pub fn create_in_place(path: &Path, force: bool, owner: Option<Owner>) -> io::Result<File> {
    check_target(path, force)?;
    if force {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    // Anything planted between the check and here (a symlink, a new file) makes O_EXCL fail.
    create_new(path, owner).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EEXIST) => " (the output exists: choose another path or pass --force)",
            Some(libc::ELOOP) => " (the output path is a symlink: refusing to write through it)",
            _ => "",
        };
        io::Error::new(e.kind(), format!("{e}{hint}"))
    })
}

/// An output being written to a temporary file next to it; [`PendingOutput::commit`] renames
/// it into place, dropping it uncommitted removes it.
#[derive(Debug)]
pub struct PendingOutput {
    tmp: PathBuf,
    path: PathBuf,
    force: bool,
    committed: bool,
}

/// 64 unpredictable bits for a temporary name (a planted `NAME.tmp` symlink cannot be guessed).
fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom fills at most 8 bytes of `v`.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n != 8 {
        // No getrandom: time and pid are still not guessable to the byte by another process.
        v = crate::clock::monotonic_ns() ^ ((std::process::id() as u64) << 40);
    }
    v
}

/// Creates the temporary file for `path` (see the module's rules) and returns it with the
/// handle that puts it in place.
pub fn create_output(path: &Path, force: bool, owner: Option<Owner>) -> io::Result<(File, PendingOutput)> {
    check_target(path, force).map_err(|e| at(path, e))?;
    let name = path.file_name().ok_or_else(|| at(path, io::Error::other("is not a file name")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut last = io::Error::other("no free temporary name");
    for _ in 0..16 {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{:016x}.tmp", random_u64()));
        let tmp = dir.join(tmp_name);
        match create_new(&tmp, owner) {
            Ok(f) => {
                return Ok((f, PendingOutput { tmp, path: path.to_path_buf(), force, committed: false }));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(at(&tmp, e)),
        }
    }
    Err(at(path, last))
}

impl PendingOutput {
    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the finished temporary file into place. Without `force` the rename refuses a
    /// file that appeared meanwhile (`RENAME_NOREPLACE`); with it, only a regular file (or a
    /// symlink, replaced itself, never followed) is replaced, never a device or a directory.
    pub fn commit(mut self) -> io::Result<()> {
        check_target(&self.path, self.force).map_err(|e| at(&self.path, e))?;
        let from = CString::new(self.tmp.as_os_str().as_bytes()).map_err(|_| io::Error::other("bad path"))?;
        let to = CString::new(self.path.as_os_str().as_bytes()).map_err(|_| io::Error::other("bad path"))?;
        let flags = if self.force { 0 } else { libc::RENAME_NOREPLACE };
        // SAFETY: two NUL-terminated paths relative to the current directory.
        let rc = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            let e = if e.raw_os_error() == Some(libc::EEXIST) {
                io::Error::new(e.kind(), "exists: choose another path or pass --force to replace it")
            } else {
                e
            };
            return Err(at(&self.path, e));
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` by the module's rules (temporary file, then rename).
pub fn write_output(path: &Path, force: bool, owner: Option<Owner>, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let (mut f, pending) = create_output(path, force, owner)?;
    f.write_all(bytes).map_err(|e| at(path, e))?;
    drop(f);
    pending.commit()
}

/// Creates directory `dir` (mode 0700, given to `owner`) if missing; refuses a symlink there
/// or something that is not a directory.
pub fn create_output_dir(dir: &Path, owner: Option<Owner>) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // `lstat("link/")` follows the link: look at the name without its trailing slashes.
    let bytes = dir.as_os_str().as_bytes();
    let trimmed = match bytes.iter().rposition(|b| *b != b'/') {
        Some(i) => Path::new(std::ffi::OsStr::from_bytes(&bytes[..=i])),
        None => dir,
    };
    match std::fs::symlink_metadata(trimmed) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(m) => Err(at(
            dir,
            refused(
                io::ErrorKind::InvalidInput,
                format!("is {}, not a directory: give a directory for one file per process", kind_name(m.file_type())),
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| at(dir, e))?;
            if let Some((uid, gid)) = owner {
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 {
                    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(|e| at(dir, e))?;
                }
            }
            Ok(())
        }
        Err(e) => Err(at(dir, e)),
    }
}

/// Opens an input file (a trace): never blocks on a FIFO, and refuses anything but a regular
/// file (a device like /dev/zero would read forever, a directory is not a trace) in one line.
/// A symlink to a file is followed: the input is the user's own choice.
pub fn open_input(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let t = file.metadata()?.file_type();
    if !t.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file: give a trace file (.gptrace)", kind_name(t)),
        ));
    }
    // Regular files ignore O_NONBLOCK; cleared anyway so reads behave as plain reads.
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn output_is_refused_then_replaced_with_force_as_a_fresh_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.json");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = write_output(&p, false, None, b"new").unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        write_output(&p, true, None, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o600);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_uncommitted_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.json");
        let (_f, pending) = create_output(&p, false, None).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(pending);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn in_place_with_force_is_a_new_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gptrace");
        std::fs::write(&p, b"old").unwrap();
        let old_ino = std::fs::metadata(&p).unwrap().ino();
        // A hard link keeps the old inode alive, so its number cannot be reused.
        std::fs::hard_link(&p, dir.path().join("keep")).unwrap();
        assert!(create_in_place(&p, false, None).is_err());
        drop(create_in_place(&p, true, None).unwrap());
        let m = std::fs::metadata(&p).unwrap();
        assert_ne!(m.ino(), old_ino);
        assert_eq!((m.len(), m.mode() & 0o7777), (0, 0o600));
        assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"old");
    }
}
