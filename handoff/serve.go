package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"
)

// ServeAndDrain runs srv on ln for the whole life of a generation. It
// serves through a Drainer, sends READY=1 (see Ready), and waits for
// SIGTERM or SIGINT or for ctx to end. It then sends STOPPING=1 and drains
// (see Drainer.Drain) for at most drainTimeout, and returns: nil after a
// clean drain, context.DeadlineExceeded when connections had to be cut.
// Further signals during the drain are ignored, so a repeated SIGTERM
// does not cut requests in flight.
//
// If Ready fails, or Serve fails before a signal, ServeAndDrain drains at
// once and returns that error.
func ServeAndDrain(ctx context.Context, srv *http.Server, ln net.Listener, drainTimeout time.Duration) error {
	stop, unwatch := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer unwatch()

	d := NewDrainer(srv)
	served := make(chan error, 1)
	go func() { served <- d.Serve(ln) }()

	var cause error
	if err := Ready(); err != nil {
		cause = err
	} else {
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
