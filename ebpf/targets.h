/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The `targets` map (tgid -> 1), the process filter of every ghostprof program. One definition
 * for all of them: user space creates it with the cuda program and hands its fd to the others
 * (libbpf's reuse_fd), so they must agree on its shape. The cuda program's fork/exit
 * tracepoints keep it current.
 */
#ifndef GHOSTPROF_TARGETS_H
#define GHOSTPROF_TARGETS_H

#define GP_MAX_TARGETS 16384

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GP_MAX_TARGETS);
	__type(key, __u32);
	__type(value, __u8);
} targets SEC(".maps");

#endif /* GHOSTPROF_TARGETS_H */
