package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// quicSwaps is how many swaps TestQUICSwapUnderLoad makes: swapCount.
var quicSwaps = swapCount

// TestQUICSwapUnderLoad swaps a service that serves HTTP/1.1 and HTTP/2
// on a TCP port and HTTP/3 on the UDP port of the same number, while 16
// HTTP/3 clients keep a connection each and 16 dial one per request,
// none sending a request twice: not one request may fail, a kept
// connection stays on its generation until that generation's GOAWAY, and
// a connection dialed after a generation became active reaches it or a
// later one.
func TestQUICSwapUnderLoad(t *testing.T) {
	d := startDaemon(t, daemonOptions{quic: true})
	l := startH3Load(d.addr, loadClients/2, loadClients/2)
	active := map[int]time.Time{}
	time.Sleep(300 * time.Millisecond)
	for i := range quicSwaps {
		time.Sleep(swapEvery)
		out, err := d.ctl("swap", "demo")
		if want := fmt.Sprintf("demo: generation %d active", i+2); err != nil || !strings.Contains(out, want) {
			t.Errorf("swap %d: %v: %q, want %q", i+1, err, out, want)
		}
		for _, g := range d.status().Generations {
			if g.ActiveAt != nil {
				active[g.ID] = *g.ActiveAt
			}
		}
	}
	time.Sleep(500 * time.Millisecond)
	res := l.stopLoad()
	last := quicSwaps + 1
	st := d.waitFor("every old generation exited", 40*time.Second*slow, func(st api.ServiceStatus) bool {
		return liveCount(st) == 1 && st.Generations[len(st.Generations)-1].ID == last
	})
	checkH3Result(t, res, quicSwaps)
	checkDials(t, res, active)
	for gen := 2; gen <= last; gen++ {
		if res.ByGen[gen] == 0 {
			t.Errorf("generation %d answered no HTTP/3 request", gen)
		}
	}
	checkNoLeaks(t, d, st)
}

// checkH3Result fails the test on any failed request or moved
// connection. A request that the old generation refused with
// H3_REQUEST_REJECTED was not processed (RFC 9114, 4.1.1: the client may
// treat it as never sent): quic-go's server sends one GOAWAY, naming the
// last stream it took, and refuses a stream that the client opened while
// the GOAWAY was on its way. Such refusals are counted apart; more than
// one per kept connection and GOAWAY would be refusals outside that race,
// and fail the test.
func checkH3Result(t *testing.T, res h3Result, swaps int) {
	t.Helper()
	t.Logf("HTTP/3: %d ok, %d failed, %d rejected (H3_REQUEST_REJECTED), %d connections; per generation %v",
		res.OK, res.Failed, res.Rejected, res.Conns, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d HTTP/3 requests failed, first ones: %q", res.Failed, res.Failures)
	}
	if res.Rejected > swaps*loadClients/2 {
		t.Errorf("%d HTTP/3 requests were rejected: more than one per kept connection and GOAWAY", res.Rejected)
	}
	if res.Moved > 0 {
		t.Errorf("%d kept connections were answered by two generations", res.Moved)
	}
	if res.OK < 10*swaps*loadClients/10 {
		t.Errorf("only %d HTTP/3 requests succeeded: the load did not run", res.OK)
	}
}

// checkDials fails the test when a connection dialed after a generation
// was active reached an older one.
func checkDials(t *testing.T, res h3Result, active map[int]time.Time) {
	t.Helper()
	late := 0
	for _, dl := range res.Dials {
		for gen, at := range active {
			if dl.At.After(at) && dl.Gen < gen {
				if late < 5 {
					t.Errorf("a connection dialed %v after generation %d was active reached generation %d",
						dl.At.Sub(at), gen, dl.Gen)
				}
				late++
				break
			}
		}
	}
	if late > 0 {
		t.Errorf("%d of %d connections reached a generation older than the active one", late, len(res.Dials))
	}
}
