package health

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// server answers /healthz with the status in code, counting requests.
type server struct {
	code atomic.Int32
	hits atomic.Int32
	hang chan struct{} // closed at the end of the test; /slow waits on it
	addr string
}

func newServer(t *testing.T) *server {
	t.Helper()
	s := &server{hang: make(chan struct{})}
	s.code.Store(http.StatusOK)
	h := http.NewServeMux()
	h.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		w.WriteHeader(int(s.code.Load()))
		w.Write([]byte("state\nof things"))
	})
	h.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-s.hang:
		case <-r.Context().Done():
		}
	})
	h.HandleFunc("/host", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "127.0.0.1:9" {
			w.WriteHeader(http.StatusBadRequest)
		}
	})
	srv := httptest.NewServer(h)
	t.Cleanup(func() { close(s.hang); srv.Close() })
	s.addr = srv.Listener.Addr().String()
	return s
}

func (s *server) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", s.addr)
}

func spec(path string) Spec {
	return Spec{HTTPPath: path, Interval: 5 * time.Millisecond, Timeout: 200 * time.Millisecond, Healthy: 2, Unhealthy: 3}
}

func checker(t *testing.T, sp Spec, dial Dial) *Checker {
	t.Helper()
	c, err := NewChecker(sp, dial)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestProbe(t *testing.T) {
	s := newServer(t)
	refused := func(ctx context.Context) (net.Conn, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		addr := ln.Addr().String()
		ln.Close()
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	hostSpec := spec("/host")
	hostSpec.Host = "127.0.0.1:9"
	for _, tc := range []struct {
		name string
		spec Spec
		code int
		dial Dial
		want string // "" passes
	}{
		{"http ok", spec("/healthz"), 200, s.dial, ""},
		{"http 204", spec("/healthz"), 204, s.dial, ""},
		{"http 503", spec("/healthz"), 503, s.dial, "GET /healthz: 503 Service Unavailable: state of things"},
		{"http redirect", spec("/healthz"), 302, s.dial, "GET /healthz: 302 Found"},
		{"http timeout", spec("/slow"), 200, s.dial, "GET /slow: "},
		{"http refused", spec("/healthz"), 200, refused, "connection refused"},
		{"host header", hostSpec, 200, s.dial, ""},
		{"tcp ok", spec(""), 200, s.dial, ""},
		{"tcp refused", spec(""), 200, refused, "tcp connect: "},
	} {
		s.code.Store(int32(tc.code))
		err := checker(t, tc.spec, tc.dial).Probe(context.Background())
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want a pass", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

func TestNewCheckerRefuses(t *testing.T) {
	for _, sp := range []Spec{
		{HTTPPath: "/h", Interval: 0, Timeout: time.Second, Healthy: 1, Unhealthy: 1},
		{HTTPPath: "/h", Interval: time.Second, Timeout: 0, Healthy: 1, Unhealthy: 1},
		{HTTPPath: "/h", Interval: time.Second, Timeout: time.Second, Healthy: 0, Unhealthy: 1},
		{HTTPPath: "/h", Interval: time.Second, Timeout: time.Second, Healthy: 1, Unhealthy: 0},
		{HTTPPath: "h", Interval: time.Second, Timeout: time.Second, Healthy: 1, Unhealthy: 1},
	} {
		if _, err := NewChecker(sp, nil); err == nil {
			t.Errorf("NewChecker(%+v) succeeded", sp)
		}
	}
}

func TestWaitHealthy(t *testing.T) {
	s := newServer(t)
	c := checker(t, spec("/healthz"), s.dial)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.hits.Load(); n != 2 {
		t.Errorf("WaitHealthy took %d checks, want healthy: 2", n)
	}

	// Never healthy: the error quotes the last answer.
	s.code.Store(http.StatusServiceUnavailable)
	short, cancelShort := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelShort()
	err := c.WaitHealthy(short)
	if err == nil || !strings.Contains(err.Error(), "503 Service Unavailable") {
		t.Errorf("WaitHealthy of a 503: %v, want the last answer", err)
	}
}

// TestWaitHealthyInARow checks that a failure restarts the count of
// passes.
func TestWaitHealthyInARow(t *testing.T) {
	var n atomic.Int32
	s := newServer(t)
	flaky := func(ctx context.Context) (net.Conn, error) {
		// pass, fail, pass, pass
		if n.Add(1) == 2 {
			return nil, context.DeadlineExceeded
		}
		return s.dial(ctx)
	}
	c := checker(t, spec("/healthz"), flaky)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if got := n.Load(); got != 4 {
		t.Errorf("WaitHealthy returned after %d checks, want 4 (pass, fail, pass, pass)", got)
	}
}

func TestWatch(t *testing.T) {
	s := newServer(t)
	c := checker(t, spec("/healthz"), s.dial)

	// Healthy all along: Watch runs until ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Watch(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Watch of a healthy server: %v, want the context's end", err)
	}
	// Turns unhealthy: Watch returns after 3 failures in a row.
	before := s.hits.Load()
	time.AfterFunc(20*time.Millisecond, func() { s.code.Store(http.StatusInternalServerError) })
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	err := c.Watch(ctx2)
	if err == nil || !strings.Contains(err.Error(), "3 health checks in a row failed") ||
		!strings.Contains(err.Error(), "500 Internal Server Error") {
		t.Fatalf("Watch of a failing server: %v", err)
	}
	if s.hits.Load()-before < 3 {
		t.Errorf("Watch returned after %d checks", s.hits.Load()-before)
	}
}
