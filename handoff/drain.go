package handoff

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoffd/handoffd/handoff/internal/undrained"
	"github.com/handoffd/handoffd/kernel"
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
// Long-lived requests (WebSockets, server-sent events, streams) learn that
// the drain began from Draining, each at its own moment within Spread, and
// end by their protocol: a WebSocket close 1001, the end of an SSE stream
// with a retry hint. Their clients then reconnect to the next generation
// spread over that window rather than all at once. A hijacked connection
// stays in the drain while its handler runs, or until the app releases it
// (see Hold); the drain deadline closes it.
//
// HTTP/2 (see ServeTLS): every HTTP/2 connection is shut down the way
// RFC 9113, section 6.8 asks once the drain begins: a GOAWAY that names
// no stream (2^31−1), with the next response, so its client sends further
// requests on a new connection, and, once a PING showed that the client
// read it and the connection has been idle for IdleGrace since, the
// server's GOAWAY naming the last stream the client opened, every one of
// which was answered. No stream is refused, so a client that never
// re-sends one loses none (see goAwayConn for the steps and what each is
// for). A connection that stays idle for IdleGrace gets the server's
// GOAWAY alone, which may race with a request its client sends then.
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
//     With ServeTLS a connection in the middle of its TLS handshake is not
//     idle (the client sent its ClientHello): the idle time of a new TLS
//     connection counts from the end of its handshake.
//   - A handler that ignores Draining keeps its request open until the
//     drain deadline, which then cuts it.
//   - HTTP/2's shutdown waits for the client's PING ACKs, each at most 5s
//     (a quarter of what is left of the drain deadline, if less); a client
//     that does not answer in time may have a stream it opened meanwhile
//     refused, which HTTP/2 clients may re-send on a new connection (RFC
//     9113, section 8.7). While it waits for the first ACK, the server's
//     frames on that connection wait too, and an idle connection whose
//     client is gone is closed only once both waits are over.
//     An app that fills srv.TLSNextProto itself keeps its own HTTP/2: its
//     connections get one GOAWAY, with the first response written during
//     the drain ("Connection: close"), and none when they stay idle.
//
// A Drainer wraps the server's Handler, ConnState and ConnContext, and
// sets up its HTTP/2, when it is created: set those (and Protocols and
// HTTP2) before NewDrainer and do not change them afterwards.
type Drainer struct {
	// IdleGrace is how long a connection must have been idle (between
	// requests, or accepted with no request yet) before Drain closes it.
	// It is measured from when the connection last turned idle. Zero means
	// DefaultIdleGrace.
	IdleGrace time.Duration

	// Spread is the window over which long-lived requests are told that
	// the drain began: each request's Draining channel closes at a moment
	// drawn uniformly at random within it. It is cut to half of what is
	// left of the drain deadline, so that every request has time to end.
	// Zero means DefaultSpread.
	Spread time.Duration

	srv      *http.Server
	http2    bool // the Drainer serves HTTP/2 (see setUpHTTP2)
	draining atomic.Bool
	start    sync.Once
	began    chan struct{} // closed when the drain begins
	wake     chan struct{} // wakes Drain when a connection closes

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	serving   int              // Serve calls that have not returned
	undrained undrained.Server // counted from Serve to the end of Drain
	conns     map[net.Conn]*connInfo
	closed    int                       // connections closed by Drain
	waiting   map[*drainSignal]struct{} // Draining channels of running requests, not yet due
	spread    time.Duration             // the Spread in force once the drain began
	// patience is how long an HTTP/2 connection's shutdown waits for each
	// PING ACK, once the drain began: goAwayPatience, cut to a quarter of
	// what is left of the drain deadline.
	patience time.Duration
}

// DefaultSpread is the Spread of a Drainer that sets none.
const DefaultSpread = 2 * time.Second

// goAwayPatience is how long the shutdown of an HTTP/2 connection waits
// for each of its PING ACKs (see goAwayConn), as grpc-go's GracefulStop
// does. A client answers as soon as it reads the PING: waiting longer
// costs nothing but for a client that is starved of CPU, or gone, and
// giving up early would refuse a slow client's streams.
const goAwayPatience = 5 * time.Second

