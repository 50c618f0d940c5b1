//! Collectors: the sources of records. `bpf` holds the generated eBPF skeletons; `sched` turns
//! the sched program's off-CPU intervals into host-stall records.

pub mod bpf;
pub mod elf;
pub mod host;
pub mod procmaps;
pub mod sched;
