/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The traced processes as one bit per tgid (2^22 bits: PID_MAX_LIMIT on 64-bit): the filter of
 * every ghostprof program. One map for all of them: user space creates it with the cuda program
 * and hands its fd to the others (libbpf's reuse_fd), so they must agree on its shape. The cuda
 * program's fork/exit tracepoints keep it current (atomic ORs and ANDs), and user space sets
 * and clears bits through its mmapped page (HostCollector::add_target/remove_target).
 *
 * A bit test instead of a hash lookup: the uprobes run it per launch (35-40 ns less per launch
 * on the AMD EPYC VM than the hash), and the scheduler program per system call, context switch
 * and wakeup of every process on the host, where nearly every test is a miss.
 */
#ifndef GHOSTPROF_TARGETS_H
#define GHOSTPROF_TARGETS_H

#define GP_TARGET_WORDS (1 << 16)

struct gp_target_words {
	__u64 w[GP_TARGET_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gp_target_words);
} target_words SEC(".maps");

/* The word of `tgid`'s bit, masked where it is used: clang drops a mask that a bounds check
 * already implies and indexes from a register the verifier has no bound for. */
static __always_inline __u32 target_word(__u32 tgid)
{
	__u32 word = tgid >> 6;
	barrier_var(word);
	return word & (GP_TARGET_WORDS - 1);
}

/* The bitmap (never null for an array of one element, checked for the verifier). */
static __always_inline struct gp_target_words *target_bitmap(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&target_words, &zero);
}

/* Whether `tgid`'s bit is set in `bits`. */
static __always_inline bool bit_of(const __u64 *bits, __u32 tgid)
{
	if (tgid >= GP_TARGET_WORDS * 64)
		return false;
	return (bits[target_word(tgid)] >> (tgid & 63)) & 1;
}

/* Whether `tgid` is traced. */
static __always_inline bool in_targets(__u32 tgid)
{
	struct gp_target_words *t = target_bitmap();
	return t && bit_of(t->w, tgid);
}

#endif /* GHOSTPROF_TARGETS_H */
