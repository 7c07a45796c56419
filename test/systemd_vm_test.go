//go:build vm

package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// TestSystemdUnit installs the Debian package on a machine that systemd
// booted (make test-vm's guest: HANDOFF_DEB names the package), starts
// handoffd.service and, under 32 clients that never retry (half of them
// keep-alive), swaps, reloads the unit, restarts it twice and swaps again:
// not one request may fail, and each restart re-adopts the generations
// instead of stopping them. Then `systemctl stop` leaves the service
// serving, `handoffctl stop` ends it, and the package removes cleanly.
// It needs root and a systemd PID 1: the vm build tag keeps it out of
// make test.
func TestSystemdUnit(t *testing.T) {
	if comm, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(comm)) != "systemd" {
		t.Fatalf("PID 1 is %q, not systemd: run by make test-vm", strings.TrimSpace(string(comm)))
	}
	deb := os.Getenv("HANDOFF_DEB")
	sdRun(t, "dpkg", "-i", deb)
	t.Logf("%s; %s", sdRun(t, "handoffd", "--version"), sdRun(t, "handoffctl", "--version"))
	sdRun(t, "systemd-analyze", "verify", "/lib/systemd/system/handoffd.service")
	for _, page := range []string{"handoffd", "handoffctl"} {
		out := sdRun(t, "man", "-P", "cat", "-l", "/usr/share/man/man8/"+page+".8.gz")
		if !strings.Contains(out, "NAME") || !strings.Contains(out, page) {
			t.Errorf("man -l %s.8.gz renders no NAME section:\n%s", page, out)
		}
	}

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	sdWriteConfig(t, addr)
	sdRun(t, "systemctl", "start", "handoffd")
	gen1 := sdActiveGeneration(t)
	if gen1.ID != 1 {
		t.Fatalf("after systemctl start: generation %d active, want 1", gen1.ID)
	}
	if cg := sdCgroupOf(t, gen1.PID); cg != "/system.slice/handoffd.service" {
		t.Errorf("generation 1 is in cgroup %s, want /system.slice/handoffd.service", cg)
	}

	newConn := startLoad(addr, "/slow?ms=2", loadClients/2, false)
	keepAlive := startLoad(addr, "/slow?ms=2", loadClients/2, true)
	pause := func() { time.Sleep(2 * time.Second) }
	pause()
	if out := sdRun(t, "handoffctl", "swap", "demo"); !strings.Contains(out, "generation 2 active") {
		t.Errorf("swap: %q, want generation 2 active", out)
	}
	pause()
	sdRun(t, "systemctl", "reload", "handoffd")
	pause()
	for i := range 2 {
		before := sdMainPID(t)
		active := sdActiveGeneration(t)
		sdRun(t, "systemctl", "restart", "handoffd")
		after := sdMainPID(t)
		if after == before || after == 0 {
			t.Errorf("restart %d: handoffd's pid went from %d to %d, want a new handoffd", i+1, before, after)
		}
		if g := sdActiveGeneration(t); g.ID != active.ID || g.PID != active.PID {
			t.Errorf("restart %d: active generation %d (pid %d), want %d (pid %d) re-adopted", i+1, g.ID, g.PID, active.ID, active.PID)
		}
		pause()
	}
	if out := sdRun(t, "handoffctl", "swap", "demo"); !strings.Contains(out, "generation 3 active") {
		t.Errorf("swap after the restarts: %q, want generation 3 active", out)
	}
	pause()
	for name, l := range map[string]*load{"new connection per request": newConn, "keep-alive": keepAlive} {
		res := l.stop()
		t.Logf("%s: %d requests, %d failed; per generation %v", name, res.OK+res.Failed, res.Failed, res.ByGen)
		if res.Failed > 0 {
			t.Errorf("%s: %d requests failed, first ones: %q", name, res.Failed, res.Failures)
		}
		if res.ByGen[1] == 0 || res.ByGen[2] == 0 || res.ByGen[3] == 0 {
			t.Errorf("%s: a generation answered no request: %v", name, res.ByGen)
		}
	}

	// stop ends handoffd alone; the service keeps serving.
	active := sdActiveGeneration(t)
	sdRun(t, "systemctl", "stop", "handoffd")
	if gen, err := oneRequest(addr, "/slow?ms=1"); err != nil || gen != active.ID {
		t.Errorf("after systemctl stop: request answered by generation %d, %v; want %d", gen, err, active.ID)
	}
	sdRun(t, "systemctl", "start", "handoffd")
	if g := sdActiveGeneration(t); g.PID != active.PID {
		t.Errorf("after stop and start: active pid %d, want %d re-adopted", g.PID, active.PID)
	}
	// handoffctl stop ends the services and handoffd; the unit is
	// inactive, not failed.
	sdRun(t, "handoffctl", "stop")
	sdWaitUntil(t, "handoffd.service inactive", 30*time.Second, func() bool {
		out, _ := exec.Command("systemctl", "is-active", "handoffd").Output()
		return strings.TrimSpace(string(out)) == "inactive"
	})
	sdWaitUntil(t, fmt.Sprintf("generation pid %d to end", active.PID), 30*time.Second, func() bool {
		return syscall.Kill(active.PID, 0) != nil
	})
	sdRun(t, "dpkg", "-r", "handoffd")
	for _, f := range []string{"/usr/sbin/handoffd", "/usr/bin/handoffctl", "/lib/systemd/system/handoffd.service", "/usr/share/man/man8/handoffd.8.gz"} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s is still there after dpkg -r", f)
		}
	}
	if out, _ := exec.Command("systemctl", "list-units", "--all", "--no-legend", "handoffd*").Output(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("after dpkg -r systemd still lists: %s", out)
	}
}

