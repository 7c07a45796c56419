package test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
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

// ownConn scrapes on a connection of its own, closed after the scrape: a
// kept-alive one would count among handoffd's fds and goroutines.
var ownConn = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}

// figures are what handoffd's /metrics say of it.
type figures struct {
	at                    time.Time
	goroutines, fds, rssM float64
}

func (f *figures) String() string {
	if f == nil {
		return "-"
	}
	return fmt.Sprintf("%v goroutines, %v fds, %.1f MiB RSS", f.goroutines, f.fds, f.rssM)
}

// figures reads handoffd's goroutines, fds and RSS from one scrape.
func (d *daemon) figures() *figures {
	d.t.Helper()
	fam := d.families(ownConn)
	get := func(name string) float64 {
		f, ok := fam[name]
		if !ok || len(f.GetMetric()) != 1 {
			d.t.Fatalf("handoffd exports no single %s", name)
		}
		return f.GetMetric()[0].GetGauge().GetValue()
	}
	return &figures{at: time.Now(), goroutines: get("go_goroutines"), fds: get("process_open_fds"),
		rssM: get("process_resident_memory_bytes") / (1 << 20)}
}

// atRest returns the median of n readings of handoffd's figures, 50 ms
// apart. One reading says little: go_goroutines counts the goroutines that
// gather the scrape itself (client_golang collects with a pool of workers,
// as many at that moment as the collectors' pace asks for), so readings
// of an idle handoffd vary by a few (15 to 18 in a run that dumped every
// goroutine beside each reading: the dumps held 14 every time).
func (d *daemon) atRest(n int) *figures {
	d.t.Helper()
	fs := make([]*figures, n)
	for i := range fs {
		if i > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		fs[i] = d.figures()
	}
	return median(fs)
}

// median returns the median of each figure in fs, at the time of the last.
func median(fs []*figures) *figures {
	mid := func(get func(*figures) float64) float64 {
		v := make([]float64, len(fs))
		for i, f := range fs {
			v[i] = get(f)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return &figures{at: fs[len(fs)-1].at,
		goroutines: mid(func(f *figures) float64 { return f.goroutines }),
		fds:        mid(func(f *figures) float64 { return f.fds }),
		rssM:       mid(func(f *figures) float64 { return f.rssM })}
}

// TestNoGrowthOver200Swaps swaps 200 times under load and compares
// handoffd's goroutines and open fds at rest after the first 20 swaps and
// after all 200: a leak of one per swap would show as 180.
func TestNoGrowthOver200Swaps(t *testing.T) {
	// Registered first, so it runs last: a failure's reasons are logged
	// again after handoffd's log, which is long after 200 swaps.
	var verdict []string
	t.Cleanup(func() {
		if t.Failed() && len(verdict) > 0 {
			t.Logf("TestNoGrowthOver200Swaps failed (handoffd's log is above):\n%s", strings.Join(verdict, "\n"))
		}
	})
	errorf := func(format string, args ...any) {
		t.Helper()
		verdict = append(verdict, fmt.Sprintf(format, args...))
		t.Errorf(format, args...)
	}
	d := startDaemon(t, daemonOptions{metrics: true})
	l := startLoad(d.addr, "/slow?ms=1", 8, true)
	swapN := func(n int) {
		for range n {
			if out, err := d.ctl("swap", "demo"); err != nil {
				errorf("swap: %v: %s", err, out)
				t.FailNow()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// settled waits until only the active generation runs, so that no
	// draining generation's watcher is counted.
	settled := func() *figures {
		d.waitFor("old generations exited", 20*time.Second, func(st api.ServiceStatus) bool { return liveCount(st) == 1 })
		time.Sleep(300 * time.Millisecond)
		return d.atRest(15)
	}
	swapN(20)
	f0 := settled()
	swapN(180)
	f1 := settled()
	res := l.stop()
	t.Logf("at rest, median of 15 readings: after 20 swaps %s; after 200 %s; %d requests, %d failed", f0, f1, res.OK, res.Failed)
	if f1.goroutines > f0.goroutines+2 {
		errorf("goroutines grew from %v to %v over 180 swaps", f0.goroutines, f1.goroutines)
	}
	if f1.fds > f0.fds+1 {
		errorf("open fds grew from %v to %v over 180 swaps", f0.fds, f1.fds)
	}
	if res.Failed > 0 {
		errorf("%d of %d requests failed: %q", res.Failed, res.OK+res.Failed, res.Failures)
		for _, f := range res.FailedAt {
			line := fmt.Sprintf("client %d: sent %s (request %d on its connection, idle %s since generation %d answered on it), failed %s: %s",
				f.client, f.sent.Format("15:04:05.000000"), f.nth, f.idle, f.gen, f.at.Format("15:04:05.000000"), f.what)
			verdict = append(verdict, line)
			t.Log(line)
		}
	}
}
