package lifecycle

import (
	"errors"
	"fmt"
	"time"

	"github.com/handoffd/handoffd/api"
)

// ErrNoStandby is returned by Rollback when no generation waits in standby.
var ErrNoStandby = errors.New("no generation to roll back to: none is in standby (set probation: to keep the previous generation after a swap)")

// holdInStandby keeps old, which next replaced, running and in the
// steering map until next has lived for probation; then old drains. If
// next dies first, exited rolls back to old. Callers hold s.mu.
func (s *Service) holdInStandby(old, next *Generation, probation time.Duration) error {
	if err := s.move(old, api.StateStandby); err != nil {
		return err
	}
	s.standby = old
	s.log.Info("previous generation in standby", "generation", old.ID, "probation", probation)
	s.goroutines.Add(1)
	go func() {
		defer s.goroutines.Done()
		timer := time.NewTimer(probation)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-s.stopCh:
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		// A rollback, a crash or a newer swap may have settled it already.
		if s.standby == old && s.current == next {
			s.standby = nil
			s.log.Info("probation passed", "generation", next.ID)
			s.invariant(s.retire(old))
		}
	}()
	return nil
}

// Rollback takes a canary's share back to 0 and drains the canary, or
// else makes the generation in standby active again and drains the one
// that replaced it. It works while a canary runs and during the probation
// after a swap, and is refused while a swap is under way.
func (s *Service) Rollback() (api.SwapResult, error) {
	res, err := s.rollback()
	if err == nil {
		s.persist()
	}
	return res, err
}

func (s *Service) rollback() (api.SwapResult, error) {
	if !s.swapMu.TryLock() {
		return api.SwapResult{}, ErrSwapInProgress
	}
	defer s.swapMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.canary != nil {
		return s.rollbackCanaryLocked("rollback requested")
	}
	if s.standby == nil {
		return api.SwapResult{}, ErrNoStandby
	}
	replaced := s.current
	if err := s.rollbackLocked(); err != nil {
		return api.SwapResult{}, err
	}
	return api.SwapResult{Service: s.cfg.Name, Generation: s.current.ID, PID: s.current.pid, Previous: replaced.ID}, nil
}

// rollbackLocked flips steering back to the standby generation and
// retires the current one (which may have died already). Callers hold
// s.mu and have checked that s.standby is set.
func (s *Service) rollbackLocked() error {
	back, replaced := s.standby, s.current
	if chanClosed(back.proc.Done()) {
		s.standby = nil
		return fmt.Errorf("roll back to generation %d: %w", back.ID, ErrNoStandby)
	}
	if err := s.router.Activate(back.ID); err != nil {
		s.log.Error("roll back: restore steering", "generation", back.ID, "err", err)
		return fmt.Errorf("roll back to generation %d: %w", back.ID, err)
	}
	if err := s.move(back, api.StateActive); err != nil {
		return err
	}
	s.current, s.standby = back, nil
	s.recoveredLocked(back)
	s.observer.SwapDone(s.cfg.Name, "rolled_back")
	s.log.Info("rolled back", "generation", back.ID, "replaced", replaced.ID)
	return s.retire(replaced)
}

// DrainStandby ends the probation at once: the generation in standby
// drains now, and no rollback is left. It returns that generation's id.
func (s *Service) DrainStandby() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.standby == nil {
		return 0, ErrNoStandby
	}
	g := s.standby
	s.standby = nil
	return g.ID, s.retire(g)
}
