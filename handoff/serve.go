package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// ServeAndDrain runs srv on ln for the whole life of a generation. It
// serves through a Drainer, sends READY=1 (see Ready), and waits for
// SIGTERM or SIGINT or for ctx to end. It then sends STOPPING=1 and drains
// (see Drainer.Drain) for at most drainTimeout, and returns: nil after a
// clean drain, context.DeadlineExceeded when connections had to be cut.
// Further signals during the drain are ignored, so a repeated SIGTERM
// does not cut requests in flight. After the drain it hands the
// StateHandler's Final over, if one is set (see HandOverFinal).
//
// If Serve fails before it accepted anything, ServeAndDrain returns its
// error without sending READY=1: handoffd never makes such a generation
// active. If Ready fails, or Serve fails later, before a signal,
// ServeAndDrain drains at once and returns that error.
func ServeAndDrain(ctx context.Context, srv *http.Server, ln net.Listener, drainTimeout time.Duration) error {
	stop, unwatch := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer unwatch()

	d := NewDrainer(srv)
	served := make(chan error, 1)
	first := &firstAccept{Listener: ln, entered: make(chan struct{})}
	go func() { served <- d.Serve(first) }()

	var cause error
	select {
	case err := <-served:
		// Serve failed before it accepted anything: never ready.
		cause = fmt.Errorf("handoff: serve %s: %w", ln.Addr(), err)
	case <-first.entered:
		if err := Ready(); err != nil {
			cause = err
			break
		}
		select {
		case <-stop.Done():
		case err := <-served:
			cause = fmt.Errorf("handoff: serve %s: %w", ln.Addr(), err)
		}
	}
	Notify("STOPPING=1") // informative only: handoffd already knows

	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
	defer cancel()
	if err := d.Drain(dctx); err != nil {
		return errors.Join(cause, fmt.Errorf("handoff: drain: closed %d connections: %w", d.Closed(), err))
	}
	return cause
}

// firstAccept tells when Serve first calls Accept: from then on it serves
// (the accept gate holds connections until Ready).
type firstAccept struct {
	net.Listener
	once    sync.Once
	entered chan struct{}
}

func (l *firstAccept) Accept() (net.Conn, error) {
	l.once.Do(func() { close(l.entered) })
	return l.Listener.Accept()
}
