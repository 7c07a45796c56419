package supervisor

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// pidfdProcess is a generation's process that handoffd did not start (it
// joined from outside), or no longer has as a child (it was re-adopted
// after a restart): it is watched and signalled through a pidfd, so a
// reused pid is never hit.
type pidfdProcess struct {
	pid       int
	ready     chan struct{}
	readyOnce sync.Once
	done      chan struct{}

	mu    sync.Mutex
	pidfd int // -1 once the process exited
}

// newPidfdProcess takes pidfd over and watches it until the process
// exits. A generation that fails is sent SIGKILL, so the watch ends then too.
func newPidfdProcess(pid, pidfd int) *pidfdProcess {
	p := &pidfdProcess{pid: pid, pidfd: pidfd, ready: make(chan struct{}), done: make(chan struct{})}
	go p.wait()
	return p
}

func (p *pidfdProcess) Pid() int               { return p.pid }
func (p *pidfdProcess) Ready() <-chan struct{} { return p.ready }
func (p *pidfdProcess) Done() <-chan struct{}  { return p.done }

// ExitStatus is "exited": the process is not handoffd's child, so its
// status goes to its own parent.
func (p *pidfdProcess) ExitStatus() string {
	<-p.done
	return "exited"
}

func (p *pidfdProcess) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd < 0 {
		return nil
	}
	err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("signal pid %d through its pidfd: %w", p.pid, err)
	}
	return nil
}

// wait blocks in poll(2) until the pidfd is readable: the process exited.
func (p *pidfdProcess) wait() {
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	p.mu.Lock()
	unix.Close(p.pidfd)
	p.pidfd = -1
	p.mu.Unlock()
	close(p.done)
}

// getfd copies the process's fd target into handoffd (pidfd_getfd).
func (p *pidfdProcess) getfd(target int) (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd < 0 {
		return nil, errors.New("the process exited")
	}
	fd, err := unix.PidfdGetfd(p.pidfd, target, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd of fd %d of pid %d: %w", target, p.pid, err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("pid %d fd %d", p.pid, target)), nil
}
