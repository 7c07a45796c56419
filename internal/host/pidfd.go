package host

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

// PidfdProcess is a generation's process that handoffd did not start (it
// joined from outside), or no longer has as a child (it was re-adopted
// after a restart): it is watched and signalled through a pidfd, so a
// reused pid is never hit.
type PidfdProcess struct {
	pid       int
	ready     chan struct{}
	readyOnce sync.Once
	done      chan struct{}
	reloads   atomic.Bool

	mu    sync.Mutex
	pidfd *kernel.Pidfd // nil once the process exited
}

// NewPidfdProcess takes pidfd over and watches it until the process
// exits. A generation that fails is sent SIGKILL, so the watch ends then
// too.
func NewPidfdProcess(pidfd *kernel.Pidfd) *PidfdProcess {
	p := &PidfdProcess{pid: pidfd.Pid(), pidfd: pidfd, ready: make(chan struct{}), done: make(chan struct{})}
	go p.wait()
	return p
}

func (p *PidfdProcess) Pid() int               { return p.pid }
func (p *PidfdProcess) Ready() <-chan struct{} { return p.ready }
func (p *PidfdProcess) Done() <-chan struct{}  { return p.done }

// SetReady records that the process said READY=1.
func (p *PidfdProcess) SetReady() { p.readyOnce.Do(func() { close(p.ready) }) }

// SetReloads records that the process said HANDOFF_RELOAD=1.
func (p *PidfdProcess) SetReloads() { p.reloads.Store(true) }

// Reloads implements lifecycle.Process.
func (p *PidfdProcess) Reloads() bool { return p.reloads.Load() }

// ExitStatus is "exited": the process is not handoffd's child, so its
// status goes to its own parent.
func (p *PidfdProcess) ExitStatus() string {
	<-p.done
	return "exited"
}

func (p *PidfdProcess) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd == nil {
		return nil
	}
	return p.pidfd.Signal(sig)
}

// wait blocks until the process exited, then releases the pidfd.
func (p *PidfdProcess) wait() {
	p.pidfd.Wait()
	p.mu.Lock()
	p.pidfd.Close()
	p.pidfd = nil
	p.mu.Unlock()
	close(p.done)
}

// getfd copies the process's fd target into handoffd (pidfd_getfd).
func (p *PidfdProcess) getfd(target int) (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd == nil {
		return nil, fmt.Errorf("pid %d exited", p.pid)
	}
	return p.pidfd.GetFD(target)
}

// statFD stats the open file behind one entry of /proc/PID/fd (a
// variable, so that a test counts the calls).
var statFD = os.Stat

// FindFiles implements lifecycle.FileFinder: it reads the process's fds
// once, stats each (which follows the fd's link in /proc to the open
// file itself) and copies, with pidfd_getfd, the first fd of each file
// asked for.
func (p *PidfdProcess) FindFiles(want map[lifecycle.FileID]bool) (map[lifecycle.FileID]*os.File, error) {
	found := make(map[lifecycle.FileID]*os.File, len(want))
	dir := fmt.Sprintf("/proc/%d/fd", p.pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return found, fmt.Errorf("%w: %w", lifecycle.ErrGone, err)
	}
	for _, e := range ents {
		if len(found) == len(want) {
			break
		}
		target, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fi, err := statFD(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			continue
		}
		id := lifecycle.FileID{Dev: st.Dev, Ino: st.Ino}
		if !want[id] || found[id] != nil {
			continue
		}
		f, err := p.getfd(target)
		if kernel.IsBadFD(err) {
			continue // closed meanwhile
		}
		if err != nil {
			for _, f := range found {
				f.Close()
			}
			return map[lifecycle.FileID]*os.File{}, err
		}
		found[id] = f
	}
	return found, nil
}
