package handoff

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Client speaks HTTP/2 frame by frame, as a test needs to: it opens
// streams, reads frames one at a time, and answers PINGs only when told.
type h2Client struct {
	t      *testing.T
	c      net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
	goAway uint32 // the last stream id of the latest GOAWAY; 0 before one
	gotGo  bool
}

// dialH2 connects to a Drainer's ServeTLS with ALPN h2, or, without
// pool, to its Serve with HTTP/2 without TLS (h2c), and exchanges
// SETTINGS.
func dialH2(t *testing.T, addr string, pool *x509.CertPool) *h2Client {
	t.Helper()
	var c net.Conn
	var err error
	if pool != nil {
		var tc *tls.Conn
		tc, err = tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
		if err == nil && tc.ConnectionState().NegotiatedProtocol != "h2" {
			t.Fatalf("ALPN chose %q, want h2", tc.ConnectionState().NegotiatedProtocol)
		}
		c = tc
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := &h2Client{t: t, c: c, fr: http2.NewFramer(c, c)}
	h.enc = hpack.NewEncoder(&h.hbuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// The server's SETTINGS, then its ACK of ours (a WINDOW_UPDATE may
	// come between).
	for acked := false; !acked; {
		f := h.next(5 * time.Second)
		if s, ok := f.(*http2.SettingsFrame); ok {
			acked = s.IsAck()
		}
	}
	return h
}

// get opens stream id with a GET of path.
func (h *h2Client) get(id uint32, path string) {
	h.t.Helper()
	h.hbuf.Reset()
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: "test"}, {Name: ":path", Value: path}} {
		h.enc.WriteField(f)
	}
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.hbuf.Bytes(),
		EndStream: true, EndHeaders: true}); err != nil {
		h.t.Fatal(err)
	}
}

// next returns the next frame that is not flow control, answering
// SETTINGS, and checks that no GOAWAY names a higher stream id than an
// earlier one (RFC 9113, section 6.8). It fails the test when none comes
// within timeout.
func (h *h2Client) next(timeout time.Duration) http2.Frame {
	h.t.Helper()
	f, err := h.tryNext(timeout)
	if err != nil {
		h.t.Fatalf("no frame within %s: %v", timeout, err)
	}
	return f
}

func (h *h2Client) tryNext(timeout time.Duration) (http2.Frame, error) {
	h.c.SetReadDeadline(time.Now().Add(timeout))
	defer h.c.SetReadDeadline(time.Time{})
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.WindowUpdateFrame:
			continue
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.fr.WriteSettingsAck()
			}
		case *http2.GoAwayFrame:
			if h.gotGo && f.LastStreamID > h.goAway {
				h.t.Errorf("GOAWAY names stream %d after one that named %d", f.LastStreamID, h.goAway)
			}
			h.gotGo, h.goAway = true, f.LastStreamID
		}
		return f, nil
	}
}

// serveH2C serves handler through a Drainer with HTTP/1 and HTTP/2
// without TLS (h2c) on a loopback port.
func serveH2C(t *testing.T, handler http.Handler) (*Drainer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	d := NewDrainer(&http.Server{Handler: handler, Protocols: p})
	d.IdleGrace = 2 * time.Second
	served := make(chan error, 1)
	go func() { served <- d.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Drain(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v, want nil after Drain", err)
		}
	})
	return d, ln.Addr().String()
}

// h2Server is a Drainer serving HTTP/2 over TLS or without it.
func h2Server(t *testing.T, h2c bool, handler http.Handler) (d *Drainer, dial func() *h2Client) {
	if h2c {
		d, addr := serveH2C(t, handler)
		return d, func() *h2Client { return dialH2(t, addr, nil) }
	}
	d, addr, pool := serveTLS(t, handler)
	return d, func() *h2Client { return dialH2(t, addr, pool) }
}

// drainAsync drains d with a deadline of 10s.
func drainAsync(d *Drainer) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- d.Drain(ctx)
	}()
	return done
}

