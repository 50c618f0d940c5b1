// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Off-CPU intervals of the target's threads from sched_switch, with the syscall in progress
 * (raw_syscalls/sys_enter) to tell futex, I/O, sleep and poll waits apart. The first brick of
 * the host-stall collector: counters per CPU, one record per completed interval.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ghostprof.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set through rodata before load: a process (tgid) to follow besides the traced set. */
const volatile __u32 target_tgid = 0;
/* ghostprof's own pid, never traced (its drain loop would feed back on itself). */
const volatile __u32 self_tgid = 0;

/* Dummy instance so the record type lands in BTF and in the skeleton's types. */
struct gp_offcpu_event _gp_offcpu_event = {};
struct gp_io_event _gp_io_event = {};

#include "targets.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GP_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct switch_out {
	__u64 ts_ns;
	__u64 state;
	__s32 syscall_nr;
	__u32 pad;
	__u64 wakeup_ns;
};

struct syscall_in {
	__u64 start_ns;
	__s32 nr;
	__s32 fd;
	__u64 open_flags; /* open/openat: the flags argument */
};

/* tid -> when it left the CPU */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct switch_out);
} off_since SEC(".maps");

/* tid -> syscall in progress */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct syscall_in);
} in_syscall SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

/*
 * Processes this program alone still follows, one bit per tgid as in targets.h: while `attach`
 * detaches, the launch probes stop (the pids leave the traced set) but the device timeline
 * runs on until CUPTI is off, and stalls in that tail must still be seen. Set and cleared by
 * user space (SchedCollector::hold/release) through the mmapped .bss.
 */
__u64 held_bits[GP_TARGET_WORDS] = {};

/* Run for every system call, context switch and wakeup on the host: two bit tests (the
 * traced set's, then the held one's), no hash lookup, for the processes it does not follow. */
static __always_inline bool is_target(__u32 tgid)
{
	if (tgid == 0 || tgid == self_tgid)
		return false;
	if (target_tgid != 0 && tgid == target_tgid)
		return true;
	return in_targets(tgid) || bit_of(held_bits, tgid);
}

#define GP_S_IFMT 0170000
#define GP_S_IFREG 0100000
#define GP_TASK_UNINTERRUPTIBLE 0x2

#define GP_O_TRUNC 01000

/* Syscalls whose whole duration is I/O on a file (x86_64 numbers). */
static __always_inline bool is_file_io(__s32 nr)
{
	switch (nr) {
	case 0: case 1: case 17: case 18: case 19: case 20: /* read write pread64 pwrite64 readv writev */
	case 295: case 296: case 327: case 328:            /* preadv pwritev preadv2 pwritev2 */
	case 74: case 75: case 277:                         /* fsync fdatasync sync_file_range */
	case 77: case 285:                                  /* ftruncate fallocate */
		return true;
	default:
		return false;
	}
}

/* Syscalls that return a byte count (the others' return value is not bytes). */
static __always_inline bool moves_bytes(__s32 nr)
{
	return nr == 0 || nr == 1 || (nr >= 17 && nr <= 20) || nr == 295 || nr == 296 || nr == 327 || nr == 328;
}

/*
 * An open that truncates (O_TRUNC, creat) frees the file's page cache inside the syscall, on
 * CPU: 12 ms for a 64 MiB checkpoint file rewritten, 16 ms on a loaded host. It is file I/O,
 * not launch overhead; its new fd (the return value) is checked like the others' fd.
 */
static __always_inline bool is_truncating_open(const struct syscall_in *in)
{
	return in->nr == 85 || ((in->nr == 2 || in->nr == 257) && (in->open_flags & GP_O_TRUNC));
}

static __always_inline bool fd_is_regular(int fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if (fd < 0 || (unsigned int)fd >= max)
		return false;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return false;
	__u16 mode = BPF_CORE_READ(f, f_inode, i_mode);
	return (mode & GP_S_IFMT) == GP_S_IFREG;
}

/* Syscall numbers are x86_64's; the reason is refined in user space for other arches. */
static __always_inline __u32 classify(__u64 state, __s32 nr)
{
	if (state == 0)
		return GP_STALL_PREEMPTED;
	/* Blocked uninterruptibly outside any syscall: a major page fault (or reclaim). */
	if (nr < 0 && (state & GP_TASK_UNINTERRUPTIBLE))
		return GP_STALL_PAGE_FAULT;
	switch (nr) {
	case 202: /* futex */
	case 449: /* futex_waitv */
		return GP_STALL_FUTEX;
	case 0: case 1: case 17: case 18: case 19: case 20: /* read write pread pwrite readv writev */
	case 74: case 75: /* fsync fdatasync */
	case 277: /* sync_file_range */
		return GP_STALL_IO;
	case 35: case 230: /* nanosleep clock_nanosleep */
		return GP_STALL_SLEEP;
	case 7: case 23: case 232: case 281: case 270: case 271: /* poll select epoll_wait epoll_pwait pselect ppoll */
		return GP_STALL_POLL;
	default:
		return GP_STALL_OTHER;
	}
}

