package handoff

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// HTTP/2 framing (RFC 9113, section 4.1): what goAwayConn reads of the
// frames that pass through it, and the frames it adds.
const (
	frameHeaderLen = 9
	framePing      = 0x6
	frameGoAway    = 0x7
	flagAck        = 0x1
	// maxStreamID is the last stream id of the first of the two GOAWAYs
	// of a graceful shutdown: every stream the client has opened, or is
	// opening now, will be processed.
	maxStreamID = 1<<31 - 1
	// clientPrefaceLen is the length of the client's connection preface
	// ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), which comes before its frames.
	clientPrefaceLen = 24
)

// goAwayConn is an HTTP/2 server connection as golang.org/x/net/http2
// serves it (the *tls.Conn, or the plain connection of h2c), made able to
// end the way RFC 9113, section 6.8 asks of a graceful shutdown, which
// Go's HTTP/2 server does not do: it sends one GOAWAY naming the last
// stream it has read, and a stream the client opened meanwhile is refused
// unprocessed.
//
// startGoAway (called once the drain begins) writes, between the server's
// frames, three things, each once the client has answered the one before
// (a PING's ACK shows that the client has read and acted on everything
// sent before that PING):
//
//  1. A PING, after which the server's frames are held back until its
//     ACK comes: the client has then read every response sent so far, and
//     sent every request those made it queue. A client may drop a request
//     it queued but has not sent when a GOAWAY arrives (nghttp2 does);
//     with nothing in between, the GOAWAY that follows cannot catch one.
//  2. A GOAWAY with the last stream id 2^31−1, and a PING. The client
//     opens no new stream on the connection, but the server processes
//     every stream it already opened.
//  3. Once that PING's ACK comes, every stream the client opened before
//     it read the GOAWAY has been read by the server (the ACK comes after
//     them, and the server reads frame after frame): the server's own
//     graceful shutdown (shutdown) then sends the second GOAWAY, naming
//     the last of them, and closes the connection once they are answered.
//
// An ACK that does not come within the patience startGoAway is given moves the
// sequence on all the same. If the server sent a GOAWAY of its own first
// (an error, its idle timeout, a handler's "Connection: close"), startGoAway
// sends none: a later GOAWAY must never name a higher stream id. The
// server ignores an ACK of a PING it did not send.
type goAwayConn struct {
	net.Conn
	shutdown func()        // starts the HTTP/2 server's graceful shutdown of this connection
	done     chan struct{} // closed when the server is done with the connection

	pings [2][8]byte       // the data of the fence PING and of the PING after the GOAWAY
	acked [2]chan struct{} // closed when the client acknowledges pings[i]
	in    frameReader      // used by the server's one reading goroutine only

	wmu   sync.Mutex // held while writing to Conn
	woken *sync.Cond // on wmu: the hold ended or the connection closed
	out   frameCursor
	queue []byte // frames to write at the next frame boundary
	// queuedGoAway says that queue holds a GOAWAY, which must not follow
	// one of the server's.
	queuedGoAway bool
	hold         bool // the server's frames wait until the fence PING's ACK
	ended        bool // the server is done with the connection: never hold

	going atomic.Bool // the sequence of startGoAway runs
}

// newGoAwayConn wraps c, whose client preface has already been read when
// sawPreface (h2c). Its shutdown is to be set before startGoAway.
func newGoAwayConn(c net.Conn, sawPreface bool) *goAwayConn {
	g := &goAwayConn{Conn: c, done: make(chan struct{})}
	g.woken = sync.NewCond(&g.wmu)
	for i := range g.pings {
		rand.Read(g.pings[i][:]) // never fails (crypto/rand)
		g.acked[i] = make(chan struct{})
	}
	if !sawPreface {
		g.in.skip = clientPrefaceLen
	}
	g.in.acked = g.ack
	return g
}

// Read reads what the client sent, noting the ACKs of the sequence's PINGs.
func (g *goAwayConn) Read(p []byte) (int, error) {
	n, err := g.Conn.Read(p)
	g.in.feed(p[:n])
	return n, err
}

// ack closes the channel of the PING whose data the client acknowledged.
func (g *goAwayConn) ack(data [8]byte) {
	for i, d := range g.pings {
		if d == data {
			select {
			case <-g.acked[i]:
			default:
				close(g.acked[i])
			}
		}
	}
}

// Write writes the server's frames, adding the sequence's frames at a frame
// boundary, and waits out a hold there.
func (g *goAwayConn) Write(p []byte) (int, error) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	written := 0
	for {
		if err := g.flushLocked(); err != nil {
			return written, err
		}
		for g.hold && !g.ended && g.out.atBoundary() && g.out.started {
			g.woken.Wait()
			if err := g.flushLocked(); err != nil {
				return written, err
			}
		}
		if written == len(p) {
			return written, nil
		}
		// Whole writes, unless there is something to do at the next
		// boundary: one frame at a time would mean one TLS record each.
		n := g.out.consume(p[written:], len(g.queue) > 0 || g.hold)
		m, err := g.Conn.Write(p[written : written+n])
		written += m
		if err != nil {
			return written, err
		}
	}
}

// flushLocked writes the queued frames if the server's stream of frames
// is at a boundary, after its first frame (its SETTINGS, which must come
// first).
func (g *goAwayConn) flushLocked() error {
	if len(g.queue) == 0 || !g.out.atBoundary() || !g.out.started {
		return nil
	}
	q, goAway := g.queue, g.queuedGoAway
	g.queue, g.queuedGoAway = nil, false
	if goAway && g.out.sawGoAway {
		// The server's GOAWAY came while ours waited for a boundary.
		g.hold = false
		return nil
	}
	_, err := g.Conn.Write(q)
	return err
}