// An HTTP/2 connection's drain, step by step: a PING, and nothing after
// it (not even a response that is ready) until its ACK; a GOAWAY naming
// no stream, and a PING, right before the first frame that ends a stream;
// once that PING is answered and the connection idle, a GOAWAY naming the
// last stream the client opened, a stream opened before the client read
// the first GOAWAY included; every stream answered.
func TestDrainGoesAwayTwice(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		t.Run(map[bool]string{false: "tls", true: "h2c"}[h2c], func(t *testing.T) {
			started, release := make(chan struct{}, 1), make(chan struct{})
			d, dial := h2Server(t, h2c, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					started <- struct{}{}
					<-release
				}
				fmt.Fprint(w, r.Proto)
			}))
			c := dial()
			c.get(1, "/slow")
			<-started
			drained := drainAsync(d)

			fence, ok := c.next(3 * time.Second).(*http2.PingFrame)
			if !ok || fence.IsAck() {
				t.Fatalf("first frame of the drain: %v, want a PING", fence)
			}
			close(release) // stream 1's answer is ready now, but must wait for the ACK
			const look = 200 * time.Millisecond
			if f, err := c.tryNext(look); err == nil {
				t.Fatalf("got %v while the PING was unanswered, want nothing for %s", f, look)
			} else if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			c.fr.WritePing(true, fence.Data)
			// A client that opens a stream before it reads the GOAWAY.
			c.get(3, "/")

			// The GOAWAY comes right before the first frame that ends a
			// stream: the first frames of a response may come before it.
			for {
				f := c.next(3 * time.Second)
				if g, ok := f.(*http2.GoAwayFrame); ok {
					if g.LastStreamID != 1<<31-1 || g.ErrCode != http2.ErrCodeNo {
						t.Fatalf("after the ACK: %v, want GOAWAY with last stream 2^31-1, NO_ERROR", g)
					}
					break
				}
				if f.Header().Flags.Has(http2.FlagDataEndStream) {
					t.Fatalf("after the ACK: %v before the GOAWAY, which must come before the first frame that ends a stream", f)
				}
			}
			second, ok := c.next(3 * time.Second).(*http2.PingFrame)
			if !ok || second.IsAck() {
				t.Fatalf("after the first GOAWAY: %v, want a PING", second)
			}
			c.fr.WritePing(true, second.Data)

			ended := map[uint32]bool{}
			finalGoAway := false
			for !(ended[1] && ended[3] && finalGoAway) {
				switch f := c.next(5 * time.Second).(type) { // the last GOAWAY: IdleGrace (2s) after the streams
				case *http2.GoAwayFrame:
					if f.LastStreamID != 3 || f.ErrCode != http2.ErrCodeNo {
						t.Fatalf("second GOAWAY: last stream %d, %v; want 3, NO_ERROR", f.LastStreamID, f.ErrCode)
					}
					finalGoAway = true
				case *http2.RSTStreamFrame:
					t.Fatalf("stream %d reset: %v", f.StreamID, f.ErrCode)
				case *http2.HeadersFrame:
					ended[f.StreamID] = ended[f.StreamID] || f.StreamEnded()
				case *http2.DataFrame:
					ended[f.StreamID] = ended[f.StreamID] || f.StreamEnded()
				case *http2.PingFrame:
					t.Fatalf("a third PING: %v", f)
				}
			}
			if err := <-drained; err != nil {
				t.Errorf("Drain: %v", err)
			}
		})
	}
}

