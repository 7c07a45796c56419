package handoffquic

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/handoffd/handoffd/internal/quicid"
)

func TestGeneratorCarriesTheCookie(t *testing.T) {
	g := Generator{Cookie: quicid.Cookie(7, 0xabcdef0123456789)}
	seen := map[string]bool{}
	for range 100 {
		id, err := g.GenerateConnectionID()
		if err != nil {
			t.Fatal(err)
		}
		slot, sock, ok := quicid.Parse(id.Bytes())
		if !ok || slot != 7 || sock != 0x23456789 {
			t.Fatalf("connection ID %x: slot %d, socket id %x, ok %v", id.Bytes(), slot, sock, ok)
		}
		if seen[string(id.Bytes())] {
			t.Fatalf("connection ID %x minted twice", id.Bytes())
		}
		seen[string(id.Bytes())] = true
	}
	if g.ConnectionIDLen() != quicid.Len {
		t.Errorf("ConnectionIDLen() = %d", g.ConnectionIDLen())
	}
}

func selfSigned(t *testing.T) *tls.Config {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// TestServeAndDrain serves HTTP/3 without handoffd, keeps a connection
// open, and drains: the kept connection gets GOAWAY and closes, Drain
// returns nil well before its deadline, and the count of connections
// follows.
func TestServeAndDrain(t *testing.T) {
	h3 := &http3.Server{TLSConfig: selfSigned(t), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})}
	s, err := Listen("h3", "127.0.0.1:0", h3, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.DrainTimeout = 10 * time.Second
	hdr := http.Header{}
	s.SetQUICHeaders(hdr)
	if want := fmt.Sprintf(`h3=":%d"; ma=86400`, s.Addr().(*net.UDPAddr).Port); hdr.Get("Alt-Svc") != want {
		t.Errorf("Alt-Svc %q, want %q", hdr.Get("Alt-Svc"), want)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()

	tr := &http3.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, QUICConfig: &quic.Config{}}
	defer tr.Close()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	url := "https://" + s.Addr().String() + "/"
	for range 3 {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "ok" {
			t.Fatalf("body %q", body)
		}
	}
	if n, a := s.Conns(), s.Accepted(); n != 1 || a != 1 {
		t.Errorf("conns %d, accepted %d: want one kept connection", n, a)
	}
	start := time.Now()
	if err := s.Drain(context.Background()); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("drain took %v: the client did not leave on GOAWAY", took)
	}
	select {
	case err := <-served:
		if err != http.ErrServerClosed {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Drain")
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Conns() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.Conns(); n != 0 {
		t.Errorf("%d connections counted after the drain", n)
	}
}
