package lifecycle

import (
	"context"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
)

// openFDs counts this process's open fds.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func dup(t *testing.T, f *os.File) *os.File {
	t.Helper()
	d, err := kernel.Dup(f)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func store(name string) stateproto.Message {
	return stateproto.Message{stateproto.FDStore: "1", stateproto.FDName: name}
}

func mustSwap(t *testing.T, s *Service) {
	t.Helper()
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestFDStorePassesStoredFDs(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	mustSwap(t, s)
	p1 := l.proc(0)
	a := sealedMemfd("a")
	p1.send(store("cache"), a, sealedMemfd("b"))
	p1.send(store("cache"), dup(t, a)) // the same file again: kept once
	p1.send(stateproto.Message{stateproto.FDStore: "1"}, sealedMemfd("c"))
	p1.send(store("gone"), sealedMemfd("d"))
	p1.send(stateproto.Message{stateproto.FDStoreRemove: "1", stateproto.FDName: "gone"})
	p1.send(stateproto.Message{stateproto.FDPoll: "0", stateproto.FDStore: "1", stateproto.FDName: "x"})
	if got := s.Status().FDStore; len(got) != 2 || got["cache"] != 2 || got["stored"] != 1 {
		t.Fatalf("fd_store = %v, want cache:2 stored:1", got)
	}
	mustSwap(t, s)
	want := []string{"cache=a", "cache=b", "stored=c"}
	if got := l.proc(1).stored; !slices.Equal(got, want) {
		t.Fatalf("generation 2 found %v, want %v", got, want)
	}
	// A crash replacement finds them too.
	l.proc(1).exit("crashed")
	eventually(t, "a replacement", func() bool { return l.count() == 3 && servingNow(s) })
	if got := l.proc(2).stored; !slices.Equal(got, want) {
		t.Fatalf("replacement found %v, want %v", got, want)
	}
}

func TestFDStoreRefusals(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	two := 2
	s.cfg.FDStoreMax = &two
	mustSwap(t, s)
	p := l.proc(0)
	before := openFDs(t)
	p.send(store("a"), sealedMemfd("1"), sealedMemfd("2"))
	p.send(store("b"), sealedMemfd("3"))                                      // full
	p.send(store(strings.Repeat("n", 256)), sealedMemfd("4"))                 // name
	p.send(store("a:b"), sealedMemfd("5"))                                    // name
	p.send(stateproto.Message{stateproto.Status: "hi"}, sealedMemfd("6"))     // unexpected
	p.send(stateproto.Message{stateproto.NotifyState: "1"}, sealedMemfd("7")) // unexpected: nobody asked
	p.spec.Notice(Notice{Oversize: true, Refused: 3})
	if n := openFDs(t); n != before+2 {
		t.Fatalf("%d fds open, want %d: the 2 stored ones only", n, before+2)
	}
	zero := 0
	s.cfg.FDStoreMax = &zero
	p.send(store("c"), sealedMemfd("8"))
	want := []string{"refused full", "refused name", "refused name", "refused unexpected", "refused unexpected", "refused oversize", "refused off"}
	var got []string
	for _, e := range s.observer.(*fakeObserver).got() {
		if strings.HasPrefix(e, "refused") {
			got = append(got, e)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
	if n := openFDs(t); n != before+2 {
		t.Fatalf("%d fds open, want %d", n, before+2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// Stop closed the store, and the socket of generation 1.
	if n := openFDs(t); n != before-1 {
		t.Fatalf("%d fds open after stop, want %d", n, before-1)
	}
}

// stateService is a service with state_handoff whose processes answer
// with answer.
func stateService(t *testing.T, answer func(*fakeProcess, stateproto.Message, string)) (*Service, *fakeLauncher) {
	t.Helper()
	l := &fakeLauncher{ready: true, ignoreStop: true, onState: answer}
	s := testService(t, l, &fakeRouter{})
	s.cfg.StateHandoff = true
	s.cfg.StateTimeout = config.Duration(100 * time.Millisecond)
	s.cfg.DrainTimeout = config.Duration(300 * time.Millisecond)
	return s, l
}

func handoffs(s *Service) []string {
	var out []string
	for _, e := range s.observer.(*fakeObserver).got() {
		if strings.HasPrefix(e, "handoff ") || strings.HasPrefix(e, "final ") {
			out = append(out, e)
		}
	}
	return out
}

func TestStateHandoff(t *testing.T) {
	s, l := stateService(t, answerState)
	s.cfg.DrainTimeout = config.Duration(2 * time.Second) // generation 1 drains until its final
	mustSwap(t, s)
	mustSwap(t, s)
	if got, want := l.proc(0).ch.got(), []string{"REASON=no previous generation runs STATE=0", "HANDOVER=1"}; !slices.Equal(got, want) {
		t.Fatalf("generation 1 got %q, want %q", got, want)
	}
	if got, want := l.proc(1).ch.got(), []string{"STATE=1 [state of 1]"}; !slices.Equal(got, want) {
		t.Fatalf("generation 2 got %q, want %q", got, want)
	}
	// The drained generation 1 sends its final: generation 2 receives it.
	l.proc(0).send(stateproto.Message{stateproto.FDStore: "1", stateproto.FDName: stateproto.FinalName, stateproto.NotifyFinal: "1"}, sealedMemfd("delta 3"))
	if got, want := l.proc(1).ch.got(), []string{"STATE=1 [state of 1]", "FINAL=1 [delta 3]"}; !slices.Equal(got, want) {
		t.Fatalf("generation 2 got %q, want %q", got, want)
	}
	// The active one may not send a final.
	l.proc(1).send(stateproto.Message{stateproto.NotifyFinal: "1"}, sealedMemfd("delta 1"))
	if got, want := handoffs(s), []string{"handoff cold", "handoff loaded", "final relayed", "final dropped"}; !slices.Equal(got, want) {
		t.Fatalf("observed %q, want %q", got, want)
	}
}

func TestStateHandoffFailuresStartCold(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(*fakeProcess, stateproto.Message, string)
		result string
		reason string
	}{
		{name: "silent", answer: func(*fakeProcess, stateproto.Message, string) {}, result: "handoff timeout",
			reason: "REASON=generation 1 handed over no state within state_timeout: context deadline exceeded STATE=0"},
		{name: "nothing", answer: func(p *fakeProcess, m stateproto.Message, _ string) {
			if m[stateproto.Handover] == "1" {
				p.send(stateproto.Message{stateproto.NotifyState: "0", stateproto.Status: "empty"})
			}
		}, result: "handoff cold", reason: "REASON=generation 1 has no state to hand over: empty STATE=0"},
		{name: "unsealed", answer: func(p *fakeProcess, m stateproto.Message, _ string) {
			if m[stateproto.Handover] == "1" {
				f, _ := os.Open("/dev/null")
				p.send(stateproto.Message{stateproto.NotifyState: "1"}, f)
			}
		}, result: "handoff failed", reason: "REASON=generation 1 sent a snapshot that is not one sealed memfd STATE=0"},
		{name: "not loaded", answer: func(p *fakeProcess, m stateproto.Message, data string) {
			if m[stateproto.State] == "1" {
				p.ch.replies <- stateproto.Message{stateproto.Loaded: "0", stateproto.Error: "bad json"}
				return
			}
			answerState(p, m, data)
		}, result: "handoff failed", reason: "STATE=1 [state of 1]"},
		{name: "never loaded", answer: func(p *fakeProcess, m stateproto.Message, data string) {
			if m[stateproto.State] != "1" {
				answerState(p, m, data)
			}
		}, result: "handoff timeout", reason: "STATE=1 [state of 1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, l := stateService(t, tc.answer)
			mustSwap(t, s)
			start := time.Now()
			res, err := s.Swap(context.Background())
			if err != nil || res.Generation != 2 {
				t.Fatalf("swap: %+v, %v: a failed handoff must not fail the swap", res, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("swap took %s, over state_timeout 100ms by far", d)
			}
			if got := l.proc(1).ch.got(); len(got) != 1 || got[0] != tc.reason {
				t.Fatalf("generation 2 got %q, want %q", got, tc.reason)
			}
			if got := handoffs(s); len(got) != 2 || got[1] != tc.result {
				t.Fatalf("observed %q, want %s second", got, tc.result)
			}
		})
	}
}

func TestStateHandoffAfterCrash(t *testing.T) {
	s, l := stateService(t, answerState)
	mustSwap(t, s)
	l.proc(0).exit("crashed")
	eventually(t, "a replacement", func() bool { return l.count() == 2 && servingNow(s) })
	eventually(t, "its STATE", func() bool { return len(l.proc(1).ch.got()) == 1 })
	if got, want := l.proc(1).ch.got()[0], "REASON=the previous generation 1 has exited STATE=0"; got != want {
		t.Fatalf("replacement got %q, want %q", got, want)
	}
}

func servingNow(s *Service) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serving()
}

// findingProcess is a re-adopted fake process whose fd table holds files.
type findingProcess struct {
	*fakeProcess
	fdTable
}

// adoptLauncher re-adopts every saved generation as a findingProcess.
type adoptLauncher struct {
	fakeLauncher
	holds []*os.File
}

func (l *adoptLauncher) Adopt(_ string, gen, pid int, _ uint64) (Process, error) {
	p := &fakeProcess{pid: pid, ready: make(chan struct{}), done: make(chan struct{}), exitOn: map[syscall.Signal]bool{syscall.SIGTERM: true}}
	close(p.ready)
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return &findingProcess{fakeProcess: p, fdTable: fdTable{files: l.holds}}, nil
}

// After a restart of handoffd, the fd store is found again in the fds of
// the re-adopted generations; a file that none holds is lost.
func TestFDStoreReadopted(t *testing.T) {
	l := &fakeLauncher{ready: true}
	s := testService(t, l, &fakeRouter{})
	mustSwap(t, s)
	kept, lost := sealedMemfd("kept"), sealedMemfd("lost")
	l.proc(0).send(store("kept"), dup(t, kept))
	l.proc(0).send(store("lost"), dup(t, lost))
	saved := s.saved()
	if len(saved.FDStore) != 2 || saved.FDStore[0].Name != "kept" || saved.FDStore[0].Ino == 0 {
		t.Fatalf("saved fd_store %+v", saved.FDStore)
	}

	al := &adoptLauncher{fakeLauncher: fakeLauncher{ready: true}, holds: []*os.File{kept}}
	s2 := adopted(t, s.cfg, s.mode, al, saved)
	if got := s2.Status().FDStore; len(got) != 1 || got["kept"] != 1 {
		t.Fatalf("fd_store after re-adoption = %v, want kept:1", got)
	}
	mustSwap(t, s2)
	if got := al.proc(1).stored; !slices.Equal(got, []string{"kept=kept"}) {
		t.Fatalf("the next generation found %v", got)
	}
	kept.Close()
	lost.Close()
}

// An fd removed from the store while a start passes it on is closed only
// once the start is over.
func TestFDStoreRemoveDuringStart(t *testing.T) {
	l := &fakeLauncher{ready: true}
	s := testService(t, l, &fakeRouter{})
	mustSwap(t, s)
	l.proc(0).send(store("a"), sealedMemfd("a"))
	s.mu.Lock()
	lent := s.lendStore()
	s.mu.Unlock()
	l.proc(0).send(stateproto.Message{stateproto.FDStoreRemove: "1", stateproto.FDName: "a"})
	var st syscall.Stat_t
	if err := syscall.Fstat(int(lent[0].File.Fd()), &st); err != nil {
		t.Fatalf("a lent fd was closed during the start: %v", err)
	}
	s.mu.Lock()
	s.giveBackStore()
	s.mu.Unlock()
	if len(s.Status().FDStore) != 0 {
		t.Fatalf("fd_store = %v, want empty", s.Status().FDStore)
	}
	if _, err := lent[0].File.Stat(); err == nil {
		t.Fatal("the removed fd is still open after the start")
	}
}

// A canary receives the active generation's snapshot before it takes its
// share; rolled back, it leaves the fd store as it was.
func TestStateHandoffCanary(t *testing.T) {
	s, l := stateService(t, answerState)
	mustSwap(t, s)
	l.proc(0).send(store("cache"), sealedMemfd("c"))
	if _, err := s.SwapCanary(context.Background(), Split{Share: 0.1}); err != nil {
		t.Fatal(err)
	}
	if got, want := l.proc(1).ch.got(), []string{"STATE=1 [state of 1]"}; !slices.Equal(got, want) {
		t.Fatalf("the canary got %q, want %q", got, want)
	}
	if got := l.proc(1).stored; !slices.Equal(got, []string{"cache=c"}) {
		t.Fatalf("the canary found %v", got)
	}
	if _, err := s.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got := s.Status().FDStore; len(got) != 1 || got["cache"] != 1 {
		t.Fatalf("fd_store after the rollback = %v, want cache:1", got)
	}
}
