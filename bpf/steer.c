//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// steer sends every new connection of one SO_REUSEPORT group to the
// listening socket of the active generation, and moves the requests of a
// closing listener to that socket too (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE).
//
// A canary shares new connections between the active slot and one more
// slot by weight: by the kernel's flow hash, or by a hash of the client
// address so that a client stays on one generation. Health probes of
// handoffd, recognised by their source address and port, go to the slot
// of the generation they check whatever the weights say.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

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

// How new connections are shared between the active slot and a canary:
// one 64-bit word, which the program reads with one load and handoffd
// writes with one atomic store through a mapping of the map (it is
// mmapable), so that no connection sees a share change, a promotion or a
// rollback half done. A connection whose 32-bit hash is below the
// threshold goes to the canary's slot: 0 sends none, 1 << 32 all.
//
//   bits  0-32  threshold
//   bits 40-47  the canary's slot
//   bit  48     sticky: split by client address instead of by flow
#define SPLIT_THRESHOLD_BITS 33
#define SPLIT_SLOT_SHIFT 40
#define SPLIT_STICKY_SHIFT 48

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} splits SEC(".maps");

// The source of one health-probe connection of handoffd. addr is IPv6 or
// IPv4-mapped IPv6, in network byte order; port is in host byte order.
struct probe_key {
	__u32 addr[4];
	__u32 port;
};

// Probe sources and the slot their connections go to. handoffd adds a
// source after binding the probe socket and before connecting, and
// removes it when the probe connection closes.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct probe_key);
	__type(value, __u32);
} probes SEC(".maps");

// How many sources the probes map holds, kept by handoffd beside it: while
// it is 0 the program reads no client address for probes.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} probe_count SEC(".maps");

struct split_counts {
	__u64 probed;      // probe connections sent to the slot
	__u64 probe_drops; // probe SYNs dropped because the slot was empty
	__u64 failovers;   // connections sent here because the slot the split chose was empty
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct split_counts);
} split_counters SEC(".maps");

static __always_inline int fallback(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&fallbacks, &zero);

	if (n)
		*n += 1;
	return SK_PASS;
}

// SK_LOAD32 reads a 32-bit field of a struct bpf_sock at its constant
// offset. Plain loads in two branches get merged by clang into one load
// from sk plus a variable offset, which the verifier refuses for a socket
// pointer; an asm load keeps each offset where it is.
#define SK_LOAD32(sk, field) ({                                              \
	__u32 __v;                                                           \
	asm volatile("%0 = *(u32 *)(%1 + %2)"                                \
		     : "=r"(__v)                                             \
		     : "r"(sk), "i"(__builtin_offsetof(struct bpf_sock, field))); \
	__v;                                                                 \
})

// client_addr reads the client address of a new connection from its
// packet, or of a migrating one from its socket, as IPv6 or IPv4-mapped
// IPv6 so that both paths agree. It returns 0 when it found one.
static __always_inline int client_addr(struct sk_reuseport_md *md, __u32 addr[4])
{
	struct bpf_sock *sk = md->migrating_sk;

	if (sk) {
		if (sk->family == 2 /* AF_INET */) {
			addr[0] = 0;
			addr[1] = 0;
			addr[2] = bpf_htonl(0xffff);
			addr[3] = SK_LOAD32(sk, dst_ip4);
			return 0;
		}
		addr[0] = SK_LOAD32(sk, dst_ip6[0]);
		addr[1] = SK_LOAD32(sk, dst_ip6[1]);
		addr[2] = SK_LOAD32(sk, dst_ip6[2]);
		addr[3] = SK_LOAD32(sk, dst_ip6[3]);
		return 0;
	}
	if (md->eth_protocol == bpf_htons(0x0800 /* ETH_P_IP */)) {
		addr[0] = 0;
		addr[1] = 0;
		addr[2] = bpf_htonl(0xffff);
		// The source address of struct iphdr.
		return bpf_skb_load_bytes_relative(md, 12, &addr[3], 4, BPF_HDR_START_NET);
	}
	// The source address of struct ipv6hdr.
	return bpf_skb_load_bytes_relative(md, 8, addr, 16, BPF_HDR_START_NET);
}

