package handoff

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// serveDrainer serves handler through a Drainer on a loopback port; the
// test drains it.
func serveDrainer(t *testing.T, handler http.Handler, setup func(*Drainer)) (*Drainer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := NewDrainer(&http.Server{Handler: handler})
	if setup != nil {
		setup(d)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Drain(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v, want nil after Drain", err)
		}
	})
	return d, ln.Addr().String()
}

// Long-lived requests learn of the drain each at its own moment within
// Spread, and Drain waits for them.
func TestDrainingIsSpread(t *testing.T) {
	const streams = 20
	var mu sync.Mutex
	var told []time.Time
	started := make(chan struct{}, streams)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-Draining(r.Context())
		mu.Lock()
		told = append(told, time.Now())
		mu.Unlock()
		fmt.Fprint(w, "bye")
	})
	d, addr := serveDrainer(t, h, func(d *Drainer) { d.Spread = 600 * time.Millisecond })
	answers := make(chan error, streams)
	for range streams {
		go func() {
			resp, err := http.Get("http://" + addr + "/")
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != "bye" {
					err = fmt.Errorf("body %q", body)
				}
			}
			answers <- err
		}()
	}
	for range streams {
		<-started
	}
	if Draining(context.Background()) != nil {
		t.Error("Draining of a context that is no request's: want nil")
	}
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	for range streams {
		if err := <-answers; err != nil {
			t.Errorf("stream: %v", err)
		}
	}
	first, last := told[0].Sub(begin), told[0].Sub(begin)
	for _, at := range told {
		first, last = min(first, at.Sub(begin)), max(last, at.Sub(begin))
	}
	t.Logf("%d streams told between %s and %s after the drain began", len(told), first, last)
	if last > 1500*time.Millisecond || last-first < 150*time.Millisecond {
		t.Errorf("streams told between %s and %s: want them spread over the 600ms Spread", first, last)
	}
}

// The drain's deadline cuts the Spread to half of what is left.
func TestSpreadFitsDeadline(t *testing.T) {
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		ch := Draining(r.Context())
		<-ch
		if again := Draining(r.Context()); again != ch {
			t.Error("Draining gave another channel on its second call")
		}
	})
	d, addr := serveDrainer(t, h, func(d *Drainer) { d.Spread, d.IdleGrace = time.Hour, 10*time.Millisecond })
	go http.Get("http://" + addr + "/")
	<-started
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	// Before the deadline: the Spread was cut to 200ms.
	if err := d.Drain(ctx); err != nil {
		t.Fatalf("Drain with a 400ms deadline and a 1h Spread: %v (after %s)", err, time.Since(begin))
	}
}

// hijackServer serves /ws: the handler hijacks, says hello, and then runs
// serve with the connection.
func hijackServer(t *testing.T, serve func(r *http.Request, c net.Conn, rw *bufio.ReadWriter)) (*Drainer, string) {
	return serveDrainer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		rw.WriteString("hello\n")
		rw.Flush()
		serve(r, c, rw)
	}), func(d *Drainer) { d.Spread = 100 * time.Millisecond })
}

func dialHijack(t *testing.T, addr string) *bufio.Reader {
	t.Helper()
	c := dialRaw(t, addr)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /ws HTTP/1.1\r\nHost: test\r\n\r\n")
	if line, err := c.r.ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("hijacked connection said %q, %v", line, err)
	}
	return c.r
}

