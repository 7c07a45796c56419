package test

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// TestSignalsDuringStart: SIGTERM while the first generation is still
// starting ends handoffd at once, not after ready_timeout.
func TestSignalsDuringStart(t *testing.T) {
	d := startDaemon(t, daemonOptions{starting: true, readyTimeout: "20s", demoArgs: []string{"--fault", "hang@1"}})
	sent := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("handoffd still runs 15s after SIGTERM during its start\n%s", d.logText())
	}
	if took := time.Since(sent); took > 3*time.Second {
		t.Errorf("handoffd took %v to exit on SIGTERM during its start; want under 3s", took)
	}
	t.Logf("exited %v after SIGTERM during start: %v", time.Since(sent).Round(time.Millisecond), d.cmd.ProcessState)
}

// TestSignalsDuringReload: a SIGHUP reload that waits for a swap under
// way does not hold up SIGINT, which stops every service and handoffd.
func TestSignalsDuringReload(t *testing.T) {
	d := startDaemon(t, daemonOptions{readyTimeout: "20s", demoArgs: []string{"--fault", "hang@2"}})
	swapped := make(chan error, 1)
	go func() { _, err := d.ctl("swap", "demo"); swapped <- err }()
	d.waitFor("generation 2 starting", 10*time.Second, func(st api.ServiceStatus) bool { return st.Swapping && len(st.Generations) == 2 })
	cfg, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	// A changed env: the reload waits for the swap to end.
	if err := os.WriteFile(d.config, []byte(strings.Replace(string(cfg), "GIN_MODE=release", "GIN_MODE=debug", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	sent := time.Now()
	d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("handoffd still runs 15s after SIGINT during a reload\n%s", d.logText())
	}
	if took := time.Since(sent); took > 5*time.Second {
		t.Errorf("handoffd took %v to stop on SIGINT during a reload; want under 5s", took)
	}
	t.Logf("stopped %v after SIGINT during a reload", time.Since(sent).Round(time.Millisecond))
	<-swapped
}
