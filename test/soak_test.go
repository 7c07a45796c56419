//go:build soak

package test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// TestSoak runs the bad days of handoffd, one after another, for
// HANDOFF_SOAK (10m unless set), half of it in ebpf mode and half in
// fdpass mode: swaps; canaries whose share changes, promoted, rolled back
// or killed (ebpf only); kill -9 of the active generation and of a
// candidate (the new generation of a swap); kill -9 of handoffd and its
// restart, which re-adopts what runs; config reloads (SIGHUP, and
// handoffctl reload-config) with a changed harmless key. All of it under
// clients that never retry, half opening a connection per request, half
// keeping theirs alive.
//
// Only what a killed generation held may fail: at most one request per
// client per kill, within a few seconds after it, and on a kept-alive
// connection only one that the killed generation answered before (or a
// new one). Any other failure fails the test. handoffd's goroutines and
// open fds (go_goroutines and process_open_fds of its /metrics) must not
// grow over one handoffd's life: sampled at rest after each event past the
// warm-up, the median of the last quarter of the samples is compared with
// the median of the first quarter.
//
// It is built only with the soak tag: make soak runs it, make test does
// not. HANDOFF_SOAK=1h make soak is the long run.
func TestSoak(t *testing.T) {
	length := 10 * time.Minute
	if v := os.Getenv("HANDOFF_SOAK"); v != "" {
		var err error
		if length, err = time.ParseDuration(v); err != nil || length < time.Minute {
			t.Fatalf("HANDOFF_SOAK=%q: give the soak's length, at least 1m, e.g. 10m", v)
		}
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("soak of %s, seed %d", length, seed)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			s := newSoak(t, mode, length/time.Duration(len(modes)), seed)
			s.run()
			s.report()
		})
	}
}

// soak is one mode's half of TestSoak.
type soak struct {
	t      *testing.T
	d      *daemon
	mode   string
	length time.Duration
	rnd    *rand.Rand
	start  time.Time

	loads   []*load
	results []loadResult
	loadAt  time.Time
	// kills are the generations killed, each a window in which their
	// clients may lose one request each.
	kills  []kill
	events map[string]int
	round  int // the config's SOAK_ROUND
	// lives are handoffd's lives so far; life the one that runs.
	lives []life
	life  life
	// warmup is how long a handoffd runs before its figures count.
	warmup time.Duration
}

// kill is one kill -9 of a generation.
type kill struct {
	at   time.Time
	gen  int
	what string
}

// life is one handoffd process, measured at rest after each event past
// its warm-up.
type life struct {
	started time.Time
	samples []*figures
}

// ends returns the median figures of the first and of the last quarter
// of l's samples. One reading of handoffd's goroutines varies by a few
// with the goroutines that gather that scrape (17 to 22 in a run that
// logged each, with no trend; see atRest), so the least or the last of a
// quarter says little; a leak moves its median.
func (l life) ends() (first, last *figures) {
	n := len(l.samples)
	if n == 0 {
		return nil, nil
	}
	q := max(n/4, 1)
	return median(l.samples[:q]), median(l.samples[n-q:])
}

// soakClients is how many clients run of each kind.
const soakClients = loadClients / 2

// killWindow is how long after a kill its clients' failures are taken as
// its own: a request in flight fails as the process dies, and a kept-alive
// client finds its connection closed at its next request, at once.
const killWindow = 5 * time.Second

func newSoak(t *testing.T, mode string, length time.Duration, seed uint64) *soak {
	// A health check makes each new generation pass GET /healthz
	// before it takes a connection (in ebpf mode), and watches it after.
	d := startDaemon(t, daemonOptions{mode: mode, metrics: true, drainTimeout: "10s",
		serviceYAML: "    health: {http: /healthz, listener: http, interval: 200ms, timeout: 2s, healthy: 1, unhealthy: 5}\n"})
	s := &soak{t: t, d: d, mode: mode, length: length, rnd: rand.New(rand.NewPCG(seed, uint64(len(mode)))),
		start: time.Now(), events: map[string]int{}, life: life{started: time.Now()}, warmup: min(time.Minute, length/16)}
	s.startLoads()
	t.Cleanup(s.stopLoads) // before the daemon's shutdown
	return s
}

