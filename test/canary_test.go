package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/handoffd/handoffd/api"
)

// healthYAML is a health check of the demo's /healthz, quick enough for
// tests: two passes in a row make a generation healthy, three failures
// unhealthy.
const healthYAML = `    health:
      http: /healthz
      interval: 100ms
      timeout: 1s
      healthy: 2
      unhealthy: 3
`

// weights returns each live generation's weight from status.
func weights(st api.ServiceStatus) map[int]float64 {
	w := map[int]float64{}
	for _, g := range st.Generations {
		if g.Weight != nil {
			w[g.ID] = *g.Weight
		}
	}
	return w
}

func stateOf(st api.ServiceStatus, gen int) api.State {
	for _, g := range st.Generations {
		if g.ID == gen {
			return g.State
		}
	}
	return -1
}

// ctlOK runs handoffctl and fails the test unless it succeeds and says
// want.
func (d *daemon) ctlOK(want string, args ...string) {
	d.t.Helper()
	out, err := d.ctl(args...)
	if err != nil || !strings.Contains(out, want) {
		d.t.Fatalf("handoffctl %s: %v: %q, want %q", strings.Join(args, " "), err, out, want)
	}
}

// TestCanaryUnderLoad walks a canary through its life under 32 clients
// that never retry, in both client modes: swap --canary 10%, a weight
// change to 50%, promote; then a sticky 25% canary and a rollback. Not one
// request may fail, and status shows the weights at each step.
func TestCanaryUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name      string
		keepAlive bool
	}{{"new-connection", false}, {"keep-alive", true}} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDaemon(t, daemonOptions{serviceYAML: healthYAML, metrics: true})
			l := startLoad(d.addr, "/slow?ms=2", loadClients, tc.keepAlive)
			time.Sleep(300 * time.Millisecond)

			d.ctlOK("generation 2 is a canary", "swap", "--canary", "10%", "demo")
			if w := weights(d.status()); w[1] != 0.9 || w[2] != 0.1 {
				t.Errorf("weights after swap --canary 10%%: %v", w)
			}
			out, _ := d.ctl("status")
			if !strings.Contains(out, "canary  10%") || !strings.Contains(out, "active  90%") {
				t.Errorf("status does not show the weights:\n%s", out)
			}
			if m, _ := d.scrape("handoff_generation_weight"); m["1"] != 0.9 || m["2"] != 0.1 {
				t.Errorf("handoff_generation_weight = %v, want 1: 0.9, 2: 0.1", m)
			}
			time.Sleep(time.Second)
			d.ctlOK("canary 2 gets 50% of new connections", "canary", "demo", "50%")
			time.Sleep(time.Second)
			d.ctlOK("generation 2 active", "promote", "demo")
			d.waitFor("generation 1 drained", 15*time.Second, func(st api.ServiceStatus) bool {
				return stateOf(st, 1) == api.StateExited
			})

			d.ctlOK("generation 3 is a canary", "swap", "--canary", "25%", "--sticky", "demo")
			st := d.status()
			if w := weights(st); w[2] != 0.75 || w[3] != 0.25 || !st.Generations[len(st.Generations)-1].Sticky {
				t.Errorf("weights after swap --canary 25%% --sticky: %v", w)
			}
			time.Sleep(time.Second)
			d.ctlOK("rolled back to generation 2", "rollback", "demo")
			d.waitFor("canary 3 drained", 15*time.Second, func(st api.ServiceStatus) bool {
				return stateOf(st, 3) == api.StateExited
			})
			if w := weights(d.status()); w[2] != 1 {
				t.Errorf("weights after the rollback: %v, want generation 2 at 1", w)
			}
			time.Sleep(300 * time.Millisecond)
			res := l.stop()
			t.Logf("requests: %d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
			if res.Failed > 0 {
				t.Errorf("%d requests failed, first ones: %q", res.Failed, res.Failures)
			}
			// Generation 3 split by client address, and every client
			// here is 127.0.0.1: whether it got any is up to the hash
			// (TestCanaryStickyClients uses many addresses).
			if !tc.keepAlive && res.ByGen[2] == 0 {
				t.Errorf("the canary answered nothing: %v", res.ByGen)
			}
			if r := scrapeResults(t, d); r["canary"] != 2 || r["ok"] != 2 || r["rolled_back"] != 1 {
				t.Errorf("handoff_swaps_total = %v, want canary 2, ok 2 (the first start and the promotion), rolled_back 1", r)
			}
		})
	}
}

