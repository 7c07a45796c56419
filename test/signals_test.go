package test

import (
	"io/fs"
	"os"
	"path/filepath"
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
	took := d.signalAndWait(syscall.SIGTERM, 3*time.Second, "during its start")
	t.Logf("exited %v after SIGTERM during start: %v", took, d.cmd.ProcessState)
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
	took := d.signalAndWait(syscall.SIGINT, 5*time.Second, "during a reload")
	t.Logf("stopped %v after SIGINT during a reload", took)
	<-swapped
}

// signalAndWait sends sig to handoffd and waits until it exits: an error
// if that takes longer than want, a failure after 15s.
func (d *daemon) signalAndWait(sig syscall.Signal, want time.Duration, when string) time.Duration {
	d.t.Helper()
	sent := time.Now()
	d.cmd.Process.Signal(sig)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		d.t.Fatalf("handoffd still runs 15s after %s %s\n%s", sig, when, d.logText())
	}
	took := time.Since(sent).Round(time.Millisecond)
	if took > want {
		d.t.Errorf("handoffd took %v to exit on %s %s; want under %v", took, sig, when, want)
	}
	return took
}

// TestFullStopLeavesNoPins: both full stops, SIGINT and `handoffctl stop`,
// end every generation and handoffd and leave nothing pinned in bpf_dir:
// nothing is left to re-adopt, so the connection counter goes too.
func TestFullStopLeavesNoPins(t *testing.T) {
	for _, how := range []string{"SIGINT", "handoffctl stop"} {
		t.Run(how, func(t *testing.T) {
			d := startDaemon(t, daemonOptions{})
			if how == "SIGINT" {
				d.signalAndWait(syscall.SIGINT, 40*time.Second, "on a full stop")
			} else {
				d.ctlOK("", "stop")
				select {
				case <-d.exited:
				case <-time.After(40 * time.Second):
					t.Fatal("handoffd still runs 40s after handoffctl stop")
				}
			}
			var left []string
			filepath.WalkDir(d.bpfDir, func(path string, e fs.DirEntry, err error) error {
				if err == nil && !e.IsDir() {
					left = append(left, strings.TrimPrefix(path, d.bpfDir+"/"))
				}
				return nil
			})
			if len(left) > 0 {
				t.Errorf("after %s, bpf_dir still holds %v", how, left)
			}
		})
	}
}
