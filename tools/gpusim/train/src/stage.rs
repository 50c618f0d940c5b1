//! Lay the cargo-built libraries out under their real names, the way a CUDA install does:
//! `libcuda.so.1`, `libnccl.so.2`, `libcupti.so.12` plus the `libcuda.so`, `libnccl.so`,
//! `libcupti.so` development symlinks. An identical file is left alone, so its inode (what a
//! uprobe is attached to) survives re-staging; a changed one is replaced by write-then-rename,
//! so a process that still maps the old copy is not disturbed.

use std::path::{Path, PathBuf};

/// (cargo output, real name, dev symlink)
const LIBRARIES: [(&str, &str, &str); 3] = [
    ("libgpusim_cuda.so", "libcuda.so.1", "libcuda.so"),
    ("libgpusim_nccl.so", "libnccl.so.2", "libnccl.so"),
    ("libgpusim_cupti.so", "libcupti.so.12", "libcupti.so"),
];

/// Directory holding the cargo-built libraries: `GPUSIM_BUILD_DIR`, else this executable's
/// directory (`target/<profile>/`, where cargo puts cdylibs next to binaries).
pub fn build_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("GPUSIM_BUILD_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| format!("{} has no parent directory", exe.display()))
}

/// Default staging directory: `<build dir>/gpusim-lib`.
pub fn default_lib_dir() -> Result<PathBuf, String> {
    Ok(build_dir()?.join("gpusim-lib"))
}

/// Copy the libraries from `from` into `to` under their real names.
pub fn stage(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    // `GPUSIM_STAGE_NO_CUPTI=1`: leave libcupti out (and remove a staged one), as on a machine
    // where CUPTI is installed off the library path (extras/CUPTI/lib64, a pip wheel).
    let no_cupti = std::env::var("GPUSIM_STAGE_NO_CUPTI").as_deref() == Ok("1");
    for (built, real, dev_link) in LIBRARIES {
        if no_cupti && real.starts_with("libcupti") {
            for name in [real, dev_link] {
                let _ = std::fs::remove_file(to.join(name));
            }
            continue;
        }
        let src = from.join(built);
        if !src.exists() {
            return Err(format!(
                "{} is missing: build it first with `cargo build -p gpusim-cuda -p gpusim-nccl -p gpusim-cupti` (same profile as gpusim-train)",
                src.display()
            ));
        }
        let dst = to.join(real);
        if same_contents(&src, &dst) {
            ensure_link(to, real, dev_link)?;
            continue;
        }
        let tmp = to.join(format!(".{real}.tmp{}", std::process::id()));
        std::fs::copy(&src, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &dst))
            .map_err(|e| format!("cannot stage {} as {}: {e}", src.display(), dst.display()))?;
        ensure_link(to, real, dev_link)?;
    }
    Ok(())
}

/// Whether `a` and `b` exist with the same bytes.
fn same_contents(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Make `to/dev_link` a symlink to `real`.
fn ensure_link(to: &Path, real: &str, dev_link: &str) -> Result<(), String> {
    let link = to.join(dev_link);
    if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(real)) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(real, &link)
            .map_err(|e| format!("cannot link {} -> {real}: {e}", link.display()))?;
    }
    Ok(())
}
