package handoff

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Draining returns a channel that is closed when the handler serving the
// request of ctx should end a long-lived response: a WebSocket, a stream
// of server-sent events, a long poll. It is closed at a moment drawn at
// random within the Drainer's Spread after the drain began (at once for a
// request that starts during the drain), so that clients reconnect to the
// next generation spread over that window. The handler then ends by its
// protocol, for instance:
//
//	select {
//	case <-handoff.Draining(r.Context()):
//		conn.Close(websocket.StatusGoingAway, "server restarting") // 1001
//	case <-done:
//	}
//
// For a ctx that is not a request's served through a Drainer it returns
// nil, a channel that is never closed.
func Draining(ctx context.Context) <-chan struct{} {
	q, _ := ctx.Value(requestKey{}).(*request)
	if q == nil {
		return nil
	}
	return q.draining()
}

// Hold keeps the connection of the request of ctx in the drain after its
// handler returns, until release is called. It is for a handler that
// hijacks its connection (a WebSocket) and hands it to goroutines that
// outlive the handler: without Hold the drain stops waiting for a hijacked
// connection when its handler returns. The drain deadline closes a held
// connection all the same. Release may be called more than once. For a
// ctx that is not a request's served through a Drainer, Hold does nothing.
func Hold(ctx context.Context) (release func()) {
	q, _ := ctx.Value(requestKey{}).(*request)
	if q == nil || q.ci == nil {
		return func() {}
	}
	d, ci := q.d, q.ci
	d.mu.Lock()
	ci.holds++
	q.holds++
	d.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			ci.holds--
			q.holds--
			q.forgetSignalLocked()
			d.forgetIfDoneLocked(ci)
			d.mu.Unlock()
			d.signal()
		})
	}
}

type (
	requestKey struct{}
	connKey    struct{}
)

// request is what the Drainer knows of a request while its handler runs.
type request struct {
	d      *Drainer
	ci     *connInfo
	once   sync.Once
	ch     <-chan struct{} // what Draining returns, set by its first call
	signal *drainSignal    // the spread signal behind ch, while it waits

	// Under d.mu: whether the handler returned, and Hold calls not yet
	// released. The request's Draining channel is dropped from the
	// waiting set when both say it is over.
	ended bool
	holds int
}

func (q *request) forgetSignalLocked() {
	if q.signal != nil && q.ended && q.holds == 0 {
		delete(q.d.waiting, q.signal)
	}
}

func connOf(ctx context.Context) *connInfo {
	ci, _ := ctx.Value(connKey{}).(*connInfo)
	return ci
}

func (q *request) draining() <-chan struct{} {
	q.once.Do(func() {
		d := q.d
		d.mu.Lock()
		defer d.mu.Unlock()
		switch {
		case d.draining.Load():
			q.ch = d.began // a request that starts during the drain ends at once
		case q.ended && q.holds == 0:
			q.ch = d.began // nothing keeps the request: no timer to spread
		default:
			q.signal = &drainSignal{ch: make(chan struct{})}
			q.ch = q.signal.ch
			d.waiting[q.signal] = struct{}{}
		}
	})
	return q.ch
}

// drainSignal is one request's Draining channel.
type drainSignal struct {
	ch   chan struct{}
	once sync.Once
}

func (s *drainSignal) fire() { s.once.Do(func() { close(s.ch) }) }

// fireWithin closes the channel at a uniformly random moment within
// spread from now.
func (s *drainSignal) fireWithin(spread time.Duration) {
	if spread <= 0 {
		s.fire()
		return
	}
	time.AfterFunc(rand.N(spread), s.fire)
}
