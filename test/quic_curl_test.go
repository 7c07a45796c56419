package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// curlRoot returns the Debian 13 root that test/curl/root.sh makes, with
// a curl whose libcurl speaks HTTP/3 (nghttp3). Without it the test skips,
// or fails when CI=true (.ci/run makes it first).
func curlRoot(t *testing.T) string {
	t.Helper()
	root := os.Getenv("HANDOFF_CURL_ROOT")
	if root == "" {
		root = "/var/cache/handoffd-test/trixie-curl"
	}
	if _, err := os.Stat(filepath.Join(root, ".complete")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no Debian 13 root with curl at %s (CI=true: not skipping): run test/curl/root.sh", root)
		}
		t.Skipf("no Debian 13 root with curl at %s: run test/curl/root.sh", root)
	}
	return root
}

// curlTally counts what curl said about each transfer.
type curlTally struct {
	mu       sync.Mutex
	ok       int
	failed   int
	byGen    map[int]int
	failures []string
}

func (c *curlTally) fail(what string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed++
	if len(c.failures) < 5 {
		c.failures = append(c.failures, what)
	}
}

// run runs curl in root once for urls, all on one connection unless a
// GOAWAY makes curl open another, and tallies every transfer: an answer
// over HTTP/3 with status 200 and a generation passes.
func (c *curlTally) run(ctx context.Context, root string, urls []string) {
	args := append([]string{root, "curl", "--http3-only", "--insecure", "--silent", "--show-error",
		"--max-time", "30", "--write-out", "\n%{http_code} %{http_version}\n"}, urls...)
	cmd := exec.CommandContext(ctx, "chroot", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return
	}
	seen, bad := 0, 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	var body string
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "{") {
			body = line
			continue
		}
		if line == "" {
			continue
		}
		seen++
		var reply struct {
			Generation int `json:"generation"`
		}
		if line != "200 3" || json.Unmarshal([]byte(body), &reply) != nil || reply.Generation == 0 {
			bad++
			c.fail(fmt.Sprintf("transfer %d of %d: %q, body %q; curl: %v: %s", seen, len(urls), line, body, err,
				strings.TrimSpace(stderr.String())))
		} else {
			c.mu.Lock()
			c.ok++
			c.byGen[reply.Generation]++
			c.mu.Unlock()
		}
		body = ""
	}
	// A failed transfer makes curl exit non-zero when it is the last one:
	// counted once, above.
	if seen != len(urls) || err != nil && bad == 0 {
		c.fail(fmt.Sprintf("curl: %v, %d of %d transfers: %s", err, seen, len(urls), strings.TrimSpace(stderr.String())))
	}
}

// TestQUICCurlAcrossSwaps swaps a service that serves HTTP/3 while curl
// from Debian 13 (libcurl with nghttp3, a client of HTTP/3 no one here
// wrote) sends requests: 6 loops of 20 requests on one connection each
// (kept until a GOAWAY) and 2 loops of one request per curl (a new
// connection each). Not one transfer may fail.
func TestQUICCurlAcrossSwaps(t *testing.T) {
	root := curlRoot(t)
	d := startDaemon(t, daemonOptions{quic: true})
	_, port, err := net.SplitHostPort(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	url := "https://127.0.0.1:" + port + "/"
	tally := &curlTally{byGen: map[int]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 8 {
		n := 20
		if i >= 6 {
			n = 1
		}
		urls := make([]string, n)
		for j := range urls {
			urls[j] = url
		}
		wg.Go(func() {
			for range 10000 {
				select {
				case <-stop:
					return
				default:
				}
				tally.run(ctx, root, urls)
			}
		})
	}
	swaps := min(swapCount, 10)
	time.Sleep(500 * time.Millisecond)
	for i := range swaps {
		time.Sleep(swapEvery)
		d.ctlOK(fmt.Sprintf("generation %d active", i+2), "swap", "demo")
	}
	time.Sleep(time.Second)
	close(stop)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second * slow):
		cancel()
		<-done
		t.Fatal("curl did not finish within 60s of the end")
	}
	t.Logf("curl --http3-only: %d transfers ok, %d failed across %d swaps; per generation %v",
		tally.ok, tally.failed, swaps, tally.byGen)
	if tally.failed > 0 {
		t.Errorf("%d curl transfers failed, first ones: %q", tally.failed, tally.failures)
	}
	for gen := 2; gen <= swaps+1; gen++ {
		if tally.byGen[gen] == 0 {
			t.Errorf("generation %d answered no curl transfer: %v", gen, tally.byGen)
		}
	}
}
