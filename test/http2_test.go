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
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHTTP2OverTLSAcrossSwaps makes 20 swaps while 32 clients send POSTs
// over HTTP/2 and TLS, each on its own connection, never retried by the
// test: not one may fail. Each old generation shuts every HTTP/2
// connection down with two GOAWAYs as its drain begins.
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

// TestH2LoadAcrossSwaps makes swaps while nghttp2's h2load, an HTTP/2
// client that never re-sends a request, keeps 32 connections with 4
// streams each busy: not one stream may fail, refused or reset or cut,
// nor one request be dropped unsent. Each old generation shuts its
// HTTP/2 connections down with two GOAWAYs (see handoff.Drainer).
func TestH2LoadAcrossSwaps(t *testing.T) {
	requireH2Load(t)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel() // mostly waiting for swaps: the modes side by side
			h2loadAcrossSwaps(t, mode)
		})
	}
}

func h2loadAcrossSwaps(t *testing.T, mode string) {
	certFile, keyFile, _ := writeTestCert(t)
	d := startDaemon(t, daemonOptions{mode: mode, demoArgs: []string{"--tls", "--tls-cert", certFile, "--tls-key", keyFile}})
	l := startH2LoadRuns(t, "https://"+d.addr+"/slow?ms=2")
	time.Sleep(300 * time.Millisecond)
	swapRepeatedly(t, d, swapCount, swapEvery)
	res := l.stop()
	t.Logf("h2load: %d runs; %d streams started, %d answered 200; %d errored (%d of them never sent), %d left unanswered; other answers %v",
		res.runs, res.started, res.ok, res.errored, res.unsent, res.unanswered, res.statuses)
	if res.errored > 0 || res.unanswered > 0 || len(res.statuses) > 0 {
		t.Errorf("%d streams failed: %d errored (%d never sent), %d left unanswered, other answers %v; runs with failures:\n%s",
			res.started-res.ok, res.errored, res.unsent, res.unanswered, res.statuses, strings.Join(res.failedRuns, "\n"))
	}
	if res.ok < 20*swapCount*loadClients/10 {
		t.Errorf("only %d streams answered: the load did not run", res.ok)
	}
	// Each swap ends the run in progress (its clients all get a GOAWAY),
	// unless it falls between two.
	if res.runs < swapCount/2 {
		t.Errorf("h2load ran %d times across %d swaps: the swaps did not reach its connections", res.runs, swapCount)
	}
}

// requireH2Load fails (CI) or skips the test when h2load is not installed.
func requireH2Load(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("h2load"); err == nil {
		return
	}
	const why = "h2load not installed (apt-get install nghttp2-client)"
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: not skipping)", why)
	}
	t.Skip(why)
}

// h2LoadRuns runs h2load with 32 clients of 4 streams each, one run
// after another until stop. h2load (1.52) ends a client at the first
// GOAWAY of its connection, as it opens no new connection for HTTP/2,
// and a run ends when all of its clients have: so a run lasts until the
// next swap, or its h2LoadStreams streams, whichever comes first. Every
// stream's outcome comes from h2load's --log-file; a stream that h2load
// started but never logged was left unanswered (its connection ended
// under it).
type h2LoadRuns struct {
	t      *testing.T
	url    string
	dir    string
	stopCh chan struct{}
	done   chan h2LoadResult
}

type h2LoadResult struct {
	runs, started, ok, errored, unsent, unanswered int
	statuses                                       map[string]int // answers other than 200
	failedRuns                                     []string       // when and how runs with failures ended, first few
}

const (
	h2LoadStreams  = 4096             // per run: about a swap's worth on a quiet machine, and a bound
	h2LoadRunLimit = 60 * time.Second // per run
)

func startH2LoadRuns(t *testing.T, url string) *h2LoadRuns {
	l := &h2LoadRuns{t: t, url: url, dir: t.TempDir(), stopCh: make(chan struct{}), done: make(chan h2LoadResult, 1)}
	go l.loop()
	return l
}

// stop waits for the run in progress to end and returns the sum of all.
func (l *h2LoadRuns) stop() h2LoadResult {
	close(l.stopCh)
	return <-l.done
}

func (l *h2LoadRuns) loop() {
	res := h2LoadResult{statuses: map[string]int{}}
	defer func() {
		if len(res.statuses) == 0 {
			res.statuses = nil
		}
		l.done <- res
	}()
	for run := 1; ; run++ {
		select {
		case <-l.stopCh:
			return
		default:
		}
		if err := l.run(run, &res); err != nil {
			l.t.Errorf("h2load run %d: %v", run, err)
			return
		}
	}
}

var h2LoadStarted = regexp.MustCompile(`requests: \d+ total, (\d+) started`)

func (l *h2LoadRuns) run(run int, res *h2LoadResult) error {
	logFile := filepath.Join(l.dir, fmt.Sprintf("run%d.log", run))
	ctx, cancel := context.WithTimeout(context.Background(), h2LoadRunLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "h2load", "--clients", strconv.Itoa(loadClients), "--max-concurrent-streams", "4",
		"--requests", strconv.Itoa(h2LoadStreams), "--connection-inactivity-timeout", "10s",
		"--log-file", logFile, l.url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	m := h2LoadStarted.FindSubmatch(out)
	if m == nil {
		return fmt.Errorf("no request count in its output: %s", out)
	}
	started, _ := strconv.Atoi(string(m[1]))
	data, err := os.ReadFile(logFile)
	if err != nil {
		return err
	}
	logged, before := 0, *res
	// start (µs since the epoch, 0 if never sent), status (-1: the
	// stream failed), µs to its end.
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			continue
		}
		logged++
		switch f[1] {
		case "200":
			res.ok++
		case "-1":
			res.errored++
			if f[0] == "0" {
				res.unsent++
			}
		default:
			res.statuses[f[1]]++
		}
	}
	res.runs++
	res.started += started
	res.unanswered += max(0, started-logged)
	if failed := res.started - res.ok - (before.started - before.ok); failed > 0 && len(res.failedRuns) < 5 {
		res.failedRuns = append(res.failedRuns, fmt.Sprintf("run %d, ended %s: %d failed; h2load said:\n%s",
			run, time.Now().Format("15:04:05.000"), failed, out))
	}
	return nil
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
