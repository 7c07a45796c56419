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
// handoffd.service with a control socket of its own (a drop-in sets the
// unit's HANDOFF_CONTROL) and, under 32 clients that never retry (half of
// them keep-alive), swaps, reloads the unit, restarts it twice, installs
// the package again (an upgrade) and swaps again: not one request may fail,
// and each restart re-adopts the generations instead of stopping them. A
// generation the OOM killer ends is replaced, and the unit goes on. Then
// `systemctl stop` leaves the service serving, `handoffctl stop` ends it,
// and the package's removal stops a running, enabled unit and its purge
// leaves nothing behind. It needs root and a systemd PID 1: the vm build
// tag keeps it out of make test.
func TestSystemdUnit(t *testing.T) {
	if comm, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(comm)) != "systemd" {
		t.Fatalf("PID 1 is %q, not systemd: run by make test-vm", strings.TrimSpace(string(comm)))
	}
	deb := os.Getenv("HANDOFF_DEB")
	sdRun(t, "dpkg", "-i", deb)
	t.Logf("%s; %s", sdRun(t, "handoffd", "--version"), sdRun(t, "handoffctl", "--version"))
	sdRun(t, "systemd-analyze", "verify", "/lib/systemd/system/handoffd.service")
	for _, page := range []string{"man8/handoffd.8", "man8/handoffctl.8", "man5/handoff.yaml.5"} {
		out := sdRun(t, "man", "-P", "cat", "-l", "/usr/share/man/"+page+".gz")
		name := strings.TrimSuffix(filepath.Base(page), filepath.Ext(page))
		if !strings.Contains(out, "NAME") || !strings.Contains(out, name) || !strings.Contains(out, "SEE ALSO") {
			t.Errorf("man -l %s.gz renders no NAME or SEE ALSO section:\n%s", page, out)
		}
	}
	// The example config sends the reader to the installed configuration
	// reference, beside the rest of the guide.
	const confDoc = "/usr/share/doc/handoffd/docs/configuration.md"
	if doc, err := os.ReadFile(confDoc); err != nil || !strings.Contains(string(doc), "\n## Keys\n") {
		t.Errorf("%s: no Keys section (%v)", confDoc, err)
	}
	for _, doc := range []string{"README.md", "SECURITY.md", "docs/ARCHITECTURE.md"} {
		if _, err := os.Stat("/usr/share/doc/handoffd/" + doc); err != nil {
			t.Error(err)
		}
	}
	if ex, err := os.ReadFile("/etc/handoff/handoff.yaml.example"); err != nil || !strings.Contains(string(ex), confDoc) {
		t.Errorf("handoff.yaml.example does not point at %s (%v)", confDoc, err)
	}
	// The alerting rules and the dashboard, side by side; the copyright
	// file and the changelog where Debian's tools look for them.
	for file, want := range map[string]string{sdAlerts: "alert: HandoffdDown", "/usr/share/handoffd/dashboard.json": `"panels"`,
		"/usr/share/doc/handoffd/copyright": "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"} {
		if data, err := os.ReadFile(file); err != nil || !strings.Contains(string(data), want) {
			t.Errorf("%s: no %s (%v)", file, want, err)
		}
	}
	if out := sdRun(t, "dpkg-parsechangelog", "-l", "/usr/share/doc/handoffd/changelog.Debian.gz", "-S", "Version"); out != sdRun(t, "dpkg-query", "-W", "-f", "${Version}", "handoffd") {
		t.Errorf("changelog.Debian.gz names version %s, the package is %s", out, sdRun(t, "dpkg-query", "-W", "-f", "${Version}", "handoffd"))
	}

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	sdWriteConfig(t, addr)
	sdRun(t, "systemctl", "start", "handoffd")
	if p := sdRun(t, "systemctl", "show", "-P", "OOMPolicy", "handoffd"); p != "continue" {
		t.Errorf("OOMPolicy %q, want continue", p)
	}
	gen1 := sdActiveGeneration(t)
	if gen1.ID != 1 {
		t.Fatalf("after systemctl start: generation %d active, want 1", gen1.ID)
	}
	if cg := sdCgroupOf(t, gen1.PID); cg != "/system.slice/handoffd.service" {
		t.Errorf("generation 1 is in cgroup %s, want /system.slice/handoffd.service", cg)
	}
	// mode: auto takes ebpf on the guest's 6.1: a fallback to fdpass fails.
	if st := sdStatus(t).Services[0]; st.Mode != api.ModeEBPF || st.Listeners[0].Mode != api.ModeEBPF {
		t.Errorf("mode: auto gave service mode %s, listener mode %s; want ebpf", st.Mode, st.Listeners[0].Mode)
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
	// Each of these ends handoffd and starts a new one, which re-adopts
	// the active generation. Installing the package again runs its
	// upgrade: prerm upgrade, then postinst configure, which restarts.
	readopts := func(what string, args ...string) {
		before := sdMainPID(t)
		active := sdActiveGeneration(t)
		sdRun(t, args[0], args[1:]...)
		after := sdMainPID(t)
		if after == before || after == 0 {
			t.Errorf("%s: handoffd's pid went from %d to %d, want a new handoffd", what, before, after)
		}
		if g := sdActiveGeneration(t); g.ID != active.ID || g.PID != active.PID {
			t.Errorf("%s: active generation %d (pid %d), want %d (pid %d) re-adopted", what, g.ID, g.PID, active.ID, active.PID)
		}
		pause()
	}
	readopts("restart 1", "systemctl", "restart", "handoffd")
	readopts("restart 2", "systemctl", "restart", "handoffd")
	readopts("upgrade", "dpkg", "-i", deb)
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

	sdOOMKill(t)

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
	sdWaitInactive(t)
	sdWaitUntil(t, fmt.Sprintf("generation pid %d to end", active.PID), 30*time.Second, func() bool {
		return syscall.Kill(active.PID, 0) != nil
	})

	// Removal of a running, enabled unit: prerm stops the services (on the
	// drop-in's control socket) and handoffd.
	sdRun(t, "systemctl", "start", "handoffd")
	var live []int
	for _, g := range sdStatus(t).Services[0].Generations {
		if g.State == api.StateActive || g.State == api.StateDraining {
			live = append(live, g.PID)
		}
	}
	if len(live) == 0 {
		t.Fatal("after handoffctl stop and systemctl start: no live generation")
	}
	sdRun(t, "systemctl", "enable", "handoffd")
	// Without this test's HANDOFF_CONTROL: prerm takes the unit's.
	sdRun(t, "env", "-u", "HANDOFF_CONTROL", "dpkg", "-r", "handoffd")
	for _, pid := range live {
		sdWaitUntil(t, fmt.Sprintf("generation pid %d to end after dpkg -r", pid), 30*time.Second, func() bool {
			return syscall.Kill(pid, 0) != nil
		})
	}
	sdWaitInactive(t)
	for _, f := range []string{"/usr/sbin/handoffd", "/usr/bin/handoffctl", "/lib/systemd/system/handoffd.service",
		"/usr/share/man/man8/handoffd.8.gz", confDoc, sdAlerts} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s is still there after dpkg -r", f)
		}
	}
	if err := os.RemoveAll(sdDropIn); err != nil {
		t.Error(err)
	}
	sdRun(t, "dpkg", "-P", "handoffd")
	if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/handoffd.service"); err == nil {
		t.Error("multi-user.target.wants/handoffd.service is still there after dpkg -P")
	}
	if out, _ := exec.Command("systemctl", "list-units", "--all", "--no-legend", "handoffd*").Output(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("after dpkg -P systemd still lists: %s", out)
	}
}