// scrapeResults returns handoff_swaps_total of the demo by result.
func scrapeResults(t *testing.T, d *daemon) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	out := map[string]float64{}
	for _, m := range families["handoff_swaps_total"].GetMetric() {
		if label(m, "service") == "demo" {
			out[label(m, "result")] = m.GetCounter().GetValue()
		}
	}
	return out
}

// splitRequests is how many requests, each on a new connection, measure
// one canary share.
const splitRequests = 20000

// TestCanarySplitAccuracy measures a 5%, 25% and 50% canary over 20,000
// new connections each, from the generation that answered each request
// and from the kernel's per-generation steering counters in status.
func TestCanarySplitAccuracy(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	d.ctlOK("generation 2 is a canary", "swap", "--canary", "5%", "demo")
	for _, share := range []float64{5, 25, 50} {
		if share != 5 {
			d.ctlOK(fmt.Sprintf("gets %g%%", share), "canary", "demo", fmt.Sprintf("%g%%", share))
		}
		before := steeredByGen(d.status())
		start := time.Now()
		byGen, failed := requests(t, d.addr, splitRequests, 16)
		took := time.Since(start)
		after := steeredByGen(d.status())
		if failed > 0 {
			t.Errorf("share %g%%: %d requests failed", share, failed)
		}
		answers := 100 * float64(byGen[2]) / float64(byGen[1]+byGen[2])
		k1, k2 := after[1]-before[1], after[2]-before[2]
		kernel := 100 * float64(k2) / float64(k1+k2)
		t.Logf("share %g%%: canary answered %d of %d requests (%.2f%%); the kernel steered %d of %d to it (%.2f%%); %s",
			share, byGen[2], byGen[1]+byGen[2], answers, k2, k1+k2, kernel, took.Round(time.Millisecond))
		for what, v := range map[string]float64{"answers": answers, "kernel counters": kernel} {
			if math.Abs(v-share) > 1.5 {
				t.Errorf("share %g%%: the canary got %.2f%% by %s, want within 1.5 points", share, v, what)
			}
		}
		if k1+k2 < splitRequests {
			t.Errorf("share %g%%: the kernel counted %d connections, want at least %d", share, k1+k2, splitRequests)
		}
	}
}

// steeredByGen sums the kernel's steering counters of each generation.
func steeredByGen(st api.ServiceStatus) map[int]uint64 {
	out := map[int]uint64{}
	for _, g := range st.Generations {
		for _, l := range g.Listeners {
			if l.Steered != nil {
				out[g.ID] += *l.Steered
			}
		}
	}
	return out
}

