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
// have been built for adopting. It never fails as a whole: a generation
// that is gone (a zombie too) is dropped, and the active one shows as
// exited; a generation that was still starting when the previous
// handoffd died is stopped (it never was active); an active generation
// whose listeners cannot be found is kept but leaves the service to be
// replaced (adoptErr, which start turns into a failure). Start then
// starts what nothing serves.
//
// What reads the processes' fds (their listeners, the fd store) runs
// before the service's lock is taken.
func (s *Service) adopt(ss savedService) {
	type adoptee struct {
		sg savedGeneration
		p  Process
	}
	var live []adoptee
	current := -1
	var gone *savedGeneration
	for _, sg := range ss.Generations {
		isCurrent := sg.ID == ss.Current && sg.State == api.StateActive
		p, err := s.launcher.Adopt(s.name, sg.ID, sg.PID, sg.StartTicks)
		if err != nil {
			s.log.Warn("saved generation is gone", "generation", sg.ID, "pid", sg.PID, "state", sg.State, "err", err)
			if isCurrent {
				gone = &sg
			}
			continue
		}
		if isCurrent {
			current = len(live)
		}
		live = append(live, adoptee{sg, p})
	}

	// handoffd's copies of the active generation's listeners, as it
	// held them before it died.
	var files []*os.File
	var broken error
	if current >= 0 {
		a := live[current]
		var err error
		files, err = findListeners(a.p, s.cfg.Listeners)
		switch {
		case err == nil:
		case chanClosed(a.p.Done()):
			s.log.Warn("saved generation is gone", "generation", a.sg.ID, "pid", a.sg.PID, "state", a.sg.State, "err", err)
		default:
			broken = fmt.Errorf("re-adopt generation %d: %w", a.sg.ID, err)
		}
	}
	// A socket shared by every generation (fdpass) that another live one
	// still holds is taken over, with what waits in its queue, for the
	// next generation.
	var shared []*os.File
	sharedBy := 0
	if files == nil && serviceMode(s.cfg, s.mode) != api.ModeEBPF {
		for i, a := range live {
			if i == current {
				continue
			}
			if f, err := findListeners(a.p, s.cfg.Listeners); err == nil {
				shared, sharedBy = f, a.sg.ID
				s.log.Info("re-adopted the shared listening sockets from a generation that is not the active one", "generation", a.sg.ID)
				break
			}
		}
	}
	procs := make([]Process, 0, len(live))
	if current >= 0 {
		procs = append(procs, live[current].p)
	}
	for i, a := range live {
		if i != current {
			procs = append(procs, a.p)
		}
	}
	stored := s.findStored(ss.FDStore, procs)
	for _, a := range live {
		if a.sg.State == api.StateStarting || a.sg.State == api.StateReady {
			a.p.Signal(syscall.SIGKILL)
			// Bounded: its sockets go once it is gone, and a shared one
			// could not be bound again while it holds it.
			select {
			case <-a.p.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastID = ss.LastID
	s.stored = stored
	if gone != nil {
		s.noteGoneLocked(*gone)
	}
	if shared != nil {
		if err := s.router.Adopt(sharedBy, shared); err != nil {
			s.log.Error("re-adopt the shared listening sockets", "err", err)
		}
		closeFiles(shared)
	}
	for i, a := range live {
		sg, p := a.sg, a.p
		g := &Generation{ID: sg.ID, state: sg.State, pid: sg.PID, proc: p, startTicks: sg.StartTicks,
			started: sg.Started, ready: sg.Ready, active: sg.Active, draining: sg.Draining, drain: make(chan struct{}),
			reloads: sg.Reloads}
		switch {
		case g.state == api.StateStarting || g.state == api.StateReady:
			g.state, g.exit = api.StateFailed, "handoffd restarted before it was active"
		case g.state == api.StateDraining:
			close(g.drain) // drain_timeout counts again from now
			// It may have been recorded as retired just before steering
			// moved away from it, and handoffd died before it was told.
			g.signalled = sg.Signalled
			if !g.signalled {
				g.signalled = true
				s.stopSignal(g, s.cfg.StopSignal.Std())
			}
		case i == current:
			if files != nil {
				if err := s.router.Adopt(g.ID, files); err != nil {
					closeFiles(files)
					files = nil
					broken = fmt.Errorf("re-adopt generation %d: %w", g.ID, err)
				}
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
			s.log.Error("roll back the canary of the previous handoffd", "generation", s.canary.ID, "err", err)
			s.canary, s.split = nil, Split{}
		}
	}
	if s.standby != nil {
		s.invariant(s.retire(s.standby))
		s.standby = nil
	}
	for _, g := range s.gens {
		if g.state.Live() {
			s.goroutines.Add(1)
			go s.awaitExit(g)
		}
	}
	if broken != nil {
		s.adoptErr = broken
		s.log.Error("re-adoption failed: the service is replaced once handoffd runs", "err", broken)
	}
	if s.current != nil && s.adoptErr == nil {
		// Steering follows the state file, which a swap writes before
		// it moves steering: the previous handoffd may have died in
		// between, or before a promotion or a rollback it made was
		// written.
		if err := s.router.Activate(s.current.ID); err != nil {
			s.log.Error("steer new connections to the re-adopted generation", "generation", s.current.ID, "err", err)
		}
		s.watchHealth(s.cfg, s.current)
	}
}

// noteGone shows in status the active generation of ss, if it is saved,
// as exited while no handoffd ran: for a service none of whose saved
// generations runs any more, which is not re-adopted.
func (s *Service) noteGone(ss savedService) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sg := range ss.Generations {
		if sg.ID == ss.Current && sg.State == api.StateActive {
			s.noteGoneLocked(sg)
		}
	}
}

// noteGoneLocked adds sg, a saved generation that is gone, to the
// generations status shows, as exited. Callers hold s.mu.
func (s *Service) noteGoneLocked(sg savedGeneration) {
	s.gens = append(s.gens, &Generation{ID: sg.ID, state: api.StateExited, pid: sg.PID, startTicks: sg.StartTicks,
		started: sg.Started, ready: sg.Ready, active: sg.Active, exited: time.Now(), drain: make(chan struct{}),
		exit: "exited while handoffd was not running"})
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
