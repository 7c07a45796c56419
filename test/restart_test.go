package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/handoffd/handoffd/api"
)

// restart ends handoffd with sig while its generations keep serving, waits
// a second with no handoffd at all, then starts a new one on the same
// config, which must re-adopt them.
func (d *daemon) restart(sig syscall.Signal) {
	d.t.Helper()
	d.end(sig)
	time.Sleep(time.Second)
	d.startAgain()
}

// end ends handoffd with sig and waits until it has exited; its
// generations go on.
func (d *daemon) end(sig syscall.Signal) {
	d.t.Helper()
	d.cmd.Process.Signal(sig)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.t.Fatalf("handoffd did not exit on %s", sig)
	}
}

// startAgain starts handoffd again, as it was started last, after end.
func (d *daemon) startAgain() {
	d.t.Helper()
	old := d.cmd
	d.cmd = exec.Command(old.Path, old.Args[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = old.Stdout, old.Stderr
	d.cmd.WaitDelay = time.Second
	d.exited = make(chan struct{})
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	exited := d.exited
	go func() { d.cmd.Wait(); close(exited) }()
}

// TestRestartLeavesTrafficAlone kills handoffd (SIGKILL), then stops it
// (SIGTERM), under load: the generations serve on without it, a restarted
// handoffd re-adopts them (same pids, numbering goes on) and swaps again.
// Not one request fails.
func TestRestartLeavesTrafficAlone(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			d := startDaemon(t, daemonOptions{mode: mode})
			l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
			gen := 1
			for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
				time.Sleep(300 * time.Millisecond)
				out, err := d.ctl("swap", "demo")
				gen++
				if err != nil || !strings.Contains(out, fmt.Sprintf("generation %d active", gen)) {
					t.Fatalf("swap: %v: %s", err, out)
				}
				t.Logf("%s: swapped to %d", time.Now().Format("15:04:05.000"), gen)
				active := d.waitFor("one generation", 10*time.Second, func(st api.ServiceStatus) bool { return liveCount(st) == 1 })
				pid := active.Generations[len(active.Generations)-1].PID
				t.Logf("%s: one generation left", time.Now().Format("15:04:05.000"))
				d.restart(sig)
				t.Logf("%s: restarted", time.Now().Format("15:04:05.000"))
				st := d.waitFor("re-adopted generation", 15*time.Second, func(st api.ServiceStatus) bool {
					last := st.Generations[len(st.Generations)-1]
					return last.ID == gen && last.State == api.StateActive
				})
				if got := st.Generations[len(st.Generations)-1].PID; got != pid {
					t.Fatalf("after %s: generation %d has pid %d, want the same process %d", sig, gen, got, pid)
				}
			}
			t.Logf("%s: re-adopted", time.Now().Format("15:04:05.000"))
			// The re-adopted generation is swapped out and drained like any other.
			out, err := d.ctl("swap", "--wait", "demo")
			if err != nil || !strings.Contains(out, fmt.Sprintf("generation %d active", gen+1)) || !strings.Contains(out, "drained") {
				t.Fatalf("swap after restarts: %v: %s", err, out)
			}
			// The new handoffd follows the re-adopted generation's stderr.
			if want := fmt.Sprintf("drain end generation=%d", gen); !strings.Contains(d.logText(), want) {
				t.Errorf("handoffd's log lacks the re-adopted generation's %q", want)
			}
			time.Sleep(300 * time.Millisecond)
			res := l.stop()
			t.Logf("requests: %d ok, %d failed across 3 swaps, a SIGKILL and a SIGTERM of handoffd", res.OK, res.Failed)
			if res.Failed > 0 {
				t.Errorf("%d requests failed: %q", res.Failed, res.Failures)
			}
		})
	}
}

