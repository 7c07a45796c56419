package kernel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Pidfd is a process file descriptor: a handle on one process that a
// reused pid never reaches. Its methods are not safe for use concurrent
// with Close.
type Pidfd struct {
	fd  int
	pid int
}

// OpenPidfd returns a pidfd of process pid (pidfd_open, Linux 5.3).
func OpenPidfd(pid int) (*Pidfd, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open of pid %d: %w", pid, err)
	}
	unix.CloseOnExec(fd)
	return &Pidfd{fd: fd, pid: pid}, nil
}

// soPeerPidfd is SO_PEERPIDFD (Linux 6.5): a pidfd of the peer as it was
// at connect, immune to pid reuse.
const soPeerPidfd = 77

// PeerPidfd returns a pidfd of the peer of c, whose SO_PEERCRED pid is
// pid: SO_PEERPIDFD where the kernel has it, else pidfd_open of pid.
func PeerPidfd(c *net.UnixConn, pid int) (*Pidfd, error) {
	fd, opErr := -1, error(nil)
	if err := control(c, func(s int) { fd, opErr = unix.GetsockoptInt(s, unix.SOL_SOCKET, soPeerPidfd) }); err != nil {
		return nil, err
	}
	if opErr == nil {
		unix.CloseOnExec(fd)
		return &Pidfd{fd: fd, pid: pid}, nil
	}
	return OpenPidfd(pid)
}

// Pid returns the pid the pidfd was opened for.
func (p *Pidfd) Pid() int { return p.pid }

// Signal sends sig to the process (pidfd_send_signal); a process that has
// exited already is no error.
func (p *Pidfd) Signal(sig syscall.Signal) error {
	err := unix.PidfdSendSignal(p.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("signal pid %d through its pidfd: %w", p.pid, err)
	}
	return nil
}

// Wait blocks until the process has exited: the pidfd turns readable.
func (p *Pidfd) Wait() error {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if !errors.Is(err, unix.EINTR) {
			if err != nil {
				return fmt.Errorf("wait for pid %d: %w", p.pid, err)
			}
			return nil
		}
	}
}

// Exited reports whether the process has exited, without waiting: its
// pidfd turns readable then, also while the process is a zombie that
// its parent has not reaped (its fds are closed by then).
func (p *Pidfd) Exited() (bool, error) {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll pidfd of pid %d: %w", p.pid, err)
		}
		return n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0, nil
	}
}

// GetFD copies the process's fd target into this process (pidfd_getfd,
// Linux 5.6; needs PTRACE_MODE_ATTACH_REALCREDS over the process). The
// copy is close-on-exec.
func (p *Pidfd) GetFD(target int) (*os.File, error) {
	fd, err := unix.PidfdGetfd(p.fd, target, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd of fd %d of pid %d: %w", target, p.pid, err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("pid %d fd %d", p.pid, target)), nil
}

// IsBadFD reports whether err says that the fd asked for is not open
// (anymore) in the process.
func IsBadFD(err error) bool { return errors.Is(err, unix.EBADF) }

// Close releases the pidfd.
func (p *Pidfd) Close() error { return unix.Close(p.fd) }
