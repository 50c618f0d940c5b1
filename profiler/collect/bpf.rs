//! Generated libbpf-rs skeletons, one module per `ebpf/*.bpf.c` (see build.rs), and the
//! compile-time checks that the C records and their Rust mirrors agree in size.

include!(concat!(env!("OUT_DIR"), "/skeletons.rs"));

const _: () = assert!(std::mem::size_of::<sched::types::gp_offcpu_event>() == 64);
const _: () = assert!(std::mem::size_of::<sched::types::gp_io_event>() == 56);
const _: () = assert!(std::mem::size_of::<sched::types::gp_event_hdr>() == 16);
const _: () = assert!(std::mem::size_of::<cuda::types::gp_launch_event>() == 72);
const _: () = assert!(std::mem::size_of::<cuda::types::gp_call_event>() == 56);
const _: () = assert!(std::mem::size_of::<cuda::types::gp_nccl_event>() == 96);
const _: () = assert!(std::mem::size_of::<cuda::types::gp_func_name_event>() == 160);
const _: () = assert!(std::mem::size_of::<cuda::types::gp_comm_event>() == 48);