// TestRestartWithServicesReordered restarts handoffd on a config that lists
// its two services the other way round: each re-adopted listener must go
// on counting its own connections, not the other service's (steering is
// pinned per listener, and counts come from what each generation holds).
func TestRestartWithServicesReordered(t *testing.T) {
	d := startDaemon(t, daemonOptions{web: true})
	held := map[string]int{"demo": 3, "web": 7}
	addrs := map[string]string{"demo": d.addr, "web": d.webAddr}
	for name, n := range held {
		for range n {
			c, err := net.DialTimeout("tcp", addrs[name], time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
	}
	waitCounts := func(when string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := map[string]int64{}
			st, err := d.client.Status(context.Background(), "")
			for _, s := range st.Services {
				if g := s.Generations[len(s.Generations)-1]; g.State == api.StateActive && g.Connections != nil && g.ConnectionsSource == api.SourceEBPF {
					got[s.Name] = *g.Connections
				}
			}
			if err == nil && got["demo"] == int64(held["demo"]) && got["web"] == int64(held["web"]) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: connections counted by the kernel %v (%v), want demo 3, web 7\n%s", when, got, err, d.logText())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitCounts("before the restart")

	cfg, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(cfg, []byte("  - name: web"))
	head := cfg[:bytes.Index(cfg, []byte("  - name: demo"))]
	demo := cfg[len(head):i]
	reordered := slices.Concat(head, cfg[i:], demo)
	if err := os.WriteFile(d.config, reordered, 0o644); err != nil {
		t.Fatal(err)
	}
	d.restart(syscall.SIGKILL)
	waitCounts("after a restart with the services reordered")
}

// TestRestartOnAllAddresses kills handoffd (SIGKILL) under load and starts
// it again, for a service that listens on every IPv4 address (tcp://:P)
// and on every IPv6 address (tcp6://[::]:P): the new handoffd re-adopts
// generation 1 and swaps it out. Not one request fails, across the
// restart nor across the swap.
func TestRestartOnAllAddresses(t *testing.T) {
	for _, mode := range modes {
		for _, tc := range []struct{ name, listen string }{
			{"all-ipv4", "tcp://:%d"},
			{"all-ipv6", "tcp6://[::]:%d"},
		} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				d := startDaemon(t, daemonOptions{mode: mode, listen: tc.listen})
				pid := d.status().Generations[0].PID
				l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
				time.Sleep(300 * time.Millisecond)
				d.restart(syscall.SIGKILL)
				st := d.waitFor("re-adopted generation 1", 15*time.Second, func(st api.ServiceStatus) bool {
					last := st.Generations[len(st.Generations)-1]
					return last.ID == 1 && last.State == api.StateActive
				})
				if got := st.Generations[0].PID; got != pid {
					t.Fatalf("generation 1 has pid %d after the restart, want the same process %d", got, pid)
				}
				time.Sleep(300 * time.Millisecond)
				res := l.stop()
				t.Logf("%s on %s: %d ok, %d failed across a SIGKILL and a restart of handoffd", tc.name, d.addr, res.OK, res.Failed)
				if res.Failed > 0 || res.OK == 0 {
					t.Errorf("%d requests failed, %d ok: %q", res.Failed, res.OK, res.Failures)
				}

				l = startLoad(d.addr, "/slow?ms=2", loadClients, false)
				time.Sleep(300 * time.Millisecond)
				out, err := d.ctl("swap", "--wait", "demo")
				if err != nil || !strings.Contains(out, "generation 2 active") || !strings.Contains(out, "drained") {
					t.Fatalf("swap after the restart: %v: %s", err, out)
				}
				time.Sleep(300 * time.Millisecond)
				res = l.stop()
				t.Logf("%s on %s: %d ok, %d failed across the swap that followed (generation 2 answered %d)", tc.name, d.addr, res.OK, res.Failed, res.ByGen[2])
				if res.Failed > 0 || res.ByGen[2] == 0 {
					t.Errorf("%d requests failed, %d answered by generation 2: %q", res.Failed, res.ByGen[2], res.Failures)
				}
			})
		}
	}
}

