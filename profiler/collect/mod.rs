//! Collectors: the sources of records. `bpf` holds the generated eBPF skeletons; `sched` turns
//! the sched program's off-CPU intervals into host-stall records.

pub mod bpf;
pub mod cupti;
pub mod elf;
pub mod host;
pub mod nvml;
pub mod pmdecode;
pub mod procmaps;
pub mod sched;

use std::path::Path;

use sched::CollectError;

/// Checks, before loading anything, that the kernel can run ghostprof's programs: BTF (for
/// CO-RE and tp_btf) and uprobes. Root is checked by the loader (EPERM → the capability message).
pub fn preflight() -> Result<(), CollectError> {
    preflight_at(Path::new("/"))
}

/// [`preflight`] against another root directory (for tests).
pub fn preflight_at(root: &Path) -> Result<(), CollectError> {
    if !root.join("sys/kernel/btf/vmlinux").exists() {
        return Err(CollectError::NoBtf);
    }
    if !root.join("sys/bus/event_source/devices/uprobe").exists() {
        return Err(CollectError::NoUprobes);
    }
    Ok(())
}

/// The GPU libraries mapped by `pid`, or why it cannot be attached to: it does not exist, or
/// it maps no CUDA / NCCL library (the error names the libraries it does map).
pub fn gpu_libraries_of(pid: u32) -> Result<Vec<procmaps::MappedLib>, CollectError> {
    let libs = procmaps::mapped_libs(pid).map_err(|_| CollectError::NoSuchProcess { pid })?;
    let gpu: Vec<procmaps::MappedLib> = libs
        .iter()
        .filter(|l| matches!(procmaps::classify(&l.path), crate::trace::LibKind::Cuda | crate::trace::LibKind::Nccl))
        .cloned()
        .collect();
    if gpu.is_empty() {
        let mut names: Vec<String> = libs
            .iter()
            .filter_map(|l| l.path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n.contains(".so"))
            .collect();
        names.sort();
        names.dedup();
        let found = if names.is_empty() { "no shared libraries".to_string() } else { names.join(", ") };
        return Err(CollectError::NoGpuLibrary { pid, found });
    }
    Ok(gpu)
}
