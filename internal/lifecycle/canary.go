package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/health"
)

var (
	// ErrNoCanary is returned by the canary commands of a service that
	// runs no canary.
	ErrNoCanary = errors.New("no canary is running: start one with swap --canary P%")
	// ErrCanaryRunning is returned by a swap while a canary runs.
	ErrCanaryRunning = errors.New("a canary is running: promote or roll it back first")
	// ErrCanaryRefused is wrapped by the error of a canary that the
	// service cannot have.
	ErrCanaryRefused = errors.New("canary refused")
)

// Split is how a canary shares new connections with the active generation.
type Split struct {
	// Share is the canary's share of new connections, from 0 to 1.
	Share float64
	// Sticky splits by client address instead of by connection.
	Sticky bool
}

// SwapCanary starts the next generation as a canary: once it is ready
// (and healthy, with a health check), it receives sp.Share of new
// connections beside the active generation, which keeps the rest and goes
// on running. It returns once the split is in place. Promote, Rollback and
// SetCanaryShare follow; a crash or a run of failed health checks rolls
// the canary back by itself. Only ebpf mode can split.
func (s *Service) SwapCanary(ctx context.Context, sp Split) (api.SwapResult, error) {
	if sp.Share <= 0 || sp.Share > 1 {
		return api.SwapResult{}, fmt.Errorf("%w: a canary's share must be above 0%% and at most 100%%, not %g%%", ErrCanaryRefused, sp.Share*100)
	}
	return s.swapWith(ctx, s.launcher.Start, &sp)
}

