package lifecycle

import (
	"context"
	"testing"
)

// A handoffd killed as a swap moves steering to its new generation: the
// next one, on the state file as it was at that moment, re-adopts the new
// generation as the one that serves and drains the one it replaced. It
// never stops the generation that new connections go to as one that was
// never active.
func TestKilledAsSteeringMoves(t *testing.T) {
	for _, probation := range []bool{false, true} {
		w := newWorld(t)
		w.file = []worldService{{name: "a", port: 1, probation: probation}}
		w.start(nil)
		w.inc.bg.Wait()
		var atFlip []byte
		w.mu.Lock()
		w.onActivate = func(_ string, gen int) {
			if gen == 2 {
				data, err := w.stateFile()
				if err != nil {
					t.Error(err)
				}
				atFlip = data
			}
		}
		w.mu.Unlock()
		svc, err := w.inc.sup.Service("a")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Swap(context.Background()); err != nil {
			t.Fatal(err)
		}
		w.mu.Lock()
		w.onActivate = nil
		pid := w.procs[1].pid
		w.mu.Unlock()
		w.killWith(false, atFlip)
		c := &chaos{t: t, w: w, touched: map[string]bool{}, first: map[string]int{}}
		c.settle()
		svc, _ = w.inc.sup.Service("a")
		svc.mu.Lock()
		cur := svc.current
		svc.mu.Unlock()
		if cur.ID != 2 || cur.pid != pid {
			t.Errorf("probation %v: after the restart generation %d (pid %d) serves, want the re-adopted generation 2 (pid %d); generations %v",
				probation, cur.ID, cur.pid, pid, states(svc))
		}
	}
}
