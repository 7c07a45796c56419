package handoff

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultIdleGrace is the IdleGrace of a Drainer that sets none.
const DefaultIdleGrace = time.Second

// drainPoll is how often Drain looks for connections idle past their
// grace; connections that close wake it at once.
const drainPoll = 25 * time.Millisecond

// A Drainer serves an *http.Server and drains it without failing a
// request: it replaces the server's Serve and Shutdown.
//
// Drain stops accepting, answers every request it still reads with
// "Connection: close" so that clients move to new connections (which reach
// the next generation), and closes a connection only after it has been
// idle for IdleGrace. Unlike http.Server.Shutdown it never closes a
// connection the moment it turns idle, which races with a keep-alive
// client sending its next request, and it never refuses a request it has
// read.
//
// What a Drainer cannot make safe, and what callers should know:
//   - A response whose headers were written before Drain began carries no
//     "Connection: close"; its connection ends when the client sends
//     another request (answered with the header) or after IdleGrace idle.
//     Closing an idle keep-alive connection always races with a client
//     that sends on it at that very moment; IdleGrace makes this rare for
//     busy clients, which send within it and get "Connection: close".
//   - A request whose header arrives more slowly than IdleGrace on an idle
//     or new connection looks idle (net/http reports StateActive only once
//     the header is read) and may be cut; raise IdleGrace for such clients.
//   - Hijacked connections (WebSocket and the like) are no longer tracked:
//     the app must end them itself.
//   - HTTP/2: net/http turns "Connection: close" into a GOAWAY, so clients
//     open new connections; the connection is closed once idle for
//     IdleGrace like an HTTP/1 one.
//
// A Drainer wraps the server's Handler and ConnState when it is created:
// set both before NewDrainer and do not change them afterwards.
type Drainer struct {
	// IdleGrace is how long a connection must have been idle (between
	// requests, or accepted with no request yet) before Drain closes it.
	// It is measured from when the connection last turned idle. Zero means
	// DefaultIdleGrace.
	IdleGrace time.Duration

	srv      *http.Server
	draining atomic.Bool
	start    sync.Once
	wake     chan struct{} // wakes Drain when a connection closes

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	serving   int // Serve calls that have not returned
	conns     map[net.Conn]*connInfo
	closed    int // connections closed by Drain
}

type connInfo struct {
	state   http.ConnState
	since   time.Time // when the connection entered state
	closing bool      // Drain closed it; waiting for StateClosed
}

// NewDrainer returns a Drainer for srv. It wraps srv.Handler (or
// http.DefaultServeMux when nil) to add "Connection: close" while
// draining, and srv.ConnState to track connections, calling the previous
// ConnState hook after its own.
func NewDrainer(srv *http.Server) *Drainer {
	d := &Drainer{
		srv:       srv,
		wake:      make(chan struct{}, 1),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]*connInfo),
	}
	inner := srv.Handler
	if inner == nil {
		inner = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Set before the handler runs: net/http then closes the
		// connection right after this response instead of waiting for a
		// next request that may never come.
		if d.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		inner.ServeHTTP(w, r)
	})
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		d.track(c, s)
		if prev != nil {
			prev(c, s)
		}
	}
	return d
}

// Serve serves the Drainer's server on ln, like http.Server.Serve, until
// Drain closes ln; it then returns nil at once, while the server's
// connections are still being drained: wait for Drain, not for Serve,
// before exiting. Serve called after Drain began closes ln and returns
// nil. Other errors are those of http.Server.Serve.
func (d *Drainer) Serve(ln net.Listener) error {
	d.mu.Lock()
	if d.draining.Load() {
		d.mu.Unlock()
		ln.Close()
		return nil
	}
	d.listeners[ln] = struct{}{}
	d.serving++
	d.mu.Unlock()

	err := d.srv.Serve(ln)

	d.mu.Lock()
	delete(d.listeners, ln)
	d.serving--
	d.mu.Unlock()
	d.signal()
	if d.draining.Load() {
		return nil
	}
	return err
}

