package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/handoffd/handoffd/api"
)

// One service's trouble never stops handoffd or another service. A
// service that nothing serves (its active generation died, its first
// start failed, its re-adoption found nothing to take over) gets
// generations started by replace until one is active and runs. While
// the starts fail, the service is failed: status and the metrics say so
// with the last reason, and replace waits longer after each failure
// (retryBackoff), until a start succeeds, a swap by hand does, a config
// reload changes the service (which retries at once), or it is stopped.
//
// A failed service takes no connection into a queue that nobody may
// serve for minutes: handoffd closes its copies of the listening sockets
// of the generations that no longer run, and the router's shared ones
// (Router.Release), so that the kernel refuses new connections. A start
// makes them again; what arrives while it starts waits in the new
// generation's queue and is served once it is active. While the first
// replacement of a crashed active generation runs, its sockets are still
// held: what waits there is migrated to the replacement.

// failure is why a service is failed.
type failure struct {
	reason error
	// since is when the service became failed.
	since time.Time
	// attempts counts the failed starts since the service last served;
	// step the ones since the backoff last began again (a reload).
	attempts, step int
	// next is when replace tries again.
	next time.Time
}

// retryBackoff is how long replace waits before the next start after
// failed ones: first after the first failure, twice as long after each
// next one, at most max.
type retryBackoff struct {
	first, max time.Duration
}

// defaultBackoff: a second, doubling, to five minutes.
var defaultBackoff = retryBackoff{first: time.Second, max: 5 * time.Minute}

// delay is the wait after the step-th failed start in a row (from 1).
func (b retryBackoff) delay(step int) time.Duration {
	d := b.first
	for i := 1; i < step && d < b.max; i++ {
		d *= 2
	}
	return min(d, b.max)
}

// failedLocked records that a start failed with err while no generation
// serves: the service is failed, replace retries after the backoff, and
// no socket of a generation that no longer runs takes new connections.
// Callers hold s.mu.
func (s *Service) failedLocked(err error) {
	now := time.Now()
	f := s.failure
	if f == nil {
		f = &failure{since: now}
		s.failure = f
	}
	f.reason = err
	f.attempts++
	f.step++
	wait := s.retry.delay(f.step)
	f.next = now.Add(wait)
	s.releaseSockets()
	s.log.Error("service failed: no generation serves it; retrying", "err", err, "attempt", f.attempts, "retry_in", wait)
	s.startReplacing()
	s.checkLocked()
}

// releaseSockets closes handoffd's copies of the listening sockets of
// generations that no longer run, and the router's own. Callers hold
// s.mu.
func (s *Service) releaseSockets() {
	for _, g := range s.gens {
		if !g.state.Live() {
			closeFiles(g.files)
			g.files = nil
		}
	}
	if err := s.router.Release(); err != nil {
		s.log.Error("close the listening sockets of a failed service", "err", err)
	}
}

// recoveredLocked notes that g, now the current generation, serves: the
// service is failed no more. Callers hold s.mu.
func (s *Service) recoveredLocked(g *Generation) {
	if s.failure == nil {
		return
	}
	s.log.Info("service serves again", "generation", g.ID, "failed_for", time.Since(s.failure.since).Round(time.Millisecond),
		"failed_starts", s.failure.attempts)
	s.failure = nil
}

// retryAt once makes replace try again now, with the backoff from its
// start: the service's config changed. Callers hold s.mu.
func (s *Service) retryAtOnce() {
	if s.failure == nil {
		return
	}
	s.failure.step = 0
	s.failure.next = time.Now()
	select {
	case s.retryNow <- struct{}{}:
	default:
	}
}

// startReplacing starts replace unless it runs already. Callers hold s.mu.
func (s *Service) startReplacing() {
	if s.replacing || s.stopped {
		return
	}
	s.replacing = true
	s.goroutines.Add(1)
	go s.replace()
}

