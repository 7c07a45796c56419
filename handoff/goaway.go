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
	frameHeaderLen   = 9
	frameData        = 0x0
	frameHeaders     = 0x1
	framePushPromise = 0x5
	framePing        = 0x6
	frameGoAway      = 0x7
	frameContinue    = 0x9
	flagAck          = 0x1
	flagEndStream    = 0x1
	flagEndHeaders   = 0x4
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
// frames, two things, the second once the client has answered the first
// (a PING's ACK shows that the client has read and acted on everything
// sent before that PING):
//
//  1. A PING, after which the server's frames are held back until its
//     ACK comes: the client has then read every response sent so far, and
//     sent every request those made it queue. A client may drop a request
//     it queued but has not sent when a GOAWAY arrives (nghttp2 does);
//     with nothing in between, the GOAWAY that follows cannot catch one.
//  2. A GOAWAY with the last stream id 2^31−1, and a PING, right before
//     the next frame that ends a stream (a response's last): the client
//     opens no new stream on the connection, but the server processes
//     every stream it already opened. A client waiting for that response
//     reads the GOAWAY first, and so never starts its next request on the
//     connection only to find it gone away (Go's client takes a
//     connection for a request before it writes it, and then cannot
//     re-send a body it began to read). A connection that stays idle
//     gets none of this: the Drainer ends it as any idle one, with the
//     server's own GOAWAY.
//
// Once that PING's ACK comes, the client knows. It may still send a
// stream it opened before it read the GOAWAY: Go's client gives a request
// its stream id, then writes its HEADERS, and may write the ACK in
// between. So the second GOAWAY, the server's own (shutdown), which names
// the last stream the server read and refuses any later one, waits until
// the connection has been idle for a while (the Drainer starts it after
// IdleGrace, counted from the ACK on); a client closes a connection that
// went away once its streams are done as a rule, before that (Go's and
// nghttp2's do).
//
// An ACK that does not come within the patience startGoAway is given
// moves the steps on all the same. Frames go only at a boundary where
// frames may (after the server's first, its SETTINGS, and never inside a
// header block). A GOAWAY of the server's own written first (an error,
// its idle timeout, a handler's "Connection: close") drops a queued one:
// a later GOAWAY must never name a higher stream id. The server ignores
// an ACK of a PING it did not send.
type goAwayConn struct {
	net.Conn
	shutdown func()        // starts the HTTP/2 server's graceful shutdown of this connection: its GOAWAY
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
	// beforeEnd says that queue waits for a boundary before a frame that
	// ends a stream.
	beforeEnd bool
	flushed   chan struct{} // closed when queue is written, or dropped
	dropped   bool          // the last queue was dropped for a GOAWAY of the server's
	// stash is the start of a frame header that the server wrote while
	// queue waits for the end of a stream: written with the rest.
	stash []byte
	hold  bool // the server's frames wait until the fence PING's ACK
	ended bool // the server is done with the connection: never hold

	busy atomic.Bool // the client is to answer a PING of startGoAway's
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
	n := len(p)
	if len(g.stash) > 0 {
		p = append(g.stash, p...)
		g.stash = nil
	}
	for {
		if err := g.flushLocked(p); err != nil {
			return 0, err
		}
		for g.hold && !g.ended && g.out.atBoundary() && g.out.started {
			g.woken.Wait()
			if err := g.flushLocked(p); err != nil {
				return 0, err
			}
		}
		if len(p) == 0 {
			return n, nil
		}
		if len(g.queue) > 0 && g.beforeEnd && g.out.atBoundary() && len(p) < frameHeaderLen {
			// The start of a frame header: whether the frame ends a
			// stream, and the queue goes before it, shows with the rest.
			g.stash = append([]byte(nil), p...)
			return n, nil
		}
		// Whole writes, unless there is something to do at the next
		// boundary: one frame at a time would mean one TLS record each.
		k := g.out.consume(p, len(g.queue) > 0 || g.hold)
		if _, err := g.Conn.Write(p[:k]); err != nil {
			return 0, err
		}
		p = p[k:]
	}
}

