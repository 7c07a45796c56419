package lifecycle

import (
	"context"
	"errors"
	"os"
	"slices"
	"syscall"
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

// TestCanaryRefusedBesideCrashedActive: while the active generation is
// dead and its replacement fails, a canary would get a share of new
// connections beside a socket nobody accepts from, and hold the
// replacement off until someone promotes or rolls it back. It is refused;
// the replacement goes on.
func TestCanaryRefusedBesideCrashedActive(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	mustSwap(t, s)
	l.mu.Lock()
	l.failStarts = 1 // the first replacement cannot start
	l.mu.Unlock()
	l.proc(0).exit("signal: segmentation fault")
	eventually(t, "the first replacement failed", func() bool { return slices.Contains(states(s), "2:failed") })
	var err error
	for range 100 {
		if _, err = s.SwapCanary(context.Background(), Split{Share: 0.05}); !errors.Is(err, ErrSwapInProgress) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !errors.Is(err, ErrCanaryRefused) {
		t.Errorf("canary beside a crashed active generation: %v, want it refused", err)
	}
	eventually(t, "a replacement active", func() bool { return servingNow(s) })
	s.mu.Lock()
	canary := s.canary
	s.mu.Unlock()
	if canary != nil {
		t.Errorf("generation %d runs as a canary; the replacement must be the active generation alone", canary.ID)
	}
	if gen, share := r.splitNow(); share != 0 {
		t.Errorf("steering still splits %v to generation %d", share, gen)
	}
}

// TestCanaryStartLosesToActiveCrash: the active generation dies while a
// canary starts. The canary does not take a share beside the dead one:
// its start fails, and the replacement of the active generation wins.
func TestCanaryStartLosesToActiveCrash(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	mustSwap(t, s)
	l.setReady(false)
	errc := make(chan error, 1)
	go func() { _, err := s.SwapCanary(context.Background(), Split{Share: 0.05}); errc <- err }()
	eventually(t, "the canary started", func() bool { return l.count() == 2 })
	l.proc(0).exit("signal: segmentation fault")
	eventually(t, "the crash seen", func() bool { return slices.Contains(states(s), "1:exited") })
	l.setReady(true)
	l.proc(1).setReady()
	if err := <-errc; !errors.Is(err, ErrCanaryRefused) {
		t.Errorf("canary whose active generation died during its start: %v, want it refused", err)
	}
	eventually(t, "a replacement active", func() bool { return servingNow(s) })
	if gen, share := r.splitNow(); share != 0 {
		t.Errorf("steering still splits %v to generation %d", share, gen)
	}
	if errs := s.Invariants(); len(errs) > 0 {
		t.Errorf("invariants broken: %v", errs)
	}
}

// TestAddedServiceSavedBeforeItRuns: a service added by a reload is in
// StateFile as soon as its generation 1 runs, before it is even ready,
// so that a handoffd killed at any point after the start re-adopts it
// instead of orphaning it.
func TestAddedServiceSavedBeforeItRuns(t *testing.T) {
	dir := t.TempDir()
	head := "control: /run/handoff/handoffd.sock\nstate_dir: " + dir + "\nservices:"
	demo := serviceDoc("demo", "V=1", freeAddress(t))
	sup, l := testSupervisor(t, parse(t, head+demo))
	l.setReady(false)
	reloaded := make(chan error, 1)
	go func() {
		_, err := sup.Reload(context.Background(), parse(t, head+demo+serviceDoc("web", "W=1", freeAddress(t))))
		reloaded <- err
	}()
	eventually(t, "web's generation 1 started", func() bool { return len(l.started("web")) == 1 })
	const pid = 1001 // the fake pid of generation 1
	saved := false
	for deadline := time.Now().Add(time.Second); !saved && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		st, err := loadState(dir)
		if err != nil {
			t.Fatal(err)
		}
		ss, _ := st.service("web")
		saved = slices.ContainsFunc(ss.Generations, func(g savedGeneration) bool { return g.PID == pid })
	}
	l.readyAll()
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	if !saved {
		t.Errorf("web's generation 1 (pid %d) ran for a second without being in %s", pid, StateFile)
	}
}

// countingLauncher re-adopts generation 2 holding nothing and generation
// 1 holding every file of holds.
type countingLauncher struct {
	fakeLauncher
	holds    []*os.File
	searches int
}

func (l *countingLauncher) Adopt(_ string, gen, pid int, _ uint64) (Process, error) {
	p := &fakeProcess{pid: pid, ready: make(chan struct{}), done: make(chan struct{}), exitOn: map[syscall.Signal]bool{syscall.SIGTERM: true}}
	close(p.ready)
	fp := &findingProcess{fakeProcess: p, fdTable: fdTable{searches: &l.searches}}
	if gen == 1 {
		fp.files = l.holds
	}
	return fp, nil
}

// TestFDStoreReadoptedInOnePass: re-adopting the fd store reads each
// generation's fds once, whatever the number of stored fds.
func TestFDStoreReadoptedInOnePass(t *testing.T) {
	l := &fakeLauncher{ready: true}
	s := testService(t, l, &fakeRouter{})
	s.cfg.Probation = config.Duration(time.Minute)
	mustSwap(t, s)
	mustSwap(t, s)
	const stored = 16
	var holds []*os.File
	for i := range stored {
		f := sealedMemfd(string(rune('a' + i)))
		holds = append(holds, f)
		l.proc(1).send(store(string(rune('a'+i))), dup(t, f))
	}
	t.Cleanup(func() { closeFiles(holds) })
	saved := s.saved()
	al := &countingLauncher{fakeLauncher: fakeLauncher{ready: true}, holds: holds}
	s2 := adopted(t, s.cfg, s.mode, al, saved)
	if n := len(s2.Status().FDStore); n != stored {
		t.Fatalf("%d stored fds re-adopted, want %d", n, stored)
	}
	if al.searches > 2 {
		t.Errorf("the fds of 2 generations were searched %d times for %d stored fds, want once each", al.searches, stored)
	}
}