// A client that opens a stream on an idle connection after the drain
// began, having read nothing of it (not even the PING), gets it answered:
// the first GOAWAY goes with that stream's response, and the server's
// own, which names the last stream, only once the client answered the
// PING after it and the connection is idle again.
func TestDrainAnswersStreamOpenedBeforeGoAwayRead(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		t.Run(map[bool]string{false: "tls", true: "h2c"}[h2c], func(t *testing.T) {
			d, dial := h2Server(t, h2c, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, "ok")
			}))
			c := dial()
			d.IdleGrace = 300 * time.Millisecond
			drained := drainAsync(d)
			time.Sleep(700 * time.Millisecond)
			c.get(1, "/")
			// Until stream 1 ends and a GOAWAY names the last stream.
			for answered := false; !answered || !c.gotGo || c.goAway == 1<<31-1; {
				f, err := c.tryNext(3 * time.Second)
				if err != nil {
					t.Fatalf("stream 1 answered: %v; last GOAWAY named stream %d; then: %v", answered, c.goAway, err)
				}
				if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
					c.fr.WritePing(true, p.Data)
				}
				if r, ok := f.(*http2.RSTStreamFrame); ok {
					t.Fatalf("stream %d reset: %v", r.StreamID, r.ErrCode)
				}
				answered = answered || f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream)
			}
			if c.goAway != 1 {
				t.Errorf("last GOAWAY named stream %d, want 1", c.goAway)
			}
			c.c.Close() // as clients do once a connection went away
			if err := <-drained; err != nil {
				t.Errorf("Drain: %v", err)
			}
		})
	}
}

// A stream whose HEADERS come after the client answered the PING that
// followed the GOAWAY (Go's client gives a request its stream id, then
// writes its HEADERS, and may write the ACK in between) is answered: the
// server's own GOAWAY waits until the connection has been idle for
// IdleGrace.
func TestDrainAnswersStreamSentAfterAck(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	d, addr, pool := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		fmt.Fprint(w, "ok")
	}))
	d.IdleGrace = 500 * time.Millisecond
	c := dialH2(t, addr, pool)
	c.get(1, "/slow") // its response brings the GOAWAY
	<-started
	drained := drainAsync(d)
	for pings := 0; pings < 2; {
		f := c.next(3 * time.Second)
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			c.fr.WritePing(true, p.Data)
			if pings++; pings == 1 {
				close(release)
			}
		}
	}
	if c.goAway != 1<<31-1 {
		t.Fatalf("GOAWAY before the second PING named stream %d (seen: %v), want 2^31-1", c.goAway, c.gotGo)
	}
	time.Sleep(100 * time.Millisecond)
	c.get(3, "/")
	ended := map[uint32]bool{}
	for !ended[1] || !ended[3] || c.goAway == 1<<31-1 {
		f, err := c.tryNext(3 * time.Second)
		if err != nil {
			t.Fatalf("streams ended: %v; last GOAWAY named stream %d; then: %v", ended, c.goAway, err)
		}
		if r, ok := f.(*http2.RSTStreamFrame); ok {
			t.Fatalf("stream %d reset: %v", r.StreamID, r.ErrCode)
		}
		if f.Header().Flags.Has(http2.FlagDataEndStream) {
			ended[f.Header().StreamID] = true
		}
	}
	if c.goAway != 3 {
		t.Errorf("last GOAWAY named stream %d, want 3", c.goAway)
	}
	c.c.Close()
	if err := <-drained; err != nil {
		t.Errorf("Drain: %v", err)
	}
}

// When the server sent a GOAWAY of its own before the drain (here for a
// handler's "Connection: close"), the drain sends no GOAWAY, which could
// only name a higher stream id, and no PING.
func TestDrainAddsNoGoAwayAfterTheServers(t *testing.T) {
	d, addr, pool := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		fmt.Fprint(w, "ok")
	}))
	c := dialH2(t, addr, pool)
	c.get(1, "/")
	for !c.gotGo {
		c.next(3 * time.Second)
	}
	drained := drainAsync(d)
	for {
		f, err := c.tryNext(3 * time.Second)
		if err != nil {
			break // the server closed the connection once stream 1 ended
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			t.Errorf("PING after the server's GOAWAY: %v", f)
		case *http2.GoAwayFrame:
			t.Errorf("second GOAWAY: %v", f)
		}
	}
	if err := <-drained; err != nil {
		t.Errorf("Drain: %v", err)
	}
}

