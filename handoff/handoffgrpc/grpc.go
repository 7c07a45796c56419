// Package handoffgrpc runs a *grpc.Server as a generation of a handoffd
// service: it serves on the listener handoffd handed over, says when it is
// ready, and on the stop signal drains with GracefulStop, bounded by a
// deadline after which Stop ends what is left.
//
// GracefulStop sends every connection a GOAWAY (grpc-go sends two, so that
// no call the client is just sending gets refused) and waits for the calls
// in flight, so clients move their next calls to the next generation. A
// long-lived stream never ends by itself: its handler selects on Draining
// and returns codes.Unavailable, which clients may retry on, before the
// deadline cuts it. Draining channels close spread over Spread, so that
// stream clients do not all reconnect at once.
//
// It is its own package so that package handoff stays free of grpc-go.
package handoffgrpc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/handoffd/handoffd/handoff"
	"github.com/handoffd/handoffd/handoff/internal/undrained"
	"google.golang.org/grpc"
)

// DefaultDrainTimeout is the DrainTimeout of a Server that sets none,
// when handoffd did not say how long the drain may take
// (handoff.DrainTimeout).
const DefaultDrainTimeout = 30 * time.Second

// drainTimeout is s.DrainTimeout, or what handoffd allows less a margin
// for Stop and the process's exit (a tenth, at most a second), or
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

// A Server runs a *grpc.Server for the life of a generation.
type Server struct {
	// DrainTimeout bounds GracefulStop; Stop then closes every connection
	// left. Keep it below the service's drain_timeout. Zero means what
	// handoffd allows (handoff.DrainTimeout) less a margin, or
	// DefaultDrainTimeout when handoffd did not say.
	DrainTimeout time.Duration
	// Spread is the window over which Draining channels close, cut to
	// half of DrainTimeout. Zero means handoff.DefaultSpread.
	Spread time.Duration

	srv       *grpc.Server
	undrained undrained.Server // counted from Serve to the end of Drain
	began     chan struct{}
	once      sync.Once
	// lnClosed is closed when GracefulStop closes the listener that
	// Serve serves on; nil when the app called srv.Serve itself.
	lnClosed chan struct{}
}

// New returns a Server for srv, whose services are registered or will be
// before Serve.
func New(srv *grpc.Server) *Server {
	return &Server{srv: srv, began: make(chan struct{})}
}

// goAwayGrace is how long after GracefulStop closed the listener the
// Draining channels start to close. GracefulStop queues a GOAWAY on each
// connection only once its listeners are closed and its accept loops have
// ended; a stream ended before its connection's GOAWAY would bring the
// client's next call back to this generation on the same connection.
const goAwayGrace = 100 * time.Millisecond

// watchedListener closes accepting when Serve first calls Accept (from
// then on it serves; the accept gate holds connections until READY=1),
// and closed when it is closed.
type watchedListener struct {
	net.Listener
	acceptOnce sync.Once
	accepting  chan struct{}
	closeOnce  sync.Once
	closed     chan struct{}
}

func (l *watchedListener) Accept() (net.Conn, error) {
	l.acceptOnce.Do(func() { close(l.accepting) })
	return l.Listener.Accept()
}

func (l *watchedListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Serve serves on ln, sends READY=1 (handoff.Ready) once the gRPC server
// accepts, and waits for SIGTERM or SIGINT or for ctx to end. It then
// drains (see Drain) and returns: nil after a clean drain, an error that
// says so when the deadline made it Stop the calls left. If the gRPC
// server fails before it accepted anything, Serve returns its error
// without sending READY=1: handoffd never makes such a generation active.
// If Ready fails, or the server fails later, before a signal, it drains
// at once and returns that error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop, unwatch := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer unwatch() // after the drain: a second SIGTERM must not cut calls
	served := make(chan error, 1)
	watched := &watchedListener{Listener: ln, accepting: make(chan struct{}), closed: make(chan struct{})}
	s.lnClosed = watched.closed
	s.undrained.Serving()
	go func() { served <- s.srv.Serve(watched) }()

	var cause error
	select {
	case err := <-served:
		// The server failed before it accepted anything: never ready.
		cause = fmt.Errorf("handoffgrpc: serve %s: %w", ln.Addr(), err)
	case <-watched.accepting:
		if err := handoff.Ready(); err != nil {
			cause = err
			break
		}
		select {
		case <-stop.Done():
		case err := <-served:
			cause = fmt.Errorf("handoffgrpc: serve %s: %w", ln.Addr(), err)
		}
	}
	handoff.Notify("STOPPING=1") // informative only: handoffd already knows
	return errors.Join(cause, s.Drain())
}

// Drain stops accepting, closes the Draining channels spread over Spread,
// and runs GracefulStop for at most DrainTimeout; then Stop. It returns
// nil when GracefulStop finished in time. OnReload handlers stop.
//
// In a service with state_handoff, once the calls have ended Drain hands
// the final of the handoff.StateHandler over (handoff.HandOverFinal), if
// one is set; its error is joined to Drain's. When the process also
// serves through other Servers or handoff.Drainers, the last drain to end
// sends it. Calls that Stop cut at the deadline may still be running,
// and the final misses their changes.
func (s *Server) Drain() error {
	err := s.drain()
	if s.undrained.Drained() {
		if ferr := handoff.HandOverFinal(); ferr != nil {
			return errors.Join(err, ferr)
		}
	}
	return err
}

func (s *Server) drain() error {
	timeout := s.drainTimeout()
	done := make(chan struct{})
	go func() { s.srv.GracefulStop(); close(done) }()
	s.once.Do(func() {
		handoff.StopReloads()
		go s.begin(done)
	})
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
		return nil
	case <-timer.C:
		s.srv.Stop()
		<-done
		return fmt.Errorf("handoffgrpc: drain: calls still open after %s were stopped", timeout)
	}
}

// begin closes began, which starts the Draining channels, once the
// connections had their GOAWAY: goAwayGrace after GracefulStop closed the
// listener of Serve (at most a second after the drain began), or at once
// when GracefulStop is done.
func (s *Server) begin(done <-chan struct{}) {
	defer close(s.began)
	if s.lnClosed != nil {
		select {
		case <-s.lnClosed:
		case <-done:
			return
		case <-time.After(time.Second):
		}
	}
	select {
	case <-time.After(goAwayGrace):
	case <-done:
	}
}

// Draining returns a channel that is closed when the stream of ctx (a
// handler's stream context) should end: at a moment drawn at random within
// Spread after the drain began and the connections had their GOAWAY, so
// that the client's next call opens a connection to the next generation.
// A server-streaming handler selects on it and returns
// status.Error(codes.Unavailable, ...). The channel is left open, and the
// goroutine behind it ends, when ctx ends first.
func (s *Server) Draining(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{})
	spread := s.Spread
	if spread <= 0 {
		spread = handoff.DefaultSpread
	}
	spread = min(spread, s.drainTimeout()/2)
	delay := rand.N(spread + 1)
	// Ends with the drain (after delay) or with ctx, whichever is first.
	go func() {
		select {
		case <-ctx.Done():
			return
		case <-s.began:
		}
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			close(ch)
		}
	}()
	return ch
}
