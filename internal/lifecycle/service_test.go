package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
)

func testService(t *testing.T, l *fakeLauncher, r *fakeRouter) *Service {
	t.Helper()
	cfg := &config.ServiceConfig{Name: "demo", Command: []string{"demo"}, Listeners: []config.ListenerConfig{{Name: "http", Address: "tcp://127.0.0.1:1"}},
		ReadyTimeout: config.Duration(200 * time.Millisecond),
		DrainTimeout: config.Duration(200 * time.Millisecond), StopSignal: config.Signal(syscall.SIGTERM)}
	s := newService(cfg, api.ModeEBPF, "/tmp/ctl.sock", r, l, fakeCounter{}, &fakeObserver{}, quietLogger())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return s
}

// states returns "id:state" of every generation, oldest first.
func states(s *Service) []string {
	var out []string
	for _, g := range s.Status().Generations {
		out = append(out, strconv.Itoa(g.ID)+":"+g.State.String())
	}
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSwapDrainsPrevious(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	res, err := s.Swap(context.Background())
	if err != nil || res.Generation != 1 || res.Previous != 0 {
		t.Fatalf("first swap = %+v, %v", res, err)
	}
	res, err = s.Swap(context.Background())
	if err != nil || res.Generation != 2 || res.Previous != 1 {
		t.Fatalf("second swap = %+v, %v", res, err)
	}
	if r.activeGen() != 2 {
		t.Fatalf("steering points at %d, want 2", r.activeGen())
	}
	if got := l.proc(0).got(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
		t.Fatalf("old generation got %v, want [SIGTERM]", got)
	}
	eventually(t, "generation 1 exited", func() bool { return slices.Equal(states(s), []string{"1:exited", "2:active"}) })
	// The first swap has no old generation, so no drain phase. The drain
	// may end before or after the second swap is reported.
	got := s.observer.(*fakeObserver).got()
	slices.Sort(got)
	if want := []string{"active_to_old_exited", "ok", "ok", "ready_to_active", "ready_to_active",
		"start_to_ready", "start_to_ready"}; !slices.Equal(got, want) {
		t.Fatalf("observer saw %v, want %v", got, want)
	}
	st := s.Status()
	if g := st.Generations[1]; g.Connections == nil || *g.Connections != 7 || g.ConnectionsSource != api.SourceEBPF {
		t.Fatalf("active generation counted %v from %q, want 7 from the kernel", g.Connections, g.ConnectionsSource)
	}
	if st.Generations[0].Connections != nil || st.MigratedRequests != 3 {
		t.Fatalf("exited generation counted, or migrations not reported: %+v", st)
	}
}

func TestSwapFailureKeepsActive(t *testing.T) {
	for _, tc := range []struct {
		name    string
		arrange func(l *fakeLauncher, r *fakeRouter)
		act     func(l *fakeLauncher)
		want    string
	}{
		{name: "exit before ready", act: func(l *fakeLauncher) { l.proc(1).exit("exit status 3") }, want: "exited before it was ready: exit status 3"},
		{name: "ready timeout", act: func(*fakeLauncher) {}, want: "not ready within ready_timeout 200ms"},
		{name: "activation refused", arrange: func(l *fakeLauncher, r *fakeRouter) { l.ready = true; r.failAt = 2 },
			act: func(*fakeLauncher) {}, want: "activate generation 2: map update refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, r := &fakeLauncher{ready: true}, &fakeRouter{}
			s := testService(t, l, r)
			if _, err := s.Swap(context.Background()); err != nil {
				t.Fatal(err)
			}
			l.ready = false
			if tc.arrange != nil {
				tc.arrange(l, r)
			}
			errc := make(chan error, 1)
			go func() { _, err := s.Swap(context.Background()); errc <- err }()
			eventually(t, "generation 2 started", func() bool { return l.count() == 2 })
			tc.act(l)
			err := <-errc
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("swap error = %v, want it to say %q", err, tc.want)
			}
			if o := s.observer.(*fakeObserver).got(); o[len(o)-1] != "failed" {
				t.Fatalf("observer saw %v, want the swap reported failed", o)
			}
			if r.activeGen() != 1 || len(l.proc(0).got()) != 0 {
				t.Fatalf("old generation disturbed: steering at %d, signals %v", r.activeGen(), l.proc(0).got())
			}
			eventually(t, "new generation failed and killed", func() bool {
				return slices.Equal(states(s), []string{"1:active", "2:failed"}) && chanClosed(l.proc(1).done)
			})
		})
	}
}

