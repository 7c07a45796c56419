//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// track counts, per tracking slot, the server-side TCP connections that are
// ESTABLISHED or CLOSE_WAIT and came from a listening socket that handoffd
// tagged with that slot. It is a sock_ops program attached to handoffd's
// cgroup: it runs for the TCP sockets of that cgroup only, and a child
// socket is in its listener's cgroup. Sockets that carry no tag cost a
// switch, or one socket storage lookup when they are established.
//
// A tracing program (tp_btf/inet_sock_set_state) sees the same changes,
// but the kernel skips it when it is already running on the CPU, as when
// a softirq interrupts it: the count of such a socket would drift for
// good. The kernel runs cgroup programs on every call, nested or not.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tracking.h"

#define ENOENT 2 // include/uapi/asm-generic/errno-base.h

struct listener_tag {
	__u32 slot;
};

// The tag of a listening socket, set from user space with the socket's fd
// as key. BPF_F_CLONE copies it into every child the listener creates
// (sk_clone_lock), so a new connection knows its listener.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct listener_tag);
} listener_slot SEC(".maps");

// Connections not counted in, or not counted out, because the kernel
// refused an update of conns (full, out of memory) or the state callbacks
// of the socket.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} overflows SEC(".maps");

static __always_inline void overflow(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&overflows, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline struct listener_tag *tag_of(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return 0;
	return bpf_sk_storage_get(&listener_slot, sk, 0, 0);
}

static __always_inline void count_in(struct bpf_sock_ops *skops, __u32 tagged_slot)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct conn c = { .slot = tagged_slot, .counted = 1 };

	// NOEXIST makes counting in idempotent: while a new program replaces
	// an old one, both run, and only one insert succeeds.
	long err = bpf_map_update_elem(&conns, &cookie, &c, BPF_NOEXIST);
	if (err == 0) {
		count_held(tagged_slot, 1, 1);
		return;
	}
	struct conn *e = bpf_map_lookup_elem(&conns, &cookie);
	if (e) {
		// A fast-open child that steer migrated before its handshake
		// completed: it belongs to the listener it moved to.
		if (!e->counted) {
			e->counted = 1;
			count_held(e->slot, 1, 1);
		}
		return;
	}
	overflow();
}

static __always_inline void count_out(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct conn *e = bpf_map_lookup_elem(&conns, &cookie);

	if (!e)
		return;
	__u32 slot = e->slot, counted = e->counted;
	// Only the program whose delete succeeds counts out; -ENOENT means
	// another instance did.
	long err = bpf_map_delete_elem(&conns, &cookie);
	if (err == 0) {
		if (counted)
			count_held(slot, -1, 0);
	} else if (err != -ENOENT) {
		overflow();
	}
}

// established runs for the child of a passive open, once, before it
// leaves SYN_RECV: at the final ACK, or at the SYN of a fast open. It asks
// for the state callbacks of tagged children only, which see the child
// reach ESTABLISHED and leave it.
static __always_inline void established(struct bpf_sock_ops *skops)
{
	struct listener_tag *tag = tag_of(skops);

	if (!tag)
		return;
	// Keep the flags that other programs set on the socket. One of them
	// that sets its own without keeping ours would stop our callbacks,
	// and this connection would never be counted out.
	if (bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						     BPF_SOCK_OPS_STATE_CB_FLAG) != 0) {
		overflow();
		return;
	}
	// Kernels so far call this in SYN_RECV; should one call it after
	// the change, no callback would follow.
	if (skops->state == BPF_TCP_ESTABLISHED)
		count_in(skops, tag->slot);
}

static __always_inline void state_changed(struct bpf_sock_ops *skops, __u32 oldstate,
					  __u32 newstate)
{
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		struct listener_tag *tag = tag_of(skops);

		if (tag)
			count_in(skops, tag->slot);
		return;
	}
	// Leaving ESTABLISHED or CLOSE_WAIT for anything but CLOSE_WAIT
	// counts out; a fast-open child that dies in SYN_RECV may have a
	// pending entry to drop.
	if (((oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT) &&
	     newstate != TCP_CLOSE_WAIT) ||
	    oldstate == TCP_SYN_RECV)
		count_out(skops);
}

SEC("sockops")
int track(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		established(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		state_changed(skops, skops->args[0], skops->args[1]);
		break;
	}
	// 1 is "carry on"; 0 would make the kernel drop the replies of other
	// sock_ops programs (RTO, ECN, window) for this call.
	return 1;
}

char __license[] SEC("license") = "Dual MIT/GPL";