// sdOOMKill swaps to generation 4, which allocates memory (the demo's oom
// fault) under the unit's MemoryMax until the kernel's OOM killer ends it:
// handoffd replaces it, and with OOMPolicy=continue systemd neither stops
// nor restarts the unit.
func sdOOMKill(t *testing.T) {
	t.Helper()
	const cg = "/sys/fs/cgroup/system.slice/handoffd.service"
	sdRun(t, "systemctl", "set-property", "--runtime", "handoffd", "MemoryAccounting=yes")
	current := sdCgroupValue(t, cg+"/memory.current", "")
	sdRun(t, "systemctl", "set-property", "--runtime", "handoffd", fmt.Sprintf("MemoryMax=%d", current+128<<20))
	kills := sdCgroupValue(t, cg+"/memory.events", "oom_kill")
	mainPID, restarts := sdMainPID(t), sdRun(t, "systemctl", "show", "-P", "NRestarts", "handoffd")
	if out := sdRun(t, "handoffctl", "swap", "demo"); !strings.Contains(out, "generation 4 active") {
		t.Fatalf("swap: %q, want generation 4 active", out)
	}
	gen4 := sdActiveGeneration(t)
	sdWaitUntil(t, "the OOM killer to end generation 4", 60*time.Second*slow, func() bool {
		return sdCgroupValue(t, cg+"/memory.events", "oom_kill") > kills && syscall.Kill(gen4.PID, 0) != nil
	})
	var repl api.GenerationStatus
	sdWaitUntil(t, "a generation to replace generation 4", 30*time.Second*slow, func() bool {
		for _, g := range sdStatus(t).Services[0].Generations {
			if g.State == api.StateActive && g.ID > gen4.ID {
				repl = g
				return true
			}
		}
		return false
	})
	t.Logf("the OOM killer ended generation 4 (pid %d); generation %d (pid %d) replaced it", gen4.PID, repl.ID, repl.PID)
	if pid, n := sdMainPID(t), sdRun(t, "systemctl", "show", "-P", "NRestarts", "handoffd"); pid != mainPID || n != restarts {
		t.Errorf("after the OOM kill: handoffd pid %d, %s restarts; want pid %d, %s restarts", pid, n, mainPID, restarts)
	}
	if out, _ := exec.Command("systemctl", "is-active", "handoffd").Output(); strings.TrimSpace(string(out)) != "active" {
		t.Errorf("after the OOM kill handoffd.service is %s, want active", out)
	}
	sdRun(t, "systemctl", "set-property", "--runtime", "handoffd", "MemoryMax=infinity")
}

