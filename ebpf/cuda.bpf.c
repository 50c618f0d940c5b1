// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Host side of the GPU: uprobes on the CUDA driver (kernel and graph launches, blocking
 * synchronize and copy calls, kernel names) and on NCCL (collectives with their communicator,
 * rank and per-communicator sequence number). Every uprobe carries its function (enum gp_api)
 * as the attach cookie, so one program serves every function of the same shape.
 *
 * Uprobes are attached to library files for every process (pid -1); the traced set, kept
 * by user space and by the fork/exit tracepoints below, limits them to the traced job and its
 * descendants, so other processes pay one bit test (`target_words`, targets.h).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ghostprof.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ghostprof's own pid, never traced. */
const volatile __u32 self_tgid = 0;
/* Follow children of traced processes (set to 0 to trace exactly the listed pids). */
const volatile __u32 follow_forks = 1;

/* Dummy instances so the record types land in BTF and in the skeleton's types. */
struct gp_launch_event _gp_launch_event = {};
struct gp_call_event _gp_call_event = {};
struct gp_nccl_event _gp_nccl_event = {};
struct gp_func_name_event _gp_func_name_event = {};
struct gp_comm_event _gp_comm_event = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

/* Only losses are counted: a per-CPU map update on every launch costs more than it tells
 * (records that arrive are counted in user space). Indexes 0-3 are kept for the ABI. */
enum cuda_counter {
	CNT_RB_DROPS = 4,
	CNT_INFLIGHT_MISS = 5,
	CNT_MAX = 6,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* The traced processes (tgid -> 1), the set user space lists (`HostCollector::targets`); kept
 * equal to the bitmap of targets.h, which is what the programs test, by gp_fork/gp_exit below
 * and by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} targets SEC(".maps");

#include "targets.h"

struct inflight {
	__u64 start_ns;
	__u64 a, b, c, d;
};

/* (tid << 32 | api) -> arguments saved at entry for the return probe. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct inflight);
} inflight SEC(".maps");

struct comm_info {
	__s32 rank;
	__s32 nranks;
};

/* A communicator of one process: ncclComm_t values are addresses in that process, so two
 * ranks (processes) can hold the same one (same heap layout, no ASLR). */
struct comm_key {
	__u64 comm;
	__u32 tgid;
	__u32 pad;
};

/* (process, ncclComm_t) -> rank and size, from ncclCommInitRank. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct comm_key);
	__type(value, struct comm_info);
} comms SEC(".maps");

/* (process, ncclComm_t) -> next sequence number. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct comm_key);
	__type(value, __u64);
} comm_seq SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline bool traced(__u32 tgid)
{
	return tgid != self_tgid && in_targets(tgid);
}

static __always_inline void set_target_bit(__u32 tgid, bool on)
{
	struct gp_target_words *t = target_bitmap();
	if (!t || tgid >= GP_TARGET_WORDS * 64)
		return;
	__u32 word = target_word(tgid);
	__u64 bit = 1ULL << (tgid & 63);
	if (on)
		__sync_fetch_and_or(&t->w[word], bit);
	else
		__sync_fetch_and_and(&t->w[word], ~bit);
}

/* Argument n (1-based) of a function at its first instruction. */
static __always_inline __u64 arg_n(struct pt_regs *ctx, int n)
{
	__u64 v = 0;
#if defined(__TARGET_ARCH_x86)
	switch (n) {
	case 1: return PT_REGS_PARM1(ctx);
	case 2: return PT_REGS_PARM2(ctx);
	case 3: return PT_REGS_PARM3(ctx);
	case 4: return PT_REGS_PARM4(ctx);
	case 5: return PT_REGS_PARM5(ctx);
	case 6: return PT_REGS_PARM6(ctx);
	}
	/* Stack arguments: [sp] is the return address, then argument 7, 8, ... */
	bpf_probe_read_user(&v, sizeof(v), (void *)(PT_REGS_SP(ctx) + 8 * (n - 6)));
#elif defined(__TARGET_ARCH_arm64)
	switch (n) {
	case 1: return PT_REGS_PARM1(ctx);
	case 2: return PT_REGS_PARM2(ctx);
	case 3: return PT_REGS_PARM3(ctx);
	case 4: return PT_REGS_PARM4(ctx);
	case 5: return PT_REGS_PARM5(ctx);
	case 6: return PT_REGS_PARM6(ctx);
	case 7: return PT_REGS_PARM7(ctx);
	case 8: return PT_REGS_PARM8(ctx);
	}
	bpf_probe_read_user(&v, sizeof(v), (void *)(PT_REGS_SP(ctx) + 8 * (n - 9)));
#endif
	return v;
}