// flushLocked writes the queued frames if the server's frames are at a
// boundary where frames may go, after its first frame (its SETTINGS,
// which must come first), and, when the queue waits for the end of a
// stream, before next, the server's frames to come, which end one.
func (g *goAwayConn) flushLocked(next []byte) error {
	if len(g.queue) == 0 {
		return nil
	}
	if g.queuedGoAway && g.out.sawGoAway {
		// The server's GOAWAY came while ours waited.
		g.queue, g.queuedGoAway, g.beforeEnd, g.hold, g.dropped = nil, false, false, false, true
		close(g.flushed)
		return nil
	}
	if !g.out.atBoundary() || !g.out.started || g.beforeEnd && !endsStream(next) {
		return nil
	}
	q := g.queue
	g.queue, g.queuedGoAway, g.beforeEnd = nil, false, false
	close(g.flushed)
	_, err := g.Conn.Write(q)
	return err
}

// endsStream reports whether the frame whose header starts p ends a
// stream (a HEADERS or DATA frame with END_STREAM).
func endsStream(p []byte) bool {
	return len(p) >= frameHeaderLen && (p[3] == frameData || p[3] == frameHeaders) && p[4]&flagEndStream != 0
}

// enqueue queues frames, which hold a GOAWAY if goAway, for the next
// boundary (writing them now when the server is not writing and its
// frames are at one), or, if beforeEnd, for the next boundary before a
// frame that ends a stream; and sets the hold. It returns a channel closed
// once the frames are written, or nil, having queued nothing and ended the
// hold, when the server already wrote a GOAWAY of its own.
func (g *goAwayConn) enqueue(frames []byte, goAway, hold, beforeEnd bool) <-chan struct{} {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if g.out.sawGoAway {
		g.hold = false
		g.woken.Broadcast()
		return nil
	}
	g.queue = append(g.queue, frames...)
	g.queuedGoAway = g.queuedGoAway || goAway
	g.beforeEnd = beforeEnd
	g.flushed = make(chan struct{})
	g.hold = hold
	g.woken.Broadcast()
	g.flushLocked(nil) // an error is the server's to see on its next write
	return g.flushed
}

// startGoAway runs the steps of goAwayConn in a goroutine of its own. It
// waits at most patience for each ACK, and for the GOAWAY to go before the
// end of a stream as long as the connection lives: one that stays idle is
// the Drainer's to end (with the server's own GOAWAY). busy reports true
// while the client is to answer a PING (the server holds its frames back,
// or the client may be opening streams), and settled is called at the end
// of each of those times: the connection's idle time counts from then.
// The goroutine ends after the second ACK, or when the server is done with
// the connection.
func (g *goAwayConn) startGoAway(patience time.Duration, settled func()) {
	g.busy.Store(true)
	go func() {
		defer settled()
		defer g.busy.Store(false)
		if g.enqueue(pingFrame(g.pings[0]), false, true, false) == nil {
			return
		}
		g.await(g.acked[0], patience)
		sent := g.enqueue(append(goAwayFrame(maxStreamID), pingFrame(g.pings[1])...), true, false, true)
		g.busy.Store(false)
		settled()
		if sent == nil || !g.await(sent, -1) || !g.wentOut() {
			return
		}
		g.busy.Store(true)
		g.await(g.acked[1], patience)
	}()
}

// wentOut reports whether the queued frames were written, not dropped for
// a GOAWAY of the server's.
func (g *goAwayConn) wentOut() bool {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	return !g.dropped
}

// await waits until ch is closed, at most limit (if not negative), or
// until the server is done with the connection, and reports whether ch
// was closed.
func (g *goAwayConn) await(ch <-chan struct{}, limit time.Duration) bool {
	var timeout <-chan time.Time
	if limit >= 0 {
		t := time.NewTimer(limit)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ch:
		return true
	case <-timeout:
	case <-g.done:
	}
	return false
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
	inBlock   bool // a header block is not over
}

// atBoundary reports whether a frame may be written now: the server's
// last frame is whole, and not inside a header block (HEADERS and the
// CONTINUATION frames that must follow it at once).
func (c *frameCursor) atBoundary() bool { return c.hdrN == 0 && c.left == 0 && !c.inBlock }

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
			switch c.hdr[3] {
			case frameGoAway:
				c.sawGoAway = true
			case frameHeaders, framePushPromise, frameContinue:
				c.inBlock = c.hdr[4]&flagEndHeaders == 0
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