// requests sends n GET / requests, each on a new connection from a
// client address of its own, from workers goroutines, and counts the
// answers by generation. The kernel's flow hash is a function of the
// addresses and ports, and from one address connect hands the same ports
// out again within a run: the shares would vary more than n draws do.
func requests(t *testing.T, addr string, n, workers int) (map[int]int, int) {
	t.Helper()
	var mu sync.Mutex
	byGen := map[int]int{}
	failed := 0
	next := make(chan *net.TCPAddr, n)
	for i := range n {
		next <- &net.TCPAddr{IP: net.IPv4(127, 3, byte(i/250), byte(1+i%250))}
	}
	close(next)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := range next {
				gen, err := getGeneration(addr, from)
				mu.Lock()
				if err != nil {
					failed++
				} else {
					byGen[gen]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return byGen, failed
}

// getGeneration asks GET / on a new connection from the address from and
// returns the generation that answered.
func getGeneration(addr string, from *net.TCPAddr) (int, error) {
	dialer := net.Dialer{Timeout: 5 * time.Second, LocalAddr: from}
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var a struct {
		Generation int `json:"generation"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s: %v", resp.Status, err)
	}
	return a.Generation, nil
}

// TestCanaryStickyClients gives a sticky 50% canary requests from 48
// client addresses on 127.0.0.0/8: each address is answered by one
// generation only, and both generations answer some.
func TestCanaryStickyClients(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	d.ctlOK("by client address", "swap", "--canary", "50%", "--sticky", "demo")
	seen := map[string]map[int]int{}
	for i := range 48 {
		src := fmt.Sprintf("127.0.3.%d", 10+i)
		seen[src] = map[int]int{}
		for range 20 {
			gen, err := getGenerationFrom(src, d.addr)
			if err != nil {
				t.Fatalf("request from %s: %v", src, err)
			}
			seen[src][gen]++
		}
	}
	onCanary := 0
	for src, gens := range seen {
		if len(gens) != 1 {
			t.Errorf("client %s was answered by generations %v, want one", src, gens)
		}
		if gens[2] > 0 {
			onCanary++
		}
	}
	t.Logf("sticky 50%%: %d of %d client addresses on the canary, each answered by one generation only", onCanary, len(seen))
	if onCanary == 0 || onCanary == len(seen) {
		t.Errorf("%d of %d clients on the canary: the split did nothing", onCanary, len(seen))
	}
}

func getGenerationFrom(src, addr string) (int, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var a struct {
		Generation int `json:"generation"`
	}
	return a.Generation, json.NewDecoder(resp.Body).Decode(&a)
}

// TestCanaryAutomaticRollback: a canary that crashes, and one whose
// health check turns to 503, are each rolled back by handoffd alone,
// under 32 clients in both client modes (the load starts once the canary
// is in place, so that keep-alive clients reach it too). The unhealthy
// one drains: nothing fails. The crashed one can lose only the requests
// it had in flight when it died.
func TestCanaryAutomaticRollback(t *testing.T) {
	for _, mode := range []struct {
		name      string
		keepAlive bool
	}{{"new-connection", false}, {"keep-alive", true}} {
		t.Run(mode.name, func(t *testing.T) {
			canaryAutomaticRollback(t, mode.keepAlive)
		})
	}
}

func canaryAutomaticRollback(t *testing.T, keepAlive bool) {
	d := startDaemon(t, daemonOptions{serviceYAML: healthYAML, metrics: true,
		demoArgs: []string{"--fault", "crash@2:1500ms,unhealthy@3:1500ms"}})
	for _, tc := range []struct {
		gen  int
		kind string
	}{{2, "crash"}, {3, "unhealthy"}} {
		d.ctlOK(fmt.Sprintf("generation %d is a canary", tc.gen), "swap", "--canary", "50%", "demo")
		l := startLoad(d.addr, "/slow?ms=2", loadClients, keepAlive)
		d.waitFor(fmt.Sprintf("the %s canary rolled back", tc.kind), 15*time.Second, func(st api.ServiceStatus) bool {
			return stateOf(st, tc.gen) == api.StateExited && weights(st)[1] == 1
		})
		time.Sleep(300 * time.Millisecond)
		res := l.stop()
		t.Logf("%s canary: %d ok, %d failed; per generation %v", tc.kind, res.OK, res.Failed, res.ByGen)
		if res.ByGen[tc.gen] == 0 {
			t.Errorf("the %s canary answered nothing: %v", tc.kind, res.ByGen)
		}
		if tc.kind == "crash" {
			checkOnlyInFlightFailed(t, res)
		} else if res.Failed > 0 {
			t.Errorf("%d requests failed around the rollback of the unhealthy canary: %q", res.Failed, res.Failures)
		}
	}
	if r := scrapeResults(t, d); r["rolled_back"] != 2 {
		t.Errorf("handoff_swaps_total{result=rolled_back} = %v, want 2", r["rolled_back"])
	}
	// The last failed check is the 503, or, on a machine slow enough
	// (an emulated guest), a check that outlived its 1 s timeout.
	for _, want := range []string{`reason="exited: exit status 2"`, `reason="unhealthy: 3 health checks in a row failed, the last: GET /healthz: `} {
		if !strings.Contains(d.logText(), want) {
			t.Errorf("the log does not give the reason %s", want)
		}
	}
}

// TestNeverHealthyNeverSteered: a generation whose /healthz answers 503
// from the start is probed through its own socket, never activated, and
// answers not one client request; the swap fails with the last answer.
func TestNeverHealthyNeverSteered(t *testing.T) {
	d := startDaemon(t, daemonOptions{serviceYAML: healthYAML, readyTimeout: "2s", demoArgs: []string{"--fault", "unhealthy@2"}})
	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)
	out, err := d.ctl("swap", "demo")
	if want := "generation 2: not healthy within ready_timeout 2s: not healthy: last check: GET /healthz: 503 Service Unavailable: unhealthy"; err == nil ||
		!strings.Contains(out, want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("swap to a never-healthy generation: %v: %q, want one line with %q", err, out, want)
	}
	time.Sleep(300 * time.Millisecond)
	res := l.stop()
	t.Logf("requests: %d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 || res.ByGen[2] != 0 {
		t.Errorf("%d failed, %d answered by the unhealthy generation; want 0 and 0", res.Failed, res.ByGen[2])
	}
	if st := d.status(); stateOf(st, 2) != api.StateFailed || weights(st)[1] != 1 {
		t.Errorf("after the failed swap: %+v", st.Generations)
	}
}

// TestReadyHealthWithoutNotify: with ready: health, an app that never
// says READY=1 is ready once its health check passes, and swaps under
// load lose nothing.
func TestReadyHealthWithoutNotify(t *testing.T) {
	d := startDaemon(t, daemonOptions{serviceYAML: "    ready: health\n" + healthYAML, demoArgs: []string{"--notify=false"}})
	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	for gen := 2; gen <= 4; gen++ {
		time.Sleep(500 * time.Millisecond)
		d.ctlOK(fmt.Sprintf("generation %d active", gen), "swap", "demo")
	}
	time.Sleep(300 * time.Millisecond)
	res := l.stop()
	t.Logf("requests: %d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d requests failed: %q", res.Failed, res.Failures)
	}
	if res.ByGen[4] == 0 {
		t.Errorf("generation 4 answered nothing: %v", res.ByGen)
	}
}

