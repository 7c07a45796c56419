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
// what is left is closed. Ahead of the GOAWAY it serves for a grace, so
// that handshakes begun before the steering flipped complete here, and
// holds new requests for a moment, so that a client sending its requests
// one after the other is waiting for an answer when the GOAWAY goes out:
// quic-go's server resets a stream that the client opened while the
// GOAWAY was on its way (H3_REQUEST_REJECTED), and not every client sends
// such a request again.
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

// DefaultGoAwayHold is the GoAwayHold of a Server that sets none.
const DefaultGoAwayHold = 250 * time.Millisecond

// goAwayLead is how long after the GOAWAY the requests held for it go on,
// so that it leaves ahead of their answers.
const goAwayLead = 150 * time.Millisecond

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
	// of the GOAWAY, so that the handshakes that began here before the
	// steering flipped (their packets keep coming here) mostly complete
	// first; one that completes later is served by a second server, which
	// sends its GOAWAY once no such connection came for HandshakeGrace.
	// It is cut to a quarter of the drain's time. Zero means
	// DefaultHandshakeGrace.
	HandshakeGrace time.Duration
	// GoAwayHold is how long, just before the GOAWAY, requests that come
	// in wait before they are handled. quic-go's server sends one GOAWAY,
	// naming the last request stream it took, and resets with
	// H3_REQUEST_REJECTED a stream that the client opened while the GOAWAY
	// was on its way; curl, for one, does not send such a request again.
	// A client that sends its requests one after the other is waiting for
	// an answer when the GOAWAY goes out, and sends its next request on a
	// new connection. It is cut to a tenth of the drain's time. Zero means
	// DefaultGoAwayHold; a negative value holds nothing.
	GoAwayHold time.Duration

	name      string
	conn      *net.UDPConn
	tr        *quic.Transport
	ln        *quic.EarlyListener
	conns     atomic.Int64
	accepted  atomic.Uint64
	undrained undrained.Server
	drainOnce sync.Once
	drainErr  error

	// mu guards what Drain changes while Serve accepts: draining, the
	// server of late connections, when the last one came, and whether it
	// is shut down.
	mu       sync.Mutex
	draining bool
	late     *http3.Server
	lastLate time.Time
	lateDone bool
	// hold, while not nil, is closed when the requests that came in
	// before the GOAWAY may be handled.
	hold    chan struct{}
	wrapped bool

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

// SetQUICHeaders announces the Server in hdr, an answer over HTTP/1.1 or
// HTTP/2: Alt-Svc: h3=":PORT" (H3.Port, which Listen set to the socket's
// port unless it was set).
func (s *Server) SetQUICHeaders(hdr http.Header) {
	hdr.Add("Alt-Svc", fmt.Sprintf(`%s=":%d"; ma=86400`, http3.NextProtoH3, s.H3.Port))
}

// Conns returns how many QUIC connections the Server holds now.
func (s *Server) Conns() int64 { return s.conns.Load() }

// Accepted returns how many QUIC connections the Server has accepted.
func (s *Server) Accepted() uint64 { return s.accepted.Load() }

// Serve accepts QUIC connections and serves HTTP/3 on each, until Drain
// closes the socket; it returns http.ErrServerClosed then. Say READY=1
// (handoff.Ready) once Serve runs.
func (s *Server) Serve() error {
	s.undrained.Serving()
	s.mu.Lock()
	if !s.wrapped {
		s.H3.Handler = s.holding(s.H3.Handler)
		s.wrapped = true
	}
	s.mu.Unlock()
	for {
		c, err := s.ln.Accept(context.Background())
		if err != nil {
			s.mu.Lock()
			draining := s.draining
			s.mu.Unlock()
			if draining {
				return http.ErrServerClosed
			}
			return err
		}
		s.track(c)
		// Ends when the connection is closed, at the latest when Drain
		// closes the transport.
		go s.serveConn(c)
	}
}