// startLoads starts a new set of clients; loads are replaced every few
// minutes, so that none reaches loadLimit.
func (s *soak) startLoads() {
	s.loads = []*load{startLoad(s.d.addr, "/slow?ms=2", soakClients, false), startLoad(s.d.addr, "/slow?ms=2", soakClients, true)}
	s.loadAt = time.Now()
}

func (s *soak) stopLoads() {
	for _, l := range s.loads {
		s.results = append(s.results, l.stop())
	}
	s.loads = nil
}

// run plays events until the soak's length has passed. handoffd is
// killed and restarted three times along it, evenly.
func (s *soak) run() {
	end := s.start.Add(s.length)
	restarts := []time.Time{s.start.Add(s.length / 4), s.start.Add(s.length / 2), s.start.Add(3 * s.length / 4)}
	steps := []func(){s.swap, s.reloadHUP, s.crashActive, s.crashCandidate, s.reloadCtl, s.swap}
	if s.mode == "ebpf" {
		steps = append(steps, s.canaryPromote, s.canaryRollback, s.canaryCrash)
	}
	for time.Now().Before(end) {
		if len(restarts) > 0 && time.Now().After(restarts[0]) {
			restarts = restarts[1:]
			s.restartHandoffd()
		}
		if time.Since(s.loadAt) > 2*time.Minute {
			s.stopLoads()
			s.startLoads()
		}
		steps[s.rnd.IntN(len(steps))]()
		s.atRest()
		time.Sleep(time.Duration(200+s.rnd.IntN(800)) * time.Millisecond)
		if time.Since(s.life.started) > s.warmup {
			s.life.samples = append(s.life.samples, s.d.figures())
		}
	}
	s.stopLoads()
	s.lives = append(s.lives, s.life)
}

// event counts one event and logs it.
func (s *soak) event(what string, args ...any) {
	s.events[what]++
	s.t.Logf("%s %s %s", time.Since(s.start).Round(time.Millisecond), what, fmt.Sprint(args...))
}

// ctl runs handoffctl and fails the test unless it succeeds and says want.
func (s *soak) ctl(want string, args ...string) string {
	s.t.Helper()
	out, err := s.d.ctl(args...)
	if err != nil || !strings.Contains(out, want) {
		s.t.Fatalf("handoffctl %s: %v: %q, want %q\n%s", strings.Join(args, " "), err, out, want, s.d.logText())
	}
	return strings.TrimSpace(out)
}

// atRest waits until the service has one live generation, active.
func (s *soak) atRest() api.ServiceStatus {
	s.t.Helper()
	return s.d.waitFor("one active generation", 60*time.Second, func(st api.ServiceStatus) bool {
		_, active := generationIn(st, api.StateActive)
		return !st.Swapping && liveCount(st) == 1 && active
	})
}

// generationIn returns the last generation of st in state.
func generationIn(st api.ServiceStatus, state api.State) (api.GenerationStatus, bool) {
	for _, g := range slices.Backward(st.Generations) {
		if g.State == state {
			return g, true
		}
	}
	return api.GenerationStatus{}, false
}

func (s *soak) swap() {
	s.event("swap", s.ctl("active", "swap", "demo"))
}

func (s *soak) canaryPromote() {
	s.event("canary", s.ctl("is a canary", "swap", "--canary", "20%", "demo"))
	time.Sleep(300 * time.Millisecond)
	s.event("canary share", s.ctl("gets 50%", "canary", "demo", "50%"))
	time.Sleep(300 * time.Millisecond)
	s.event("promote", s.ctl("active", "promote", "demo"))
}

