package handoff

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testServer serves a few handlers through a Drainer on a loopback port.
type testServer struct {
	*Drainer
	addr    string
	served  chan error // Serve's result
	started chan struct{}
	release chan struct{} // ends /block
}

func newTestServer(t *testing.T, grace time.Duration) *testServer {
	t.Helper()
	ts := &testServer{served: make(chan error, 1), started: make(chan struct{}, 16), release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, n)
	})
	mux.HandleFunc("GET /echo", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ts.started <- struct{}{}
		time.Sleep(500 * time.Millisecond)
		fmt.Fprint(w, "slow")
	})
	mux.HandleFunc("/block", func(w http.ResponseWriter, r *http.Request) {
		ts.started <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-ts.release:
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	ts.Drainer = NewDrainer(&http.Server{Handler: mux})
	ts.IdleGrace = grace
	go func() { ts.served <- ts.Serve(ln) }()
	t.Cleanup(func() {
		close(ts.release)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ts.Drain(ctx)
		if err := <-ts.served; err != nil {
			t.Errorf("Serve: %v, want nil after Drain", err)
		}
	})
	return ts
}

// drain runs Drain with a timeout and delivers its result.
func (ts *testServer) drain(timeout time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		done <- ts.Drain(ctx)
	}()
	return done
}

func waitDrained(t *testing.T, done <-chan error, want error) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, want) {
			t.Fatalf("Drain: %v, want %v", err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not return")
	}
}

// rawConn is a client connection that speaks HTTP/1.1 by hand, so the
// test controls exactly when bytes are sent.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{Conn: c, r: bufio.NewReader(c)}
}

func (c *rawConn) get(t *testing.T, path string) *http.Response {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetDeadline(time.Time{})
	return resp
}

// Many back-to-back POSTs on one keep-alive connection across Drain: all
// are answered, and the first one after Drain began says Connection: close.
func TestDrainKeepAlivePosts(t *testing.T) {
	ts := newTestServer(t, time.Second)
	tr := &http.Transport{MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	var conns atomic.Int32
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) {
			if !i.Reused {
				conns.Add(1)
			}
		},
	})
	var drained <-chan error
	n := 0
	for ; n < 100000; n++ {
		if n == 200 {
			drained = ts.drain(10 * time.Second)
		}
		body := strings.Repeat("x", n%4096)
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+ts.addr+"/echo", strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", n, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != strconv.Itoa(len(body)) {
			t.Fatalf("request %d: %s %q", n, resp.Status, got)
		}
		if resp.Close {
			if n < 200 {
				t.Fatalf("request %d before Drain said Connection: close", n)
			}
			break
		}
	}
	if n == 100000 {
		t.Fatal("no response said Connection: close")
	}
	if c := conns.Load(); c != 1 {
		t.Errorf("used %d connections, want 1", c)
	}
	waitDrained(t, drained, nil)
	if c := ts.Closed(); c != 0 {
		t.Errorf("Drain closed %d connections itself, want 0: the client closed it", c)
	}
	t.Logf("%d requests, the last with Connection: close", n+1)
}

// An idle keep-alive connection is closed once idle for IdleGrace, not before.
func TestDrainClosesIdleAfterGrace(t *testing.T) {
	const grace = 300 * time.Millisecond
	ts := newTestServer(t, grace)
	c := dialRaw(t, ts.addr)
	if resp := c.get(t, "/echo"); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("before Drain: %s close=%v", resp.Status, resp.Close)
	}
	idle := time.Now() // the server turned idle just before
	done := ts.drain(5 * time.Second)

	c.SetReadDeadline(idle.Add(grace - 100*time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read before the grace ended: %v, want a timeout (connection open)", err)
	}
	c.SetReadDeadline(idle.Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	closed := time.Since(idle)
	if err != io.EOF {
		t.Fatalf("read after the grace: %v, want EOF", err)
	}
	if closed < grace-20*time.Millisecond || closed > grace+500*time.Millisecond {
		t.Errorf("closed %v after turning idle, want about %v", closed, grace)
	}
	waitDrained(t, done, nil)
	if ts.Closed() != 1 {
		t.Errorf("Closed() = %d, want 1", ts.Closed())
	}
}

// A request in flight when Drain begins completes.
func TestDrainWaitsForSlowRequest(t *testing.T) {
	ts := newTestServer(t, 100*time.Millisecond)
	type result struct {
		status int
		body   string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.Post("http://"+ts.addr+"/slow", "text/plain", strings.NewReader("x"))
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{resp.StatusCode, string(b), err}
	}()
	<-ts.started
	start := time.Now()
	done := ts.drain(5 * time.Second)
	r := <-res
	if r.err != nil || r.status != 200 || r.body != "slow" {
		t.Fatalf("slow request: %d %q %v, want 200 slow", r.status, r.body, r.err)
	}
	waitDrained(t, done, nil)
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("Drain returned after %v, before the slow request ended", d)
	}
}

