package test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

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
