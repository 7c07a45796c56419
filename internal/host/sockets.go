package host

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/kernel"
)

// listenReuseport creates a listening TCP socket with SO_REUSEPORT set, so
// that the sockets of every generation of a listener form one reuseport
// group. handoffd creates them all itself: the kernel admits a socket to a
// group only when it has the same owner as the others.
func listenReuseport(l config.ListenerConfig) (*os.File, error) {
	return listenTCP(l, true)
}

// listenShared creates the one listening socket that every generation of
// a listener shares in fdpass mode. TCP sockets get no SO_REUSEPORT, so
// no other process can join their queue; a unix socket replaces a stale
// file at its path.
func listenShared(l config.ListenerConfig) (*os.File, error) {
	network, path, err := config.ParseAddress(l.Address)
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

func listenTCP(l config.ListenerConfig, reuseport bool) (*os.File, error) {
	network, hostport, err := config.ParseAddress(l.Address)
	if err != nil {
		return nil, err
	}
	f, err := kernel.ListenTCP(l.Name, network, hostport, reuseport, l.Backlog)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", l.Address, err)
	}
	return f, nil
}