// enqueue queues frames, which hold a GOAWAY if goAway, for the next
// boundary (writing them now when the server is not writing and its
// frames are at one), and sets the hold. It reports false, queues nothing
// and ends the hold when the server already wrote a GOAWAY of its own.
func (g *goAwayConn) enqueue(frames []byte, goAway, hold bool) bool {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if g.out.sawGoAway {
		g.hold = false
		g.woken.Broadcast()
		return false
	}
	g.queue = append(g.queue, frames...)
	g.queuedGoAway = g.queuedGoAway || goAway
	g.hold = hold
	g.woken.Broadcast()
	g.flushLocked() // an error is the server's to see on its next write
	return true
}

// startGoAway runs the sequence of goAwayConn in a goroutine of its own,
// which waits at most patience for each ACK and ends once the server's
// own GOAWAY is on its way or the server is done with the connection.
// going reports true from now until then.
func (g *goAwayConn) startGoAway(patience time.Duration) {
	g.going.Store(true)
	go func() {
		defer g.going.Store(false)
		if g.enqueue(pingFrame(g.pings[0]), false, true) {
			g.await(0, patience)
			if g.enqueue(append(goAwayFrame(maxStreamID), pingFrame(g.pings[1])...), true, false) {
				g.await(1, patience)
			}
		}
		g.shutdown()
	}()
}

// await waits for the ACK of pings[i], at most patience, or until the
// server is done with the connection.
func (g *goAwayConn) await(i int, patience time.Duration) {
	t := time.NewTimer(patience)
	defer t.Stop()
	select {
	case <-g.acked[i]:
	case <-t.C:
	case <-g.done:
	}
}

// end notes that the server is done with the connection: a write waiting
// out a hold goes on (and fails on the closed connection).
func (g *goAwayConn) end() {
	g.wmu.Lock()
	g.ended = true
	g.woken.Broadcast()
	g.wmu.Unlock()
	close(g.done)
}

// base returns the connection that goAwayConn wraps: the one net/http
// accepted, which its ConnContext and ConnState hooks know.
func (g *goAwayConn) base() net.Conn { return g.Conn }

// tlsGoAwayConn is a goAwayConn over TLS: the HTTP/2 server takes the
// TLS state (Request.TLS, the checks of RFC 9113, section 9.2) from its
// ConnectionState.
type tlsGoAwayConn struct {
	*goAwayConn
	tls *tls.Conn
}

func (c tlsGoAwayConn) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }

func pingFrame(data [8]byte) []byte {
	f := frameHeader(8, framePing, 0)
	return append(f, data[:]...)
}

func goAwayFrame(lastStreamID uint32) []byte {
	f := frameHeader(8, frameGoAway, 0)
	f = binary.BigEndian.AppendUint32(f, lastStreamID)
	return binary.BigEndian.AppendUint32(f, 0) // NO_ERROR
}

// frameHeader returns the header of a frame on stream 0.
func frameHeader(length int, typ, flags byte) []byte {
	return []byte{byte(length >> 16), byte(length >> 8), byte(length), typ, flags, 0, 0, 0, 0}
}

// frameCursor follows the frames the server writes, in whatever pieces
// they come.
type frameCursor struct {
	hdr       [frameHeaderLen]byte
	hdrN      int  // header bytes seen of the current frame
	left      int  // payload bytes still to come of the current frame
	started   bool // the server's first frame was written whole
	sawGoAway bool // the server wrote a GOAWAY
}

func (c *frameCursor) atBoundary() bool { return c.hdrN == 0 && c.left == 0 }

// consume follows p and returns how many of its bytes to write: all of
// them, or, when toBoundary, those up to the end of the first frame that
// ends in p.
func (c *frameCursor) consume(p []byte, toBoundary bool) int {
	n := 0
	for n < len(p) {
		if c.hdrN < frameHeaderLen {
			k := copy(c.hdr[c.hdrN:], p[n:])
			c.hdrN += k
			n += k
			if c.hdrN < frameHeaderLen {
				break
			}
			c.left = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
			if c.hdr[3] == frameGoAway {
				c.sawGoAway = true
			}
		}
		k := min(c.left, len(p)-n)
		c.left -= k
		n += k
		if c.left == 0 {
			c.hdrN = 0
			c.started = true
			if toBoundary {
				break
			}
		}
	}
	return n
}

// frameReader follows the frames the client sends, in whatever pieces
// they come, and calls acked with the data of each PING ACK.
type frameReader struct {
	skip  int // bytes of the client preface still to come
	hdr   [frameHeaderLen]byte
	hdrN  int
	left  int
	ping  bool // the current frame is a PING ACK
	data  [8]byte
	dataN int
	acked func([8]byte)
}

func (r *frameReader) feed(p []byte) {
	for len(p) > 0 {
		if r.skip > 0 {
			k := min(r.skip, len(p))
			r.skip -= k
			p = p[k:]
			continue
		}
		if r.hdrN < frameHeaderLen {
			k := copy(r.hdr[r.hdrN:], p)
			r.hdrN += k
			p = p[k:]
			if r.hdrN < frameHeaderLen {
				return
			}
			r.left = int(r.hdr[0])<<16 | int(r.hdr[1])<<8 | int(r.hdr[2])
			r.ping = r.hdr[3] == framePing && r.hdr[4]&flagAck != 0 && r.left == 8
			r.dataN = 0
		}
		k := min(r.left, len(p))
		if r.ping {
			r.dataN += copy(r.data[r.dataN:], p[:k])
		}
		r.left -= k
		p = p[k:]
		if r.left == 0 {
			r.hdrN = 0
			if r.ping {
				r.acked(r.data)
			}
		}
	}
}
