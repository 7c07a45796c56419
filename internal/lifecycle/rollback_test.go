package lifecycle

import (
	"context"
	"errors"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/internal/config"
)

func probationService(t *testing.T, probation time.Duration) (*Service, *fakeLauncher, *fakeRouter) {
	t.Helper()
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	s.cfg.Probation = config.Duration(probation)
	for range 2 {
		if _, err := s.Swap(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got := states(s); !slices.Equal(got, []string{"1:standby", "2:active"}) {
		t.Fatalf("after the swap: %v, want generation 1 in standby", got)
	}
	return s, l, r
}

func TestProbationCrashRollsBack(t *testing.T) {
	s, l, r := probationService(t, time.Minute)
	l.proc(1).exit("signal: segmentation fault")
	eventually(t, "rollback", func() bool { return slices.Equal(states(s), []string{"1:active", "2:exited"}) })
	if r.activeGen() != 1 {
		t.Fatalf("steering points at %d, want 1", r.activeGen())
	}
	if got := l.proc(0).got(); len(got) != 0 {
		t.Fatalf("generation 1 got %v; a rollback must leave it untouched", got)
	}
	if l.count() != 2 {
		t.Fatalf("%d generations started; a rollback starts none", l.count())
	}
}

func TestProbationPassesThenDrains(t *testing.T) {
	s, l, _ := probationService(t, 50*time.Millisecond)
	eventually(t, "generation 1 drained", func() bool { return slices.Equal(states(s), []string{"1:exited", "2:active"}) })
	if got := l.proc(0).got(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
		t.Fatalf("generation 1 got %v, want SIGTERM after probation", got)
	}
	if _, err := s.Rollback(); !errors.Is(err, ErrNoStandby) {
		t.Fatalf("rollback after probation = %v, want ErrNoStandby", err)
	}
}

func TestRollbackByHand(t *testing.T) {
	s, l, r := probationService(t, time.Minute)
	res, err := s.Rollback()
	if err != nil || res.Generation != 1 || res.Previous != 2 {
		t.Fatalf("rollback = %+v, %v", res, err)
	}
	if r.activeGen() != 1 {
		t.Fatalf("steering points at %d, want 1", r.activeGen())
	}
	eventually(t, "generation 2 drained", func() bool { return slices.Equal(states(s), []string{"1:active", "2:exited"}) })
	if got := l.proc(1).got(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
		t.Fatalf("generation 2 got %v, want SIGTERM", got)
	}
	if _, err := s.Rollback(); !errors.Is(err, ErrNoStandby) {
		t.Fatalf("second rollback = %v, want ErrNoStandby", err)
	}
}

func TestSwapDuringProbationRetiresStandby(t *testing.T) {
	s, l, _ := probationService(t, time.Minute)
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "generation 1 drained", func() bool {
		return slices.Equal(states(s), []string{"1:exited", "2:standby", "3:active"})
	})
	if got := l.proc(0).got(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
		t.Fatalf("generation 1 got %v, want SIGTERM", got)
	}
}

func TestDrainStandbyEndsProbation(t *testing.T) {
	s, l, r := probationService(t, time.Minute)
	id, err := s.DrainStandby()
	if err != nil || id != 1 {
		t.Fatalf("DrainStandby = %d, %v; want 1", id, err)
	}
	eventually(t, "generation 1 drained", func() bool { return slices.Equal(states(s), []string{"1:exited", "2:active"}) })
	if got := l.proc(0).got(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) || r.activeGen() != 2 {
		t.Fatalf("generation 1 got %v, steering at %d; want SIGTERM and 2", got, r.activeGen())
	}
	if _, err := s.Rollback(); !errors.Is(err, ErrNoStandby) {
		t.Fatalf("rollback after drain = %v, want ErrNoStandby", err)
	}
}
