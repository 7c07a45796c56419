package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/api"
)

// scrape fetches /metrics and returns the value of every series of name,
// keyed by its generation label; it also returns how long the scrape took.
func (d *daemon) scrape(name string) (map[string]float64, time.Duration) {
	d.t.Helper()
	start := time.Now()
	families := d.families(http.DefaultClient)
	took := time.Since(start)
	out := map[string]float64{}
	if f, ok := families[name]; ok {
		for _, m := range f.GetMetric() {
			out[label(m, "generation")] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return out, took
}

// families scrapes handoffd's /metrics once with hc.
func (d *daemon) families(hc *http.Client) map[string]*dto.MetricFamily {
	d.t.Helper()
	resp, err := hc.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		d.t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		d.t.Fatalf("parse scrape: %v", err)
	}
	return families
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// kernelEstablished counts, with ss, the server-side sockets on port that
// are ESTABLISHED: the kernel's own view to check the probes against.
func kernelEstablished(t *testing.T, port string) int {
	t.Helper()
	out, err := exec.Command("ss", "-Htn", "state", "established", fmt.Sprintf("( sport = :%s )", port)).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	return strings.Count(string(out), "\n")
}

func (d *daemon) port() string {
	_, p, _ := net.SplitHostPort(d.addr)
	return p
}

// connections returns the connections status reports per generation.
func connections(st api.ServiceStatus) map[int]int64 {
	out := map[int]int64{}
	for _, g := range st.Generations {
		if g.Connections != nil {
			out[g.ID] = *g.Connections
		}
	}
	return out
}

// TestDrainProgressCounted holds 40 slow requests on generation 1 across a
// swap: metrics, status and the kernel (ss) agree that generation 1 holds
// 40 and generation 2 none; the count falls as they finish, and the series
// of generation 1 goes when it exits.
func TestDrainProgressCounted(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { drainProgressCounted(t, mode) })
	}
}

func drainProgressCounted(t *testing.T, mode string) {
	d := startDaemon(t, daemonOptions{mode: mode, metrics: true})
	const held = 40
	var wg sync.WaitGroup
	errs := make(chan error, held)
	for range held {
		wg.Go(func() {
			// Held 3 s, up to 9 s where the machine is slow (an emulated
			// guest takes seconds for the swap and the checks below), within
			// the load's 15 s deadline.
			if _, err := oneRequest(d.addr, fmt.Sprintf("/slow?ms=%d", 3000*min(slow, 3))); err != nil {
				errs <- err
			}
		})
	}
	d.waitFor("40 connections on generation 1", 5*time.Second, func(st api.ServiceStatus) bool {
		return connections(st)[1] == held
	})
	if out, err := d.ctl("swap", "demo"); err != nil {
		t.Fatalf("swap: %v: %s", err, out)
	}
	source := map[string]string{"ebpf": api.SourceEBPF, "fdpass": api.SourceProc}[mode]
	active, _ := d.scrape("handoff_connections_active")
	st := d.status()
	if active["1"] != held || active["2"] != 0 || len(active) != 2 {
		t.Errorf("handoff_connections_active = %v, want generation 1: 40, generation 2: 0", active)
	}
	if c := connections(st); c[1] != held || c[2] != 0 {
		t.Errorf("status connections = %v, want 1: 40, 2: 0", c)
	}
	if g := st.Generations[0]; g.ConnectionsSource != source {
		t.Errorf("connections counted from %q, want %q", g.ConnectionsSource, source)
	}
	if by := d.scrapeBy("handoff_listener_counting_info", "source"); len(by) != 1 || by[source] != 1 {
		t.Errorf("handoff_listener_counting_info by source = %v, want %s alone", by, source)
	}
	if n := kernelEstablished(t, d.port()); n != held {
		t.Errorf("ss sees %d established connections on :%s, want %d", n, d.port(), held)
	}
	out, err := d.ctl("status", "--json", "demo")
	if err != nil || !strings.Contains(out, `"connections": 40`) {
		t.Errorf("handoffctl status --json: %v\n%s", err, out)
	}

	// The count falls to 0 as the requests finish, then the series goes.
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("slow request: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		active, _ = d.scrape("handoff_connections_active")
		if _, ok := active["1"]; !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("series of generation 1 still there after its requests ended: %v", active)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if active["2"] != 0 {
		t.Errorf("generation 2 holds %v connections, want 0", active["2"])
	}
	if g := d.status().Generations[0]; g.State != api.StateExited {
		t.Errorf("generation 1 is %s after its series went, want exited", g.State)
	}
}

// TestTenThousandConnections counts 10,000 idle connections over two
// generations exactly, and times a scrape while they are open.
func TestTenThousandConnections(t *testing.T) {
	const perGen = 5000
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Max < 3*perGen {
		t.Fatalf("RLIMIT_NOFILE hard limit %d (%v): 10,000 connections need at least %d", lim.Max, err, 3*perGen)
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raise the fd limit: %v", err)
	}
	// Idle connections of a draining generation stay open for the test.
	d := startDaemon(t, daemonOptions{metrics: true, demoArgs: []string{"--idle-grace", "2m"}})
	conns := openIdle(t, d.addr, perGen)
	if out, err := d.ctl("swap", "demo"); err != nil {
		t.Fatalf("swap: %v: %s", err, out)
	}
	conns = append(conns, openIdle(t, d.addr, perGen)...)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d.waitFor("5,000 connections on each generation", 20*time.Second, func(st api.ServiceStatus) bool {
		c := connections(st)
		return c[1] == perGen && c[2] == perGen
	})
	var scrapes []time.Duration
	var active map[string]float64
	for range 5 {
		var took time.Duration
		active, took = d.scrape("handoff_connections_active")
		scrapes = append(scrapes, took)
	}
	if active["1"] != perGen || active["2"] != perGen {
		t.Errorf("handoff_connections_active = %v, want 5000 on each generation", active)
	}
	if n := kernelEstablished(t, d.port()); n != 2*perGen {
		t.Errorf("ss sees %d established connections, want %d", n, 2*perGen)
	}
	t.Logf("scrape of a daemon tracking %d connections: %s", 2*perGen, spread(scrapes))
}

// openIdle opens n connections to addr, each answered once by the demo
// and then left idle: a connection that never sends a request would be
// closed by the demo's ReadHeaderTimeout (10 s), and one still in the
// accept queue at a swap would be migrated to the next generation.
func openIdle(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for i := range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: demo\r\n\r\n"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	for i, c := range conns {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("connection %d: %s, closing %v; want 200 on a kept-alive connection", i, resp.Status, resp.Close)
		}
		c.SetDeadline(time.Time{})
	}
	return conns
}