// addr_hash mixes the four words of an address into 32 bits (murmur3's
// finalizer on a multiply-xor chain), spread evenly enough that a share of
// the clients is that share of the hash range.
static __always_inline __u32 addr_hash(const __u32 addr[4])
{
	__u32 h = 0x9747b28c;

	for (int i = 0; i < 4; i++) {
		h ^= addr[i];
		h *= 0xcc9e2d51;
		h = (h << 15) | (h >> 17);
		h *= 0x1b873593;
	}
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

// probe_slot finds the slot a health probe of handoffd goes to: it
// returns 1 and sets *slot when the new connection comes from a probe
// source.
static __always_inline int probe_slot(struct sk_reuseport_md *md, const __u32 addr[4], __u32 *slot)
{
	void *data = md->data;
	void *data_end = md->data_end;
	struct probe_key key = {};

	if (md->ip_protocol != 6 /* IPPROTO_TCP */)
		return 0;
	// data starts at the TCP header; its first field is the source port.
	if (data + sizeof(__u16) > data_end)
		return 0;
	key.port = bpf_ntohs(*(__u16 *)data);
	key.addr[0] = addr[0];
	key.addr[1] = addr[1];
	key.addr[2] = addr[2];
	key.addr[3] = addr[3];
	__u32 *s = bpf_map_lookup_elem(&probes, &key);
	if (!s)
		return 0;
	*slot = *s;
	return 1;
}

// steer_probe sends a probe connection to its slot. A probe whose slot is
// empty is dropped, never sent elsewhere: an answer from another
// generation would pass the check of one that is gone.
static __always_inline int steer_probe(struct sk_reuseport_md *md, __u32 slot)
{
	struct split_counts *c = bpf_map_lookup_elem(&split_counters, &slot);

	if (bpf_sk_select_reuseport(md, &sockets, &slot, 0) != 0) {
		if (c)
			c->probe_drops += 1;
		return SK_DROP;
	}
	if (c)
		c->probed += 1;
	return SK_PASS;
}

SEC("sk_reuseport/migrate")
int steer(struct sk_reuseport_md *md)
{
	__u32 zero = 0;
	__u32 addr[4] = {};
	int have_addr = 0;

	__u32 *probing = bpf_map_lookup_elem(&probe_count, &zero);
	if (!md->migrating_sk && probing && *probing) {
		have_addr = client_addr(md, addr) == 0;
		__u32 probe;
		if (have_addr && probe_slot(md, addr, &probe))
			return steer_probe(md, probe);
	}

	__u32 *slot = bpf_map_lookup_elem(&active, &zero);
	if (!slot)
		return fallback();

	// Copy the slots: the helper wants a key on the stack, and the
	// values may change under us.
	__u32 key = *slot;
	__u32 other = key;
	__u64 *sp = bpf_map_lookup_elem(&splits, &zero);
	// One load: the fields below all come from the same split.
	__u64 split = sp ? *(volatile __u64 *)sp : 0;
	__u64 threshold = split & ((1ULL << SPLIT_THRESHOLD_BITS) - 1);
	__u32 canary = (split >> SPLIT_SLOT_SHIFT) & 0xff;
	if (threshold && canary != key) {
		__u32 hash = md->hash;
		if ((split >> SPLIT_STICKY_SHIFT) & 1) {
			if (!have_addr)
				have_addr = client_addr(md, addr) == 0;
			// Without an address the flow hash still splits.
			if (have_addr)
				hash = addr_hash(addr);
		}
		if ((__u64)hash < threshold) {
			other = key;
			key = canary;
		} else {
			other = canary;
		}
	}

	if (bpf_sk_select_reuseport(md, &sockets, &key, 0) != 0) {
		// The chosen slot is empty: its generation closed its socket
		// (a canary that crashed, or the listener that is closing and
		// whose requests migrate). The other generation stays.
		if (other == key || bpf_sk_select_reuseport(md, &sockets, &other, 0) != 0)
			return fallback();
		key = other;
		struct split_counts *f = bpf_map_lookup_elem(&split_counters, &key);
		if (f)
			f->failovers += 1;
	}

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
