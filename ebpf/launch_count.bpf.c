// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Counts calls of one user-space function (attached by the loader as a uprobe, e.g. to
 * cuLaunchKernel in a libcuda.so.1). Used by the gpusim root test to check that a real uprobe
 * sees exactly the launches gpusim's ground truth reports.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set through rodata before load: count only this process (tgid); 0 counts every process. */
const volatile __u32 target_tgid = 0;

/* Hits so far; read by user space through the skeleton's bss. */
__u64 launches = 0;

SEC("uprobe")
int BPF_UPROBE(count_launch)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (target_tgid && tgid != target_tgid)
		return 0;
	__sync_fetch_and_add(&launches, 1);
	return 0;
}