// checkCanary says why the service cannot start a canary now, or nil.
// Callers hold swapMu.
func (s *Service) checkCanary() error {
	if m := serviceMode(s.cfg, s.mode); m != api.ModeEBPF {
		return fmt.Errorf("%w: service %s runs in %s mode, where every generation shares one listening socket and new connections cannot be split (canary needs ebpf mode)", ErrCanaryRefused, s.name, m)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.canaryBesideLocked()
}

// canaryBesideLocked refuses a canary unless a current generation serves
// beside it: with none, the rest of the new connections would queue on
// a socket nobody accepts from, and the canary would hold off the
// replacement until promoted or rolled back. A swap without --canary
// replaces it instead. Callers hold s.mu.
func (s *Service) canaryBesideLocked() error {
	switch {
	case s.failure != nil:
		return fmt.Errorf("%w: service %s is failed (%v): swap without --canary to retry it", ErrCanaryRefused, s.name, s.failure.reason)
	case s.current == nil:
		return fmt.Errorf("%w: no active generation to share new connections with: swap without --canary to start one", ErrCanaryRefused)
	case !s.serving():
		return fmt.Errorf("%w: the active generation %d has exited and is being replaced: swap without --canary instead", ErrCanaryRefused, s.current.ID)
	}
	return nil
}

// startCanary makes the ready generation g a canary with split sp.
func (s *Service) startCanary(g *Generation, sp Split) (api.SwapResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// The active generation may have died while g started: then its
	// replacement, waiting for this swap to end, wins.
	if err := s.canaryBesideLocked(); err != nil {
		return api.SwapResult{}, err
	}
	if err := s.router.SetSplit(g.ID, sp.Share, sp.Sticky); err != nil {
		// Some listeners may split already: take their share back.
		if rerr := s.router.SetSplit(g.ID, 0, false); rerr != nil {
			s.log.Error("undo a failed split", "generation", g.ID, "err", rerr)
		}
		return api.SwapResult{}, fmt.Errorf("split new connections to generation %d: %w", g.ID, err)
	}
	if err := s.move(g, api.StateCanary); err != nil {
		return api.SwapResult{}, err
	}
	s.canary, s.split = g, sp
	res := api.SwapResult{Service: s.name, Generation: g.ID, PID: g.pid,
		StartToReady:  g.ready.Sub(g.started).Seconds(),
		ReadyToActive: g.active.Sub(g.ready).Seconds(),
		Canary:        s.canaryResultLocked()}
	if s.current != nil {
		res.Previous = s.current.ID
	}
	s.observer.PhaseDone(s.name, api.PhaseStartToReady, g.ready.Sub(g.started))
	s.log.Info("canary receiving new connections", "generation", g.ID, "pid", g.pid,
		"share", sp.Share, "sticky", sp.Sticky, "active", res.Previous)
	return res, nil
}

func (s *Service) canaryResultLocked() *api.CanaryResult {
	r := &api.CanaryResult{Service: s.name, Generation: s.canary.ID, Weight: s.split.Share, Sticky: s.split.Sticky}
	if s.current != nil {
		r.Active = s.current.ID
	}
	return r
}

// SetCanaryShare changes the share of new connections the canary
// receives, from 0 to 1: one map update per listener.
func (s *Service) SetCanaryShare(share float64) (api.CanaryResult, error) {
	if share < 0 || share > 1 {
		return api.CanaryResult{}, fmt.Errorf("%w: a canary's share must be from 0%% to 100%%, not %g%%", ErrCanaryRefused, share*100)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.canary == nil {
		return api.CanaryResult{}, ErrNoCanary
	}
	if err := s.router.SetSplit(s.canary.ID, share, s.split.Sticky); err != nil {
		return api.CanaryResult{}, fmt.Errorf("change the share of canary %d: %w", s.canary.ID, err)
	}
	s.split.Share = share
	s.log.Info("canary share changed", "generation", s.canary.ID, "share", share)
	return *s.canaryResultLocked(), nil
}

// Promote makes the canary the active generation, in one map update per
// listener; the generation it replaces drains, or waits in standby when
// the service has probation.
func (s *Service) Promote() (api.SwapResult, error) {
	res, err := s.promoteCanary()
	if err == nil {
		s.persist()
	}
	return res, err
}

func (s *Service) promoteCanary() (api.SwapResult, error) {
	if !s.swapMu.TryLock() {
		return api.SwapResult{}, ErrSwapInProgress
	}
	defer s.swapMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.canary
	if c == nil {
		return api.SwapResult{}, ErrNoCanary
	}
	if err := s.router.Promote(c.ID); err != nil {
		// Steering may have moved on some listeners: put the split back.
		if rerr := s.router.SetSplit(c.ID, s.split.Share, s.split.Sticky); rerr != nil {
			s.log.Error("promote: restore the split", "generation", c.ID, "err", rerr)
		}
		if s.current != nil {
			if aerr := s.router.Activate(s.current.ID); aerr != nil {
				s.log.Error("promote: restore steering", "generation", s.current.ID, "err", aerr)
			}
		}
		return api.SwapResult{}, fmt.Errorf("promote generation %d: %w", c.ID, err)
	}
	s.canary = nil
	s.log.Info("canary promoted", "generation", c.ID)
	res, err := s.promoteLocked(c)
	s.observer.SwapDone(s.name, "ok")
	return res, err
}

// rollbackCanaryLocked sends no new connection to the canary any more
// and drains it; the active generation never stopped. Callers hold s.mu
// and have checked that s.canary is set.
func (s *Service) rollbackCanaryLocked(reason string) (api.SwapResult, error) {
	c := s.canary
	if err := s.router.SetSplit(c.ID, 0, false); err != nil {
		return api.SwapResult{}, fmt.Errorf("roll back canary %d: %w", c.ID, err)
	}
	s.canary, s.split = nil, Split{}
	s.observer.SwapDone(s.name, "rolled_back")
	res := api.SwapResult{Service: s.name, Previous: c.ID}
	if s.current != nil {
		res.Generation, res.PID = s.current.ID, s.current.pid
	}
	s.log.Warn("canary rolled back", "generation", c.ID, "reason", reason, "active", res.Generation)
	return res, s.retire(c)
}

// healthSpec is the health check of cfg for package health.
func healthSpec(cfg *config.ServiceConfig) health.Spec {
	h := cfg.Health
	sp := health.Spec{Interval: h.Interval.Std(), Timeout: h.Timeout.Std(), Healthy: h.Healthy, Unhealthy: h.Unhealthy}
	if !h.TCP {
		sp.HTTPPath = h.HTTP
		if _, hostport, err := config.ParseAddress(cfg.Listeners[cfg.HealthListener()].Address); err == nil {
			sp.Host = hostport
		}
	}
	return sp
}

// checker returns the health checker of generation g, or nil when cfg has
// no health check.
func (s *Service) checker(cfg *config.ServiceConfig, g *Generation) (*health.Checker, error) {
	if cfg.Health == nil {
		return nil, nil
	}
	i := cfg.HealthListener()
	return health.NewChecker(healthSpec(cfg), func(ctx context.Context) (net.Conn, error) {
		return s.router.DialProbe(ctx, g.ID, i)
	})
}

// awaitHealthy checks g through its own socket until the health check
// passes healthy times in a row, before g receives any client connection.
// It gives up at deadline, when g exits, the caller gives up or the
// service stops. In fdpass mode g has no socket of its own: it is checked
// once active, during probation.
func (s *Service) awaitHealthy(ctx context.Context, cfg *config.ServiceConfig, g *Generation, deadline time.Time) error {
	c, err := s.checker(cfg, g)
	if c == nil || err != nil {
		return err
	}
	if serviceMode(cfg, s.mode) != api.ModeEBPF {
		return nil
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	go func() {
		select {
		case <-g.proc.Done():
		case <-s.stopCh:
		case <-ctx.Done():
		}
		cancel()
	}()
	err = c.WaitHealthy(ctx)
	select {
	case <-g.proc.Done():
		return fmt.Errorf("exited before it was healthy: %s%s", g.proc.ExitStatus(), stderrTail(g.proc))
	case <-s.stopCh:
		return ErrStopped
	default:
	}
	if err == nil {
		s.log.Info("generation healthy", "generation", g.ID)
		return nil
	}
	if time.Now().Before(deadline) {
		return fmt.Errorf("swap abandoned before it was healthy: %w", err)
	}
	return fmt.Errorf("not healthy within ready_timeout %s: %w", cfg.ReadyTimeout.Std(), err)
}

// watchHealth checks g while it takes traffic, as a canary or as the
// active generation, until it drains or exits. A run of unhealthy failed
// checks rolls back a canary, or an active generation on probation; an
// active generation with nothing to roll back to is only logged.
func (s *Service) watchHealth(cfg *config.ServiceConfig, g *Generation) {
	c, err := s.checker(cfg, g)
	if c == nil {
		if err != nil {
			s.log.Error("health check", "generation", g.ID, "err", err)
		}
		return
	}
	s.goroutines.Add(1)
	go func() {
		defer s.goroutines.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-g.proc.Done():
			case <-g.drain:
			case <-s.stopCh:
			}
			cancel()
		}()
		for ctx.Err() == nil {
			err := c.Watch(ctx)
			if ctx.Err() != nil {
				return
			}
			s.unhealthy(g, err)
		}
	}()
}

// unhealthy acts on a generation that failed its health check unhealthy
// times in a row.
func (s *Service) unhealthy(g *Generation, reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.stopped:
	case s.canary == g:
		if _, err := s.rollbackCanaryLocked("unhealthy: " + reason.Error()); err != nil {
			s.log.Error("automatic rollback of an unhealthy canary", "generation", g.ID, "err", err)
		}
	case s.current == g && s.standby != nil:
		s.log.Error("active generation unhealthy during probation; rolling back", "generation", g.ID, "reason", reason)
		if err := s.rollbackLocked(); err != nil {
			s.log.Error("automatic rollback", "err", err)
		}
	default:
		s.log.Warn("generation unhealthy; nothing to roll back to", "generation", g.ID, "state", g.state, "reason", reason)
	}
}
