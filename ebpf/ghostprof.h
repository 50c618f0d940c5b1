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
	GP_EV_OFFCPU = 1, /* a target thread was off-CPU for [start_ns, end_ns) */
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
};
_Static_assert(sizeof(struct gp_offcpu_event) == 56, "gp_offcpu_event is 56 bytes");

/* Indexes of the per-CPU counters in the `counters` array map. */
enum gp_counter {
	GP_CNT_SWITCHES = 0,    /* sched_switch hits that involved a target thread */
	GP_CNT_OFFCPU = 1,      /* off-CPU intervals completed */
	GP_CNT_RB_DROPS = 2,    /* ring buffer reservations that failed */
	GP_CNT_MAX = 3,
};

#endif /* GHOSTPROF_H */
