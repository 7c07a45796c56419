//go:build soak

package test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSoak swaps every 3 s under load for HANDOFF_SOAK (e.g. 10m) and
// counts failed requests. It is built only with the soak tag: `make soak`
// runs it, `make test` does not.
func TestSoak(t *testing.T) {
	length, err := time.ParseDuration(os.Getenv("HANDOFF_SOAK"))
	if err != nil {
		t.Fatalf("HANDOFF_SOAK=%q: give the soak's length, e.g. 10m", os.Getenv("HANDOFF_SOAK"))
	}
	d := startDaemon(t, daemonOptions{metrics: true})
	loads := []*load{startLoad(d.addr, "/slow?ms=2", loadClients/2, false), startLoad(d.addr, "/slow?ms=2", loadClients/2, true)}
	swaps := 0
	for end := time.Now().Add(length); time.Now().Before(end); swaps++ {
		time.Sleep(3 * time.Second)
		if out, err := d.ctl("swap", "demo"); err != nil {
			t.Errorf("swap %d: %v: %s", swaps+1, err, out)
		}
	}
	var ok, failed int
	var failures []string
	for _, l := range loads {
		r := l.stop()
		ok, failed = ok+r.OK, failed+r.Failed
		failures = append(failures, r.Failures...)
	}
	summary := fmt.Sprintf("soak %s: %d swaps, %d requests, %d failed; handoffd %v goroutines, %v fds, %.1f MiB RSS",
		length, swaps, ok+failed, failed, d.gauge("go_goroutines"), d.gauge("process_open_fds"),
		d.gauge("process_resident_memory_bytes")/(1<<20))
	t.Log(summary)
	if failed > 0 {
		t.Errorf("%d requests failed: %s", failed, strings.Join(failures, "; "))
	}
}
