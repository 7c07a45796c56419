package test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// Faults under load: every test keeps 32 POST clients running (a new
// connection per request, the stricter mode for refused connections) and
// asserts what the fault may cost.

// TestFailedSwapsLoseNothing: a generation that exits before it is ready,
// then one that never says ready. Each swap fails with its reason and the
// last lines of the generation's stderr; the active generation is never
// touched; not one request fails.
func TestFailedSwapsLoseNothing(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			d := startDaemon(t, daemonOptions{mode: mode, readyTimeout: "3s", demoArgs: []string{"--fault", "exit@2,hang@3"}})
			first := d.status().Generations[0]
			l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
			for _, want := range [][2]string{
				{"generation 2: exited before it was ready: exit status 3, stderr: ", "demo: failing before ready on purpose"},
				{"generation 3: not ready within ready_timeout 3s, stderr: ", "demo: never saying ready, on purpose"},
			} {
				time.Sleep(300 * time.Millisecond)
				out, err := d.ctl("swap", "demo")
				if err == nil || !strings.Contains(out, want[0]) || !strings.Contains(out, want[1]) ||
					strings.Count(strings.TrimSpace(out), "\n") > 0 {
					t.Errorf("swap: %v, %q; want a one-line failure saying %q and the stderr line %q", err, out, want[0], want[1])
				}
			}
			time.Sleep(300 * time.Millisecond)
			if out, err := d.ctl("swap", "demo"); err != nil || !strings.Contains(out, "generation 4 active") {
				t.Errorf("swap after the failures: %v: %s", err, out)
			}
			time.Sleep(300 * time.Millisecond)
			res := l.stop()
			if res.Failed > 0 {
				t.Errorf("%d of %d requests failed: %q", res.Failed, res.OK+res.Failed, res.Failures)
			}
			st := d.waitFor("generation 1 drained", 10*time.Second, func(st api.ServiceStatus) bool {
				return st.Generations[0].State == api.StateExited
			})
			if g := st.Generations[0]; g.PID != first.PID || g.Exit != "exit status 0" {
				t.Errorf("generation 1: %+v; want the first process, drained by the successful swap", g)
			}
			for _, g := range st.Generations[1:3] {
				if g.State != api.StateFailed {
					t.Errorf("generation %d is %s, want failed", g.ID, g.State)
				}
			}
			t.Logf("%d requests, 0 failed, across 2 failed swaps and 1 good one", res.OK)
		})
	}
}

// TestCrashedActiveRefusesNothing: the active generation dies. handoffd
// still holds its listening socket, so new connections wait in the queue
// until the replacement takes them: nothing is refused or reset; only
// requests in flight on the dead process may fail.
func TestCrashedActiveRefusesNothing(t *testing.T) {
	d := startDaemon(t, daemonOptions{metrics: true, demoArgs: []string{"--fault", "crash@2:1s"}})
	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)
	if out, err := d.ctl("swap", "demo"); err != nil {
		t.Fatalf("swap: %v: %s", err, out)
	}
	d.waitFor("generation 3 replaced the crashed one", 15*time.Second, func(st api.ServiceStatus) bool {
		last := st.Generations[len(st.Generations)-1]
		return last.ID == 3 && last.State == api.StateActive
	})
	time.Sleep(500 * time.Millisecond)
	res := l.stop()
	checkOnlyInFlightFailed(t, res)
	if res.ByGen[3] == 0 {
		t.Errorf("the replacement answered nothing: %v", res.ByGen)
	}
	if crashes, _ := d.scrape("handoff_generation_crashes_total"); crashes[""] != 1 {
		t.Errorf("handoff_generation_crashes_total = %v, want 1", crashes)
	}
}