// TestCanaryRefusedInFDPass: without a socket per generation there is no
// split; the refusal says so on one line and starts nothing.
func TestCanaryRefusedInFDPass(t *testing.T) {
	d := startDaemon(t, daemonOptions{mode: "fdpass"})
	out, err := d.ctl("swap", "--canary", "5%", "demo")
	if err == nil || !strings.Contains(out, "runs in fdpass mode") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("swap --canary in fdpass mode: %v: %q, want a one-line refusal naming fdpass mode", err, out)
	}
	if st := d.status(); len(st.Generations) != 1 {
		t.Errorf("a refused canary started something: %+v", st.Generations)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := d.client.Promote(ctx, "demo"); err == nil || !strings.Contains(err.Error(), "no canary is running") {
		t.Errorf("promote without a canary: %v", err)
	}
}

// TestUnhealthyOnProbationRollsBack: after a full swap with probation, a
// generation whose health check turns to 503 is rolled back from, the
// one in standby is active again, and no request fails.
//
// In fdpass mode there is no socket per generation: the checks start at
// activation, on the shared socket.
func TestUnhealthyOnProbationRollsBack(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { unhealthyOnProbationRollsBack(t, mode) })
	}
}

func unhealthyOnProbationRollsBack(t *testing.T, mode string) {
	d := startDaemon(t, daemonOptions{mode: mode, serviceYAML: healthYAML, probation: "30s", demoArgs: []string{"--fault", "unhealthy@2:1s"}})
	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)
	d.ctlOK("generation 2 active", "swap", "demo")
	d.waitFor("rollback to generation 1", 15*time.Second, func(st api.ServiceStatus) bool {
		return stateOf(st, 1) == api.StateActive && stateOf(st, 2) == api.StateExited
	})
	time.Sleep(300 * time.Millisecond)
	res := l.stop()
	t.Logf("requests: %d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d requests failed: %q", res.Failed, res.Failures)
	}
	if res.ByGen[2] == 0 {
		t.Errorf("generation 2 answered nothing before it turned unhealthy: %v", res.ByGen)
	}
	if !strings.Contains(d.logText(), "active generation unhealthy during probation; rolling back") {
		t.Errorf("no log of the rollback")
	}
}

// TestCanaryWait: swap --canary --wait follows both generations'
// connections, line by line without a terminal, until the promotion.
func TestCanaryWait(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	l := startLoad(d.addr, "/slow?ms=50", loadClients, true)
	defer l.stop()
	time.Sleep(300 * time.Millisecond)
	done := make(chan string, 1)
	go func() {
		out, err := d.ctl("swap", "--canary", "50%", "--wait", "demo")
		if err != nil {
			out += "error: " + err.Error()
		}
		done <- out
	}()
	d.waitFor("generation 2 a canary", 15*time.Second, func(st api.ServiceStatus) bool {
		return stateOf(st, 2) == api.StateCanary
	})
	time.Sleep(time.Second)
	d.ctlOK("generation 2 active", "promote", "demo")
	var out string
	select {
	case out = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("swap --canary --wait did not end after the promotion")
	}
	if !strings.Contains(out, "demo: canary 2 50%: ") || !strings.Contains(out, "; active 1 50%: ") ||
		!strings.Contains(out, "demo: canary 2 is active now") || strings.Contains(out, "error:") {
		t.Errorf("swap --canary --wait printed:\n%s", out)
	}
}