func (s *soak) canaryRollback() {
	s.event("canary", s.ctl("is a canary", "swap", "--canary", "30%", "--sticky", "demo"))
	time.Sleep(300 * time.Millisecond)
	s.event("rollback", s.ctl("rolled back", "rollback", "demo"))
}

// canaryCrash kills a canary that takes half of the new connections.
func (s *soak) canaryCrash() {
	s.event("canary", s.ctl("is a canary", "swap", "--canary", "50%", "demo"))
	time.Sleep(300 * time.Millisecond)
	if g, ok := generationIn(s.d.status(), api.StateCanary); ok {
		s.kill(g.ID, g.PID, "canary")
	}
}

// crashActive kills the active generation: handoffd starts a
// replacement, and new connections wait for it in the queue.
func (s *soak) crashActive() {
	g, ok := generationIn(s.atRest(), api.StateActive)
	if !ok {
		s.t.Fatal("no active generation at rest")
	}
	s.kill(g.ID, g.PID, "active")
	// Until handoffd has seen the exit, status still shows the killed
	// generation active: at rest at once, and the next event's swap
	// would meet the replacement under way ("a swap is already in
	// progress").
	s.d.waitFor("the killed generation exited", 30*time.Second, func(st api.ServiceStatus) bool {
		// Status lists the last generations only: one no longer
		// listed has gone.
		state := stateOf(st, g.ID)
		return state == -1 || !state.Live()
	})
}

