//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// steer sends every new connection of one SO_REUSEPORT group to the
// listening socket of the active generation, and moves the requests of a
// closing listener to that socket too (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define SLOTS 64

// Listening sockets, one per generation: generation g sits in slot g % SLOTS.
struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} sockets SEC(".maps");

// The slot that receives new connections. Swapping is one update of it.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} active SEC(".maps");

struct slot_counters {
	__u64 selected; // new connections sent to the slot
	__u64 migrated; // requests moved to the slot from a closing listener
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct slot_counters);
} counters SEC(".maps");

// Decisions left to the kernel's hash because the active slot was unset or
// empty; the kernel then picks any socket of the group.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fallbacks SEC(".maps");

static __always_inline int fallback(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&fallbacks, &zero);

	if (n)
		*n += 1;
	return SK_PASS;
}

SEC("sk_reuseport/migrate")
int steer(struct sk_reuseport_md *md)
{
	__u32 zero = 0;
	__u32 *slot = bpf_map_lookup_elem(&active, &zero);

	if (!slot)
		return fallback();

	// Copy the slot: the helper wants a key on the stack, and the value
	// may change under us.
	__u32 key = *slot;
	if (bpf_sk_select_reuseport(md, &sockets, &key, 0) != 0)
		return fallback();

	struct slot_counters *c = bpf_map_lookup_elem(&counters, &key);
	if (c) {
		if (md->migrating_sk)
			c->migrated += 1;
		else
			c->selected += 1;
	}
	return SK_PASS;
}

char __license[] SEC("license") = "Dual MIT/GPL";