// A hijacked connection counts for the drain while its handler runs; the
// handler ends it by its protocol when told.
func TestDrainWaitsForHijacked(t *testing.T) {
	handlerDone := make(chan time.Time, 1)
	d, addr := hijackServer(t, func(r *http.Request, c net.Conn, rw *bufio.ReadWriter) {
		<-Draining(r.Context())
		time.Sleep(200 * time.Millisecond) // a close handshake
		rw.WriteString("going away\n")
		rw.Flush()
		c.Close()
		handlerDone <- time.Now()
	})
	client := dialHijack(t, addr)
	if n := d.Conns(); n != 1 {
		t.Errorf("Conns() = %d with one hijacked connection, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	drained := time.Now()
	if done := <-handlerDone; drained.Before(done) {
		t.Errorf("Drain returned %s before the hijacked connection's handler", done.Sub(drained))
	}
	if line, err := client.ReadString('\n'); line != "going away\n" {
		t.Errorf("client read %q, %v; want the protocol's goodbye", line, err)
	}
}

// A handler that ignores the drain is cut at the deadline.
func TestDrainDeadlineClosesHijacked(t *testing.T) {
	d, addr := hijackServer(t, func(r *http.Request, c net.Conn, rw *bufio.ReadWriter) {
		io.Copy(io.Discard, rw) // until the connection is closed
		c.Close()
	})
	client := dialHijack(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := d.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain: %v, want the deadline", err)
	}
	if d.Closed() != 1 {
		t.Errorf("Closed() = %d, want 1", d.Closed())
	}
	if _, err := client.ReadString('\n'); err == nil {
		t.Error("the hijacked connection is still open after the drain deadline")
	}
}

// Hold keeps a hijacked connection in the drain after its handler
// returned, until released.
func TestHoldOutlivesHandler(t *testing.T) {
	released := make(chan time.Time, 1)
	d, addr := hijackServer(t, func(r *http.Request, c net.Conn, rw *bufio.ReadWriter) {
		release := Hold(r.Context())
		go func() {
			<-Draining(r.Context())
			rw.WriteString("going away\n")
			rw.Flush()
			c.Close()
			released <- time.Now()
			release()
			release() // a second call does nothing
		}()
	})
	client := dialHijack(t, addr)
	time.Sleep(50 * time.Millisecond) // the handler has returned
	if n := d.Conns(); n != 1 {
		t.Errorf("Conns() = %d with one held connection, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	drained := time.Now()
	if at := <-released; drained.Before(at) {
		t.Error("Drain returned before the held connection was released")
	}
	if line, _ := client.ReadString('\n'); line != "going away\n" {
		t.Errorf("client read %q, want the goodbye", line)
	}
}

// Without Hold, a hijacked connection leaves the drain with its handler.
func TestHijackedForgottenWithHandler(t *testing.T) {
	keep := make(chan net.Conn, 1)
	d, addr := hijackServer(t, func(r *http.Request, c net.Conn, rw *bufio.ReadWriter) { keep <- c })
	dialHijack(t, addr)
	c := <-keep
	defer c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for d.Conns() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Conns() = %d after the hijacking handler returned, want 0", d.Conns())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 and returns
// the file names and a pool that trusts it.
func writeCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "handoff test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// serveTLS serves handler with ServeTLS on a loopback port.
func serveTLS(t *testing.T, handler http.Handler) (d *Drainer, addr string, pool *x509.CertPool) {
	t.Helper()
	certFile, keyFile, pool := writeCert(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d = NewDrainer(&http.Server{Handler: handler})
	d.IdleGrace = 2 * time.Second // idle HTTP/2 connections get GOAWAY after 500ms
	served := make(chan error, 1)
	go func() { served <- d.ServeTLS(ln, certFile, keyFile) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Drain(ctx)
		if err := <-served; err != nil {
			t.Errorf("ServeTLS: %v, want nil after Drain", err)
		}
	})
	return d, ln.Addr().String(), pool
}

// ServeTLS offers HTTP/2, and a request in flight when the drain begins
// is answered on its HTTP/2 connection.
func TestServeTLSHTTP2(t *testing.T) {
	started := make(chan struct{}, 1)
	d, addr, pool := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		fmt.Fprint(w, r.Proto)
	}))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	answer := make(chan string, 1)
	go func() {
		resp, err := (&http.Client{Transport: tr}).Post("https://"+addr+"/", "text/plain", strings.NewReader("x"))
		if err != nil {
			answer <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answer <- string(body)
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Drain(ctx); err != nil {
		t.Errorf("Drain: %v", err)
	}
	if got := <-answer; got != "HTTP/2.0" {
		t.Errorf("answer %q, want one served over HTTP/2.0", got)
	}
}