// replace starts new generations until one is active and runs, and the
// service is failed no more. It waits out a swap that is under way
// (which may fail, or bring a generation that dies too), and after each
// failed start the backoff (see failedLocked). handoffd still holds the
// sockets of a generation that just died, so new connections wait in
// their queues and move to the first replacement.
func (s *Service) replace() {
	defer s.goroutines.Done()
	if s.begin != nil {
		select {
		case <-s.begin:
		case <-s.stopCh:
		}
	}
	for {
		// The flag is cleared under the lock that saw a generation
		// serving: a crash after that point finds it clear and starts
		// another replace.
		s.mu.Lock()
		done := s.stopped || s.serving() && s.failure == nil
		var wait time.Duration
		if s.failure != nil {
			wait = time.Until(s.failure.next)
		}
		if done {
			s.replacing = false
		}
		s.mu.Unlock()
		if done {
			if s.testHookReplaced != nil {
				s.testHookReplaced()
			}
			return
		}
		if wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-s.stopCh:
			case <-s.retryNow:
			case <-timer.C:
			}
			timer.Stop()
			continue // a swap by hand may have served meanwhile
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-s.stopCh:
			case <-ctx.Done():
			}
			cancel()
		}()
		_, err := s.Swap(ctx)
		cancel()
		switch {
		case err == nil, errors.Is(err, ErrStopped):
			// The check above ends it, unless the new one died already.
		case errors.Is(err, ErrSwapInProgress):
			select { // see how that swap ends
			case <-s.stopCh:
			case <-time.After(20 * time.Millisecond):
			}
		default:
			s.mu.Lock()
			if s.failure == nil && !s.serving() && !s.stopped {
				// Refused before it started anything (a canary that
				// runs): back off all the same.
				s.failedLocked(err)
			}
			s.mu.Unlock()
		}
	}
}

// start makes the service serve once handoffd runs: it starts its first
// generation, or, after a re-adoption that left nothing serving, the
// next one, and waits for it (ctx, ready_timeout). It returns that
// start's error, or the re-adoption's: the service is then failed and
// retried in the background (replace).
func (s *Service) start(ctx context.Context) error {
	s.mu.Lock()
	if s.begin != nil {
		s.beginOnce.Do(func() { close(s.begin) })
	}
	if err := s.adoptErr; err != nil && !s.stopped {
		// Its generation may still serve; a replacement takes over.
		s.adoptErr = nil
		now := time.Now()
		s.failure = &failure{reason: err, since: now, next: now}
		s.startReplacing()
		s.mu.Unlock()
		return err
	}
	if s.stopped || s.serving() || s.replacing {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	_, err := s.Swap(ctx)
	return err
}

// state is the service's own state for status. Callers hold s.mu.
func (s *Service) state() api.ServiceState {
	switch {
	case s.stopped:
		return api.ServiceStopped
	case s.failure != nil:
		return api.ServiceFailed
	case s.serving():
		return api.ServiceRunning
	}
	return api.ServiceStarting
}

// failureStatus is s.failure for status. Callers hold s.mu.
func (s *Service) failureStatus() *api.ServiceFailure {
	f := s.failure
	if f == nil || s.stopped {
		return nil
	}
	next := f.next
	return &api.ServiceFailure{Reason: f.reason.Error(), Since: f.since, Attempts: f.attempts, NextRetry: &next}
}

// checkLocked records the broken invariants of what the service holds:
// a socket that no running generation accepts from is held only while
// the first replacement of the generation that died is under way; a
// failed service is being retried, and runs no canary. Callers hold s.mu.
func (s *Service) checkLocked() {
	for _, g := range s.gens {
		if !g.state.Live() && len(g.files) > 0 && (g != s.current || s.failure != nil) {
			s.invariant(fmt.Errorf("generation %d (%s) has exited, and handoffd still holds its listening sockets", g.ID, g.state))
		}
	}
	if s.failure != nil && !s.replacing && !s.stopped {
		s.invariant(errors.New("the service is failed and nothing retries it"))
	}
	if s.canary != nil && s.failure != nil {
		s.invariant(fmt.Errorf("canary %d runs in a failed service", s.canary.ID))
	}
}
