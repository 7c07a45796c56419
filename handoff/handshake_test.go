package handoff

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// stallConn is a client's TCP connection whose second write (a TLS
// client's Finished, after the server's flight) waits until release.
type stallConn struct {
	net.Conn
	writes  int
	stalled chan struct{} // closed when the second write begins
	release chan struct{}
}

func (c *stallConn) Write(p []byte) (int, error) {
	c.writes++
	if c.writes == 2 {
		close(c.stalled)
		<-c.release
	}
	return c.Conn.Write(p)
}

// A client in the middle of its TLS handshake when the drain begins, and
// slower than IdleGrace to finish it, is not cut: its request, sent once
// the handshake ends, is answered.
func TestDrainWaitsForTLSHandshake(t *testing.T) {
	d, addr, pool := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	}))
	d.IdleGrace = 200 * time.Millisecond
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	sc := &stallConn{Conn: raw, stalled: make(chan struct{}), release: make(chan struct{})}
	tc := tls.Client(sc, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}})
	defer tc.Close()
	handshake := make(chan error, 1)
	go func() { handshake <- tc.Handshake() }()
	<-sc.stalled // the server sent its flight and waits for the client's
	drained := drainAsync(d)
	time.Sleep(3 * d.IdleGrace)
	close(sc.release)
	if err := <-handshake; err != nil {
		t.Fatalf("handshake, finished %s after the drain began: %v", 3*d.IdleGrace, err)
	}
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(tc, "GET / HTTP/1.1\r\nHost: test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("request after the handshake: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "ok" || !resp.Close {
		t.Errorf("answer %s %q (Connection: close %v), want 200 ok with Connection: close", resp.Status, body, resp.Close)
	}
	if err := <-drained; err != nil {
		t.Errorf("Drain: %v", err)
	}
}

// A TLS client that connects and sends nothing is closed after
// IdleGrace, as a plain one is: it holds no drain up.
func TestDrainClosesSilentTLSConn(t *testing.T) {
	d, addr, _ := serveTLS(t, http.NotFoundHandler())
	d.IdleGrace = 200 * time.Millisecond
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond) // accepted
	begin := time.Now()
	drained := drainAsync(d)
	if err := <-drained; err != nil {
		t.Errorf("Drain: %v", err)
	}
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("Drain took %s with a silent TLS connection, want about IdleGrace (%s)", took, d.IdleGrace)
	}
	if n := d.Closed(); n != 1 {
		t.Errorf("Drain closed %d connections, want the silent one", n)
	}
}
