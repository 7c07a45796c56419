package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gin-gonic/gin"
	"github.com/handoffd/handoffd/handoff"
)

// serveDemo serves the demo's routes through a Drainer, over TLS when
// config is set, and returns the drainer and the address.
func serveDemo(t *testing.T, config *tls.Config) (*handoff.Drainer, string) {
	t.Helper()
	gin.SetMode(gin.TestMode)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: newEngine(testApp, func() string { return "hi" }, testHealth.ok, &counter{}, false), TLSConfig: config}
	d := handoff.NewDrainer(srv)
	d.Spread = 50 * time.Millisecond
	served := make(chan error, 1)
	go func() {
		if config != nil {
			served <- d.ServeTLS(ln, "", "")
		} else {
			served <- d.Serve(ln)
		}
	}()
	t.Cleanup(func() {
		drain(d, 5*time.Second)
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return d, ln.Addr().String()
}

func TestWebSocketClosesWith1001(t *testing.T) {
	d, addr := serveDemo(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, hello, err := c.Read(ctx); err != nil || string(hello) != `{"generation":7}` {
		t.Fatalf("first message %q, %v; want the generation", hello, err)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("ping 1")); err != nil {
		t.Fatal(err)
	}
	if _, back, err := c.Read(ctx); err != nil || string(back) != "ping 1" {
		t.Fatalf("echo %q, %v", back, err)
	}
	drained := make(chan error, 1)
	go func() { drained <- drain(d, 5*time.Second) }()
	_, _, err = c.Read(ctx)
	if status := websocket.CloseStatus(err); status != websocket.StatusGoingAway {
		t.Errorf("read at drain: %v (status %d), want close 1001", err, status)
	}
	if err := <-drained; err != nil {
		t.Errorf("drain: %v", err)
	}
}

func TestEventsEndWithRetry(t *testing.T) {
	d, addr := serveDemo(t, nil)
	req, _ := http.NewRequest("GET", "http://"+addr+"/events", nil)
	req.Header.Set("Last-Event-ID", "41")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q", ct)
	}
	r := bufio.NewReader(resp.Body)
	want := "id: 42\ndata: {\"generation\":7,\"seq\":42}\n\n"
	if got := readEvent(t, r); got != want {
		t.Errorf("first event %q, want %q", got, want)
	}
	go drain(d, 5*time.Second)
	var last string
	for {
		ev := readEvent(t, r)
		if ev == "" {
			break
		}
		last = ev
	}
	if last != "retry: 100\n\n" {
		t.Errorf("stream ended with %q, want a retry hint", last)
	}
}

// readEvent reads one event (up to its blank line); "" at the end.
func readEvent(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	var ev strings.Builder
	for {
		line, err := r.ReadString('\n')
		ev.WriteString(line)
		if err == io.EOF && ev.Len() == 0 {
			return ""
		}
		if err != nil {
			t.Fatalf("read event: %v (so far %q)", err, ev.String())
		}
		if line == "\n" {
			return ev.String()
		}
	}
}

func TestSelfSignedTLSServesHTTP2(t *testing.T) {
	config, err := tlsConfig("", "")
	if err != nil {
		t.Fatal(err)
	}
	_, addr := serveDemo(t, config)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Errorf("GET /healthz over TLS: %s %s, want 200 over HTTP/2", resp.Proto, resp.Status)
	}
	if _, err := tlsConfig("cert.pem", ""); err == nil {
		t.Error("--tls-cert without --tls-key: want an error")
	}
}
