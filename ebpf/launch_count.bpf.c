// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Counts calls of user-space functions: the loader attaches `count_call` as a uprobe to each
 * function of interest (e.g. cuLaunchKernel in libcuda.so.1, ncclAllReduce in libnccl.so.2)
 * with a distinct attach cookie, and the hits land in counts[cookie]. Used by the gpusim root
 * test to check that real uprobes see exactly the calls gpusim's ground truth reports.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define LC_MAX_COUNTERS 8

/* Set through rodata before load: count only this process (tgid); 0 counts every process. */
const volatile __u32 target_tgid = 0;

/* Hits per attach cookie; read by user space through the skeleton's bss. */
__u64 counts[LC_MAX_COUNTERS] = {};

SEC("uprobe")
int BPF_UPROBE(count_call)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 slot = bpf_get_attach_cookie(ctx);

	if (target_tgid && tgid != target_tgid)
		return 0;
	if (slot >= LC_MAX_COUNTERS)
		return 0;
	__sync_fetch_and_add(&counts[slot], 1);
	return 0;
}
