package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/stateproto"
)

// FuzzLifecycle drives a service through a random sequence of events
// (swaps, processes that become ready or exit in any state, crashes of the
// active generation, rollbacks, ends of probation, ready timeouts) and
// checks what must hold whatever the order:
//
//   - steering is never moved to a generation whose process had exited;
//   - no invariant of the state machine breaks (Service.Invariants);
//   - once the events stop and processes start normally again, exactly one
//     live generation is active and receives the new connections;
//   - the service has state_handoff: no generation gets more than one STATE
//     message, and the active one has had its one.
//
// The events run with the real goroutines of the service, so each run also
// explores their interleavings; the seeds in testdata/fuzz/FuzzLifecycle
// are sequences that broke these rules once.
func FuzzLifecycle(f *testing.F) {
	f.Fuzz(func(t *testing.T, events []byte) {
		if len(events) > 24 {
			events = events[:24]
		}
		c := newChaos(t, len(events) > 0 && events[0] == 'p')
		for _, e := range events {
			c.play(e)
		}
		c.settle()
	})
}

// chaos is a service run by fakes whose processes the events control.
type chaos struct {
	t *testing.T
	s *Service
	l *fakeLauncher
	r *fakeRouter

	mu    sync.Mutex
	swaps sync.WaitGroup
}

func newChaos(t *testing.T, probation bool) *chaos {
	l := &fakeLauncher{ready: true, onState: answerState}
	r := &fakeRouter{}
	c := &chaos{t: t, l: l, r: r}
	// A process may exit while its swap activates it (nothing makes
	// the two atomic); one that exited well before was missed. Steering
	// may go back to a generation activated before, dead or not: after a
	// failed swap it returns to the current one, whose sockets handoffd
	// holds so that connections wait for its replacement.
	var activatedMu sync.Mutex
	activated := map[int]bool{}
	r.activating = func(gen int) {
		activatedMu.Lock()
		again := activated[gen]
		activated[gen] = true
		activatedMu.Unlock()
		if p := l.byGen(gen); p != nil && !again && p.exitedBefore(10*time.Millisecond) {
			t.Errorf("steering moved to generation %d, whose process had exited", gen)
		}
	}
	c.s = testService(t, l, r)
	c.s.cfg.ReadyTimeout = config.Duration(60 * time.Millisecond)
	c.s.cfg.DrainTimeout = config.Duration(60 * time.Millisecond)
	c.s.cfg.StateHandoff = true
	c.s.cfg.StateTimeout = config.Duration(40 * time.Millisecond)
	// Failed starts are retried soon: settle waits for them.
	c.s.retry = retryBackoff{first: 10 * time.Millisecond, max: 40 * time.Millisecond}
	if probation {
		c.s.cfg.Probation = config.Duration(60 * time.Millisecond)
	}
	if _, err := c.s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.setReady(false)
	t.Cleanup(c.swaps.Wait)
	return c
}

// play applies one event, then lets the service's goroutines run a little.
func (c *chaos) play(e byte) {
	switch e {
	case 'S': // a swap, in the background: its process waits for 'R'
		c.swaps.Go(func() { c.s.Swap(context.Background()) })
	case 'R': // the newest process says READY=1
		c.l.readyNewest()
	case 'Q': // the newest process says READY=1 and exits at once
		c.l.each(true, func(p *fakeProcess) { p.setReady(); p.exit("exited when ready") })
	case 'X': // the newest process exits, whatever its state
		c.l.exitNewest()
	case 'A': // the active generation crashes
		if g := c.current(); g != nil {
			g.proc.(*fakeProcess).exit("crashed")
		}
	case 'D': // the oldest live process exits (a drained one, usually)
		c.l.exitOldest()
	case 'b': // rollback by hand
		c.s.Rollback()
	case 'n': // end the probation by hand
		c.s.DrainStandby()
	case 'F': // the newest live process stores a memfd
		c.l.firstLive(true, func(p *fakeProcess) { p.send(store("f"), sealedMemfd("f")) })
	case 'f': // the oldest live process sends a final delta
		c.l.firstLive(false, func(p *fakeProcess) {
			p.send(stateproto.Message{stateproto.NotifyFinal: "1"}, sealedMemfd("delta"))
		})
	case 'w': // a little time passes, less than any timeout
		time.Sleep(20 * time.Millisecond)
	case 'T': // time passes: ready timeouts, probations, drain timeouts
		time.Sleep(80 * time.Millisecond)
	}
	time.Sleep(3 * time.Millisecond)
}

func (c *chaos) current() *Generation {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.s.current
}

// settle lets processes start normally again and waits until the service
// has one live, active generation that steering points at.
func (c *chaos) settle() {
	c.t.Helper()
	c.l.setReady(true)
	c.l.readyAll()
	c.swaps.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.healthy()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the service did not settle: %v; generations %v", err, states(c.s))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if broken := c.s.Invariants(); len(broken) > 0 {
		c.t.Errorf("invariants broken: %v", broken)
	}
	active := c.current().proc.(*fakeProcess)
	for i := range c.l.count() {
		p := c.l.proc(i)
		states := 0
		for _, m := range p.ch.got() {
			if strings.Contains(m, "STATE=") {
				states++
			}
		}
		if states > 1 || p == active && states != 1 {
			c.t.Errorf("generation %d got %d STATE messages: %q", p.pid-1000, states, p.ch.got())
		}
	}
}

// healthy says why the service is not (yet) in its one good resting state.
func (c *chaos) healthy() error {
	s := c.s
	if s.swapping.Load() {
		return errors.New("a swap is under way")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var active []*Generation
	for _, g := range s.gens {
		if g.state == api.StateActive {
			active = append(active, g)
		}
	}
	switch {
	case len(active) != 1:
		return fmt.Errorf("%d active generations", len(active))
	case s.current != active[0]:
		return errors.New("the active generation is not the current one")
	case chanClosed(active[0].proc.Done()):
		return fmt.Errorf("active generation %d has exited", active[0].ID)
	case c.r.activeGen() != active[0].ID:
		return fmt.Errorf("steering points at generation %d, not the active %d", c.r.activeGen(), active[0].ID)
	case s.standby != nil && chanClosed(s.standby.proc.Done()):
		return fmt.Errorf("standby generation %d has exited", s.standby.ID)
	case s.failure != nil:
		return fmt.Errorf("the service is failed: %v", s.failure.reason)
	}
	return nil
}