type connInfo struct {
	conn       net.Conn
	state      http.ConnState
	since      time.Time   // when the connection entered state
	closing    bool        // Drain closed it; waiting for StateClosed
	handlers   int         // handlers running for requests on this connection
	holds      int         // Hold calls not yet released
	h2         *goAwayConn // the connection as the Drainer serves HTTP/2 on it, if it does
	settled    time.Time   // when its client last answered a PING of its shutdown (see goAwayConn)
	handshaken bool        // its TLS handshake ended (see handshake.go)
}

// NewDrainer returns a Drainer for srv. It wraps srv.Handler (or
// http.DefaultServeMux when nil) to add "Connection: close" while
// draining and to give requests their Draining channel, and srv.ConnState
// and srv.ConnContext to track connections, calling the previous hooks.
// Unless srv.TLSNextProto is set, it sets up HTTP/2 for srv (used over
// TLS, see ServeTLS, and without TLS when srv.Protocols allows it) in a
// way that lets Drain shut HTTP/2 connections down gracefully.
func NewDrainer(srv *http.Server) *Drainer {
	d := &Drainer{
		srv:       srv,
		began:     make(chan struct{}),
		wake:      make(chan struct{}, 1),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]*connInfo),
		waiting:   make(map[*drainSignal]struct{}),
	}
	inner := srv.Handler
	if inner == nil {
		inner = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Set before the handler runs: net/http then closes the
		// connection right after this response instead of waiting for a
		// next request that may never come. Not on the Drainer's HTTP/2,
		// whose server would take it for a GOAWAY at once: its
		// connections get theirs in two steps (see goAwayConn).
		if d.draining.Load() && !(d.http2 && r.ProtoMajor == 2) {
			w.Header().Set("Connection", "close")
		}
		q := &request{d: d, ci: connOf(r.Context())}
		d.enter(q.ci)
		defer d.leave(q)
		inner.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestKey{}, q)))
	})
	prevState := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		if g, ok := c.(interface{ base() net.Conn }); ok {
			// The Drainer's HTTP/2 server reports on its wrapping.
			c = g.base()
		}
		d.track(c, s)
		if prevState != nil {
			prevState(c, s)
		}
	}
	prevContext := srv.ConnContext
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if prevContext != nil {
			ctx = prevContext(ctx, c)
		}
		ci := d.register(c)
		ctx = context.WithValue(ctx, connKey{}, ci)
		if tc, ok := c.(*tls.Conn); ok {
			go d.handshake(ctx, tc, ci) // ends with the handshake
		}
		return ctx
	}
	d.http2 = d.setUpHTTP2()
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
	d.undrained.Serving()
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

// ServeTLS is Serve over TLS, with HTTP/2 offered to clients by ALPN
// when the server has it (by default it has). It takes the server's
// TLSConfig, or an empty one, and adds the certificate in certFile and
// keyFile (PEM) unless both are empty and the config already has one.
// Like Serve, it returns nil once Drain closed ln.
//
// Serve(tls.NewListener(ln, config)) works too, but then config's
// NextProtos must list "h2" for HTTP/2, and Drain cannot tell a client in
// the middle of its TLS handshake from an idle one (ServeTLS sees the
// first bytes of each); http.Server.ServeTLS would bypass the Drainer.
// Under ServeTLS, a *tls.Conn's NetConn is a wrapping of the accepted
// connection.
func (d *Drainer) ServeTLS(ln net.Listener, certFile, keyFile string) error {
	config := &tls.Config{}
	if d.srv.TLSConfig != nil {
		config = d.srv.TLSConfig.Clone()
	}
	if _, h2 := d.srv.TLSNextProto["h2"]; h2 && !slices.Contains(config.NextProtos, "h2") {
		config.NextProtos = append([]string{"h2"}, config.NextProtos...)
	}
	if !slices.Contains(config.NextProtos, "http/1.1") {
		config.NextProtos = append(config.NextProtos, "http/1.1")
	}
	hasCert := len(config.Certificates) > 0 || config.GetCertificate != nil || config.GetConfigForClient != nil
	if !hasCert || certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("handoff: load TLS certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{cert}
	}
	return d.Serve(tls.NewListener(helloListener{ln}, config))
}