// A connection accepted before Drain whose request arrives 200 ms into
// the drain is answered, with Connection: close.
func TestDrainAnswersLateRequestOnNewConn(t *testing.T) {
	ts := newTestServer(t, 0) // DefaultIdleGrace
	c := dialRaw(t, ts.addr)
	for deadline := time.Now().Add(5 * time.Second); ts.Conns() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("server never saw the connection")
		}
	}
	done := ts.drain(5 * time.Second)
	time.Sleep(200 * time.Millisecond)
	resp := c.get(t, "/echo")
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("late request: %s close=%v, want 200 with Connection: close", resp.Status, resp.Close)
	}
	waitDrained(t, done, nil)
}

// When ctx ends first, Drain closes what is left and returns ctx.Err().
func TestDrainDeadline(t *testing.T) {
	ts := newTestServer(t, 50*time.Millisecond)
	res := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + ts.addr + "/block")
		if err == nil {
			resp.Body.Close()
		}
		res <- err
	}()
	<-ts.started
	start := time.Now()
	waitDrained(t, ts.drain(200*time.Millisecond), context.DeadlineExceeded)
	if d := time.Since(start); d > time.Second {
		t.Errorf("Drain returned after %v, want about 200ms", d)
	}
	if err := <-res; err == nil {
		t.Error("blocked request succeeded, want its connection cut")
	}
	if ts.Closed() != 1 {
		t.Errorf("Closed() = %d, want 1", ts.Closed())
	}
}

func TestDrainStopsAccepting(t *testing.T) {
	ts := newTestServer(t, 0)
	waitDrained(t, ts.drain(5*time.Second), nil)
	select {
	case err := <-ts.served:
		if err != nil {
			t.Errorf("Serve: %v, want nil", err)
		}
		ts.served <- nil // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if c, err := net.Dial("tcp", ts.addr); err == nil {
		c.Close()
		t.Error("listener still accepts after Drain")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.Serve(ln); err != nil {
		t.Errorf("Serve after Drain: %v, want nil", err)
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("Serve after Drain left its listener open")
	}
}

func TestDrainerChainsConnState(t *testing.T) {
	var states []http.ConnState
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}),
		ConnState: func(_ net.Conn, s http.ConnState) { states = append(states, s) },
	}
	d := NewDrainer(srv)
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	srv.ConnState(c1, http.StateNew)
	if d.Conns() != 1 || len(states) != 1 {
		t.Fatalf("Conns()=%d, previous hook saw %v", d.Conns(), states)
	}
	srv.ConnState(c1, http.StateHijacked)
	if d.Conns() != 0 || len(states) != 2 {
		t.Fatalf("after hijack: Conns()=%d, previous hook saw %v", d.Conns(), states)
	}
}

func TestServeAndDrain(t *testing.T) {
	notify := listenNotify(t, "sad")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hi") })}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeAndDrain(ctx, srv, ln, 5*time.Second) }()

	notify.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := notify.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("first notification %q %v, want READY=1", buf[:n], err)
	}
	resp, err := http.Get("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body) // so the connection stays open, idle
	resp.Body.Close()
	stopped := time.Now()
	cancel()
	if n, err = notify.Read(buf); err != nil || string(buf[:n]) != "STOPPING=1" {
		t.Fatalf("second notification %q %v, want STOPPING=1", buf[:n], err)
	}
	// The client's idle connection is closed after the grace: then it returns.
	waitDrained(t, done, nil)
	if d := time.Since(stopped); d < DefaultIdleGrace {
		t.Errorf("returned %v after the stop, before the idle connection's grace ended", d)
	}
}

// TestServeAndDrainNotReadyWhenServeFailed: a server that cannot serve
// never says READY=1, so handoffd never makes it the active generation.
func TestServeAndDrainNotReadyWhenServeFailed(t *testing.T) {
	notify := listenNotify(t, "sadfail")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{}
	srv.Close() // Serve now fails at once, before any Accept
	err = ServeAndDrain(context.Background(), srv, ln, time.Second)
	if !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("ServeAndDrain = %v, want the error of Serve", err)
	}
	notify.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 64)
	for {
		n, err := notify.Read(buf)
		if err != nil {
			break // nothing more within 200ms
		}
		if string(buf[:n]) == "READY=1" {
			t.Fatal("READY=1 sent although Serve had failed")
		}
	}
}

// listenNotify opens a notify socket named name and points NOTIFY_SOCKET
// at it for the test.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: fmt.Sprintf("@handoff-test/%d/%s", os.Getpid(), name), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { notify.Close() })
	t.Setenv("NOTIFY_SOCKET", notify.LocalAddr().String())
	return notify
}

// TestDrainKeepsIdleConnWithRequestArriving: a connection that looks idle
// but has a request waiting in its receive queue (a slow server has not
// read it yet) is not closed as idle: the client would see its request
// cut. It is answered, or ends at the drain's deadline.
func TestDrainKeepsIdleConnWithRequestArriving(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	d := NewDrainer(&http.Server{})
	d.IdleGrace = 20 * time.Millisecond
	d.track(server, http.StateIdle)
	client.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) // never read by a server here
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- d.Drain(ctx) }()
	time.Sleep(150 * time.Millisecond) // well past IdleGrace
	if n := d.Closed(); n != 0 {
		t.Errorf("Drain closed %d connection(s) with a request waiting unread", n)
	}
	<-drained
}
