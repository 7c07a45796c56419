package handoff

import (
	"context"
	"errors"
	"net"
	"net/http"
)

// setUpHTTP2 configures net/http's HTTP/2 server for srv through a second,
// never-served http.Server, and returns that server's Shutdown hook: it
// sends a GOAWAY to every HTTP/2 connection of srv. net/http runs the
// hooks of RegisterOnShutdown only from Shutdown, which would also close
// srv's idle HTTP/1 connections at once (the race a Drainer exists to
// avoid); the hook server has no connection of its own to close. It
// returns nil, and leaves srv alone, when the app set TLSNextProto itself
// (its own HTTP/2, or HTTP/2 switched off) or HTTP/2 is disabled.
func setUpHTTP2(srv *http.Server) (goAway func()) {
	if srv.TLSNextProto != nil {
		return nil
	}
	hook := &http.Server{Protocols: srv.Protocols, HTTP2: srv.HTTP2, IdleTimeout: srv.IdleTimeout, ReadTimeout: srv.ReadTimeout}
	// Serve sets up HTTP/2 before it accepts; noListener then ends it.
	hook.Serve(noListener{})
	if _, ok := hook.TLSNextProto["h2"]; !ok {
		return nil
	}
	srv.TLSNextProto = hook.TLSNextProto
	return func() { hook.Shutdown(context.Background()) }
}

// noListener is a listener that never accepts.
type noListener struct{}

var errNoListener = errors.New("handoff: HTTP/2 hook server accepts nothing")

func (noListener) Accept() (net.Conn, error) { return nil, errNoListener }
func (noListener) Close() error              { return nil }
func (noListener) Addr() net.Addr            { return &net.TCPAddr{} }
