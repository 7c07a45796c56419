// Package quicid is the layout of the QUIC connection IDs that a
// generation mints, shared by the steering program (bpf/steer_quic.c,
// whose defines a test compares with these constants), handoffd's loader
// and the SDK's handoffquic. It holds no code that touches the kernel.
//
// A connection ID is Len bytes: the tag bits and the generation's slot in
// the first byte, then the low 32 bits of the SO_COOKIE of the socket the
// generation serves it on, then random bytes. The steering program reads
// the first five bytes of a packet's destination connection ID and sends
// the packet to the socket in that slot when its cookie matches.
package quicid

import "encoding/binary"

const (
	// Len is the length of the connection IDs that generations mint.
	Len = 12
	// Tag is the value of the top two bits of a connection ID's first
	// byte (TagMask); the low six hold the slot.
	Tag     = 0x40
	TagMask = 0xc0
	// Slots is the number of slots of a steering map: generation g sits
	// in slot g % Slots (bpf.Slots).
	Slots = 64
	// CookieLen is how many leading bytes of a connection ID the program
	// reads: the tag and slot byte, and the socket's id.
	CookieLen = 5
)

// Cookie is the leading CookieLen bytes of the connection IDs of the
// socket whose SO_COOKIE is sockCookie, in slot.
func Cookie(slot uint32, sockCookie uint64) [CookieLen]byte {
	var c [CookieLen]byte
	c[0] = Tag | byte(slot%Slots)
	binary.BigEndian.PutUint32(c[1:], SocketID(sockCookie))
	return c
}

// SocketID is the part of a socket's SO_COOKIE that its connection IDs
// carry. It is never 0, which the program takes for an empty slot.
func SocketID(sockCookie uint64) uint32 {
	id := uint32(sockCookie)
	if id == 0 {
		id = uint32(sockCookie>>32) | 1
	}
	return id
}

// Parse returns the slot and socket id that a connection ID carries, and
// false when it is no connection ID of this layout.
func Parse(cid []byte) (slot, id uint32, ok bool) {
	if len(cid) != Len || cid[0]&TagMask != Tag {
		return 0, 0, false
	}
	return uint32(cid[0] &^ TagMask), binary.BigEndian.Uint32(cid[1:CookieLen]), true
}

// SlotOf returns the slot of generation gen.
func SlotOf(gen int) uint32 { return uint32(gen % Slots) }