// holding makes h wait, while Drain holds requests, until the GOAWAY went
// out (see GoAwayHold).
func (s *Server) holding(h http.Handler) http.Handler {
	if h == nil {
		h = http.DefaultServeMux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		hold := s.hold
		s.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// track counts c until it closes.
func (s *Server) track(c *quic.Conn) {
	s.conns.Add(1)
	s.accepted.Add(1)
	s.changed()
	go func() {
		<-c.Context().Done()
		s.conns.Add(-1)
		s.changed()
	}()
}

// serveConn serves c with H3, or, when H3 was shut down before it took c,
// with a server of late connections: c is a handshake that began here
// before the steering flipped and completed after the GOAWAY, and its
// client is sending its requests here.
func (s *Server) serveConn(c *quic.Conn) {
	err := s.H3.ServeQUICConn(c)
	for errors.Is(err, http.ErrServerClosed) && c.Context().Err() == nil {
		late := s.lateServer()
		if late == nil {
			// The drain is over: nothing serves here any more.
			c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
			return
		}
		// A late server shut down before it took c: the next one does.
		err = late.ServeQUICConn(c)
	}
}

// lateServer returns the server of late connections, a new one when the
// last was taken for shutting down, and notes that a connection came; nil
// once the drain has stopped serving.
func (s *Server) lateServer() *http3.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lateDone {
		return nil
	}
	if s.late == nil {
		s.late = s.newLate()
	}
	s.lastLate = time.Now()
	return s.late
}

// newLate makes a server like H3 for the connections that come after its
// GOAWAY.
func (s *Server) newLate() *http3.Server {
	h := s.H3
	return &http3.Server{Addr: h.Addr, Port: h.Port, TLSConfig: h.TLSConfig, QUICConfig: h.QUICConfig,
		Handler: h.Handler, EnableDatagrams: h.EnableDatagrams, MaxHeaderBytes: h.MaxHeaderBytes,
		AdditionalSettings: h.AdditionalSettings, ReadHeaderTimeout: h.ReadHeaderTimeout,
		IdleTimeout: h.IdleTimeout, ConnContext: h.ConnContext, Logger: h.Logger}
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

// Drain waits HandshakeGrace, holds new requests for GoAwayHold, then
// sends GOAWAY on every connection (and lets the held requests go on) and
// waits until they are closed, until DrainTimeout passes or until ctx
// ends, whichever comes first; then it closes what is left, the transport
// and the socket. A connection whose handshake completes after the GOAWAY
// (it began here before the steering flipped) is served too, and gets its
// GOAWAY once no such connection came for HandshakeGrace. Drain returns
// nil after a clean drain, and says how many connections were cut
// otherwise. Later calls return what the first returned.
func (s *Server) Drain(ctx context.Context) error {
	s.drainOnce.Do(func() {
		timeout := s.drainTimeout()
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		grace := s.HandshakeGrace
		if grace <= 0 {
			grace = DefaultHandshakeGrace
		}
		grace = min(grace, timeout/4)
		if !sleep(ctx, grace) {
			grace = 0
		}
		hold := s.GoAwayHold
		if hold == 0 {
			hold = DefaultGoAwayHold
		}
		var held chan struct{}
		if hold > 0 {
			held = make(chan struct{})
			s.mu.Lock()
			s.hold = held
			s.mu.Unlock()
			sleep(ctx, min(hold, timeout/10))
		}
		s.mu.Lock()
		s.draining, s.lastLate = true, time.Now()
		s.mu.Unlock()
		shutdown := make(chan error, 1)
		go func() { shutdown <- s.H3.Shutdown(ctx) }()
		if held != nil {
			sleep(ctx, goAwayLead)
			s.mu.Lock()
			s.hold = nil
			s.mu.Unlock()
			close(held)
		}
		err := errors.Join(s.shutdownLate(ctx, grace, shutdown))
		left := int64(0)
		if err != nil {
			left = s.conns.Load()
		}
		s.ln.Close()
		s.tr.Close()
		s.conn.Close()
		s.report()
		s.undrained.Drained()
		if err != nil {
			s.drainErr = fmt.Errorf("handoffquic: drain: %d connections cut at the deadline: %w", left, err)
		}
	})
	return s.drainErr
}

// shutdownLate waits until H3's shutdown is done (its result comes on
// mainDone) and no late connection came for grace, shutting down each
// server of late connections in turn (GOAWAY, then their end); then it
// stops serving late connections. ctx bounds it all.
func (s *Server) shutdownLate(ctx context.Context, grace time.Duration, mainDone <-chan error) error {
	var errs []error
	main := mainDone
	for {
		if main != nil {
			select {
			case err := <-main:
				errs = append(errs, err)
				main = nil
			case <-ctx.Done():
			}
		}
		s.mu.Lock()
		quiet := time.Since(s.lastLate)
		if quiet < grace && ctx.Err() == nil {
			s.mu.Unlock()
			sleep(ctx, grace-quiet)
			continue
		}
		late := s.late
		s.late = nil
		if late == nil && main == nil || ctx.Err() != nil {
			s.lateDone = true
		}
		done := s.lateDone
		s.mu.Unlock()
		if late != nil {
			errs = append(errs, late.Shutdown(ctx))
		}
		if done {
			if main != nil {
				errs = append(errs, <-main)
			}
			return errors.Join(errs...)
		}
	}
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