// crashCandidate starts a swap and kills its new generation as soon as
// status shows it, most often before it is ready (the swap then fails
// and the active one serves on), sometimes once it serves.
func (s *soak) crashCandidate() {
	before := s.atRest().Generations
	last := before[len(before)-1].ID
	done := make(chan string, 1)
	go func() {
		out, _ := s.d.ctl("swap", "demo")
		done <- strings.TrimSpace(out)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st := s.d.status()
		if g := st.Generations[len(st.Generations)-1]; g.ID > last && g.PID != 0 {
			s.kill(g.ID, g.PID, "candidate ("+g.State.String()+")")
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	s.event("swap of the killed candidate", <-done)
}

// kill sends SIGKILL to pid, generation gen of this test's handoffd.
func (s *soak) kill(gen, pid int, what string) {
	s.kills = append(s.kills, kill{at: time.Now(), gen: gen, what: what})
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		s.t.Fatalf("kill -9 generation %d (pid %d): %v", gen, pid, err)
	}
	s.event("kill -9 "+what, fmt.Sprintf("generation %d, pid %d", gen, pid))
}

var soakRound = regexp.MustCompile(`"SOAK_ROUND=\d+",`)

// setRound rewrites the config with the next SOAK_ROUND in the service's
// env: a change that applies to the next generation and harms nothing.
func (s *soak) setRound() {
	data, err := os.ReadFile(s.d.config)
	if err != nil {
		s.t.Fatal(err)
	}
	s.round++
	text := soakRound.ReplaceAllString(string(data), "")
	text = strings.Replace(text, `env: ["GIN_MODE`, fmt.Sprintf(`env: ["SOAK_ROUND=%d","GIN_MODE`, s.round), 1)
	if !strings.Contains(text, fmt.Sprintf("SOAK_ROUND=%d", s.round)) {
		s.t.Fatalf("no env: of the demo service found in the config:\n%s", data)
	}
	if err := os.WriteFile(s.d.config, []byte(text), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

func (s *soak) reloadCtl() {
	s.setRound()
	s.event("reload-config", s.ctl("changed", "reload-config"))
}

// reloadHUP reloads on SIGHUP and waits for the log to say so.
func (s *soak) reloadHUP() {
	const done = `msg="config reloaded" changed=[demo]`
	before := strings.Count(s.d.logText(), done)
	s.setRound()
	s.d.cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(10 * time.Second); strings.Count(s.d.logText(), done) == before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			s.t.Fatalf("SIGHUP: no %q in handoffd's log within 10s:\n%s", done, s.d.logText())
		}
	}
	s.event("SIGHUP", fmt.Sprintf("SOAK_ROUND=%d", s.round))
}

// restartHandoffd kills handoffd with SIGKILL and starts it again: it
// re-adopts the generation that serves, which nothing stopped.
func (s *soak) restartHandoffd() {
	st := s.atRest()
	g, _ := generationIn(st, api.StateActive)
	s.lives = append(s.lives, s.life)
	s.d.restart(syscall.SIGKILL)
	s.life = life{started: time.Now()}
	after := s.atRest()
	if a, _ := generationIn(after, api.StateActive); a.PID != g.PID {
		s.t.Fatalf("after kill -9 of handoffd: generation %d (pid %d) is active, want the re-adopted %d (pid %d)", a.ID, a.PID, g.ID, g.PID)
	}
	s.event("kill -9 handoffd", fmt.Sprintf("generation %d re-adopted", g.ID))
}

// report counts the requests, attributes each failure to a kill, and
// checks handoffd's growth over each of its lives.
func (s *soak) report() {
	t := s.t
	var ok, failed, attributed int
	var unexplained []string
	used := map[[2]int]bool{} // kill index, client
	for li, r := range s.results {
		ok, failed = ok+r.OK, failed+r.Failed
		if r.Failed != len(r.FailedAt) {
			t.Errorf("%d failures, %d of them recorded one by one", r.Failed, len(r.FailedAt))
		}
		for _, f := range r.FailedAt {
			// Clients of different loads are different clients.
			client := li*1000 + f.client
			k := s.blame(f, client, used)
			if k < 0 {
				unexplained = append(unexplained, fmt.Sprintf("%s client %d (last answered by generation %d): %s",
					f.at.Sub(s.start).Round(time.Millisecond), f.client, f.gen, f.what))
				continue
			}
			used[[2]int{k, client}] = true
			attributed++
		}
	}
	var events []string
	for e, n := range s.events {
		events = append(events, fmt.Sprintf("%s %d", e, n))
	}
	slices.Sort(events)
	t.Logf("events: %s", strings.Join(events, ", "))
	for i, l := range s.lives {
		first, last := l.ends()
		t.Logf("handoffd life %d (%s, %d samples at rest past %s of warm-up): median of the first quarter %s; of the last %s",
			i+1, l.lastAt().Sub(l.started).Round(time.Second), len(l.samples), s.warmup, first, last)
		if len(l.samples) >= 8 {
			if last.goroutines > first.goroutines+1 {
				t.Errorf("handoffd life %d: goroutines grew from %v to %v", i+1, first.goroutines, last.goroutines)
			}
			if last.fds > first.fds+1 {
				t.Errorf("handoffd life %d: open fds grew from %v to %v", i+1, first.fds, last.fds)
			}
		}
	}
	t.Logf("soak %s, %s: %d requests, %d failed, all %d within a kill of a generation (%d kills), %d unexplained",
		s.mode, s.length, ok+failed, failed, attributed, len(s.kills), len(unexplained))
	if len(unexplained) > 0 {
		t.Errorf("%d failed requests that no kill explains:\n%s", len(unexplained), strings.Join(unexplained[:min(len(unexplained), 30)], "\n"))
	}
}

// blame returns the kill that explains failure f of client, or -1: the
// latest kill before it, within killWindow, whose generation the client's
// connection was talking to (on a connection kept alive) and that has not
// explained another failure of the client.
func (s *soak) blame(f failure, client int, used map[[2]int]bool) int {
	for i, k := range slices.Backward(s.kills) {
		switch {
		case strings.HasPrefix(f.what, "dial"):
			return -1 // handoffd holds the sockets: nothing is ever refused
		case k.at.After(f.at) || f.at.Sub(k.at) > killWindow:
		case f.gen != 0 && f.gen != k.gen:
		case used[[2]int{i, client}]:
		default:
			return i
		}
	}
	return -1
}

func (l life) lastAt() time.Time {
	if len(l.samples) == 0 {
		return l.started
	}
	return l.samples[len(l.samples)-1].at
}