/* BTF-typed raw tracepoints: unlike classic tracepoints they need no mounted tracefs. */
SEC("tp_btf/sys_enter")
int BPF_PROG(gp_sys_enter, struct pt_regs *regs, long syscall_id)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_target(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct syscall_in in = {};
	in.start_ns = bpf_ktime_get_ns();
	in.nr = (__s32)syscall_id;
	in.fd = (__s32)PT_REGS_PARM1_CORE_SYSCALL(regs);
	if (in.nr == 2) /* open(path, flags, mode) */
		in.open_flags = PT_REGS_PARM2_CORE_SYSCALL(regs);
	else if (in.nr == 257) /* openat(dirfd, path, flags, mode) */
		in.open_flags = PT_REGS_PARM3_CORE_SYSCALL(regs);
	bpf_map_update_elem(&in_syscall, &tid, &in, BPF_ANY);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(gp_sys_exit, struct pt_regs *regs, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_target(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct syscall_in *in = bpf_map_lookup_elem(&in_syscall, &tid);
	if (!in)
		return 0;
	bool opens = is_truncating_open(in);
	int fd = opens ? (int)ret : in->fd;
	if ((opens || is_file_io(in->nr)) && fd_is_regular(fd)) {
		struct gp_io_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (e) {
			__u64 now = bpf_ktime_get_ns();
			e->hdr.kind = GP_EV_IO;
			e->hdr.size = sizeof(*e);
			e->hdr.cpu = bpf_get_smp_processor_id();
			e->hdr.ts_ns = now;
			e->pid = id >> 32;
			e->tid = tid;
			e->start_ns = in->start_ns;
			e->end_ns = now;
			e->bytes = moves_bytes(in->nr) && ret > 0 ? ret : 0;
			e->fd = fd;
			e->syscall_nr = in->nr;
			bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		} else {
			count(GP_CNT_RB_DROPS);
		}
	}
	bpf_map_delete_elem(&in_syscall, &tid);
	return 0;
}

/* A target thread became runnable: from now until it runs it waits for a CPU. */
static __always_inline void woken(struct task_struct *p)
{
	if (!is_target(BPF_CORE_READ(p, tgid)))
		return;
	__u32 tid = BPF_CORE_READ(p, pid);
	struct switch_out *out = bpf_map_lookup_elem(&off_since, &tid);
	if (out && out->wakeup_ns == 0)
		out->wakeup_ns = bpf_ktime_get_ns();
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(gp_sched_wakeup, struct task_struct *p)
{
	woken(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(gp_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 prev_tgid = BPF_CORE_READ(prev, tgid);
	__u32 next_tgid = BPF_CORE_READ(next, tgid);
	bool prev_target = is_target(prev_tgid), next_target = is_target(next_tgid);
	if (!prev_target && !next_target)
		return 0;
	__u64 now = bpf_ktime_get_ns();

	if (prev_target) {
		__u32 tid = BPF_CORE_READ(prev, pid);
		struct switch_out out = {};
		struct syscall_in *in = bpf_map_lookup_elem(&in_syscall, &tid);
		out.ts_ns = now;
		out.state = BPF_CORE_READ(prev, __state);
		out.syscall_nr = in ? in->nr : -1;
		bpf_map_update_elem(&off_since, &tid, &out, BPF_ANY);
		count(GP_CNT_SWITCHES);
	}

	if (next_target) {
		__u32 tid = BPF_CORE_READ(next, pid);
		struct switch_out *out = bpf_map_lookup_elem(&off_since, &tid);
		if (!out)
			return 0;
		struct gp_offcpu_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count(GP_CNT_RB_DROPS);
			bpf_map_delete_elem(&off_since, &tid);
			return 0;
		}
		e->hdr.kind = GP_EV_OFFCPU;
		e->hdr.size = sizeof(*e);
		e->hdr.cpu = bpf_get_smp_processor_id();
		e->hdr.ts_ns = now;
		e->pid = next_tgid;
		e->tid = tid;
		e->start_ns = out->ts_ns;
		e->end_ns = now;
		e->prev_state = out->state;
		e->syscall_nr = out->syscall_nr;
		e->reason = classify(out->state, out->syscall_nr);
		e->wakeup_ns = out->state == 0 ? out->ts_ns : out->wakeup_ns;
		bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		bpf_map_delete_elem(&off_since, &tid);
		count(GP_CNT_OFFCPU);
	}
	return 0;
}