// sdCgroupValue reads a number from a cgroup file: the whole file, or the
// line that starts with key.
func sdCgroupValue(t *testing.T, file, key string) int64 {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.TrimSpace(string(data))
	if key != "" {
		text = ""
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, " "); ok && k == key {
				text = v
			}
		}
	}
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		t.Fatalf("%s %s: %v", file, key, err)
	}
	return n
}

func sdWaitInactive(t *testing.T) {
	t.Helper()
	sdWaitUntil(t, "handoffd.service inactive", 30*time.Second, func() bool {
		out, _ := exec.Command("systemctl", "is-active", "handoffd").Output()
		return strings.TrimSpace(string(out)) == "inactive"
	})
}

// sdControl is the test's control socket, not the default one: a drop-in
// (sdDropIn) gives the unit's ExecReload and the package's prerm its path.
const (
	sdControl = "/run/handoff-vm/handoffd.sock"
	sdDropIn  = "/etc/systemd/system/handoffd.service.d"
	sdAlerts  = "/usr/share/handoffd/alerts.yml"
)

// sdWriteConfig writes /etc/handoff/handoff.yaml with the demo on addr,
// from HANDOFF_E2E_BIN copied where the unit can run it, and its fourth
// generation playing the oom fault; and the drop-in that sets the unit's
// HANDOFF_CONTROL to sdControl, which this test's handoffctl uses too.
func sdWriteConfig(t *testing.T, addr string) {
	demo := "/usr/local/lib/handoff-vm/demo"
	sdRun(t, "install", "-D", "-m", "0755", filepath.Join(bin, "demo"), demo)
	cfg := fmt.Sprintf(`control: %s
services:
  - name: demo
    command: [%q, "--idle-grace", "%s", "--fault", "oom@4:1s"]
    env: ["GIN_MODE=release"]
    listeners:
      - name: http
        address: tcp://%s
        backlog: 4096
    ready_timeout: %s
`, sdControl, demo, time.Second*slow, addr, 10*time.Second*slow)
	if err := os.WriteFile("/etc/handoff/handoff.yaml", []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(sdDropIn, 0o755); err != nil {
		t.Fatal(err)
	}
	dropIn := "[Service]\nEnvironment=HANDOFF_CONTROL=" + sdControl + "\n"
	if err := os.WriteFile(filepath.Join(sdDropIn, "control.conf"), []byte(dropIn), 0o644); err != nil {
		t.Fatal(err)
	}
	sdRun(t, "systemctl", "daemon-reload")
	t.Setenv("HANDOFF_CONTROL", sdControl)
}

// sdRun runs a command and returns its trimmed output; it fails the test if
// the command fails.
func sdRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	start := time.Now()
	defer func() {
		t.Logf("$ %s %s (%s)", name, strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	}()
	// An upgrade (dpkg -i) under the test's load took 3 to 6 minutes in
	// an emulated guest on a busy host.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
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

// sdStatus returns handoffd's status, from handoffctl.
func sdStatus(t *testing.T) api.Status {
	t.Helper()
	var st api.Status
	if err := json.Unmarshal([]byte(sdRun(t, "handoffctl", "status", "--json", "demo")), &st); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	return st
}

// sdActiveGeneration returns demo's active generation.
func sdActiveGeneration(t *testing.T) api.GenerationStatus {
	t.Helper()
	st := sdStatus(t)
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
