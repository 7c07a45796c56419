package supervisor

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// listenReuseport creates a listening TCP socket with SO_REUSEPORT set, so
// that the sockets of every generation of a listener form one reuseport
// group. handoffd creates them all itself: the kernel admits a socket to a
// group only when it has the same owner as the others.
func listenReuseport(l ListenerConfig) (*os.File, error) {
	return listenTCP(l, true)
}

// listenShared creates the one listening socket that every generation of
// a listener shares in fdpass mode. TCP sockets get no SO_REUSEPORT, so
// no other process can join their queue; a unix socket replaces a stale
// file at its path.
func listenShared(l ListenerConfig) (*os.File, error) {
	network, path, err := ParseAddress(l.Address)
	if err != nil {
		return nil, err
	}
	if network != "unix" {
		return listenTCP(l, false)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", l.Address, err)
	}
	// The file stays while any generation may still accept on it; close
	// removes it.
	ln.SetUnlinkOnClose(false)
	defer ln.Close()
	f, err := ln.File()
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", l.Address, err)
	}
	return f, nil
}

func listenTCP(l ListenerConfig, reuseport bool) (*os.File, error) {
	network, hostport, err := ParseAddress(l.Address)
	if err != nil {
		return nil, err
	}
	addr, err := net.ResolveTCPAddr(network, hostport)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", l.Address, err)
	}
	domain, sa := unix.AF_INET, unix.Sockaddr(nil)
	if ip4 := addr.IP.To4(); ip4 != nil || (addr.IP == nil && network != "tcp6") {
		s := &unix.SockaddrInet4{Port: addr.Port}
		copy(s.Addr[:], ip4)
		sa = s
	} else {
		domain = unix.AF_INET6
		s := &unix.SockaddrInet6{Port: addr.Port}
		copy(s.Addr[:], addr.IP.To16())
		sa = s
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, fmt.Errorf("socket for %s: %w", l.Address, err)
	}
	f := os.NewFile(uintptr(fd), l.Name)
	if err := setupListener(fd, reuseport, domain == unix.AF_INET6 && network == "tcp6", sa, l.Backlog); err != nil {
		f.Close()
		return nil, fmt.Errorf("listen on %s: %w", l.Address, err)
	}
	return f, nil
}

func setupListener(fd int, reuseport, v6only bool, sa unix.Sockaddr, backlog int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("set SO_REUSEADDR: %w", err)
	}
	if reuseport {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("set SO_REUSEPORT: %w", err)
		}
	}
	if v6only {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fmt.Errorf("set IPV6_V6ONLY: %w", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return nil
}
