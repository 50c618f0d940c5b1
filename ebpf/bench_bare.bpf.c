// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The baseline of `tools/bench probe`: a uprobe that does nothing. Its cost per hit is what
 * the kernel charges for any uprobe at that address (trap, emulation of the probed
 * instruction, entering BPF), so ghostprof's own probe is judged by what it adds on top.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("uprobe")
int BPF_UPROBE(bare_hit)
{
	return 0;
}
