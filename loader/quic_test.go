package loader

import (
	"crypto/rand"
	"encoding/binary"
	"math"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/internal/quicid"
)

// The tests here send datagrams shaped as QUIC packets, as far as the
// program reads them: the flags byte, and the destination connection ID
// where a short or a long header puts it.

func loadQUIC(t testing.TB) *QUICSteering {
	t.Helper()
	q, err := LoadQUICSteering(testPinDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Remove(); err != nil {
			t.Error(err)
		}
	})
	return q
}

// udpSocket returns a non-blocking UDP socket bound to addr:port (port 0
// picks one), with SO_REUSEPORT when reuseport, and its port.
func udpSocket(t testing.TB, addr [4]byte, port int, reuseport bool) (int, int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if reuseport {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr, Port: port}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port
}

// quicGroup makes a UDP reuseport group on 127.0.0.1 with one socket in
// each of slots, attached to q, and returns the sockets and the port.
func quicGroup(t testing.TB, q *QUICSteering, slots ...uint32) ([]int, int) {
	t.Helper()
	var fds []int
	port := 0
	for _, slot := range slots {
		fd, p := udpSocket(t, loopback, port, true)
		port = p
		if err := q.Attach(fd); err != nil {
			t.Fatal(err)
		}
		if err := q.Insert(slot, fd); err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	return fds, port
}

// cid mints a connection ID of the socket fd in slot, as a generation does.
func cid(t testing.TB, fd int, slot uint32) []byte {
	t.Helper()
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	id := make([]byte, quicid.Len)
	c := quicid.Cookie(slot, cookie)
	copy(id, c[:])
	rand.Read(id[quicid.CookieLen:])
	return id
}

func randomCID(n int) []byte {
	id := make([]byte, n)
	rand.Read(id)
	return id
}

// shortPacket is a 1-RTT packet to dcid.
func shortPacket(dcid []byte) []byte {
	p := append([]byte{0x40}, dcid...)
	return append(p, make([]byte, 24)...)
}

// Long-header packet types of QUIC v1.
const (
	typeInitial   = 0
	type0RTT      = 1
	typeHandshake = 2
)

// longPacket is a long-header packet of type typ to dcid, padded as an
// Initial is.
func longPacket(typ byte, dcid []byte) []byte {
	p := []byte{0xc0 | typ<<4, 0, 0, 0, 1, byte(len(dcid))}
	p = append(p, dcid...)
	p = append(p, 8) // the SCID length, and the SCID
	p = append(p, randomCID(8)...)
	return append(p, make([]byte, 1200-len(p))...)
}

func sendTo(t testing.TB, from int, port int, p []byte) {
	t.Helper()
	if err := unix.Sendto(from, p, 0, &unix.SockaddrInet4{Addr: loopback, Port: port}); err != nil {
		t.Fatal(err)
	}
}

// receiver returns the index of the socket among fds that got the next
// datagram, waiting up to 5s; it fails the test when none did.
func receiver(t testing.TB, fds ...int) int {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for i, fd := range fds {
			if _, _, err := unix.Recvfrom(fd, buf, 0); err == nil {
				return i
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	t.Fatal("no socket received the datagram within 5s")
	return -1
}

func activateQUIC(t testing.TB, q *QUICSteering, slot uint32) {
	t.Helper()
	if err := q.Activate(slot); err != nil {
		t.Fatal(err)
	}
}

func TestQUICSteersByCookie(t *testing.T) {
	requireEBPF(t)
	inNetns(t)
	q := loadQUIC(t)
	fds, port := quicGroup(t, q, 1, 2)
	activateQUIC(t, q, 2)
	client, _ := udpSocket(t, loopback, 0, false)
	// The client moves to another address: the connection ID is the key.
	moved, _ := udpSocket(t, [4]byte{127, 0, 0, 2}, 0, false)

	old, cur := cid(t, fds[0], 1), cid(t, fds[1], 2)
	for i, c := range []struct {
		name string
		from int
		p    []byte
		want int
	}{
		{"short header, old generation", client, shortPacket(old), 0},
		{"short header, active generation", client, shortPacket(cur), 1},
		{"short header, old generation, client moved", moved, shortPacket(old), 0},
		{"handshake packet to the old generation's ID", client, longPacket(typeHandshake, old), 0},
		{"Initial to the old generation's ID", client, longPacket(typeInitial, old), 0},
		{"short header, unknown cookie", client, shortPacket(cid(t, client, 1)), 1},
		{"short header, random ID", client, shortPacket(randomCID(quicid.Len)), 1},
		{"too short to be QUIC", client, []byte{0x40, 1}, 1},
	} {
		sendTo(t, c.from, port, c.p)
		if got := receiver(t, fds...); got != c.want {
			t.Errorf("%d %s: went to socket %d, want %d", i, c.name, got, c.want)
		}
	}
	c1, err := q.Counters(1)
	if err != nil {
		t.Fatal(err)
	}
	if c1.ByCID != 4 || c1.Initials != 0 {
		t.Errorf("slot 1 counters %+v, want 4 by CID", c1)
	}
	m, err := q.Misses()
	if err != nil {
		t.Fatal(err)
	}
	if m.Strays != 3 || m.Fallbacks != 0 {
		t.Errorf("misses %+v, want 3 strays", m)
	}
}

// TestQUICHandshakeFollowsItsFirstPacket flips the active slot between
// two Initials of one handshake: the second, a retransmission and 0-RTT
// go where the first went; a new handshake goes to the new slot.
func TestQUICHandshakeFollowsItsFirstPacket(t *testing.T) {
	requireEBPF(t)
	inNetns(t)
	q := loadQUIC(t)
	fds, port := quicGroup(t, q, 1, 2)
	activateQUIC(t, q, 1)
	client, _ := udpSocket(t, loopback, 0, false)

	dcid := randomCID(8)
	sendTo(t, client, port, longPacket(typeInitial, dcid))
	if got := receiver(t, fds...); got != 0 {
		t.Fatalf("first Initial went to socket %d, want 0", got)
	}
	activateQUIC(t, q, 2)
	for _, p := range [][]byte{longPacket(typeInitial, dcid), longPacket(typeInitial, dcid), longPacket(type0RTT, dcid)} {
		sendTo(t, client, port, p)
		if got := receiver(t, fds...); got != 0 {
			t.Errorf("packet of the handshake begun before the flip went to socket %d, want 0", got)
		}
	}
	// 0-RTT that overtook its Initial places the handshake as well.
	early := randomCID(20)
	sendTo(t, client, port, longPacket(type0RTT, early))
	sendTo(t, client, port, longPacket(typeInitial, early))
	for range 2 {
		if got := receiver(t, fds...); got != 1 {
			t.Errorf("packet of a handshake begun after the flip went to socket %d, want 1", got)
		}
	}
	c1, _ := q.Counters(1)
	c2, _ := q.Counters(2)
	if c1.Initials != 1 || c1.ByFlow != 3 || c2.Initials != 1 || c2.ByFlow != 1 {
		t.Errorf("counters: slot 1 %+v, slot 2 %+v; want 1 initial and 3 by flow, 1 initial and 1 by flow", c1, c2)
	}

	// The first generation is gone: its handshake starts over on the
	// active one rather than going nowhere.
	unix.Close(fds[0])
	sendTo(t, client, port, longPacket(typeInitial, dcid))
	if got := receiver(t, fds[1]); got != 0 {
		t.Errorf("got %d", got)
	}
	sendTo(t, client, port, shortPacket(cid(t, client, 1)))
	if got := receiver(t, fds[1]); got != 0 {
		t.Errorf("got %d", got)
	}
}

// TestQUICSplit sends Initials with fresh random connection IDs, each one
// draw, through a split; with Sticky every Initial of one client goes to
// one side.
func TestQUICSplit(t *testing.T) {
	requireEBPF(t)
	inNetns(t)
	q := loadQUIC(t)
	fds, port := quicGroup(t, q, 1, 2)
	activateQUIC(t, q, 1)
	client, _ := udpSocket(t, loopback, 0, false)
	if err := q.SetSplit(Split{Slot: 2, Share: 0.3}); err != nil {
		t.Fatal(err)
	}
	const n = 4000
	counts := make([]int, 2)
	buf := make([]byte, 2048)
	for range n {
		sendTo(t, client, port, longPacket(typeInitial, randomCID(8)))
		counts[receiver(t, fds...)]++
	}
	share := float64(counts[1]) / n
	// The binomial's standard deviation is 0.72 points here: 3 of them.
	if math.Abs(share-0.3) > 0.022 {
		t.Errorf("canary got %.3f of %d new connections, want 0.3 +- 0.022", share, n)
	}
	// Its handshakes stay whatever the split says next.
	c2, _ := q.Counters(2)
	if c2.Initials != uint64(counts[1]) {
		t.Errorf("slot 2 counted %d initials, got %d", c2.Initials, counts[1])
	}

	if err := q.SetSplit(Split{Slot: 2, Share: 0.5, Sticky: true}); err != nil {
		t.Fatal(err)
	}
	first := -1
	for range 50 {
		sendTo(t, client, port, longPacket(typeInitial, randomCID(8)))
		got := receiver(t, fds...)
		if first < 0 {
			first = got
		}
		if got != first {
			t.Fatalf("sticky split sent one client's connections to sockets %d and %d", first, got)
		}
	}
	if err := q.SetSplit(Split{Slot: 2, Share: 1}); err != nil {
		t.Fatal(err)
	}
	sendTo(t, client, port, longPacket(typeInitial, randomCID(8)))
	if got := receiver(t, fds...); got != 1 {
		t.Errorf("share 1 sent a new connection to socket %d", got)
	}
	// A canary that died: the active slot takes its share.
	unix.Close(fds[1])
	sendTo(t, client, port, longPacket(typeInitial, randomCID(8)))
	if got := receiver(t, fds[0]); got != 0 {
		t.Errorf("got %d", got)
	}
	_, _, _ = unix.Recvfrom(fds[0], buf, 0)
}

func TestOpenPinnedQUIC(t *testing.T) {
	requireEBPF(t)
	inNetns(t)
	q := loadQUIC(t)
	fds, port := quicGroup(t, q, 3, 4)
	activateQUIC(t, q, 4)
	if err := q.SetSplit(Split{Slot: 3, Share: 0.25, Sticky: true}); err != nil {
		t.Fatal(err)
	}
	client, _ := udpSocket(t, loopback, 0, false)
	dcid := randomCID(8)
	sendTo(t, client, port, longPacket(typeInitial, dcid))
	first := receiver(t, fds...)

	again, err := OpenPinnedQUIC(q.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if slot, err := again.Active(); err != nil || slot != 4 {
		t.Errorf("active slot %d (%v), want 4", slot, err)
	}
	var w uint64
	if err := again.objs.Route.Lookup(uint32(0), &w); err != nil {
		t.Fatal(err)
	}
	if r := parseRoute(w); r != (route{active: 4, canary: 3, sticky: true, threshold: 1 << 30}) {
		t.Errorf("route %+v after reopening", r)
	}
	// The handshake under way and the cookies survive.
	sendTo(t, client, port, longPacket(typeInitial, dcid))
	if got := receiver(t, fds...); got != first {
		t.Errorf("handshake went to socket %d after reopening, first to %d", got, first)
	}
	sendTo(t, client, port, shortPacket(cid(t, fds[0], 3)))
	if got := receiver(t, fds...); got != 0 {
		t.Errorf("cookie of slot 3 went to socket %d after reopening", got)
	}
}

func TestQUICRouteWord(t *testing.T) {
	for _, r := range []route{{}, {active: 63, canary: 62, sticky: true, threshold: 1 << 32}, {active: 5, threshold: 12345}} {
		if got := parseRoute(r.word()); got != r {
			t.Errorf("route %+v came back as %+v", r, got)
		}
	}
	if w := (route{threshold: 1 << 40}).word(); parseRoute(w).threshold != 1<<32 {
		t.Errorf("threshold over 1<<32 not capped: %x", w)
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], route{active: 1, canary: 2, threshold: 1 << 32}.word())
	if b[0] != 1 || b[1] != 2 {
		t.Errorf("slots not in the low bytes: % x", b)
	}
}