// brokenCommand is a command that fails at once, with a line on stderr.
var brokenCommand = []string{"/bin/sh", "-c", "echo broken on purpose >&2; exit 3"}

// setDemoCommand rewrites the config so that the demo service's command
// is argv, and returns the config as it was.
func (d *daemon) setDemoCommand(argv []string) []byte {
	d.t.Helper()
	cfg, err := os.ReadFile(d.config)
	if err != nil {
		d.t.Fatal(err)
	}
	const key = "  - name: demo\n    command: "
	i := bytes.Index(cfg, []byte(key))
	if i < 0 {
		d.t.Fatalf("no demo service in %s", cfg)
	}
	start := i + len(key)
	end := start + bytes.IndexByte(cfg[start:], '\n')
	line, _ := json.Marshal(argv)
	if err := os.WriteFile(d.config, slices.Concat(cfg[:start], line, cfg[end:]), 0o644); err != nil {
		d.t.Fatal(err)
	}
	return cfg
}

// failedGauge scrapes handoff_service_failed of service.
func (d *daemon) failedGauge(service string) float64 {
	d.t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		d.t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		d.t.Fatalf("parse scrape: %v", err)
	}
	for _, m := range families["handoff_service_failed"].GetMetric() {
		if label(m, "service") == service {
			return m.GetGauge().GetValue()
		}
	}
	d.t.Fatalf("no handoff_service_failed{service=%q}", service)
	return 0
}

// checkFailed checks what a failed demo service shows: its state and
// reason in status, in handoffctl status, in the metrics, and that a
// connection to it is refused rather than queued for nobody. It waits
// until handoffd has retried at least retries times.
func (d *daemon) checkFailed(reason string, retries int) api.ServiceStatus {
	d.t.Helper()
	st := d.waitFor(fmt.Sprintf("demo failed, %d starts tried", retries), 30*time.Second, func(st api.ServiceStatus) bool {
		return st.State == api.ServiceFailed && st.Failure != nil && st.Failure.Attempts >= retries
	})
	if !strings.Contains(st.Failure.Reason, reason) || st.Failure.NextRetry == nil {
		d.t.Errorf("demo's failure %+v; want the reason %q and the next retry", st.Failure, reason)
	}
	if out, err := d.ctl("status"); err != nil || !strings.Contains(out, "demo: failed since ") || !strings.Contains(out, reason) {
		d.t.Errorf("handoffctl status: %v:\n%s\nwant a line on the failed demo", err, out)
	}
	if v := d.failedGauge("demo"); v != 1 {
		d.t.Errorf("handoff_service_failed{service=demo} = %v, want 1", v)
	}
	if v := d.failedGauge("web"); v != 0 {
		d.t.Errorf("handoff_service_failed{service=web} = %v, want 0", v)
	}
	if !strings.Contains(d.logText(), "service failed: no generation serves it; retrying") {
		d.t.Errorf("handoffd did not log the failure")
	}
	// Refused at once, not queued on a socket that nobody accepts from
	// (a retry may be starting a generation: then it waits for it).
	refused := eventuallyTrue(10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", d.addr, 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil && strings.Contains(err.Error(), "connection refused")
	})
	if !refused {
		d.t.Errorf("connections to the failed demo on %s are not refused", d.addr)
	}
	return st
}

