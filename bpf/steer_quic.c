//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// steer_quic steers every datagram of one UDP SO_REUSEPORT group that
// carries QUIC. A plain reuseport group picks a socket by a hash of the
// 4-tuple over the sockets in it now, so a generation's sockets joining
// or leaving would move the packets of live connections to a process that
// does not know them. Here the connection ID decides instead:
//
// * A connection ID that a generation minted starts with a cookie: the
//   byte QUIC_CID_TAG | slot, then the low 32 bits of the SO_COOKIE of
//   the generation's socket. A packet whose destination connection ID
//   carries the cookie of the socket in that slot goes to that socket,
//   whatever the active slot, for as long as the socket lives. The client
//   may change its address (migration): the connection ID stays the key.
// * A packet with no cookie starts a connection (an Initial or 0-RTT
//   packet, whose destination ID the client chose at random): it goes to
//   the active slot, or to the canary's by the split, and its destination
//   ID is remembered for a while in flows, so that the rest of the same
//   handshake (a ClientHello spread over two datagrams, retransmitted
//   Initials, 0-RTT) follows it even when the active slot flips between
//   two of its packets. Once the client has seen the server's first
//   packet it uses the server's connection ID, which carries the cookie.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SLOTS 64

// The length of the connection IDs that generations mint, and the top
// bits of their first byte (the slot is in the low six).
#define QUIC_CID_LEN 12
#define QUIC_CID_TAG 0x40
#define QUIC_CID_TAG_MASK 0xc0

// Offsets in the datagram, from the UDP header (sk_reuseport_md.data).
#define OFF_FLAGS 8	  // the first byte of the QUIC packet
#define OFF_SHORT_DCID 9  // short header: the DCID, QUIC_CID_LEN bytes
#define OFF_LONG_DCIDLEN 13 // long header: version at 9..12, then the DCID length
#define OFF_LONG_DCID 14
#define MAX_CID_LEN 20

// QUIC v1 long-header packet types (RFC 9000, 17.2); QUIC v2 numbers them
// differently, but an unknown version here only means the packet is
// placed as a new one, which is what happens to both Initial types.
#define LONG_INITIAL 0
#define LONG_0RTT 1

// One generation's socket per slot: generation g sits in slot g % SLOTS.
struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} sockets SEC(".maps");

// The low 32 bits of the SO_COOKIE of the socket in each slot: a
// connection ID must carry it to be steered there. 0: no socket. Written
// before the socket enters sockets.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} socket_ids SEC(".maps");

// Where new connections go, in one word so that a flip, a canary's share
// and a promotion are each one update that no packet sees half done:
//   bits  0..5   the active slot
//   bits  8..13  the canary's slot
//   bit  15      sticky: split by client address, not by connection
//   bits 16..48  threshold: a new connection whose 32-bit hash is below it
//                goes to the canary (0: none, 1 << 32: all)
// The program reads it with one load; handoffd writes it with one atomic
// store through a mapping of the map (an update through the bpf syscall
// copies with memcpy, which may store a word in pieces).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} route SEC(".maps");

#define ROUTE_ACTIVE(r) ((__u32)((r) & 0x3f))
#define ROUTE_CANARY(r) ((__u32)(((r) >> 8) & 0x3f))
#define ROUTE_STICKY(r) (((r) >> 15) & 1)
#define ROUTE_THRESHOLD(r) (((r) >> 16) & 0x1ffffffffULL)

// A connection being set up, by the destination ID its client chose.
struct flow_key {
	__u8 dcid[MAX_CID_LEN];
	__u32 len;
};

// The slot each recent new connection went to. Entries are never removed:
// the LRU drops the oldest once it is full, by when their handshakes are
// long over (a handshake ends within seconds; 16384 of them would have to
// start in between).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u32);
} flows SEC(".maps");

struct quic_counters {
	__u64 initials; // new connections placed in the slot
	__u64 by_cid;   // packets sent by the cookie of their connection ID
	__u64 by_flow;  // packets of a handshake sent after its first one
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct quic_counters);
} counters SEC(".maps");

