package handoff

import (
	"context"
	"crypto/tls"
	"errors"
	"log"
	"net"
	"net/http"

	"golang.org/x/net/http2"
)

// nextProtoUnencryptedHTTP2 is the TLSNextProto key under which net/http
// hands over a connection of HTTP/2 without TLS (h2c, see
// http.Protocols.SetUnencryptedHTTP2), wrapped in a *tls.Conn.
const nextProtoUnencryptedHTTP2 = "unencrypted_http2"

// setUpHTTP2 makes the Drainer serve the HTTP/2 of its server, and
// reports whether it does: not when the app set srv.TLSNextProto itself
// (its own HTTP/2, or HTTP/2 switched off), nor when net/http would not
// serve HTTP/2 (srv.Protocols, GODEBUG=http2server=0).
//
// The Drainer serves HTTP/2 with golang.org/x/net/http2 (the server
// net/http bundles, configured the same way from srv.HTTP2), on each
// connection wrapped in a goAwayConn, so that a drain can end every
// HTTP/2 connection with the two GOAWAYs of RFC 9113, section 6.8.
func (d *Drainer) setUpHTTP2() bool {
	srv := d.srv
	if srv.TLSNextProto != nil {
		return false
	}
	// Serve sets up net/http's HTTP/2 before it accepts, if srv's
	// settings ask for it; noListener then ends it.
	probe := &http.Server{Protocols: srv.Protocols, HTTP2: srv.HTTP2}
	probe.Serve(noListener{})
	if _, ok := probe.TLSNextProto["h2"]; !ok {
		return false
	}
	srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){
		"h2": func(hs *http.Server, c *tls.Conn, h http.Handler) {
			g := newGoAwayConn(c, false)
			d.serveHTTP2(hs, g, tlsGoAwayConn{g, c}, h, false)
		},
		nextProtoUnencryptedHTTP2: func(hs *http.Server, c *tls.Conn, h http.Handler) {
			// net/http read the client preface already, and left the
			// connection right after it.
			inner, ok := c.NetConn().(interface{ UnencryptedNetConn() net.Conn })
			if !ok {
				logf(hs, "handoff: HTTP/2 without TLS handed over in an unknown wrapping (%T)", c.NetConn())
				c.Close()
				return
			}
			g := newGoAwayConn(inner.UnencryptedNetConn(), true)
			d.serveHTTP2(hs, g, g, h, true)
		},
	}
	return true
}

// serveHTTP2 serves one HTTP/2 connection, g, which the server sees as
// c (g itself, or g with its TLS state), until the connection ends.
//
// Each connection gets an http2.Server of its own, configured on an
// http.Server of its own that is never served: that server's Shutdown
// starts the graceful shutdown of this connection alone (its GOAWAY),
// which is how goAwayConn sends the second GOAWAY when this
// connection's turn comes.
func (d *Drainer) serveHTTP2(hs *http.Server, g *goAwayConn, c net.Conn, h http.Handler, sawPreface bool) {
	hook := &http.Server{IdleTimeout: hs.IdleTimeout, ReadTimeout: hs.ReadTimeout}
	h2 := &http2.Server{}
	if err := http2.ConfigureServer(hook, h2); err != nil {
		// Only a TLSConfig with unfit cipher suites fails, and hook has none.
		logf(hs, "handoff: set up HTTP/2: %v", err)
		g.Close()
		return
	}
	g.shutdown = func() { hook.Shutdown(context.Background()) }
	// net/http passes the connection's context (ConnContext's, with the
	// Drainer's connInfo in it) through this unadvertised method.
	var ctx context.Context
	if bc, ok := h.(interface{ BaseContext() context.Context }); ok {
		ctx = bc.BaseContext()
	}
	d.adopt(ctx, g)
	defer g.end()
	h2.ServeConn(c, &http2.ServeConnOpts{Context: ctx, Handler: h, BaseConfig: hs, SawClientPreface: sawPreface})
}

func logf(hs *http.Server, format string, args ...any) {
	if hs.ErrorLog != nil {
		hs.ErrorLog.Printf(format, args...)
		return
	}
	log.Printf(format, args...)
}

// noListener is a listener that never accepts.
type noListener struct{}

var errNoListener = errors.New("handoff: HTTP/2 probe server accepts nothing")

func (noListener) Accept() (net.Conn, error) { return nil, errNoListener }
func (noListener) Close() error              { return nil }
func (noListener) Addr() net.Addr            { return &net.TCPAddr{} }
