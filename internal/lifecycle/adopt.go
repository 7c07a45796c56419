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
// the previous handoffd died is stopped: it never was active. What reads
// the processes' fds (the active generation's listeners, the fd store)
// runs before the service's lock is taken.
func (s *Service) adopt(ss savedService) error {
	type adoptee struct {
		sg savedGeneration
		p  Process
	}
	var live []adoptee
	current := -1
	for _, sg := range ss.Generations {
		p, err := s.launcher.Adopt(s.name, sg.ID, sg.PID, sg.StartTicks)
		if errors.Is(err, ErrGone) {
			s.log.Warn("saved generation is gone", "generation", sg.ID, "pid", sg.PID, "err", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("re-adopt generation %d: %w", sg.ID, err)
		}
		if sg.ID == ss.Current && sg.State == api.StateActive {
			current = len(live)
		}
		live = append(live, adoptee{sg, p})
	}
	var files []*os.File
	procs := make([]Process, 0, len(live))
	if current >= 0 {
		f, err := findListeners(live[current].p, s.cfg.Listeners)
		if err != nil {
			return fmt.Errorf("re-adopt generation %d: %w", live[current].sg.ID, err)
		}
		files = f
		procs = append(procs, live[current].p)
	}
	for i, a := range live {
		if i != current {
			procs = append(procs, a.p)
		}
	}
	stored := s.findStored(ss.FDStore, procs)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastID = ss.LastID
	s.stored = stored
	for i, a := range live {
		sg, p := a.sg, a.p
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
		case i == current:
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

// findListeners returns copies of p's listening sockets for listeners.
func findListeners(p Process, listeners []config.ListenerConfig) ([]*os.File, error) {
	finder, ok := p.(FileFinder)
	if !ok {
		return nil, fmt.Errorf("the listening sockets of pid %d cannot be copied", p.Pid())
	}
	return finder.FindListeners(listeners)
}

// findStored finds the files of the saved fd store again in the fds of
// procs, searched in order, in one pass over each: every generation
// since they were stored got them, so a live one most likely still holds
// them (the active one is searched first). One that none holds any more
// is lost.
func (s *Service) findStored(saved []savedFD, procs []Process) []storedFD {
	if len(saved) == 0 {
		return nil
	}
	want := make(map[FileID]bool, len(saved))
	for _, sfd := range saved {
		want[FileID{sfd.Dev, sfd.Ino}] = true
	}
	found := make(map[FileID]*os.File, len(saved))
	for _, p := range procs {
		finder, ok := p.(FileFinder)
		if len(want) == 0 {
			break
		}
		if !ok {
			continue
		}
		files, err := finder.FindFiles(want)
		if err != nil && !errors.Is(err, ErrGone) {
			s.log.Warn("fd store: search a generation's fds", "pid", p.Pid(), "err", err)
		}
		for id, f := range files {
			if !want[id] {
				f.Close()
				continue
			}
			found[id] = f
			delete(want, id)
		}
	}
	var stored []storedFD
	for _, sfd := range saved {
		id := FileID{sfd.Dev, sfd.Ino}
		f, ok := found[id]
		if !ok {
			s.log.Warn("fd store: stored fd lost: no live generation holds it any more", "name", sfd.Name, "dev", sfd.Dev, "ino", sfd.Ino)
			continue
		}
		delete(found, id) // the store holds a file once
		stored = append(stored, storedFD{name: sfd.Name, file: f, dev: sfd.Dev, ino: sfd.Ino})
	}
	s.log.Info("fd store: re-adopted", "fds", len(stored), "lost", len(saved)-len(stored))
	return stored
}

// hasCurrent reports whether a generation receives the new connections.
func (s *Service) hasCurrent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current != nil
}