struct quic_misses {
	// Short-header packets without a known cookie (a connection of a
	// generation that is gone, or not QUIC), placed as new ones.
	__u64 strays;
	// Packets for which neither the chosen slot nor the other one held a
	// socket: the kernel's hash chose.
	__u64 fallbacks;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct quic_misses);
} misses SEC(".maps");

static __always_inline struct quic_misses *misses_now(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&misses, &zero);
}

// mix32 is murmur3's finalizer: a share of the hash range is that share
// of the connections.
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

// client_hash hashes the client's address of the datagram, for a sticky
// split: 0 when it cannot be read.
static __always_inline __u32 client_hash(struct sk_reuseport_md *md)
{
	__u32 addr[4] = {};
	int err;

	if (md->eth_protocol == bpf_htons(0x0800 /* ETH_P_IP */))
		// The source address of struct iphdr.
		err = bpf_skb_load_bytes_relative(md, 12, &addr[3], 4, BPF_HDR_START_NET);
	else
		// The source address of struct ipv6hdr.
		err = bpf_skb_load_bytes_relative(md, 8, addr, 16, BPF_HDR_START_NET);
	if (err)
		return 0;
	return mix32(addr[0] ^ mix32(addr[1] ^ mix32(addr[2] ^ mix32(addr[3]))));
}

// select_slot sends the datagram to the socket in slot; 0 when it did.
static __always_inline int select_slot(struct sk_reuseport_md *md, __u32 slot)
{
	return bpf_sk_select_reuseport(md, &sockets, &slot, 0);
}

static __always_inline void count(__u32 slot, int what)
{
	struct quic_counters *c = bpf_map_lookup_elem(&counters, &slot);

	if (!c)
		return;
	if (what == 0)
		c->initials += 1;
	else if (what == 1)
		c->by_cid += 1;
	else
		c->by_flow += 1;
}

// place sends a datagram that starts a connection to the active slot or,
// by the split, to the canary's, and returns the slot it went to (SLOTS
// when none held a socket). hash stands for the connection.
static __always_inline __u32 place(struct sk_reuseport_md *md, __u32 hash)
{
	__u32 zero = 0;
	__u64 *rp = bpf_map_lookup_elem(&route, &zero);
	// One load: the fields below all come from the same route.
	__u64 r = rp ? *(volatile __u64 *)rp : 0;
	__u32 slot = ROUTE_ACTIVE(r);
	__u32 other = slot;
	__u64 threshold = ROUTE_THRESHOLD(r);

	if (threshold && ROUTE_CANARY(r) != slot) {
		if (ROUTE_STICKY(r))
			hash = client_hash(md);
		if ((__u64)hash < threshold)
			slot = ROUTE_CANARY(r);
		else
			other = ROUTE_CANARY(r);
	}
	if (select_slot(md, slot) == 0)
		return slot;
	// A canary that died, or an active generation between its crash and
	// its replacement: the other one takes the connection.
	if (other != slot && select_slot(md, other) == 0)
		return other;
	return SLOTS;
}

// cookie_slot returns the slot whose socket minted the connection ID that
// starts with b (its first five bytes), or SLOTS.
static __always_inline __u32 cookie_slot(const __u8 *b)
{
	if ((b[0] & QUIC_CID_TAG_MASK) != QUIC_CID_TAG)
		return SLOTS;
	__u32 slot = b[0] & 0x3f;
	__u32 id = ((__u32)b[1] << 24) | ((__u32)b[2] << 16) | ((__u32)b[3] << 8) | b[4];
	__u32 *want = bpf_map_lookup_elem(&socket_ids, &slot);

	if (!want || *want == 0 || *want != id)
		return SLOTS;
	return slot;
}

