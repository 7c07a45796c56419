package handoff

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"
)

// A TLS connection counts as idle, for Drain, until its client speaks:
// one that connects and sends nothing is closed after IdleGrace, like a
// plain one. Once the server has read anything from it (its ClientHello),
// the client is in the middle of its handshake and will send its request
// next: the connection counts as busy until the handshake ends, however
// slow the client is, and is idle from then on. net/http's handshake
// timeout (the least of the server's ReadTimeout, ReadHeaderTimeout and
// WriteTimeout) and the drain deadline bound the wait.
//
// ServeTLS learns of the first read by accepting each connection wrapped
// in a helloConn, under the TLS one. net/http tells nothing of a
// handshake's end, so the Drainer learns it by running the handshake
// itself, in a goroutine of its own, as soon as the connection is
// accepted: net/http's own HandshakeContext then waits for that handshake
// and returns its outcome, as it would have, with the same context (so
// GetCertificate and the like see the connection's context).

// helloListener accepts connections wrapped in a helloConn.
type helloListener struct{ net.Listener }

func (l helloListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &helloConn{Conn: c}, nil
}

// helloConn is the connection under a TLS one that ServeTLS accepts: it
// notes the server's first read of what the client sent.
type helloConn struct {
	net.Conn
	heard atomic.Bool
}

func (c *helloConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.heard.Store(true)
	}
	return n, err
}

// SyscallConn is the wrapped connection's, if it has one (kernel.Unread
// uses it).
func (c *helloConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, syscall.EINVAL
	}
	return sc.SyscallConn()
}

// handshaking reports whether ci's connection is a TLS one whose client
// has begun its handshake, which has not ended yet.
func (ci *connInfo) handshaking() bool {
	tc, ok := ci.conn.(*tls.Conn)
	if !ok || ci.handshaken {
		return false
	}
	hc, ok := tc.NetConn().(*helloConn)
	return ok && hc.heard.Load()
}

// handshake runs the TLS handshake of tc, whose context (ConnContext's)
// is ctx, and notes its end; it runs in a goroutine started as net/http
// accepts tc, and ends with the handshake (net/http's handshake timeout
// or the connection's close end a stalled one).
func (d *Drainer) handshake(ctx context.Context, tc *tls.Conn, ci *connInfo) {
	// net/http adds the local address to the handshake's context.
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, tc.LocalAddr())
	tc.HandshakeContext(ctx) // its error is net/http's to log: its own call returns it
	d.mu.Lock()
	ci.handshaken = true
	if ci.state == http.StateNew {
		ci.since = time.Now() // idle from now until the first request
	}
	d.mu.Unlock()
}
