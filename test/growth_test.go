package test

import (
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// liveCount counts the generations that still have a process.
func liveCount(st api.ServiceStatus) int {
	n := 0
	for _, g := range st.Generations {
		if g.State.Live() {
			n++
		}
	}
	return n
}

// gauge scrapes one unlabelled series, such as go_goroutines.
func (d *daemon) gauge(name string) float64 {
	d.t.Helper()
	v, _ := d.scrape(name)
	return v[""]
}

// TestNoGrowthOver200Swaps swaps 200 times under load and compares
// handoffd's goroutines and open fds after the first 20 swaps and after
// all 200: a leak of one per swap would show as 180.
func TestNoGrowthOver200Swaps(t *testing.T) {
	d := startDaemon(t, daemonOptions{metrics: true})
	l := startLoad(d.addr, "/slow?ms=1", 8, true)
	swapN := func(n int) {
		for range n {
			if out, err := d.ctl("swap", "demo"); err != nil {
				t.Fatalf("swap: %v: %s", err, out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// settled waits until only the active generation runs, so that no
	// draining generation's watcher is counted.
	settled := func() {
		d.waitFor("old generations exited", 20*time.Second, func(st api.ServiceStatus) bool { return liveCount(st) == 1 })
		time.Sleep(300 * time.Millisecond)
	}
	swapN(20)
	settled()
	g0, fd0, rss0 := d.gauge("go_goroutines"), d.gauge("process_open_fds"), d.gauge("process_resident_memory_bytes")
	swapN(180)
	settled()
	g1, fd1, rss1 := d.gauge("go_goroutines"), d.gauge("process_open_fds"), d.gauge("process_resident_memory_bytes")
	res := l.stop()
	t.Logf("after 20 swaps: %v goroutines, %v fds, %.1f MiB RSS; after 200: %v goroutines, %v fds, %.1f MiB RSS; %d requests, %d failed",
		g0, fd0, rss0/(1<<20), g1, fd1, rss1/(1<<20), res.OK, res.Failed)
	if g1 > g0+2 {
		t.Errorf("goroutines grew from %v to %v over 180 swaps", g0, g1)
	}
	if fd1 > fd0+1 {
		t.Errorf("open fds grew from %v to %v over 180 swaps", fd0, fd1)
	}
	if res.Failed > 0 {
		t.Errorf("%d requests failed: %q", res.Failed, res.Failures)
		for _, f := range res.FailedAt {
			t.Logf("client %d: sent %s (request %d on its connection, idle %s since generation %d answered on it), failed %s: %s",
				f.client, f.sent.Format("15:04:05.000000"), f.nth, f.idle, f.gen, f.at.Format("15:04:05.000000"), f.what)
		}
	}
}