// ctlFailed runs handoffctl on the failed demo, again while handoffd's
// own retry of it is under way (one swap at a time), and returns what it
// said.
func (d *daemon) ctlFailed(args ...string) (string, error) {
	d.t.Helper()
	for range 100 {
		out, err := d.ctl(args...)
		if err == nil || !strings.Contains(out, "already in progress") {
			return out, err
		}
		if !strings.Contains(out, "is failed, and handoffd retries it") {
			d.t.Errorf("handoffctl %v refused while the failed demo is retried does not say so: %q", args, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("handoffctl %v met a swap under way every time, for 5s", args)
	return "", nil
}

// TestRestartWithBrokenService: while handoffd is down (SIGKILL), the
// active generation of one of its two services dies (a zombie, as no one
// reaps it here) and that service's command breaks. The restarted
// handoffd runs, re-adopts the other service (same pid) and swaps it
// under load with 0 failed requests; the broken one is shown failed and
// retried with backoff, and once its config is fixed (reload-config) it
// serves again at once.
func TestRestartWithBrokenService(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			d := startDaemon(t, daemonOptions{mode: mode, web: true, metrics: true})
			web, err := serviceStatus(d, "web")
			if err != nil {
				t.Fatal(err)
			}
			webPID, demoPID := web.Generations[0].PID, d.status().Generations[0].PID
			l := startLoad(d.webAddr, "/slow?ms=2", loadClients, false)
			time.Sleep(300 * time.Millisecond)

			d.end(syscall.SIGKILL)
			// Its parent gone, the dead generation stays a zombie here:
			// its /proc entry is there, its fds are not.
			syscall.Kill(demoPID, syscall.SIGKILL)
			if !eventuallyTrue(5*time.Second, func() bool { return len(generationsOf(d.control)) == 1 }) {
				t.Fatalf("demo's generation (pid %d) still runs after SIGKILL", demoPID)
			}
			fixed := d.setDemoCommand(brokenCommand)
			d.startAgain()

			web = d.waitForService("web", "web re-adopted", 15*time.Second, func(st api.ServiceStatus) bool {
				return len(st.Generations) > 0 && st.Generations[0].State == api.StateActive
			})
			if got := web.Generations[0].PID; got != webPID || web.State != api.ServiceRunning {
				t.Fatalf("web after the restart: %s, pid %d; want running, the same process %d", web.State, got, webPID)
			}
			st := d.checkFailed("broken on purpose", 2)
			if g := st.Generations[0]; g.ID != 1 || g.State != api.StateExited || g.Exit != "exited while handoffd was not running" {
				t.Errorf("demo's generation 1 after the restart: %+v; want exited while handoffd was not running", g)
			}
			out, err := d.ctl("swap", "web")
			if err != nil || !strings.Contains(out, "generation 2 active") {
				t.Fatalf("swap web beside the broken demo: %v: %s", err, out)
			}
			// A swap is the retry by hand.
			out, err = d.ctlFailed("swap", "demo")
			if err == nil || !strings.Contains(out, "broken on purpose") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
				t.Errorf("swap of the broken demo: %v, %q; want a one-line failure with its stderr", err, out)
			}

			failedStarts := 0
			if f := d.status().Failure; f != nil {
				failedStarts = f.Attempts
			}
			if err := os.WriteFile(d.config, fixed, 0o644); err != nil {
				t.Fatal(err)
			}
			fixedAt := time.Now()
			if out, err := d.ctl("reload-config"); err != nil {
				t.Fatalf("reload-config with demo fixed: %v: %s", err, out)
			}
			st = d.waitFor("demo serving again", 15*time.Second, func(st api.ServiceStatus) bool { return st.State == api.ServiceRunning })
			t.Logf("demo served again %s after its fix, after %d failed starts", time.Since(fixedAt).Round(time.Millisecond), failedStarts)
			if r, err := getRoot(d.addr); err != nil || r.Service != "demo" {
				t.Errorf("GET / on demo after the fix: %+v, %v", r, err)
			}
			if v := d.failedGauge("demo"); v != 0 || st.Failure != nil {
				t.Errorf("demo serves again, and handoff_service_failed is %v, failure %+v", v, st.Failure)
			}
			time.Sleep(300 * time.Millisecond)
			res := l.stop()
			t.Logf("web: %d ok, %d failed across a SIGKILL of handoffd, its restart beside a broken service and a swap", res.OK, res.Failed)
			if res.Failed > 0 || res.OK == 0 {
				t.Errorf("web: %d requests failed, %d ok: %q", res.Failed, res.OK, res.Failures)
			}
		})
	}
}