// steer_new places a long-header packet without a cookie: a packet of a
// handshake already placed follows it, a new one is placed and
// remembered.
static __always_inline int steer_new(struct sk_reuseport_md *md, struct flow_key *key, __u8 type)
{
	__u32 *seen = bpf_map_lookup_elem(&flows, key);

	if (seen) {
		__u32 slot = *seen;
		if (select_slot(md, slot) == 0) {
			count(slot, 2);
			return SK_PASS;
		}
		// Its generation is gone: start over.
	}
	__u32 hash = mix32(((__u32)key->dcid[0] << 24 | (__u32)key->dcid[1] << 16 |
			    (__u32)key->dcid[2] << 8 | key->dcid[3]) ^
			   mix32((__u32)key->dcid[4] << 24 | (__u32)key->dcid[5] << 16 |
				 (__u32)key->dcid[6] << 8 | key->dcid[7]) ^ key->len);
	__u32 slot = place(md, hash);
	if (slot >= SLOTS) {
		struct quic_misses *m = misses_now();
		if (m)
			m->fallbacks += 1;
		return SK_PASS;
	}
	if (type != LONG_INITIAL && type != LONG_0RTT)
		return SK_PASS;
	// Another CPU may have placed a datagram of the same handshake a
	// moment ago: the first one to be remembered wins.
	if (bpf_map_update_elem(&flows, key, &slot, BPF_NOEXIST) != 0) {
		seen = bpf_map_lookup_elem(&flows, key);
		if (seen && *seen != slot && select_slot(md, *seen) == 0) {
			count(*seen, 2);
			return SK_PASS;
		}
	}
	count(slot, 0);
	return SK_PASS;
}

static __always_inline int steer_stray(struct sk_reuseport_md *md)
{
	struct quic_misses *m = misses_now();

	if (m)
		m->strays += 1;
	if (place(md, md->hash) >= SLOTS && m)
		m->fallbacks += 1;
	return SK_PASS;
}

SEC("sk_reuseport")
int steer_quic(struct sk_reuseport_md *md)
{
	__u8 head[1 + MAX_CID_LEN] = {};

	// A datagram too short for the smallest long header is no QUIC packet
	// of a connection being set up; one with a short header needs the
	// flags byte and a whole connection ID.
	if (bpf_skb_load_bytes(md, OFF_FLAGS, head, 1 + 5) != 0)
		return steer_stray(md);
	if (!(head[0] & 0x80)) {
		__u32 slot = cookie_slot(&head[1]);
		if (slot < SLOTS && select_slot(md, slot) == 0) {
			count(slot, 1);
			return SK_PASS;
		}
		return steer_stray(md);
	}

	__u8 type = (head[0] >> 4) & 3;
	__u8 dcid_len;
	if (bpf_skb_load_bytes(md, OFF_LONG_DCIDLEN, &dcid_len, 1) != 0 || dcid_len > MAX_CID_LEN)
		return steer_stray(md);
	struct flow_key key = {};
	key.len = dcid_len;
	if (dcid_len == QUIC_CID_LEN) {
		if (bpf_skb_load_bytes(md, OFF_LONG_DCID, key.dcid, QUIC_CID_LEN) != 0)
			return steer_stray(md);
		// A later Initial or a Handshake packet of a connection whose
		// server spoke first: the client uses the server's ID now.
		__u32 slot = cookie_slot(key.dcid);
		if (slot < SLOTS && select_slot(md, slot) == 0) {
			count(slot, 1);
			return SK_PASS;
		}
	} else if (dcid_len > 0) {
		// The verifier wants a length it can bound; the DCID is followed
		// by at least the SCID length, the token length, the packet
		// length and a packet number, so MAX_CID_LEN bytes are there
		// unless the datagram is cut short, in which case read less.
		if (bpf_skb_load_bytes(md, OFF_LONG_DCID, key.dcid, MAX_CID_LEN) != 0 &&
		    bpf_skb_load_bytes(md, OFF_LONG_DCID, key.dcid, 8) != 0)
			return steer_stray(md);
		// Bytes past the DCID are not part of the key.
		for (int i = 0; i < MAX_CID_LEN; i++)
			if (i >= dcid_len)
				key.dcid[i] = 0;
	}
	return steer_new(md, &key, type);
}

char __license[] SEC("license") = "Dual MIT/GPL";
