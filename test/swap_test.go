package test

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

const (
	loadClients = 32
	swapEvery   = 700 * time.Millisecond
)

// swapCount is how many swaps TestSwapUnderLoad makes: 20, or
// HANDOFF_E2E_SWAPS (make test-vm makes fewer in its emulated guest,
// where loopback HTTP is about 11 times slower).
var swapCount = envInt("HANDOFF_E2E_SWAPS", 20)

// envInt reads a positive integer from the environment variable name, or
// returns def when it is unset. A bad value panics with what to fix:
// a test run must not quietly fall back to another size.
func envInt(name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		panic(fmt.Sprintf("%s=%q: give a positive integer", name, v))
	}
	return n
}

// TestSwapUnderLoad makes 20 swaps 0.7 s apart while 32 clients send
// POSTs that are never retried, with a new connection per request and
// with keep-alive: not one request may fail.
func TestSwapUnderLoad(t *testing.T) {
	for _, mode := range modes {
		for _, tc := range []struct {
			name      string
			keepAlive bool
		}{{"new-connection", false}, {"keep-alive", true}} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) { swapUnderLoad(t, mode, tc.keepAlive) })
		}
	}
}

// modes are the modes every swap test runs in.
var modes = []string{"ebpf", "fdpass"}

func swapUnderLoad(t *testing.T, mode string, keepAlive bool) {
	d := startDaemon(t, daemonOptions{mode: mode})
	l := startLoad(d.addr, "/slow?ms=2", loadClients, keepAlive)
	seen := map[int]api.GenerationStatus{}
	remember := func(st api.ServiceStatus) {
		for _, g := range st.Generations {
			seen[g.ID] = g
		}
	}
	time.Sleep(300 * time.Millisecond)
	for i := range swapCount {
		time.Sleep(swapEvery)
		out, err := d.ctl("swap", "demo")
		if want := fmt.Sprintf("demo: generation %d active", i+2); err != nil || !strings.Contains(out, want) {
			t.Errorf("swap %d: %v: %q, want %q", i+1, err, out, want)
		}
		remember(d.status())
	}
	time.Sleep(500 * time.Millisecond)
	res := l.stop()
	last := swapCount + 1
	st := d.waitFor("every old generation exited", 40*time.Second, func(st api.ServiceStatus) bool {
		return liveCount(st) == 1 && st.Generations[len(st.Generations)-1].ID == last &&
			st.Generations[len(st.Generations)-1].State == api.StateActive
	})
	remember(st)

	t.Logf("requests: %d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d requests failed, first ones: %q", res.Failed, res.Failures)
	}
	if res.OK < 20*swapCount*loadClients/10 {
		t.Errorf("only %d requests succeeded: the load did not run", res.OK)
	}
	for gen := 2; gen <= last; gen++ {
		if res.ByGen[gen] == 0 {
			t.Errorf("generation %d answered no request", gen)
		}
	}
	reportPhases(t, seen, res, last)
	checkNoLeaks(t, d, st)
}

// reportPhases logs the swap phases as the test measured them.
func reportPhases(t *testing.T, seen map[int]api.GenerationStatus, res loadResult, last int) {
	var ready, activate, drain, first []time.Duration
	for gen := 2; gen <= last; gen++ {
		g, old := seen[gen], seen[gen-1]
		if g.ReadyAt == nil || g.ActiveAt == nil {
			t.Errorf("generation %d: no ready or active time in status: %+v", gen, g)
			continue
		}
		ready = append(ready, g.ReadyAt.Sub(g.StartedAt))
		activate = append(activate, g.ActiveAt.Sub(*g.ReadyAt))
		if old.ExitedAt != nil {
			drain = append(drain, old.ExitedAt.Sub(*g.ActiveAt))
		} else {
			t.Errorf("generation %d: exit never seen: %+v", gen-1, old)
		}
		if d, ok := res.firstAfter(gen, *g.ActiveAt); ok {
			first = append(first, d)
		}
	}
	t.Logf("start→ready %s; ready→active %s; active→old exited %s; active→first request on new generation %s",
		spread(ready), spread(activate), spread(drain), spread(first))
}

// spread formats the median and the maximum of ds.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "n/a"
	}
	slices.Sort(ds)
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return fmt.Sprintf("median %s max %s (n=%d)", r(ds[len(ds)/2]), r(ds[len(ds)-1]), len(ds))
}

// checkNoLeaks checks that each process holds only its own listener, that
// the old generations' sockets are gone, and that handoffd left no zombie.
func checkNoLeaks(t *testing.T, d *daemon, st api.ServiceStatus) {
	_, portStr, _ := net.SplitHostPort(d.addr)
	port, _ := strconv.Atoi(portStr)
	inodes := listeningInodes(t, port)
	if len(inodes) != 1 {
		t.Errorf("%d sockets listen on %s, want 1 (the active generation's)", len(inodes), d.addr)
	}
	active := st.Generations[len(st.Generations)-1]
	if n := listenersHeld(t, active.PID, inodes); n != 1 {
		t.Errorf("active generation holds %d listening fds, want 1", n)
	}
	// In fdpass mode handoffd holds the shared socket and the copy it
	// handed to the active generation.
	want := map[string]int{"ebpf": 1, "fdpass": 2}[d.mode]
	if n := listenersHeld(t, d.cmd.Process.Pid, inodes); n != want {
		t.Errorf("handoffd holds %d listening fds, want %d", n, want)
	}
	if z := zombieChildren(t, d.cmd.Process.Pid); len(z) > 0 {
		t.Errorf("zombie children of handoffd: %v", z)
	}
}

// TestSlowRequestsSurviveSwap holds 3-second requests on generation 1
// across a swap: all complete on generation 1, new requests go to
// generation 2, and `swap --wait` returns when generation 1 has drained.
func TestSlowRequestsSurviveSwap(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { slowRequestsSurviveSwap(t, mode) })
	}
}

func slowRequestsSurviveSwap(t *testing.T, mode string) {
	d := startDaemon(t, daemonOptions{mode: mode})
	const slow = 10
	type answer struct {
		gen int
		err error
	}
	answers := make(chan answer, slow)
	var wg sync.WaitGroup
	for range slow {
		wg.Go(func() {
			gen, err := oneRequest(d.addr, "/slow?ms=3000")
			answers <- answer{gen, err}
		})
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	out, err := d.ctl("swap", "--wait", "demo")
	waited := time.Since(start)
	if err != nil {
		t.Fatalf("swap --wait: %v: %s", err, out)
	}
	if !strings.Contains(out, "generation 1 drained") || waited < 2*time.Second {
		t.Errorf("swap --wait returned after %s with %q; want it to follow the drain of generation 1", waited, out)
	}
	if gen, err := oneRequest(d.addr, "/slow?ms=1"); err != nil || gen != 2 {
		t.Errorf("request after swap: generation %d, %v; want generation 2", gen, err)
	}
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.err != nil || a.gen != 1 {
			t.Errorf("slow request: generation %d, %v; want an answer from generation 1", a.gen, a.err)
		}
	}
	st := d.status()
	if g := st.Generations[0]; g.State != api.StateExited || g.Exit != "exit status 0" {
		t.Errorf("generation 1 is %s (%s), want exited with status 0", g.State, g.Exit)
	}
}

// oneRequest sends one POST on a new connection and returns the
// generation that answered.
func oneRequest(addr, path string) (int, error) {
	l := &load{addr: addr, path: path}
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	gen, _, err := l.roundTrip(conn, newReader(conn), []byte("{}"))
	return gen, err
}
