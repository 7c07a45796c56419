// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// tracking.h declares the maps that count, per tracking slot, the
// connections a generation holds. track.c owns them; steer.c declares the
// same maps so that a Steering loaded with a Tracking can be given the
// Tracking's maps (MapReplacements) and move the count of a connection
// that the kernel migrates from a closing listener.

#ifndef HANDOFF_TRACKING_H
#define HANDOFF_TRACKING_H

// Tracking slots: a Steering with track_base b counts its slot s in
// tracking slot b + s. 64 services of 64 slots each.
#define TRACKING_SLOTS 4096

// Room for this many connections held at once, over all services.
#define MAX_CONNS (1 << 20)

// States from include/net/tcp_states.h; they equal BPF_TCP_* of bpf.h.
#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_CLOSE_WAIT 8

// One connection of a tagged listener.
struct conn {
	__u32 slot;    // tracking slot that counts it (or will)
	__u32 counted; // 0 while a migrated fast-open child waits for its ACK
};

// Counters of one tracking slot, per CPU: a connection may be counted in
// on one CPU and out on another, so held is signed and only the sum over
// CPUs is meaningful.
struct slot_count {
	__s64 held;     // connections ESTABLISHED or CLOSE_WAIT now
	__u64 accepted; // connections that reached ESTABLISHED, in total
};

// Connections counted now, by socket cookie. The cookie is the same in
// every program that sees the socket and never reused, unlike a 4-tuple,
// which repeats across network namespaces and over time.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CONNS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TRACKING_SLOTS);
	__type(key, __u32);
	__type(value, struct slot_count);
} conn_counts SEC(".maps");

static __always_inline void count_held(__u32 slot, __s64 delta, __u64 accepted)
{
	struct slot_count *c = bpf_map_lookup_elem(&conn_counts, &slot);

	if (!c)
		return;
	// Atomic although per CPU: a program in task context can be
	// interrupted by a softirq that runs the other program here.
	__sync_fetch_and_add(&c->held, delta);
	if (accepted)
		__sync_fetch_and_add(&c->accepted, accepted);
}

#endif
