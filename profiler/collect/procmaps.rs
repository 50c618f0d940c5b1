//! Which GPU libraries a process has mapped, from `/proc/PID/maps`, and where such libraries
//! live for a process about to be launched (its LD_LIBRARY_PATH and the loader's cache).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::trace::LibKind;

/// A file-backed executable mapping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MappedLib {
    /// Path as the process sees it.
    pub path: PathBuf,
    /// The file's inode (with the path, tells a replaced file from the one mapped).
    pub inode: u64,
    /// Start of the first mapping of the file (the load base).
    pub base: u64,
}

/// What kind of GPU library a path is, by its file name.
pub fn classify(path: &Path) -> LibKind {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains(".so") {
        return LibKind::Other;
    }
    // "libcudart-d0da41ae.so.11.0" (pip wheels add a hash) → "libcudart"
    let stem = name.split('.').next().unwrap_or("");
    let stem = stem.split('-').next().unwrap_or(stem);
    match stem {
        "libcuda" => LibKind::Cuda,
        "libnccl" => LibKind::Nccl,
        "libcupti" => LibKind::Cupti,
        "libcudart" => LibKind::CudaRuntime,
        "libcublas" | "libcublasLt" => LibKind::Cublas,
        _ => LibKind::Other,
    }
}

/// Executable file mappings of `pid`, one entry per file.
pub fn mapped_libs(pid: u32) -> std::io::Result<Vec<MappedLib>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut seen = BTreeSet::new();
    let mut libs = Vec::new();
    for line in text.lines() {
        // start-end perms offset dev inode path
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(_off), Some(_dev), Some(inode), Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let inode: u64 = inode.parse().unwrap_or(0);
        if inode == 0 || !path.starts_with('/') || !seen.insert(inode) {
            continue;
        }
        let base = range.split('-').next().and_then(|s| u64::from_str_radix(s, 16).ok()).unwrap_or(0);
        libs.push(MappedLib { path: PathBuf::from(path), inode, base });
    }
    Ok(libs)
}

/// The path through which the host sees a file that process `pid` maps at `path`
/// (different when the process runs in a container).
pub fn host_path(pid: u32, path: &Path) -> PathBuf {
    let via_root = Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path));
    if via_root.exists() {
        via_root
    } else {
        path.to_path_buf()
    }
}

/// Where `sonames` would be found by a process started with `ld_library_path`: its
/// directories first, then the loader cache (`ldconfig -p`).
pub fn find_libraries(sonames: &[&str], ld_library_path: Option<&str>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for name in sonames {
        let from_env = ld_library_path
            .unwrap_or("")
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists());
        if let Some(p) = from_env.or_else(|| ldconfig_lookup(name)) {
            out.push(p);
        }
    }
    out
}

fn ldconfig_lookup(soname: &str) -> Option<PathBuf> {
    let out = std::process::Command::new("ldconfig").arg("-p").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with(soname))
        .filter_map(|l| l.split("=>").nth(1).map(|p| PathBuf::from(p.trim())))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_real_library_names() {
        assert_eq!(classify(Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1")), LibKind::Cuda);
        assert_eq!(classify(Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15")), LibKind::Cuda);
        assert_eq!(classify(Path::new("/site-packages/nvidia/nccl/lib/libnccl.so.2")), LibKind::Nccl);
        assert_eq!(classify(Path::new("/x/libcupti.so.12")), LibKind::Cupti);
        assert_eq!(classify(Path::new("/x/libcudart-d0da41ae.so.11.0")), LibKind::CudaRuntime);
        assert_eq!(classify(Path::new("/x/libcudacxx.so")), LibKind::Other);
        assert_eq!(classify(Path::new("/usr/lib/libc.so.6")), LibKind::Other);
    }

    #[test]
    fn own_maps_list_libc_once() {
        let libs = mapped_libs(std::process::id()).unwrap();
        let libc: Vec<_> = libs.iter().filter(|l| l.path.to_string_lossy().contains("libc.so")).collect();
        assert_eq!(libc.len(), 1, "{libs:?}");
        assert!(libc[0].base > 0);
    }
}