// checkOnlyInFlightFailed allows at most one failure per client (the
// request it had in flight on the process that died), and none that is a
// refused connection.
func checkOnlyInFlightFailed(t *testing.T, res loadResult) {
	t.Helper()
	t.Logf("requests: %d ok, %d failed (%q)", res.OK, res.Failed, res.Failures)
	if res.Failed > loadClients {
		t.Errorf("%d requests failed; at most %d (one in flight per client) may", res.Failed, loadClients)
	}
	for _, f := range res.Failures {
		if strings.HasPrefix(f, "dial") {
			t.Errorf("a connection was refused: %s", f)
		}
	}
}

// TestProbationRollback: with probation, a swap keeps generation 1 in
// standby. A rollback by hand loses nothing; handoffctl drain ends a
// probation early; a new generation that dies within probation is rolled
// back from at once, without starting anything.
func TestProbationRollback(t *testing.T) {
	d := startDaemon(t, daemonOptions{probation: "30s", demoArgs: []string{"--fault", "crash@4:1s"}})
	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)
	if out, err := d.ctl("swap", "demo"); err != nil {
		t.Fatalf("swap: %v: %s", err, out)
	}
	if st := d.status(); st.Generations[0].State != api.StateStandby {
		t.Fatalf("generation 1 is %s after the swap, want standby", st.Generations[0].State)
	}
	time.Sleep(500 * time.Millisecond)
	out, err := d.ctl("rollback", "demo")
	if err != nil || !strings.Contains(out, "rolled back to generation 1") {
		t.Fatalf("rollback: %v: %s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	res := l.stop()
	if res.Failed > 0 {
		t.Errorf("rollback by hand: %d of %d requests failed: %q", res.Failed, res.OK+res.Failed, res.Failures)
	}
	if out, err := d.ctl("rollback", "demo"); err == nil || !strings.Contains(out, "no generation to roll back to") {
		t.Errorf("second rollback: %v: %s", err, out)
	}

	// handoffctl drain ends a probation early: the standby drains.
	if out, err := d.ctl("swap", "demo"); err != nil {
		t.Fatalf("swap: %v: %s", err, out)
	}
	if out, err := d.ctl("drain", "demo"); err != nil || !strings.Contains(out, "generation 1 drains") {
		t.Fatalf("drain: %v: %s", err, out)
	}
	d.waitFor("generation 1 drained", 10*time.Second, func(st api.ServiceStatus) bool {
		return st.Generations[0].State == api.StateExited
	})

	// Generation 4 crashes a second after it is active: steering flips
	// back to generation 3, which was in standby.
	l = startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)
	if out, err := d.ctl("swap", "demo"); err != nil || !strings.Contains(out, "generation 4 active") {
		t.Fatalf("swap: %v: %s", err, out)
	}
	st := d.waitFor("rollback to generation 3", 10*time.Second, func(st api.ServiceStatus) bool {
		g3, g4 := st.Generations[len(st.Generations)-2], st.Generations[len(st.Generations)-1]
		return g3.ID == 3 && g3.State == api.StateActive && g4.State == api.StateExited
	})
	time.Sleep(500 * time.Millisecond)
	res = l.stop()
	checkOnlyInFlightFailed(t, res)
	if last := st.Generations[len(st.Generations)-1]; last.ID != 4 {
		t.Errorf("generation %d is the newest; a rollback must not start a new one", last.ID)
	}
}

