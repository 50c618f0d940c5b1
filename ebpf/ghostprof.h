/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The kernel -> user ABI of ghostprof: every record an eBPF program submits to a ring buffer
 * is defined here, once. Rust gets these types from the generated skeletons (each program
 * keeps a dummy global instance so the type lands in its BTF) and asserts the same sizes.
 */
#ifndef GHOSTPROF_H
#define GHOSTPROF_H

#ifndef __VMLINUX_H__
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
#endif

/* Record kinds in gp_event_hdr.kind. */
enum gp_event_kind {
	GP_EV_OFFCPU = 1,    /* a target thread was off-CPU for [start_ns, end_ns) */
	GP_EV_LAUNCH = 2,    /* a kernel or graph launch call (entry) */
	GP_EV_CALL = 3,      /* a blocking or bracketing host call (entry and return) */
	GP_EV_NCCL = 4,      /* an NCCL collective or point-to-point call (entry and return) */
	GP_EV_FUNC_NAME = 5, /* a CUfunction handle and its kernel name */
	GP_EV_COMM = 6,      /* an NCCL communicator was created: its rank and size */
	GP_EV_IO = 7,        /* a read/write/fsync-family syscall on a regular file */
};

/* Probed host functions: the attach cookie of every uprobe, and gp_call_event.api. */
enum gp_api {
	GP_API_LAUNCH_KERNEL = 1,
	GP_API_LAUNCH_KERNEL_PTSZ = 2,
	GP_API_LAUNCH_KERNEL_EX = 3,
	GP_API_LAUNCH_KERNEL_EX_PTSZ = 4,
	GP_API_LAUNCH_COOPERATIVE = 5,
	GP_API_GRAPH_LAUNCH = 6,
	GP_API_GRAPH_LAUNCH_PTSZ = 7,
	GP_API_STREAM_SYNC = 8,
	GP_API_CTX_SYNC = 9,
	GP_API_EVENT_SYNC = 10,
	GP_API_MEMCPY_HTOD = 11,
	GP_API_MEMCPY_DTOH = 12,
	GP_API_MEMCPY_DTOD = 13,
	GP_API_MEMCPY = 14,
	GP_API_MODULE_GET_FUNCTION = 15,
	GP_API_FUNC_GET_NAME = 16,
	GP_API_NCCL_GROUP_START = 17,
	GP_API_NCCL_GROUP_END = 18,
	GP_API_NCCL_COMM_INIT_RANK = 19,
	/* NCCL collectives: GP_API_NCCL_BASE + op (mirrors profiler::trace::CollOp) */
	GP_API_NCCL_BASE = 32,
	GP_API_NCCL_ALL_REDUCE = 32,
	GP_API_NCCL_ALL_GATHER = 33,
	GP_API_NCCL_REDUCE_SCATTER = 34,
	GP_API_NCCL_BROADCAST = 35,
	GP_API_NCCL_REDUCE = 36,
	GP_API_NCCL_SEND = 37,
	GP_API_NCCL_RECV = 38,
};

/* Why a thread left the CPU (mirrors profiler::trace::StallReason). */
enum gp_stall_reason {
	GP_STALL_OTHER = 0,
	GP_STALL_FUTEX = 1,
	GP_STALL_IO = 2,
	GP_STALL_PAGE_FAULT = 3,
	GP_STALL_PREEMPTED = 4,
	GP_STALL_SLEEP = 5,
	GP_STALL_POLL = 6,
};

struct gp_event_hdr {
	__u16 kind;   /* enum gp_event_kind */
	__u16 size;   /* total record size in bytes, header included */
	__u32 cpu;
	__u64 ts_ns;  /* bpf_ktime_get_ns() when the record was made */
};
_Static_assert(sizeof(struct gp_event_hdr) == 16, "gp_event_hdr is 16 bytes");

struct gp_offcpu_event {
	struct gp_event_hdr hdr;
	__u32 pid;        /* tgid */
	__u32 tid;
	__u64 start_ns;   /* switched out */
	__u64 end_ns;     /* switched back in */
	__u64 prev_state; /* task state when switched out (0 = runnable: preempted) */
	__s32 syscall_nr; /* syscall in progress when switched out, -1 if none */
	__u32 reason;     /* enum gp_stall_reason */
	__u64 wakeup_ns;  /* when it was woken (then waited for a CPU until end_ns); 0 if unseen */
};
_Static_assert(sizeof(struct gp_offcpu_event) == 64, "gp_offcpu_event is 64 bytes");

struct gp_io_event {
	struct gp_event_hdr hdr;
	__u32 pid;
	__u32 tid;
	__u64 start_ns;   /* syscall entry */
	__u64 end_ns;     /* syscall exit */
	__u64 bytes;      /* bytes transferred (the syscall's result), 0 for fsync */
	__s32 fd;
	__s32 syscall_nr;
};
_Static_assert(sizeof(struct gp_io_event) == 56, "gp_io_event is 56 bytes");

struct gp_launch_event {
	struct gp_event_hdr hdr;
	__u32 pid;
	__u32 tid;
	__u64 func;       /* CUfunction (or CUgraphExec for graph launches) */
	__u64 stream;     /* CUstream, 0 = legacy default stream */
	__u32 grid[3];
	__u32 block[3];
	__u32 shared_mem_bytes;
	__u32 api;        /* enum gp_api */
};
_Static_assert(sizeof(struct gp_launch_event) == 72, "gp_launch_event is 72 bytes");

struct gp_call_event {
	struct gp_event_hdr hdr;
	__u32 pid;
	__u32 tid;
	__u64 start_ns;
	__u64 end_ns;
	__u64 arg;        /* stream, event or byte count, depending on api */
	__u32 api;        /* enum gp_api */
	__s32 ret;        /* CUresult / ncclResult_t */
};
_Static_assert(sizeof(struct gp_call_event) == 56, "gp_call_event is 56 bytes");

struct gp_nccl_event {
	struct gp_event_hdr hdr;
	__u32 pid;
	__u32 tid;
	__u64 start_ns;
	__u64 end_ns;
	__u64 comm;
	__u64 stream;
	__u64 count;
	__u64 seq;        /* per-communicator sequence number, from 0 */
	__u32 op;         /* api - GP_API_NCCL_BASE */
	__u32 dtype;      /* ncclDataType_t */
	__s32 rank;       /* -1 when the communicator was created before the probes */
	__s32 nranks;
	__s32 ret;
	__u32 pad;
};
_Static_assert(sizeof(struct gp_nccl_event) == 96, "gp_nccl_event is 96 bytes");

#define GP_NAME_MAX 128
struct gp_func_name_event {
	struct gp_event_hdr hdr;
	__u32 pid;
	__u32 api;
	__u64 func;
	char name[GP_NAME_MAX];
};
_Static_assert(sizeof(struct gp_func_name_event) == 160, "gp_func_name_event is 160 bytes");

struct gp_comm_event {
	struct gp_event_hdr hdr;
	__u32 pid;
	__u32 tid;
	__u64 comm;
	__s32 rank;
	__s32 nranks;
	__s32 ret;
	__u32 pad;
};
_Static_assert(sizeof(struct gp_comm_event) == 48, "gp_comm_event is 48 bytes");

/* Indexes of the per-CPU counters in the `counters` array map. */
enum gp_counter {
	GP_CNT_SWITCHES = 0,    /* sched_switch hits that involved a target thread */
	GP_CNT_OFFCPU = 1,      /* off-CPU intervals completed */
	GP_CNT_RB_DROPS = 2,    /* ring buffer reservations that failed */
	GP_CNT_MAX = 3,
};

#endif /* GHOSTPROF_H */