// Drain stops accepting and waits until every connection has ended.
//
// It closes the listeners given to Serve at once: in ebpf mode the kernel
// then moves connections still queued on them to the next generation;
// with a shared socket they stay queued for it. From then on every
// response gets "Connection: close", so each request already accepted or
// arriving on an open keep-alive connection is answered, and its
// connection closed after the reply. A connection that stays idle (between
// requests, or accepted without a request yet) for longer than IdleGrace
// is closed. OnReload handlers stop. Drain never calls http.Server.Shutdown or
// SetKeepAlivesEnabled, which would close idle connections at once.
//
// Drain returns nil when every Serve call has returned and no connection
// is left. When ctx ends first, it closes the remaining connections,
// whatever their state, and returns ctx.Err(). Calling Drain again, or
// concurrently, waits the same way.
func (d *Drainer) Drain(ctx context.Context) error {
	d.start.Do(d.stopAccepting)
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for {
		if d.closeIdle(time.Now()) {
			return nil
		}
		select {
		case <-ctx.Done():
			d.closeAll()
			return ctx.Err()
		case <-tick.C:
		case <-d.wake:
		}
	}
}

// Conns returns the number of connections the server has open (accepted
// and not yet closed or hijacked).
func (d *Drainer) Conns() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}

// Closed returns the number of connections Drain closed itself: idle past
// IdleGrace, or left when its context ended. Connections that ended after
// a "Connection: close" response are not counted.
func (d *Drainer) Closed() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

func (d *Drainer) stopAccepting() {
	stopReloads() // a draining generation no longer reloads (see OnReload)
	d.mu.Lock()
	d.draining.Store(true) // under mu: Serve checks it before tracking a listener
	lns := make([]net.Listener, 0, len(d.listeners))
	for ln := range d.listeners {
		lns = append(lns, ln)
	}
	d.mu.Unlock()
	for _, ln := range lns {
		// An error means it was already closed; either way it accepts no more.
		ln.Close()
	}
}

// track follows a connection's state; it runs in the server's ConnState hook.
func (d *Drainer) track(c net.Conn, s http.ConnState) {
	d.mu.Lock()
	switch s {
	case http.StateNew, http.StateIdle:
		if ci := d.conns[c]; ci != nil {
			ci.state, ci.since = s, time.Now()
		} else {
			d.conns[c] = &connInfo{state: s, since: time.Now()}
		}
	case http.StateActive:
		if ci := d.conns[c]; ci != nil {
			ci.state = s
		}
	case http.StateHijacked, http.StateClosed:
		delete(d.conns, c)
	}
	d.mu.Unlock()
	if s == http.StateClosed || s == http.StateHijacked {
		d.signal()
	}
}

// closeIdle closes connections idle past the grace and reports whether
// the drain is done: no Serve running (so no accepted connection can still
// be on its way to StateNew) and no connection left.
func (d *Drainer) closeIdle(now time.Time) (done bool) {
	grace := d.IdleGrace
	if grace <= 0 {
		grace = DefaultIdleGrace
	}
	d.mu.Lock()
	var idle []net.Conn
	for c, ci := range d.conns {
		if !ci.closing && ci.state != http.StateActive && now.Sub(ci.since) > grace {
			ci.closing = true
			idle = append(idle, c)
		}
	}
	d.closed += len(idle)
	done = d.serving == 0 && len(d.conns) == 0
	d.mu.Unlock()
	closeConns(idle)
	return done
}

func (d *Drainer) closeAll() {
	d.mu.Lock()
	var rest []net.Conn
	for c, ci := range d.conns {
		if !ci.closing {
			ci.closing = true
			rest = append(rest, c)
		}
	}
	d.closed += len(rest)
	d.mu.Unlock()
	closeConns(rest)
}

// closeConns closes outside the Drainer's lock: closing a TLS connection
// may block on its close_notify, and ConnState must not wait for that.
func closeConns(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

func (d *Drainer) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}