static __always_inline void fill_hdr(struct gp_event_hdr *h, __u16 kind, __u16 size, __u64 now)
{
	h->kind = kind;
	h->size = size;
	h->cpu = bpf_get_smp_processor_id();
	h->ts_ns = now;
}

/* A launch record with its header and ids filled, or NULL (counted) when the ring is full. */
static __always_inline struct gp_launch_event *reserve_launch(__u64 id)
{
	__u64 now = bpf_ktime_get_ns();
	struct gp_launch_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_RB_DROPS);
		return NULL;
	}
	fill_hdr(&e->hdr, GP_EV_LAUNCH, sizeof(*e), now);
	e->pid = id >> 32;
	e->tid = (__u32)id;
	return e;
}

/* cuLaunchKernel, cuLaunchKernel_ptsz, cuLaunchCooperativeKernel(_ptsz):
 * (f, gx, gy, gz, bx, by, bz, sharedMemBytes, hStream, ...) */
SEC("uprobe")
int BPF_UPROBE(gp_launch)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!traced(id >> 32))
		return 0;
	struct gp_launch_event *e = reserve_launch(id);
	if (!e)
		return 0;
	e->func = arg_n(ctx, 1);
	e->grid[0] = arg_n(ctx, 2);
	e->grid[1] = arg_n(ctx, 3);
	e->grid[2] = arg_n(ctx, 4);
	e->block[0] = arg_n(ctx, 5);
	e->block[1] = arg_n(ctx, 6);
#if defined(__TARGET_ARCH_x86)
	/* Arguments 7-9 are adjacent on the stack: one user read instead of three (each
	 * bpf_probe_read_user costs ~60-70 ns here, measured by tools/bench probe). */
	__u64 stack[3] = {};
	bpf_probe_read_user(stack, sizeof(stack), (void *)(PT_REGS_SP(ctx) + 8));
	e->block[2] = stack[0];
	e->shared_mem_bytes = stack[1];
	e->stream = stack[2];
#else
	e->block[2] = arg_n(ctx, 7);
	e->shared_mem_bytes = arg_n(ctx, 8);
	e->stream = arg_n(ctx, 9);
#endif
	e->api = bpf_get_attach_cookie(ctx);
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

/* CUlaunchConfig as in cuda.h: six dims, shared memory, then the stream at offset 32. */
struct cu_launch_config {
	__u32 grid[3];
	__u32 block[3];
	__u32 shared_mem_bytes;
	__u32 pad;
	__u64 stream;
};

/* cuLaunchKernelEx(_ptsz)(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) */
SEC("uprobe")
int BPF_UPROBE(gp_launch_ex)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!traced(id >> 32))
		return 0;
	struct cu_launch_config cfg = {};
	bpf_probe_read_user(&cfg, sizeof(cfg), (void *)arg_n(ctx, 1));
	struct gp_launch_event *e = reserve_launch(id);
	if (!e)
		return 0;
	e->func = arg_n(ctx, 2);
	e->grid[0] = cfg.grid[0];
	e->grid[1] = cfg.grid[1];
	e->grid[2] = cfg.grid[2];
	e->block[0] = cfg.block[0];
	e->block[1] = cfg.block[1];
	e->block[2] = cfg.block[2];
	e->shared_mem_bytes = cfg.shared_mem_bytes;
	e->stream = cfg.stream;
	e->api = bpf_get_attach_cookie(ctx);
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