func TestSecondSwapRefused(t *testing.T) {
	l, r := &fakeLauncher{}, &fakeRouter{}
	s := testService(t, l, r)
	errc := make(chan error, 1)
	go func() { _, err := s.Swap(context.Background()); errc <- err }()
	eventually(t, "generation 1 started", func() bool { return l.count() == 1 })
	if _, err := s.Swap(context.Background()); !errors.Is(err, ErrSwapInProgress) {
		t.Fatalf("concurrent swap error = %v, want ErrSwapInProgress", err)
	}
	if !s.Status().Swapping {
		t.Fatal("status does not say a swap is under way")
	}
	close(l.proc(0).ready)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestDrainTimeoutKills(t *testing.T) {
	l, r := &fakeLauncher{ready: true, ignoreStop: true}, &fakeRouter{}
	s := testService(t, l, r)
	for range 2 {
		if _, err := s.Swap(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "generation 1 killed", func() bool { return chanClosed(l.proc(0).done) })
	if got := l.proc(0).got(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}) {
		t.Fatalf("signals = %v, want SIGTERM then SIGKILL", got)
	}
	if got := s.observer.(*fakeObserver).got(); !slices.Contains(got, "killed 7") {
		t.Fatalf("observer saw %v, want the kill with the 7 connections held reported", got)
	}
	eventually(t, "kill recorded in status", func() bool {
		g := s.Status().Generations[0]
		return g.KilledConnections != nil && *g.KilledConnections == 7
	})
	if n := crashes(s); n != 0 {
		t.Fatalf("observer saw %d crashes; a generation killed at drain_timeout did not crash", n)
	}
}

func TestCrashedActiveIsReplaced(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.proc(0).exit("signal: segmentation fault")
	eventually(t, "replacement active", func() bool { return r.activeGen() == 2 })
	eventually(t, "states settled", func() bool { return slices.Equal(states(s), []string{"1:exited", "2:active"}) })
	if n := crashes(s); n != 1 {
		t.Fatalf("observer saw %d crashes, want 1", n)
	}
}

// crashes counts the crashes the service's observer saw.
func crashes(s *Service) int {
	n := 0
	for _, e := range s.observer.(*fakeObserver).got() {
		if e == "crashed" {
			n++
		}
	}
	return n
}

func TestStopEndsEveryGeneration(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	for range 2 {
		if _, err := s.Swap(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if !chanClosed(l.proc(i).done) {
			t.Fatalf("generation %d still runs after Stop", i+1)
		}
	}
	if _, err := s.Swap(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("swap after stop = %v, want ErrStopped", err)
	}
	if n := crashes(s); n != 0 {
		t.Fatalf("observer saw %d crashes; generations that Stop ends did not crash", n)
	}
}

func TestPruneKeepsLiveGenerations(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	for range 20 {
		if _, err := s.Swap(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "old generations pruned", func() bool { return len(s.Status().Generations) == keepExited+1 })
	gens := s.Status().Generations
	if last := gens[len(gens)-1]; last.ID != 20 || last.State != api.StateActive {
		t.Fatalf("last generation = %+v, want 20 active", last)
	}
}

// TestStatusDuringSwaps polls status as fast as it can while swapping,
// under the race detector (make test runs unit tests with -race): status
// reads generations that a swap is filling in, and reading whether a swap
// is under way must not make one look under way.
func TestStatusDuringSwaps(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				s.Status()
			}
		}
	}()
	defer func() { close(stop); <-done }()
	// Fewer swaps than slots: a slot's reuse waits for its old generation.
	for i := range r.Slots() - 1 {
		if _, err := s.Swap(context.Background()); err != nil {
			t.Fatalf("swap %d: %v", i+1, err)
		}
	}
}

// With stop_delay, the replaced generation gets its stop signal only
// after the delay, while it is already draining.
func TestStopDelay(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	s.cfg.StopDelay = config.Duration(150 * time.Millisecond)
	s.cfg.DrainTimeout = config.Duration(5 * time.Second) // no SIGKILL before the delay ends
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	swapped := time.Now() // the delay starts within the second swap, after this
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := states(s); !slices.Equal(got, []string{"1:draining", "2:active"}) {
		t.Fatalf("states %v right after the swap, want generation 1 draining", got)
	}
	for time.Since(swapped) < 100*time.Millisecond {
		if got := l.proc(0).got(); len(got) > 0 {
			t.Fatalf("generation 1 got %v %s after the swap, before its 150ms stop_delay", got, time.Since(swapped))
		}
		time.Sleep(5 * time.Millisecond)
	}
	eventually(t, "the stop signal", func() bool { return slices.Equal(l.proc(0).got(), []syscall.Signal{syscall.SIGTERM}) })
	if took := time.Since(swapped); took < 150*time.Millisecond {
		t.Errorf("stop signal %s after the swap, want at least the 150ms stop_delay", took)
	}
}

// TestReplacementCrashingAsReplaceEnds crashes the replacement of a
// crashed generation just as the replace loop sees it serving: that crash
// must start a replacement of its own.
func TestReplacementCrashingAsReplaceEnds(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	s.testHookReplaced = func() {
		once.Do(func() {
			l.proc(1).exit("signal: killed")
			// Wait until the service has seen the exit.
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				if slices.Contains(states(s), "2:exited") {
					return
				}
			}
		})
	}
	l.proc(0).exit("signal: segmentation fault")
	eventually(t, "a third generation active", func() bool { return r.activeGen() == 3 })
}

func TestStopDelayWarnedInFDPass(t *testing.T) {
	for _, mode := range []api.Mode{api.ModeEBPF, api.ModeFDPass} {
		var buf bytes.Buffer
		cfg := &config.ServiceConfig{Name: "demo", Listeners: []config.ListenerConfig{{Name: "http", Address: "tcp://127.0.0.1:1"}},
			StopDelay: config.Duration(time.Second)}
		newService(cfg, mode, "/tmp/ctl.sock", &fakeRouter{}, &fakeLauncher{}, fakeCounter{}, nil, slog.New(slog.NewTextHandler(&buf, nil)))
		warned := strings.Contains(buf.String(), "stop_delay does not help in fdpass mode")
		if warned != (mode == api.ModeFDPass) {
			t.Errorf("mode %s: warned %v; log: %s", mode, warned, buf.String())
		}
	}
}
