package host

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

// Adopt implements lifecycle.Launcher: a pidfd watches and signals the
// process, and pidfd_getfd copies its listening sockets. The process's
// stderr file, if it has one, is followed again.
func (l *ExecLauncher) Adopt(service string, gen, pid int, startTicks uint64, listeners []config.ListenerConfig) (lifecycle.Process, []*os.File, error) {
	pidfd, err := kernel.OpenPidfd(pid)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", lifecycle.ErrGone, err)
	}
	// Checked after pidfd_open: the pidfd now pins this very process.
	if t := kernel.StartTicks(pid); t == 0 || t != startTicks {
		pidfd.Close()
		return nil, nil, fmt.Errorf("%w: pid %d belongs to another process now", lifecycle.ErrGone, pid)
	}
	p := NewPidfdProcess(pidfd)
	p.SetReady()
	var files []*os.File
	if len(listeners) > 0 {
		if files, err = listenerFiles(p, listeners); err != nil {
			return nil, nil, err
		}
	}
	l.resume(service, gen, p.Done())
	return p, files, nil
}

// StartTicks implements lifecycle.Launcher.
func (l *ExecLauncher) StartTicks(pid int) uint64 { return kernel.StartTicks(pid) }

// listenerFiles copies, with pidfd_getfd, the listening sockets of p that
// match listeners, in their order.
func listenerFiles(p *PidfdProcess, listeners []config.ListenerConfig) ([]*os.File, error) {
	files := make([]*os.File, len(listeners))
	dir := fmt.Sprintf("/proc/%d/fd", p.Pid())
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
		if kernel.IsBadFD(err) {
			continue // a connection the process closed meanwhile
		}
		if err != nil {
			closeFiles(files)
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
			closeFiles(files)
			return nil, fmt.Errorf("listener %s (%s) not found among the fds of pid %d", listeners[i].Name, listeners[i].Address, p.Pid())
		}
	}
	return files, nil
}

// matchListener returns the index of the listener whose address the
// listening socket f is bound to, or -1.
func matchListener(f *os.File, listeners []config.ListenerConfig) int {
	bound, err := kernel.ListeningAddr(f)
	if err != nil {
		return -1
	}
	for i, l := range listeners {
		network, addr, err := config.ParseAddress(l.Address)
		if err != nil {
			continue
		}
		switch bound := bound.(type) {
		case *net.UnixAddr:
			if network == "unix" && bound.Name == addr {
				return i
			}
		case *net.TCPAddr:
			if a, err := net.ResolveTCPAddr(network, addr); err == nil && network != "unix" &&
				a.Port == bound.Port && a.IP.Equal(bound.IP) {
				return i
			}
		}
	}
	return -1
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}