/* cuGraphLaunch(_ptsz)(CUgraphExec hGraphExec, CUstream hStream) */
SEC("uprobe")
int BPF_UPROBE(gp_graph_launch)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!traced(id >> 32))
		return 0;
	struct gp_launch_event *e = reserve_launch(id);
	if (!e)
		return 0;
	/* A graph launch has no grid of its own. */
	e->grid[0] = e->grid[1] = e->grid[2] = 0;
	e->block[0] = e->block[1] = e->block[2] = 0;
	e->shared_mem_bytes = 0;
	e->func = arg_n(ctx, 1);
	e->stream = arg_n(ctx, 2);
	e->api = bpf_get_attach_cookie(ctx);
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

static __always_inline __u64 inflight_key(__u64 id, __u32 api)
{
	return (id << 32) | api;
}

/* Entry of a bracketed call: synchronize, copies, NCCL groups, name lookups, comm init.
 * Saves the start time and the arguments the return probe needs. */
SEC("uprobe")
int BPF_UPROBE(gp_call_enter)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!traced(id >> 32))
		return 0;
	__u32 api = bpf_get_attach_cookie(ctx);
	struct inflight f = {};
	f.start_ns = bpf_ktime_get_ns();
	f.a = arg_n(ctx, 1);
	f.b = arg_n(ctx, 2);
	f.c = arg_n(ctx, 3);
	if (api >= GP_API_NCCL_BASE) {
		/* Collectives: pick count, dtype, comm and stream by signature. */
		switch (api) {
		case GP_API_NCCL_ALL_REDUCE:     /* (send, recv, count, dtype, op, comm, stream) */
		case GP_API_NCCL_REDUCE_SCATTER: /* (send, recv, recvcount, dtype, op, comm, stream) */
		case GP_API_NCCL_BROADCAST:      /* (send, recv, count, dtype, root, comm, stream) */
			f.a = arg_n(ctx, 3);
			f.b = arg_n(ctx, 4);
			f.c = arg_n(ctx, 6);
			f.d = arg_n(ctx, 7);
			break;
		case GP_API_NCCL_ALL_GATHER:     /* (send, recv, sendcount, dtype, comm, stream) */
			f.a = arg_n(ctx, 3);
			f.b = arg_n(ctx, 4);
			f.c = arg_n(ctx, 5);
			f.d = arg_n(ctx, 6);
			break;
		case GP_API_NCCL_REDUCE:         /* (send, recv, count, dtype, op, root, comm, stream) */
			f.a = arg_n(ctx, 3);
			f.b = arg_n(ctx, 4);
			f.c = arg_n(ctx, 7);
			f.d = arg_n(ctx, 8);
			break;
		case GP_API_NCCL_SEND:           /* (buf, count, dtype, peer, comm, stream) */
		case GP_API_NCCL_RECV:
			f.a = arg_n(ctx, 2);
			f.b = arg_n(ctx, 3);
			f.c = arg_n(ctx, 5);
			f.d = arg_n(ctx, 6);
			break;
		default:
			return 0;
		}
	}
	__u64 key = inflight_key(id, api);
	bpf_map_update_elem(&inflight, &key, &f, BPF_ANY);
	return 0;
}

static __always_inline int emit_call(__u64 id, __u32 api, struct inflight *f, __u64 now, __s32 ret)
{
	struct gp_call_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_RB_DROPS);
		return 0;
	}
	fill_hdr(&e->hdr, GP_EV_CALL, sizeof(*e), now);
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->start_ns = f->start_ns;
	e->end_ns = now;
	e->api = api;
	e->ret = ret;
	switch (api) {
	case GP_API_MEMCPY_HTOD:
	case GP_API_MEMCPY_DTOH:
	case GP_API_MEMCPY_DTOD:
	case GP_API_MEMCPY:
		e->arg = f->c; /* (dst, src, bytes) */
		break;
	default:
		e->arg = f->a; /* stream, event, or nothing */
	}
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