// Drain stops accepting and waits until every connection has ended.
//
// It closes the listeners given to Serve at once: in ebpf mode the kernel
// then moves connections still queued on them to the next generation;
// with a shared socket they stay queued for it. It shuts every HTTP/2
// connection down with two GOAWAYs (see Drainer) and closes each request's Draining
// channel, spread over Spread. From then on every response gets "Connection: close", so
// each request already accepted or arriving on an open keep-alive
// connection is answered, and its connection closed after the reply. A
// connection that stays idle (between requests, or accepted without a
// request yet) for longer than IdleGrace is closed. A hijacked connection
// counts until its handler returns and every Hold on it is released.
// OnReload handlers stop. Drain never calls http.Server.Shutdown or
// SetKeepAlivesEnabled, which would close idle connections at once.
//
// Drain returns nil when every Serve call has returned and no connection
// is left. When ctx ends first, it closes the remaining connections,
// whatever their state, hijacked ones included, and returns ctx.Err().
// Calling Drain again, or concurrently, waits the same way.
//
// In a service with state_handoff, once the drain ended Drain hands the
// StateHandler's Final to the next generation (see HandOverFinal), if one
// is set: after the last drain of the process when it serves several
// Drainers (or gRPC servers, see package handoffgrpc). Its error, if any, is joined to Drain's. Connections cut at
// the deadline may leave handlers running, whose changes the final
// misses.
func (d *Drainer) Drain(ctx context.Context) error {
	err := d.drain(ctx)
	if d.undrained.Drained() {
		if ferr := HandOverFinal(); ferr != nil {
			return errors.Join(err, ferr)
		}
	}
	return err
}

func (d *Drainer) drain(ctx context.Context) error {
	d.start.Do(func() { d.begin(ctx) })
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

// Draining returns a channel that is closed when the drain begins, at
// once for every caller; a request's own channel, spread over the drain
// window, comes from the package-level Draining.
func (d *Drainer) Draining() <-chan struct{} { return d.began }

// Conns returns the number of connections the server has open: accepted
// and not yet closed, hijacked ones included while they count for the
// drain.
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

// begin starts the drain: no more accepting, the graceful shutdown of
// HTTP/2 connections, and the Draining signals of running requests
// scheduled over the spread window, which ctx's deadline may shorten.
func (d *Drainer) begin(ctx context.Context) {
	stopReloads() // a draining generation no longer reloads (see OnReload)
	spread := d.Spread
	if spread <= 0 {
		spread = DefaultSpread
	}
	patience := goAwayPatience
	if deadline, ok := ctx.Deadline(); ok {
		spread = max(0, min(spread, time.Until(deadline)/2))
		patience = max(0, min(patience, time.Until(deadline)/4))
	}
	d.mu.Lock()
	d.draining.Store(true) // under mu: Serve and Draining check it
	d.spread = spread
	d.patience = patience
	lns := make([]net.Listener, 0, len(d.listeners))
	for ln := range d.listeners {
		lns = append(lns, ln)
	}
	due := make([]*drainSignal, 0, len(d.waiting))
	for s := range d.waiting {
		due = append(due, s)
	}
	clear(d.waiting)
	for _, ci := range d.conns {
		if ci.h2 != nil {
			ci.h2.startGoAway(patience, d.settled(ci))
		}
	}
	d.mu.Unlock()
	close(d.began)
	for _, ln := range lns {
		// An error means it was already closed; either way it accepts no more.
		ln.Close()
	}
	for _, s := range due {
		s.fireWithin(spread)
	}
}

// register notes a connection as net/http accepts it; it runs in the
// server's ConnContext hook, just before ConnState reports StateNew.
func (d *Drainer) register(c net.Conn) *connInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	ci := d.conns[c]
	if ci == nil {
		ci = &connInfo{conn: c, state: http.StateNew, since: time.Now()}
		d.conns[c] = ci
	}
	return ci
}

