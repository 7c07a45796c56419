package lifecycle

import (
	"os"
	"slices"
	"testing"
	"time"

	"github.com/handoffd/handoffd/internal/config"
)

// TestExitedStandbyClosesItsSockets: a generation in standby that dies
// takes its listening sockets out of the reuseport group at once, so that
// no steering fallback hashes a new connection onto a socket nobody
// accepts from.
func TestExitedStandbyClosesItsSockets(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{peers: map[int][]*os.File{}}
	t.Cleanup(r.closePeers)
	s := testService(t, l, r)
	s.cfg.Probation = config.Duration(time.Minute)
	mustSwap(t, s)
	mustSwap(t, s)
	if got := states(s); !slices.Equal(got, []string{"1:standby", "2:active"}) {
		t.Fatalf("after the swap: %v, want generation 1 in standby", got)
	}
	if !r.open(1) {
		t.Fatal("the standby's sockets are closed while it runs: a rollback would find no listener")
	}
	l.proc(0).exit("signal: killed")
	eventually(t, "the standby's exit seen", func() bool { return slices.Equal(states(s), []string{"1:exited", "2:active"}) })
	if r.open(1) {
		t.Error("handoffd still holds the exited standby's listening sockets")
	}
	if !r.open(2) || r.activeGen() != 2 {
		t.Errorf("the active generation lost its sockets or steering (steering at %d)", r.activeGen())
	}
}
