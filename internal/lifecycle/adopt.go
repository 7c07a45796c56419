package lifecycle

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
)

// A handoffd that restarts (after SIGTERM, a crash or SIGKILL) finds the
// generations its predecessor left running in StateFile and takes them
// over: the data path never depended on it (steering is pinned in the
// kernel, and each generation holds its own listener), so re-adopting is
// bookkeeping: a pidfd to watch and signal each process, handoffd's own
// copies of the active generation's listening sockets (pidfd_getfd), and
// the pinned steering maps. Each generation's NOTIFY_SOCKET is bound
// again, at the same address, and a generation whose state channel died
// with the previous handoffd sends a new one on it
// (stateproto.NotifyChannel; see attachChannel).

// adopt takes over the generations of ss that still run. The router must
// have been built for adopting. A generation that was still starting when
// the previous handoffd died is stopped: it never was active.
func (s *Service) adopt(ss savedService) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastID = ss.LastID
	for _, sg := range ss.Generations {
		current := sg.ID == ss.Current && sg.State == api.StateActive
		var listeners []config.ListenerConfig
		if current {
			listeners = s.cfg.Listeners
		}
		p, files, err := s.launcher.Adopt(s.name, sg.ID, sg.PID, sg.StartTicks, listeners)
		if errors.Is(err, ErrGone) {
			s.log.Warn("saved generation is gone", "generation", sg.ID, "pid", sg.PID, "err", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("re-adopt generation %d: %w", sg.ID, err)
		}
		g := &Generation{ID: sg.ID, state: sg.State, pid: sg.PID, proc: p, startTicks: sg.StartTicks,
			started: sg.Started, ready: sg.Ready, active: sg.Active, draining: sg.Draining, drain: make(chan struct{}),
			reloads: sg.Reloads}
		switch {
		case g.state == api.StateStarting || g.state == api.StateReady:
			p.Signal(syscall.SIGKILL)
			g.state, g.exit = api.StateFailed, "handoffd restarted before it was active"
			// Bounded: its sockets go once it is gone, and a shared one
			// could not be bound again while it holds it.
			select {
			case <-p.Done():
			case <-time.After(2 * time.Second):
			}
		case g.state == api.StateDraining:
			close(g.drain) // drain_timeout counts again from now
		case current:
			if err := s.router.Adopt(g.ID, files); err != nil {
				closeFiles(files)
				return fmt.Errorf("re-adopt generation %d: %w", g.ID, err)
			}
			g.files = files
			s.current = g
		case g.state == api.StateCanary:
			// Its health watch died with the old handoffd, and its
			// share with it: it is rolled back below.
			s.canary = g
		case sg.ID == ss.Standby && g.state == api.StateStandby:
			// Its probation timer died with the old handoffd: no
			// rollback window is left, so it drains.
			s.standby = g
		}
		s.gens = append(s.gens, g)
		s.log.Info("generation re-adopted", "generation", g.ID, "pid", g.pid, "state", g.state)
		if r, ok := p.(Renotifier); ok && g.state.Live() {
			// Its notices wait for s.mu: they come once adopt is done.
			if err := r.Renotify(func(n Notice) { s.notice(g, n) }); err != nil {
				s.log.Warn("re-adopted generation: no NOTIFY_SOCKET: it can neither store fds nor hand over its state", "generation", g.ID, "err", err)
			}
		}
	}
	s.readoptStore(ss.FDStore)
	if s.canary != nil {
		if _, err := s.rollbackCanaryLocked("handoffd restarted"); err != nil {
			return err
		}
	}
	if s.standby != nil {
		if err := s.retire(s.standby); err != nil {
			return err
		}
		s.standby = nil
	}
	for _, g := range s.gens {
		if g.state.Live() {
			s.goroutines.Add(1)
			go s.awaitExit(g)
		}
	}
	if s.current != nil {
		s.watchHealth(s.cfg, s.current)
	}
	return nil
}

// readoptStore finds the files of the fd store again: every generation
// since they were stored got them, so a live one most likely still holds
// them (the active generation is searched first). One that none holds
// any more is lost. Callers hold s.mu.
func (s *Service) readoptStore(saved []savedFD) {
	var gens []*Generation
	if s.current != nil {
		gens = append(gens, s.current)
	}
	for _, g := range s.gens {
		if g != s.current {
			gens = append(gens, g)
		}
	}
	for _, sfd := range saved {
		var found *os.File
		for _, g := range gens {
			finder, ok := g.proc.(FileFinder)
			if !ok || !g.state.Live() {
				continue
			}
			f, err := finder.FindFile(sfd.Dev, sfd.Ino)
			if err == nil {
				found = f
				break
			}
			if !errors.Is(err, ErrGone) {
				s.log.Warn("fd store: search a generation's fds", "generation", g.ID, "err", err)
			}
		}
		if found == nil {
			s.log.Warn("fd store: stored fd lost: no live generation holds it any more", "name", sfd.Name, "dev", sfd.Dev, "ino", sfd.Ino)
			continue
		}
		s.stored = append(s.stored, storedFD{name: sfd.Name, file: found, dev: sfd.Dev, ino: sfd.Ino})
	}
	if len(saved) > 0 {
		s.log.Info("fd store: re-adopted", "fds", len(s.stored), "lost", len(saved)-len(s.stored))
	}
}

// hasCurrent reports whether a generation receives the new connections.
func (s *Service) hasCurrent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current != nil
}
