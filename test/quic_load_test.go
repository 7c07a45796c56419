package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3Load is HTTP/3 load from quic-go clients that never send a request
// twice: each manages its own connections (http3.ClientConn), with no
// http3.Transport to retry for it. A request the server refused with
// H3_REQUEST_REJECTED (it came in after the connection's GOAWAY, so the
// server says it did not process it) counts as rejected, apart from the
// failures; the client goes on with its next request on a new connection. A connection that got
// GOAWAY fails its next request before sending anything ("connection in
// graceful shutdown"): the client dials anew, as a browser does.
type h3Load struct {
	addr string
	// small makes the client offer X25519 alone, so its ClientHello fits
	// one datagram and costs less to make; else it offers what Go does
	// (X25519MLKEM768 first: a ClientHello over two Initial datagrams).
	small bool
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	res   h3Result
	ok    atomic.Int64
	conns atomic.Int64
}

// h3Result is what an h3Load saw.
type h3Result struct {
	OK, Failed, Rejected int
	// Unsent counts first requests of new connections that could not
	// leave because the connection had got GOAWAY already.
	Unsent int
	// Conns counts the QUIC connections the clients dialed.
	Conns int
	// ByGen counts the answers of each generation.
	ByGen map[int]int
	// Failures holds the first errors.
	Failures []string
	// Moved counts kept connections whose answers came from two
	// generations: the steering moved a connection.
	Moved int
	// Dials lists, per connection, when it was dialed and which
	// generation answered its first request.
	Dials []h3Dial
}

type h3Dial struct {
	At  time.Time
	Gen int
}

// h3QUICConfig is the clients' QUIC config: quic-go's defaults, but a
// handshake may take 10 s (times HANDOFF_E2E_SLOW) rather than 5 s, as a
// browser allows: a race-built demo on a busy 2-CPU host answers some
// handshakes in more than 5 s.
func h3QUICConfig() *quic.Config {
	return &quic.Config{HandshakeIdleTimeout: 10 * time.Second * slow}
}

func h3TLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, NextProtos: []string{http3.NextProtoH3}}
}

// startH3Load starts kept clients that keep one connection until its
// GOAWAY and fresh clients that dial a connection per request.
func startH3Load(addr string, kept, fresh int) *h3Load {
	l := &h3Load{addr: addr, stop: make(chan struct{}), res: h3Result{ByGen: map[int]int{}}}
	for range kept {
		l.wg.Go(func() { l.client(true) })
	}
	for range fresh {
		l.wg.Go(func() { l.client(false) })
	}
	return l
}

func (l *h3Load) stopLoad() h3Result {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.res.Conns = int(l.conns.Load())
	return l.res
}

func (l *h3Load) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// h3Conn is one client connection and the generation that answers on it.
type h3Conn struct {
	qc  *quic.Conn
	cc  *http3.ClientConn
	gen int
}

func (l *h3Load) dial() (*h3Conn, time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second*slow)
	defer cancel()
	at := time.Now()
	tlsConf := h3TLS()
	if l.small {
		tlsConf.CurvePreferences = []tls.CurveID{tls.X25519}
	}
	qc, err := quic.DialAddr(ctx, l.addr, tlsConf, h3QUICConfig())
	if err != nil {
		return nil, at, err
	}
	l.conns.Add(1)
	tr := &http3.Transport{}
	return &h3Conn{qc: qc, cc: tr.NewClientConn(qc)}, at, nil
}

func (c *h3Conn) close() { c.qc.CloseWithError(0, "") }

// get sends GET / on c and returns the generation that answered.
func (c *h3Conn) get() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second*slow)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+c.qc.RemoteAddr().String()+"/", nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.cc.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	var reply struct {
		Generation int `json:"generation"`
	}
	if err := json.Unmarshal(body, &reply); err != nil || reply.Generation == 0 {
		return 0, fmt.Errorf("answer %q: %v", body, err)
	}
	return reply.Generation, nil
}

// goneAway reports whether err is a request that never left because its
// connection had got GOAWAY: the request stream could not be opened
// ("conn unusable"), the connection being in graceful shutdown, or closed
// by this client with H3_NO_ERROR once its last request after the GOAWAY
// was done.
func goneAway(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "conn unusable") &&
		(strings.Contains(s, "connection in graceful shutdown") || strings.Contains(s, "H3_NO_ERROR (local)"))
}

func rejected(err error) bool {
	var h3err *http3.Error
	return errors.As(err, &h3err) && h3err.ErrorCode == http3.ErrCodeRequestRejected
}

func (l *h3Load) client(kept bool) {
	var c *h3Conn
	defer func() {
		if c != nil {
			c.close()
		}
	}()
	for !l.stopped() {
		var dialed time.Time
		if c == nil {
			var err error
			if c, dialed, err = l.dial(); err != nil {
				l.fail("dial: " + err.Error())
				c = nil
				continue
			}
		}
		gen, err := c.get()
		switch {
		case err == nil:
			l.record(c, gen, dialed)
		case goneAway(err):
			// The next request goes on a new connection. On one just
			// dialed: it reached the old generation as it sent its
			// GOAWAY, before the first request went out.
			if !dialed.IsZero() {
				l.mu.Lock()
				l.res.Unsent++
				l.mu.Unlock()
			}
		case rejected(err):
			l.mu.Lock()
			l.res.Rejected++
			l.mu.Unlock()
		default:
			l.fail(fmt.Sprintf("GET on a connection to generation %d: %v", c.gen, err))
		}
		if err != nil || !kept {
			c.close()
			c = nil
		}
	}
}

func (l *h3Load) record(c *h3Conn, gen int, dialed time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.res.OK++
	l.res.ByGen[gen]++
	if !dialed.IsZero() {
		l.res.Dials = append(l.res.Dials, h3Dial{At: dialed, Gen: gen})
	}
	if c.gen != 0 && c.gen != gen {
		l.res.Moved++
	}
	c.gen = gen
}

func (l *h3Load) fail(what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.res.Failed++
	if len(l.res.Failures) < 5 {
		l.res.Failures = append(l.res.Failures, what)
	}
}