// sdWriteConfig writes /etc/handoff/handoff.yaml with the demo on
// addr, from HANDOFF_E2E_BIN copied where the unit can run it.
func sdWriteConfig(t *testing.T, addr string) {
	demo := "/usr/local/lib/handoff-vm/demo"
	sdRun(t, "install", "-D", "-m", "0755", filepath.Join(bin, "demo"), demo)
	cfg := fmt.Sprintf(`services:
  - name: demo
    command: [%q, "--idle-grace", "%s"]
    env: ["GIN_MODE=release"]
    listeners:
      - name: http
        address: tcp://%s
        backlog: 4096
    ready_timeout: %s
`, demo, time.Second*slow, addr, 10*time.Second*slow)
	if err := os.WriteFile("/etc/handoff/handoff.yaml", []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// sdRun runs a command and returns its trimmed output; it fails the test if
// the command fails.
func sdRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	start := time.Now()
	defer func() {
		t.Logf("$ %s %s (%s)", name, strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s\n%s", name, strings.Join(args, " "), err, out, sdJournal())
	}
	return strings.TrimSpace(string(out))
}

func sdJournal() string {
	out, _ := exec.Command("journalctl", "--no-pager", "-n", "60", "-u", "handoffd").CombinedOutput()
	return "journal of handoffd.service:\n" + string(out)
}

func sdMainPID(t *testing.T) int {
	t.Helper()
	pid, err := strconv.Atoi(sdRun(t, "systemctl", "show", "-P", "MainPID", "handoffd"))
	if err != nil {
		t.Fatalf("MainPID: %v", err)
	}
	return pid
}

// sdActiveGeneration returns demo's active generation, from handoffctl.
func sdActiveGeneration(t *testing.T) api.GenerationStatus {
	t.Helper()
	var st api.Status
	if err := json.Unmarshal([]byte(sdRun(t, "handoffctl", "status", "--json", "demo")), &st); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	for _, g := range st.Services[0].Generations {
		if g.State == api.StateActive {
			return g
		}
	}
	t.Fatalf("no active generation: %+v", st)
	return api.GenerationStatus{}
}

func sdCgroupOf(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(strings.TrimPrefix(string(data), "0::"))
}

func sdWaitUntil(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s\n%s", limit, what, sdJournal())
		}
	}
}