// TestDrainTimeoutKillCounted: a generation that ignores its stop signal
// is killed at drain_timeout; what it still held is logged, in status and
// in the metrics.
func TestDrainTimeoutKillCounted(t *testing.T) {
	d := startDaemon(t, daemonOptions{metrics: true, drainTimeout: "1s", demoArgs: []string{"--fault", "ignore-term@1"}})
	const held = 5
	errs := make(chan error, held)
	for range held {
		go func() {
			_, err := oneRequest(d.addr, "/slow?ms=10000")
			errs <- err
		}()
	}
	d.waitFor("5 connections on generation 1", 5*time.Second, func(st api.ServiceStatus) bool {
		return connections(st)[1] == held
	})
	out, err := d.ctl("swap", "--wait", "demo")
	if err != nil || !strings.Contains(out, "drain_timeout cut 5 connections") {
		t.Errorf("swap --wait: %v: %s", err, out)
	}
	for range held {
		if err := <-errs; err == nil {
			t.Errorf("a request on the killed generation succeeded")
		}
	}
	if g := d.status().Generations[0]; g.KilledConnections == nil || *g.KilledConnections != held {
		t.Errorf("status killed_connections = %v, want %d", g.KilledConnections, held)
	}
	cut, _ := d.scrape("handoff_drain_killed_connections_total")
	kills, _ := d.scrape("handoff_drain_timeouts_total")
	if cut[""] != held || kills[""] != 1 {
		t.Errorf("metrics: %v connections cut by %v kills, want %d by 1", cut, kills, held)
	}
	if crashes, _ := d.scrape("handoff_generation_crashes_total"); crashes[""] != 0 {
		t.Errorf("handoff_generation_crashes_total = %v; a drain that drain_timeout ends is no crash", crashes)
	}
	if !strings.Contains(d.logText(), "drain_timeout passed: killing generation") {
		t.Errorf("handoffd did not log the kill")
	}
}

// TestBrokenServiceFailsAlone: handoffd starts with two services, one of
// whose command fails. handoffd runs, and the other service serves and
// swaps under load with 0 failed requests, while the broken one is shown
// failed and retried with backoff. A swap is the retry by hand; a canary
// is refused; a reload that fixes the config serves at once. Then its
// active generation crashes while its command is broken again: the
// replacement fails, and new connections are refused instead of queued
// for nobody, until the next fix.
func TestBrokenServiceFailsAlone(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			d := startDaemon(t, daemonOptions{mode: mode, web: true, metrics: true, demoCommand: brokenCommand})
			d.waitForService("web", "web active", 15*time.Second, func(st api.ServiceStatus) bool {
				return len(st.Generations) == 1 && st.Generations[0].State == api.StateActive
			})
			l := startLoad(d.webAddr, "/slow?ms=2", loadClients, false)
			st := d.checkFailed("broken on purpose", 2)
			if gap := st.Failure.NextRetry.Sub(st.Failure.Since); gap < time.Second {
				t.Errorf("next retry %s after the failure, want the backoff (1s, then doubling)", gap)
			}
			if out, err := d.ctl("swap", "web"); err != nil || !strings.Contains(out, "generation 2 active") {
				t.Fatalf("swap web beside the broken demo: %v: %s", err, out)
			}
			before := d.status().Failure.Attempts
			out, err := d.ctlFailed("swap", "demo")
			if err == nil || !strings.Contains(out, "broken on purpose") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
				t.Errorf("swap of the broken demo: %v, %q; want a one-line failure with its stderr", err, out)
			}
			if f := d.status().Failure; f == nil || f.Attempts <= before {
				t.Errorf("the swap by hand was not counted as a failed start: %+v (before: %d)", f, before)
			}
			want := "swap without --canary"
			if mode == "fdpass" {
				want = "canary needs ebpf mode"
			}
			if out, err := d.ctlFailed("swap", "--canary", "5%", "demo"); err == nil || !strings.Contains(out, want) {
				t.Errorf("canary of the failed demo: %v, %q; want it refused", err, out)
			}

			// Fixed: served at once, not after the backoff.
			broken := d.setDemoCommand(append([]string{filepath.Join(bin, "demo")}, "--version", "e2e"))
			fixedAt := time.Now()
			if out, err := d.ctl("reload-config"); err != nil {
				t.Fatalf("reload-config with demo fixed: %v: %s", err, out)
			}
			st = d.waitFor("demo serving", 15*time.Second, func(st api.ServiceStatus) bool { return st.State == api.ServiceRunning })
			t.Logf("demo served %s after its fix", time.Since(fixedAt).Round(time.Millisecond))
			active := st.Generations[len(st.Generations)-1]
			if r, err := getRoot(d.addr); err != nil || r.Generation != active.ID {
				t.Errorf("GET / on demo after the fix: %+v, %v; want generation %d", r, err, active.ID)
			}

			// Its active generation crashes while its command is broken.
			if err := os.WriteFile(d.config, broken, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := d.ctl("reload-config"); err != nil {
				t.Fatalf("reload-config breaking demo: %v: %s", err, out)
			}
			syscall.Kill(active.PID, syscall.SIGKILL)
			d.checkFailed("broken on purpose", 1)
			// Between retries (each fails at once) nothing listens.
			if !eventuallyTrue(5*time.Second, func() bool { return len(listeningInodes(t, d.portNum())) == 0 }) {
				t.Errorf("sockets still listen on the failed demo's port %s", d.port())
			}
			d.setDemoCommand(append([]string{filepath.Join(bin, "demo")}, "--version", "e2e"))
			if out, err := d.ctl("reload-config"); err != nil {
				t.Fatalf("reload-config with demo fixed again: %v: %s", err, out)
			}
			d.waitFor("demo serving again", 15*time.Second, func(st api.ServiceStatus) bool { return st.State == api.ServiceRunning })
			if _, err := getRoot(d.addr); err != nil {
				t.Errorf("GET / on demo after the second fix: %v", err)
			}

			time.Sleep(300 * time.Millisecond)
			res := l.stop()
			t.Logf("web: %d ok, %d failed beside a broken service", res.OK, res.Failed)
			if res.Failed > 0 || res.OK == 0 {
				t.Errorf("web: %d requests failed, %d ok: %q", res.Failed, res.OK, res.Failures)
			}
		})
	}
}