// The app's ConnState hook sees an HTTP/2 connection as net/http
// accepted it, and the Drainer counts it until it closes.
func TestDrainerTracksHTTP2Conns(t *testing.T) {
	seen := make(chan net.Conn, 16)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, pool := writeCert(t)
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}),
		ConnState: func(c net.Conn, s http.ConnState) { seen <- c },
	}
	d := NewDrainer(srv)
	go d.ServeTLS(ln, certFile, keyFile)
	c := dialH2(t, ln.Addr().String(), pool)
	c.get(1, "/")
	for f := c.next(3 * time.Second); !f.Header().Flags.Has(http2.FlagDataEndStream); f = c.next(3 * time.Second) {
	}
	if n := d.Conns(); n != 1 {
		t.Errorf("Conns() = %d with one HTTP/2 connection open, want 1", n)
	}
	for len(seen) > 0 {
		if c := <-seen; fmt.Sprintf("%T", c) != "*tls.Conn" {
			t.Errorf("ConnState saw a %T, want the *tls.Conn net/http accepted", c)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Drain(ctx); err != nil {
		t.Errorf("Drain: %v", err)
	}
}

// frames returns a stream of server frames, a GOAWAY among them, and
// where each ends.
func testFrames() (stream []byte, ends []int) {
	var b bytes.Buffer
	add := func(f []byte) {
		b.Write(f)
		ends = append(ends, b.Len())
	}
	add(frameHeader(0, 0x4, 0))                                             // SETTINGS, empty
	add(append(frameHeader(3, 0x1, 0x4), 1, 2, 3))                          // HEADERS
	add(append(frameHeader(20000, 0x0, 0x1), make([]byte, 20000)...))       // a large DATA
	add(frameHeader(0, 0x0, 0x1))                                           // an empty DATA
	add(goAwayFrame(5))                                                     // GOAWAY
	add(append(frameHeader(8, framePing, flagAck), 9, 9, 9, 9, 9, 9, 9, 9)) // PING ACK
	return b.Bytes(), ends
}

// frameCursor finds every frame boundary, however the frames are cut
// into writes.
func TestFrameCursorFindsBoundaries(t *testing.T) {
	stream, ends := testFrames()
	for _, chunk := range []int{1, 2, 7, 9, 10, 4096, len(stream)} {
		var c frameCursor
		var got []int
		pos := 0
		for pos < len(stream) {
			p := stream[pos:min(pos+chunk, len(stream))]
			for len(p) > 0 {
				n := c.consume(p, true)
				pos += n
				p = p[n:]
				if c.atBoundary() {
					got = append(got, pos)
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(ends) {
			t.Errorf("chunks of %d: boundaries %v, want %v", chunk, got, ends)
		}
		if !c.sawGoAway || !c.started {
			t.Errorf("chunks of %d: sawGoAway %v, started %v; want both", chunk, c.sawGoAway, c.started)
		}
	}
	var c frameCursor
	if n := c.consume(stream, false); n != len(stream) || !c.atBoundary() {
		t.Errorf("whole: consumed %d of %d, at a boundary: %v", n, len(stream), c.atBoundary())
	}
}

// frameReader reports the data of each PING ACK, after the client
// preface, however the bytes are cut into reads, and nothing else.
func TestFrameReaderFindsPingAcks(t *testing.T) {
	var b bytes.Buffer
	b.WriteString(http2.ClientPreface)
	b.Write(frameHeader(0, 0x4, 0))
	b.Write(pingFrame([8]byte{1, 1, 1, 1, 1, 1, 1, 1})) // a PING, not an ACK
	b.Write(append(frameHeader(8, 0x0, 0), 2, 2, 2, 2, 2, 2, 2, 2))
	b.Write(append(frameHeader(8, framePing, flagAck), 3, 3, 3, 3, 3, 3, 3, 3))
	b.Write(append(frameHeader(8, framePing, flagAck), 4, 4, 4, 4, 4, 4, 4, 4))
	stream := b.Bytes()
	want := "[[3 3 3 3 3 3 3 3] [4 4 4 4 4 4 4 4]]"
	rng := rand.New(rand.NewPCG(1, 2))
	for _, chunk := range []int{1, 3, 8, 9, 17, 0} {
		var got [][8]byte
		r := frameReader{skip: clientPrefaceLen, acked: func(d [8]byte) { got = append(got, d) }}
		for p := stream; len(p) > 0; {
			n := chunk
			if n == 0 {
				n = 1 + rng.IntN(20) // random cuts
			}
			n = min(n, len(p))
			r.feed(p[:n])
			p = p[n:]
		}
		if fmt.Sprint(got) != want {
			t.Errorf("chunks of %d: ACKs %v, want %s", chunk, got, want)
		}
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// goAwayConn writes its frames at a boundary of the server's, never
// before the server's first frame nor inside a header block, holds the
// server's frames back while told to, puts a GOAWAY right before a frame
// that ends a stream (however the server's writes cut that frame's
// header), and adds no GOAWAY after one of the server's.
func TestGoAwayConnWritesBetweenFrames(t *testing.T) {
	server, client := tcpPair(t)
	g := newGoAwayConn(server, true)
	settings := frameHeader(0, 0x4, 0)
	data := append(frameHeader(6, frameData, 0), "abcdef"...)
	headers := append(frameHeader(3, frameHeaders, 0), 1, 2, 3)         // a header block, not over
	more := append(frameHeader(2, frameContinue, flagEndHeaders), 4, 5) // its end
	last := append(frameHeader(2, frameData, flagEndStream), 6, 7)      // the end of a stream
	ping := pingFrame([8]byte{7, 7, 7, 7, 7, 7, 7, 7})

	g.enqueue(ping, false, false, false) // before SETTINGS: waits for it
	g.Write(settings[:4])
	g.Write(append(settings[4:], data[:5]...))
	g.Write(data[5:12]) // mid-frame: the PING is due at its end
	// The rest of DATA, then a header block, held back after the fence.
	fence := pingFrame([8]byte{8, 8, 8, 8, 8, 8, 8, 8})
	g.enqueue(fence, false, true, false)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		g.Write(append(append(data[12:], headers...), more[:4]...))
	}()
	select {
	case <-wrote:
		t.Fatal("the server's frames went out during the hold")
	case <-time.After(100 * time.Millisecond):
	}
	goAway := goAwayFrame(maxStreamID)
	sent := g.enqueue(goAway, true, false, true)
	if sent == nil {
		t.Fatal("GOAWAY refused with no GOAWAY of the server's")
	}
	<-wrote
	// The GOAWAY waits for the frame that ends a stream, whose header
	// comes in two writes.
	g.Write(append(more[4:], last[:5]...))
	select {
	case <-sent:
		t.Fatal("GOAWAY written before the server's frame that ends a stream began")
	default:
	}
	g.Write(last[5:])
	<-sent

	// The first PING waited for SETTINGS, the fence for DATA's end, the
	// GOAWAY for the header block's end and the end of a stream.
	var want []byte
	for _, f := range [][]byte{settings, ping, data, fence, headers, more, goAway, last} {
		want = append(want, f...)
	}
	got := make([]byte, len(want))
	client.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("on the wire:\n%x\nwant\n%x", got, want)
	}

	g.Write(goAwayFrame(3)) // the server's own
	if g.enqueue(goAwayFrame(maxStreamID), true, false, false) != nil {
		t.Error("a GOAWAY queued after the server's")
	}
}

// A GOAWAY that waits for the end of a stream is dropped when the
// server writes one of its own first: it would name a higher stream.
func TestGoAwayConnDropsGoAwayAfterTheServers(t *testing.T) {
	server, client := tcpPair(t)
	g := newGoAwayConn(server, true)
	settings := frameHeader(0, 0x4, 0)
	g.Write(settings)
	sent := g.enqueue(goAwayFrame(maxStreamID), true, false, true)
	theirs := goAwayFrame(5)
	g.Write(theirs[:4]) // a header's start waits for the rest
	g.Write(theirs[4:])
	select {
	case <-sent:
	case <-time.After(3 * time.Second):
		t.Fatal("the queued GOAWAY neither went nor was dropped")
	}
	if g.wentOut() {
		t.Error("the queued GOAWAY went out after the server's")
	}
	want := append(append([]byte{}, settings...), theirs...)
	got := make([]byte, len(want))
	client.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("on the wire:\n%x\nwant\n%x", got, want)
	}
}