// track follows a connection's state; it runs in the server's ConnState hook.
func (d *Drainer) track(c net.Conn, s http.ConnState) {
	d.mu.Lock()
	ci := d.conns[c]
	switch s {
	case http.StateNew, http.StateIdle:
		if ci == nil {
			ci = &connInfo{conn: c}
			d.conns[c] = ci
		}
		ci.state, ci.since = s, time.Now()
	case http.StateActive:
		if ci != nil {
			ci.state = s
		}
	case http.StateHijacked:
		// Its handler is running (it hijacked): the connection counts
		// until the handler returns and every Hold is released.
		if ci != nil {
			ci.state = s
			d.forgetIfDoneLocked(ci)
		}
	case http.StateClosed:
		delete(d.conns, c)
	}
	d.mu.Unlock()
	if s == http.StateClosed || s == http.StateHijacked {
		d.signal()
	}
}

// enter and leave bracket a handler; ci is nil for a connection that was
// not accepted through the Drainer's hooks.
func (d *Drainer) enter(ci *connInfo) {
	if ci == nil {
		return
	}
	d.mu.Lock()
	ci.handlers++
	d.mu.Unlock()
}

func (d *Drainer) leave(q *request) {
	d.mu.Lock()
	q.ended = true
	q.forgetSignalLocked()
	if q.ci != nil {
		q.ci.handlers--
		d.forgetIfDoneLocked(q.ci)
	}
	d.mu.Unlock()
	d.signal()
}

// forgetIfDoneLocked stops counting a hijacked connection once nothing
// holds it: net/http no longer reports on it.
func (d *Drainer) forgetIfDoneLocked(ci *connInfo) {
	if ci.state == http.StateHijacked && ci.handlers <= 0 && ci.holds <= 0 {
		delete(d.conns, ci.conn)
	}
}

// closeIdle closes connections idle past the grace and reports whether
// the drain is done: no Serve running (so no accepted connection can still
// be on its way to StateNew) and no connection left.
func (d *Drainer) closeIdle(now time.Time) (done bool) {
	grace := d.idleGrace()
	d.mu.Lock()
	var idle []net.Conn
	var goAway []*goAwayConn
	for c, ci := range d.conns {
		// An HTTP/2 connection whose client is to answer a PING of its
		// shutdown is busy (its responses wait, or the client may be
		// opening streams); its idle time counts from the answer.
		busy := ci.state == http.StateActive || ci.state == http.StateHijacked || ci.holds > 0 || ci.handshaking() ||
			ci.h2 != nil && ci.h2.busy.Load()
		since := ci.since
		if ci.settled.After(since) {
			since = ci.settled
		}
		if ci.closing || busy || now.Sub(since) <= grace || requestWaiting(c) {
			continue
		}
		ci.closing = true
		if ci.h2 != nil {
			// Its server's own GOAWAY, naming the last stream; the
			// server then closes the connection.
			goAway = append(goAway, ci.h2)
			continue
		}
		idle = append(idle, c)
	}
	d.closed += len(idle)
	done = d.serving == 0 && len(d.conns) == 0
	d.mu.Unlock()
	closeConns(idle)
	for _, g := range goAway {
		g.shutdown()
	}
	return done
}

// requestWaiting reports whether bytes wait unread on c: the next request
// arrived, and the server, slow, has not read it yet (net/http marks the
// connection active only once it has read the header). Closing c now
// would cut that request.
func requestWaiting(c net.Conn) bool {
	n, ok := kernel.Unread(c)
	return ok && n > 0
}

// adopt notes the HTTP/2 connection g, whose context is ctx, and starts
// its shutdown if the drain began.
func (d *Drainer) adopt(ctx context.Context, g *goAwayConn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ci *connInfo
	if ctx != nil {
		if ci = connOf(ctx); ci != nil {
			ci.h2 = g
		}
	}
	if d.draining.Load() {
		g.startGoAway(d.patience, d.settled(ci))
	}
}

// settled returns what notes that the client of ci's HTTP/2 connection
// answered a PING of its shutdown, or did not in time: the connection's
// idle time counts from then.
func (d *Drainer) settled(ci *connInfo) func() {
	return func() {
		if ci == nil {
			return
		}
		d.mu.Lock()
		ci.settled = time.Now()
		d.mu.Unlock()
		d.signal()
	}
}

func (d *Drainer) idleGrace() time.Duration {
	if d.IdleGrace <= 0 {
		return DefaultIdleGrace
	}
	return d.IdleGrace
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