// portNum is the port of the demo service's listener.
func (d *daemon) portNum() int {
	n, err := strconv.Atoi(d.port())
	if err != nil {
		d.t.Fatalf("port of %s: %v", d.addr, err)
	}
	return n
}

// TestExitedStandbyLeavesNoListener: with probation, the replaced
// generation waits in standby with its own listening socket. Killed, it
// takes that socket out of the reuseport group at once: handoffd drops
// its copy, so that no fallback of steering can hash a new connection
// onto a socket that nobody accepts from.
func TestExitedStandbyLeavesNoListener(t *testing.T) {
	d := startDaemon(t, daemonOptions{probation: "30s"})
	if out, err := d.ctl("swap", "demo"); err != nil || !strings.Contains(out, "generation 2 active") {
		t.Fatalf("swap: %v: %s", err, out)
	}
	st := d.status()
	if st.Generations[0].State != api.StateStandby {
		t.Fatalf("generation 1 is %s after the swap, want standby", st.Generations[0].State)
	}
	if n := len(listeningInodes(t, d.portNum())); n != 2 {
		t.Fatalf("%d sockets listen on port %s, want the active one's and the standby's", n, d.port())
	}
	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)
	syscall.Kill(st.Generations[0].PID, syscall.SIGKILL)
	d.waitFor("the standby's exit seen", 10*time.Second, func(st api.ServiceStatus) bool {
		return st.Generations[0].State == api.StateExited
	})
	if !eventuallyTrue(2*time.Second, func() bool { return len(listeningInodes(t, d.portNum())) == 1 }) {
		t.Errorf("%d sockets listen on port %s after the standby died, want the active one's alone", len(listeningInodes(t, d.portNum())), d.port())
	}
	time.Sleep(300 * time.Millisecond)
	res := l.stop()
	t.Logf("requests: %d ok, %d failed across the death of the standby", res.OK, res.Failed)
	if res.Failed > 0 || res.ByGen[1] > 0 {
		t.Errorf("%d requests failed, %d answered by the standby: %q", res.Failed, res.ByGen[1], res.Failures)
	}
}
