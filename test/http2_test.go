package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHTTP2OverTLSAcrossSwaps makes 20 swaps while 32 clients send POSTs
// over HTTP/2 and TLS, each on its own connection, never retried by the
// test: not one may fail. Each old generation sends every HTTP/2
// connection a GOAWAY as its drain begins.
func TestHTTP2OverTLSAcrossSwaps(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel() // 40 s of swaps each, mostly waiting: the modes side by side
			http2AcrossSwaps(t, mode)
		})
	}
}

func http2AcrossSwaps(t *testing.T, mode string) {
	certFile, keyFile, pool := writeTestCert(t)
	d := startDaemon(t, daemonOptions{mode: mode, demoArgs: []string{"--tls", "--tls-cert", certFile, "--tls-key", keyFile}})
	l := startH2Load(d.addr, pool, loadClients)
	time.Sleep(300 * time.Millisecond)
	st := swapRepeatedly(t, d, swapCount, swapEvery)
	time.Sleep(500 * time.Millisecond)
	res := l.stop()
	last := st.Generations[len(st.Generations)-1].ID
	t.Logf("requests: %d ok, %d failed, %d not over HTTP/2; %d TLS connections; per generation %v",
		res.ok, res.failed, res.notH2, res.dials, res.byGen)
	if res.failed > 0 {
		t.Errorf("%d requests failed, first ones: %q", res.failed, res.failures)
	}
	if res.notH2 > 0 {
		t.Errorf("%d answers came over HTTP/1", res.notH2)
	}
	if res.ok < 20*swapCount*loadClients/10 {
		t.Errorf("only %d requests succeeded: the load did not run", res.ok)
	}
	for gen := 2; gen <= last; gen++ {
		if res.byGen[gen] == 0 {
			t.Errorf("generation %d answered no request", gen)
		}
	}
}

// h2Load runs HTTP/2 clients over TLS, each with its own transport (so
// its own connection), sending POSTs whose body cannot be rewound: the Go
// transport could not re-send one even on its own, so a request that the
// server refused or dropped is a failure the test sees.
type h2Load struct {
	stopCh chan struct{}
	wg     sync.WaitGroup
	dials  atomic.Int64

	mu       sync.Mutex
	ok       int
	failed   int
	notH2    int
	failures []string
	byGen    map[int]int
}

type h2Result struct {
	ok, failed, notH2 int
	dials             int64
	failures          []string
	byGen             map[int]int
}

func startH2Load(addr string, pool *x509.CertPool, clients int) *h2Load {
	l := &h2Load{stopCh: make(chan struct{}), byGen: map[int]int{}}
	for i := range clients {
		l.wg.Add(1)
		go l.client(addr, pool, i)
	}
	return l
}

func (l *h2Load) stop() h2Result {
	close(l.stopCh)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return h2Result{ok: l.ok, failed: l.failed, notH2: l.notH2, dials: l.dials.Load(), failures: l.failures, byGen: l.byGen}
}

func (l *h2Load) client(addr string, pool *x509.CertPool, id int) {
	defer l.wg.Done()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			l.dials.Add(1)
			return dialer.DialContext(ctx, network, a)
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	body := []byte(fmt.Sprintf(`{"client":%d}`, id))
	for range loadLimit {
		select {
		case <-l.stopCh:
			return
		default:
		}
		gen, h2, err := l.post(client, "https://"+addr+"/slow?ms=2", body)
		l.mu.Lock()
		if err != nil {
			l.failed++
			if len(l.failures) < 20 {
				l.failures = append(l.failures, err.Error())
			}
		} else {
			l.ok++
			l.byGen[gen]++
			if !h2 {
				l.notH2++
			}
		}
		l.mu.Unlock()
	}
}

func (l *h2Load) post(client *http.Client, url string, body []byte) (gen int, h2 bool, err error) {
	// A body without GetBody: a request is sent once, whatever happens.
	req, err := http.NewRequest(http.MethodPost, url, io.NopCloser(bytes.NewReader(body)))
	if err != nil {
		return 0, false, err
	}
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, false, err
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, false, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, false, fmt.Errorf("status %s: %s", resp.Status, data)
	}
	var answer struct {
		Generation int   `json:"generation"`
		Bytes      int64 `json:"bytes"`
	}
	if err := json.Unmarshal(data, &answer); err != nil || answer.Bytes != int64(len(body)) {
		return 0, false, fmt.Errorf("answer %q (%v), want the %d bytes sent", data, err, len(body))
	}
	return answer.Generation, resp.ProtoMajor == 2, nil
}

// writeTestCert writes a self-signed certificate for 127.0.0.1 and
// returns its files and a pool that trusts it.
func writeTestCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "handoffd e2e"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
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
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
