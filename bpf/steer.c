//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// steer sends every new connection of one SO_REUSEPORT group to the
// listening socket of the active generation, and moves the requests of a
// closing listener to that socket too (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tracking.h"

#define SLOTS 64

// This listener's slot s is counted in tracking slot track_base + s. Set at
// load time; see loader.LoadSteeringWith.
volatile const __u32 track_base = 0;

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

// move_conn moves the count of a child socket that the kernel migrates from
// the accept queue of a closing listener to the listener in slot. Request
// sockets need nothing: their child will be cloned from the new listener.
// Without a Tracking, conns is this Steering's own and stays empty.
static __always_inline void move_conn(struct bpf_sock *sk, __u32 slot)
{
	__u32 state = sk->state;
	__u32 to = track_base + slot;

	if (state != BPF_TCP_ESTABLISHED && state != BPF_TCP_CLOSE_WAIT &&
	    state != BPF_TCP_SYN_RECV)
		return;
	if (to >= TRACKING_SLOTS)
		return;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct conn *c = bpf_map_lookup_elem(&conns, &cookie);

	if (state == BPF_TCP_SYN_RECV) {
		// A fast-open child, queued before its handshake completed:
		// track counts it in when it does, in the slot noted here.
		struct conn pending = { .slot = to, .counted = 0 };

		if (!c)
			bpf_map_update_elem(&conns, &cookie, &pending, BPF_NOEXIST);
		else if (!c->counted)
			c->slot = to;
		return;
	}
	if (!c || !c->counted || c->slot == to)
		return;
	// The child is locked while it migrates, so track cannot count it
	// out under us.
	count_held(c->slot, -1, 0);
	c->slot = to;
	count_held(to, 1, 0);
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
	if (md->migrating_sk)
		move_conn(md->migrating_sk, key);
	return SK_PASS;
}

char __license[] SEC("license") = "Dual MIT/GPL";
