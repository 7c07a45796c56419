package supervisor

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A handoffd that restarts (after SIGTERM, a crash or SIGKILL) finds the
// generations its predecessor left running in StateFile and takes them
// over: the data path never depended on it (steering is pinned in the
// kernel, and each generation holds its own listener), so re-adopting is
// bookkeeping: a pidfd to watch and signal each process, handoffd's own
// copies of the active generation's listening sockets (pidfd_getfd), and
// the pinned steering maps.

// adopt takes over the generations of ss that still run. The router must
// have been built for adopting. A generation that was still starting when
// the previous handoffd died is stopped: it never was active.
func (s *Service) adopt(ss savedService) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastID = ss.LastID
	for _, sg := range ss.Generations {
		p, err := openProcess(sg.PID, sg.StartTicks)
		if err != nil {
			s.log.Warn("saved generation is gone", "generation", sg.ID, "pid", sg.PID, "err", err)
			continue
		}
		g := &Generation{ID: sg.ID, state: sg.State, pid: sg.PID, proc: p, startTicks: sg.StartTicks,
			started: sg.Started, ready: sg.Ready, active: sg.Active, draining: sg.Draining, drain: make(chan struct{})}
		switch {
		case g.state == StateStarting || g.state == StateReady:
			p.Signal(syscall.SIGKILL)
			g.state, g.exit = StateFailed, "handoffd restarted before it was active"
		case g.state == StateDraining:
			close(g.drain) // drain_timeout counts again from now
		case sg.ID == ss.Current && g.state == StateActive:
			if err := s.adoptSockets(g, p); err != nil {
				return fmt.Errorf("re-adopt generation %d: %w", g.ID, err)
			}
			s.current = g
		case sg.ID == ss.Standby && g.state == StateStandby:
			// Its probation timer died with the old handoffd: no
			// rollback window is left, so it drains.
			s.standby = g
		}
		s.gens = append(s.gens, g)
		s.log.Info("generation re-adopted", "generation", g.ID, "pid", g.pid, "state", g.state)
	}
	if s.standby != nil {
		s.retire(s.standby)
		s.standby = nil
	}
	resume, _ := s.launcher.(interface {
		Resume(service string, gen int, done <-chan struct{})
	})
	for _, g := range s.gens {
		if g.state.Live() {
			s.watchers.Add(1)
			go s.watch(g)
			if resume != nil {
				resume.Resume(s.name, g.ID, g.proc.Done())
			}
		}
	}
	return nil
}

// adoptSockets gives handoffd its own copies of g's listening sockets again.
func (s *Service) adoptSockets(g *Generation, p *pidfdProcess) error {
	files, err := listenerFiles(g.pid, p, s.cfg.Listeners)
	if err != nil {
		return err
	}
	if err := s.router.adopt(g.ID, files); err != nil {
		closeAll(files)
		return err
	}
	g.files = files
	return nil
}

// openProcess returns a watched handle on pid if it is still the process
// that started at startTicks.
func openProcess(pid int, startTicks uint64) (*pidfdProcess, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open: %w", err)
	}
	// Checked after pidfd_open: the pidfd now pins this very process.
	if t := procStartTicks(pid); t == 0 || t != startTicks {
		unix.Close(pidfd)
		return nil, errors.New("the pid belongs to another process now")
	}
	unix.CloseOnExec(pidfd)
	p := newPidfdProcess(pid, pidfd)
	p.readyOnce.Do(func() { close(p.ready) })
	return p, nil
}

// listenerFiles copies, with pidfd_getfd, the listening sockets of process
// pid that match listeners, in their order.
func listenerFiles(pid int, p *pidfdProcess, listeners []ListenerConfig) ([]*os.File, error) {
	files := make([]*os.File, len(listeners))
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		target, convErr := strconv.Atoi(e.Name())
		if err != nil || convErr != nil || !strings.HasPrefix(link, "socket:") {
			continue
		}
		f, err := p.getfd(target)
		if errors.Is(err, unix.EBADF) {
			continue // a connection the process closed meanwhile
		}
		if err != nil {
			closeAll(files)
			return nil, err
		}
		if i := matchListener(f, listeners); i >= 0 && files[i] == nil {
			files[i] = f
		} else {
			f.Close()
		}
	}
	for i, f := range files {
		if f == nil {
			closeAll(files)
			return nil, fmt.Errorf("listener %s (%s) not found among the fds of pid %d", listeners[i].Name, listeners[i].Address, pid)
		}
	}
	return files, nil
}

// matchListener returns the index of the listener whose address the
// listening socket f is bound to, or -1.
func matchListener(f *os.File, listeners []ListenerConfig) int {
	fd := int(f.Fd())
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		return -1
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return -1
	}
	for i, l := range listeners {
		network, addr, err := ParseAddress(l.Address)
		if err != nil {
			continue
		}
		switch sa := sa.(type) {
		case *unix.SockaddrUnix:
			if network == "unix" && sa.Name == addr {
				return i
			}
		case *unix.SockaddrInet4:
			if a, err := net.ResolveTCPAddr(network, addr); err == nil && network != "unix" &&
				a.Port == sa.Port && a.IP.Equal(net.IP(sa.Addr[:])) {
				return i
			}
		case *unix.SockaddrInet6:
			if a, err := net.ResolveTCPAddr(network, addr); err == nil && network != "unix" &&
				a.Port == sa.Port && a.IP.Equal(net.IP(sa.Addr[:])) {
				return i
			}
		}
	}
	return -1
}

// hasCurrent reports whether a generation receives the new connections.
func (s *Service) hasCurrent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current != nil
}