static __always_inline int emit_nccl(__u64 id, __u32 api, struct inflight *f, __u64 now, __s32 ret)
{
	__u64 comm = f->c;
	struct comm_key ck = { .comm = comm, .tgid = id >> 32, .pad = 0 };
	__u64 seq = 0;
	__u64 *next = bpf_map_lookup_elem(&comm_seq, &ck);
	if (next) {
		seq = __sync_fetch_and_add(next, 1);
	} else {
		__u64 one = 1;
		bpf_map_update_elem(&comm_seq, &ck, &one, BPF_NOEXIST);
	}
	struct gp_nccl_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_RB_DROPS);
		return 0;
	}
	fill_hdr(&e->hdr, GP_EV_NCCL, sizeof(*e), now);
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->start_ns = f->start_ns;
	e->end_ns = now;
	e->comm = comm;
	e->stream = f->d;
	e->count = f->a;
	e->dtype = f->b;
	e->seq = seq;
	e->op = api - GP_API_NCCL_BASE;
	struct comm_info *ci = bpf_map_lookup_elem(&comms, &ck);
	e->rank = ci ? ci->rank : -1;
	e->nranks = ci ? ci->nranks : -1;
	e->ret = ret;
	e->pad = 0;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

static __always_inline int emit_name(__u64 id, __u32 api, __u64 func, const char *name, __u64 now)
{
	struct gp_func_name_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_RB_DROPS);
		return 0;
	}
	fill_hdr(&e->hdr, GP_EV_FUNC_NAME, sizeof(*e), now);
	e->pid = id >> 32;
	e->api = api;
	e->func = func;
	if (bpf_probe_read_user_str(e->name, sizeof(e->name), name) < 0)
		e->name[0] = 0;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(gp_call_exit, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!traced(id >> 32))
		return 0;
	__u32 api = bpf_get_attach_cookie(ctx);
	__u64 key = inflight_key(id, api);
	struct inflight *f = bpf_map_lookup_elem(&inflight, &key);
	if (!f) {
		count(CNT_INFLIGHT_MISS);
		return 0;
	}
	struct inflight saved = *f;
	bpf_map_delete_elem(&inflight, &key);
	__u64 now = bpf_ktime_get_ns();

	if (api >= GP_API_NCCL_BASE)
		return emit_nccl(id, api, &saved, now, (__s32)ret);

	if (api == GP_API_MODULE_GET_FUNCTION) {
		/* cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) */
		__u64 func = 0;
		if (ret != 0)
			return 0;
		bpf_probe_read_user(&func, sizeof(func), (void *)saved.a);
		return emit_name(id, api, func, (const char *)saved.c, now);
	}
	if (api == GP_API_FUNC_GET_NAME) {
		/* cuFuncGetName(const char **name, CUfunction hfunc) */
		__u64 name = 0;
		if (ret != 0)
			return 0;
		bpf_probe_read_user(&name, sizeof(name), (void *)saved.a);
		return emit_name(id, api, saved.b, (const char *)name, now);
	}
	if (api == GP_API_NCCL_COMM_INIT_RANK) {
		/* ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id (by value, on the
		 * stack: it takes no register), int rank) */
		__u64 comm = 0;
		bpf_probe_read_user(&comm, sizeof(comm), (void *)saved.a);
		struct comm_info ci = { .rank = (__s32)saved.c, .nranks = (__s32)saved.b };
		struct comm_key ck = { .comm = comm, .tgid = id >> 32, .pad = 0 };
		if (ret == 0 && comm)
			bpf_map_update_elem(&comms, &ck, &ci, BPF_ANY);
		struct gp_comm_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count(CNT_RB_DROPS);
			return 0;
		}
		fill_hdr(&e->hdr, GP_EV_COMM, sizeof(*e), now);
		e->pid = id >> 32;
		e->tid = (__u32)id;
		e->comm = comm;
		e->rank = ci.rank;
		e->nranks = ci.nranks;
		e->ret = (__s32)ret;
		e->pad = 0;
		bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		return 0;
	}
	return emit_call(id, api, &saved, now, (__s32)ret);
}

/* Children of traced processes are traced from their first instruction. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(gp_fork, struct task_struct *parent, struct task_struct *child)
{
	if (!follow_forks)
		return 0;
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if (ptgid == ctgid || !traced(ptgid))
		return 0;
	__u8 one = 1;
	if (bpf_map_update_elem(&targets, &ctgid, &one, BPF_ANY) == 0)
		set_target_bit(ctgid, true);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(gp_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	__u32 pid = BPF_CORE_READ(task, pid);
	/* The group leader leaves last (threads exit before it): forget the process then. */
	if (tgid == pid) {
		bpf_map_delete_elem(&targets, &tgid);
		set_target_bit(tgid, false);
	}
	return 0;
}
