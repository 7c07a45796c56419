// Package handoffquic serves HTTP/3 (quic-go) as a generation of a
// handoffd service, on the UDP socket of a QUIC listener (protocol: quic).
//
// handoffd steers every QUIC packet by its destination connection ID, so
// that a generation keeps its connections until it drains while new ones
// go to the next generation. For that, the connection IDs a generation
// hands out must carry its cookie: the generation's slot and the
// SO_COOKIE of its socket (package internal/quicid). A Server's
// quic.Transport mints them with a ConnectionIDGenerator of its own, and
// gives the generation a stateless-reset key of its own: a packet that
// reaches a generation which does not know its connection (one whose
// generation is gone) then gets a reset that no client takes for one of
// its connections' own.
//
// Drain sends HTTP/3 GOAWAY on every connection (http3.Server.Shutdown):
// the requests in flight finish, the clients open their next connection,
// which the steering sends to the next generation, and at the deadline
// what is left is closed. A stream the client opened after the GOAWAY was
// sent and before it arrived is reset with H3_REQUEST_REJECTED, which
// tells the client that the request was not processed, so that it may send
// it again (quic-go's http3.Transport does, once).
//
// It is its own package so that package handoff stays free of quic-go.
package handoffquic

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/handoffd/handoffd/handoff"
	"github.com/handoffd/handoffd/handoff/internal/undrained"
	"github.com/handoffd/handoffd/internal/joinproto"
	"github.com/handoffd/handoffd/internal/quicid"
	"github.com/handoffd/handoffd/kernel"
)

// DefaultDrainTimeout is the DrainTimeout of a Server that sets none,
// when handoffd did not say how long the drain may take.
const DefaultDrainTimeout = 30 * time.Second

// DefaultHandshakeGrace is the HandshakeGrace of a Server that sets none.
const DefaultHandshakeGrace = 500 * time.Millisecond

// A Server serves HTTP/3 on one QUIC listener for the life of a
// generation.
type Server struct {
	// H3 serves the requests: set its Handler before Serve. Its
	// TLSConfig was used by Listen.
	H3 *http3.Server
	// DrainTimeout bounds Drain: at its end the connections left are
	// closed. Zero means what handoffd allows (handoff.DrainTimeout) less
	// a margin, or DefaultDrainTimeout when handoffd did not say.
	DrainTimeout time.Duration
	// HandshakeGrace is how long Drain goes on serving as before, ahead
	// of the GOAWAY: the handshakes that began here before the steering
	// flipped (their packets keep coming here) complete and are served.
	// A connection that completes its handshake after the GOAWAY is
	// never served. It is cut to a quarter of the drain's time. Zero
	// means DefaultHandshakeGrace.
	HandshakeGrace time.Duration

	name      string
	conn      *net.UDPConn
	tr        *quic.Transport
	ln        *quic.EarlyListener
	conns     atomic.Int64
	accepted  atomic.Uint64
	undrained undrained.Server
	drainOnce sync.Once
	drainErr  error

	// reportMu guards reportPending: a report of Conns to handoffd is
	// due within reportDelay.
	reportMu      sync.Mutex
	reportPending bool
}

// reportDelay gathers the changes of the connection count into one
// report to handoffd.
const reportDelay = 100 * time.Millisecond

// Listen takes the UDP socket of the QUIC listener named name
// (handoff.ListenPacket; without handoffd, a socket bound to addr) and
// listens for QUIC on it with h3's TLSConfig (made ready for HTTP/3 by
// http3.ConfigureTLSConfig) and qconf, which may be nil. Datagrams that
// arrive before Serve wait in the socket; handshakes are answered at once.
func Listen(name, addr string, h3 *http3.Server, qconf *quic.Config) (*Server, error) {
	if h3 == nil || h3.TLSConfig == nil {
		return nil, errors.New("handoffquic: listen: give an http3.Server with a TLSConfig")
	}
	conn, err := handoff.ListenPacket(name, addr)
	if err != nil {
		return nil, err
	}
	tr, err := newTransport(conn, handoff.Generation())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoffquic: listen %s: %w", name, err)
	}
	ln, err := tr.ListenEarly(http3.ConfigureTLSConfig(h3.TLSConfig), qconf)
	if err != nil {
		tr.Close()
		conn.Close()
		return nil, fmt.Errorf("handoffquic: listen %s: %w", name, err)
	}
	if h3.Port == 0 {
		if a, ok := conn.LocalAddr().(*net.UDPAddr); ok {
			h3.Port = a.Port // what Alt-Svc announces
		}
	}
	return &Server{H3: h3, name: name, conn: conn, tr: tr, ln: ln}, nil
}

