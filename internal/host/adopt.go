package host

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

// Adopt implements lifecycle.Launcher: a pidfd watches and signals the
// process, and pidfd_getfd copies its files (PidfdProcess.FindListeners,
// FindFiles). The process's stderr file, if it has one, is followed
// again; its NOTIFY_SOCKET is bound again by Renotify (see
// adoptedProcess). A process that has exited is gone, also while it is
// a zombie that nobody reaped (its parent, handoffd, died; an init that
// does not reap leaves it so): its fds are closed.
func (l *ExecLauncher) Adopt(service string, gen, pid int, startTicks uint64) (lifecycle.Process, error) {
	pidfd, err := kernel.OpenPidfd(pid)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", lifecycle.ErrGone, err)
	}
	// Checked after pidfd_open: the pidfd now pins this very process.
	if exited, err := pidfd.Exited(); err != nil || exited {
		pidfd.Close()
		return nil, fmt.Errorf("%w: pid %d has exited (not reaped yet)%s", lifecycle.ErrGone, pid, errSuffix(err))
	}
	if t := kernel.StartTicks(pid); t == 0 || t != startTicks {
		pidfd.Close()
		return nil, fmt.Errorf("%w: pid %d belongs to another process now", lifecycle.ErrGone, pid)
	}
	pp := NewPidfdProcess(pidfd)
	pp.SetReady()
	p := newAdoptedProcess(pp, notifyAddrs(l.NotifyDir, service, gen))
	l.resume(service, gen, p.Done())
	return p, nil
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}

// StartTicks implements lifecycle.Launcher.
func (l *ExecLauncher) StartTicks(pid int) uint64 { return kernel.StartTicks(pid) }

// FindListeners implements lifecycle.FileFinder.
func (p *PidfdProcess) FindListeners(listeners []config.ListenerConfig) ([]*os.File, error) {
	return listenerFiles(p, listeners)
}

// listenerFiles copies, with pidfd_getfd, the listening sockets of p that
// match listeners, in their order.
func listenerFiles(p *PidfdProcess, listeners []config.ListenerConfig) ([]*os.File, error) {
	binds := make([]bindAddr, len(listeners))
	for i, l := range listeners {
		b, err := listenerBindAddr(l)
		if err != nil {
			return nil, err
		}
		binds[i] = b
	}
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
		if i := matchListener(f, binds); i >= 0 && files[i] == nil {
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

// bindAddr is where handoffd binds a listener's socket: a unix path, or a
// TCP (or, udp, UDP) port on one of ips.
type bindAddr struct {
	path string
	port int
	ips  []net.IP
	udp  bool
}

// listenerBindAddr returns where kernel.ListenTCP (or net.ListenUnix)
// binds l. An empty host is the unspecified address of the family
// ListenTCP picks for it: IPv6 for tcp6, else IPv4. A name may be bound to
// any of its addresses in the listener's network, since the name may
// resolve in another order now than when the socket was made.
func listenerBindAddr(l config.ListenerConfig) (bindAddr, error) {
	network, hostport, err := config.ParseAddress(l.Address)
	if err != nil {
		return bindAddr{}, err
	}
	if network == "unix" {
		return bindAddr{path: hostport}, nil
	}
	// kernel.ListenUDP picks the family as ListenTCP does.
	udp := strings.HasPrefix(network, "udp")
	network = strings.Replace(network, "udp", "tcp", 1)
	b, err := ipBindAddr(l, network, hostport)
	b.udp = udp
	return b, err
}

func ipBindAddr(l config.ListenerConfig, network, hostport string) (bindAddr, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return bindAddr{}, fmt.Errorf("listener %s (%s): %w", l.Name, l.Address, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return bindAddr{}, fmt.Errorf("listener %s (%s): port %q: %w", l.Name, l.Address, portStr, err)
	}
	switch {
	case host == "" && network == "tcp6":
		return bindAddr{port: port, ips: []net.IP{net.IPv6unspecified}}, nil
	case host == "":
		return bindAddr{port: port, ips: []net.IP{net.IPv4zero}}, nil
	}
	addrs, err := net.DefaultResolver.LookupIPAddr(context.Background(), host)
	if err != nil {
		return bindAddr{}, fmt.Errorf("resolve listener %s (%s): %w", l.Name, l.Address, err)
	}
	b := bindAddr{port: port}
	for _, a := range addrs {
		if v4 := a.IP.To4() != nil; network == "tcp4" && !v4 || network == "tcp6" && v4 {
			continue
		}
		b.ips = append(b.ips, a.IP)
	}
	if len(b.ips) == 0 {
		return bindAddr{}, fmt.Errorf("resolve listener %s (%s): no %s address for %s", l.Name, l.Address, network, host)
	}
	return b, nil
}

// matchListener returns the index of the bind address that the listening
// socket f is bound to, or -1.
func matchListener(f *os.File, binds []bindAddr) int {
	bound, err := kernel.ListeningAddr(f)
	if err != nil {
		// Not listening: a QUIC listener's UDP socket, or no listener.
		if bound, err = kernel.BoundUDPAddr(f); err != nil {
			return -1
		}
	}
	for i, b := range binds {
		switch bound := bound.(type) {
		case *net.UnixAddr:
			if b.path != "" && bound.Name == b.path {
				return i
			}
		case *net.TCPAddr:
			if b.path == "" && !b.udp && bound.Port == b.port && slices.ContainsFunc(b.ips, bound.IP.Equal) {
				return i
			}
		case *net.UDPAddr:
			if b.udp && bound.Port == b.port && slices.ContainsFunc(b.ips, bound.IP.Equal) {
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
