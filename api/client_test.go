package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// serve answers on a UNIX socket as handoffd's control API would.
func serve(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return NewClient(path)
}

func TestClientDecodesAnswers(t *testing.T) {
	var got []string
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.RequestURI())
		switch r.URL.Path {
		case "/v1/status":
			w.Write([]byte(`{"services":[{"name":"demo","mode":"ebpf","generations":[{"id":2,"pid":123,"state":"active","connections":17}]}]}`))
		default:
			w.Write([]byte(`{"service":"demo","generation":3,"pid":9,"previous":2}`))
		}
	})
	ctx := context.Background()
	st, err := c.Status(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	g := st.Services[0].Generations[0]
	if st.Services[0].Mode != ModeEBPF || g.State != StateActive || *g.Connections != 17 {
		t.Errorf("status decoded as %+v", st)
	}
	res, err := c.Swap(ctx, "demo")
	if err != nil || res.Generation != 3 || res.Previous != 2 {
		t.Errorf("swap: %+v, %v", res, err)
	}
	want := []string{"GET /v1/status?service=demo", "POST /v1/services/demo/swap"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("requests %q, want %q", got, want)
	}
}

func TestClientReturnsHandoffdsError(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusConflict)
		w.Write([]byte(`{"error":"swap demo: a swap is already in progress"}`))
	})
	_, err := c.Swap(context.Background(), "demo")
	var e *Error
	if !errors.As(err, &e) || e.StatusCode != http.StatusConflict || err.Error() != "swap demo: a swap is already in progress" {
		t.Errorf("got %#v (%v), want a 409 *Error with handoffd's message", err, err)
	}
}

func TestClientSaysWhenHandoffdIsNotThere(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	_, err := c.Status(context.Background(), "")
	if err == nil || !strings.Contains(err.Error(), "cannot reach handoffd") {
		t.Errorf("got %v, want a cannot-reach error", err)
	}
}

func TestStateNames(t *testing.T) {
	for s := StateStarting; s <= StateStandby; s++ {
		b, _ := s.MarshalText()
		var back State
		if err := back.UnmarshalText(b); err != nil || back != s {
			t.Errorf("%v round-trips to %v, %v", s, back, err)
		}
	}
	var s State
	if err := s.UnmarshalText([]byte("sleeping")); err == nil {
		t.Error("an unknown state name was accepted")
	}
}