// newTransport makes the quic.Transport of generation gen on conn: its
// connection IDs carry the cookie of conn in gen's slot, and its
// stateless-reset and token keys are its own.
func newTransport(conn *net.UDPConn, gen int) (*quic.Transport, error) {
	cookie, err := kernel.ConnCookie(conn)
	if err != nil {
		return nil, err
	}
	var resetKey quic.StatelessResetKey
	var tokenKey quic.TokenGeneratorKey
	rand.Read(resetKey[:])
	rand.Read(tokenKey[:])
	return &quic.Transport{
		Conn:                  conn,
		ConnectionIDGenerator: Generator{Cookie: quicid.Cookie(quicid.SlotOf(gen), cookie)},
		StatelessResetKey:     &resetKey,
		TokenGeneratorKey:     &tokenKey,
	}, nil
}

// Generator mints the connection IDs of one socket of a generation:
// quicid.Len bytes, Cookie first, then random bytes.
type Generator struct {
	Cookie [quicid.CookieLen]byte
}

// GenerateConnectionID implements quic.ConnectionIDGenerator.
func (g Generator) GenerateConnectionID() (quic.ConnectionID, error) {
	var b [quicid.Len]byte
	copy(b[:], g.Cookie[:])
	if _, err := rand.Read(b[quicid.CookieLen:]); err != nil {
		return quic.ConnectionID{}, err
	}
	return quic.ConnectionIDFromBytes(b[:]), nil
}

// ConnectionIDLen implements quic.ConnectionIDGenerator.
func (g Generator) ConnectionIDLen() int { return quicid.Len }

// Addr returns the address of the socket the Server serves on.
func (s *Server) Addr() net.Addr { return s.conn.LocalAddr() }

// Conns returns how many QUIC connections the Server holds now.
func (s *Server) Conns() int64 { return s.conns.Load() }

// Accepted returns how many QUIC connections the Server has accepted.
func (s *Server) Accepted() uint64 { return s.accepted.Load() }

// Serve serves HTTP/3 until Drain; it returns http.ErrServerClosed then.
// Say READY=1 (handoff.Ready) once Serve runs.
func (s *Server) Serve() error {
	s.undrained.Serving()
	return s.H3.ServeListener(&countingListener{EarlyListener: s.ln, s: s})
}

// countingListener counts the connections that Serve accepts until each
// closes.
type countingListener struct {
	*quic.EarlyListener
	s *Server
}

func (l *countingListener) Accept(ctx context.Context) (*quic.Conn, error) {
	c, err := l.EarlyListener.Accept(ctx)
	if err != nil {
		return nil, err
	}
	l.s.conns.Add(1)
	l.s.accepted.Add(1)
	l.s.changed()
	// Ends when the connection closes, as it does at the latest when
	// Drain closes the transport.
	go func() {
		<-c.Context().Done()
		l.s.conns.Add(-1)
		l.s.changed()
	}()
	return c, nil
}

// changed reports Conns to handoffd (on NOTIFY_SOCKET, for its status
// and metrics) within reportDelay: one report for all the changes in
// between, and none while nothing changes.
func (s *Server) changed() {
	s.reportMu.Lock()
	defer s.reportMu.Unlock()
	if s.reportPending {
		return
	}
	s.reportPending = true
	time.AfterFunc(reportDelay, s.report)
}

func (s *Server) report() {
	s.reportMu.Lock()
	s.reportPending = false
	s.reportMu.Unlock()
	// Without NOTIFY_SOCKET (no handoffd) it does nothing.
	handoff.Notify(joinproto.FormatConnections(s.name, s.conns.Load()))
}

// drainTimeout is s.DrainTimeout, or what handoffd allows less a margin
// for the close and the process's exit (a tenth, at most a second), or
// DefaultDrainTimeout.
func (s *Server) drainTimeout() time.Duration {
	if s.DrainTimeout > 0 {
		return s.DrainTimeout
	}
	if d, ok := handoff.DrainTimeout(); ok {
		return d - min(d/10, time.Second)
	}
	return DefaultDrainTimeout
}

// Drain waits HandshakeGrace, then sends GOAWAY on every connection and
// waits until they are closed,
// until DrainTimeout passes or until ctx ends, whichever comes first; then
// it closes what is left, the transport and the socket. It returns nil
// after a clean drain, and says how many connections were cut otherwise.
// Later calls return what the first returned.
func (s *Server) Drain(ctx context.Context) error {
	s.drainOnce.Do(func() {
		timeout := s.drainTimeout()
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		grace := s.HandshakeGrace
		if grace <= 0 {
			grace = DefaultHandshakeGrace
		}
		t := time.NewTimer(min(grace, timeout/4))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		left := int64(0)
		err := s.H3.Shutdown(ctx)
		if err != nil {
			left = s.conns.Load()
		}
		s.ln.Close()
		s.tr.Close()
		s.conn.Close()
		s.report()
		s.undrained.Drained()
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.drainErr = fmt.Errorf("handoffquic: drain: %d connections cut at the deadline: %w", left, err)
		}
	})
	return s.drainErr
}
