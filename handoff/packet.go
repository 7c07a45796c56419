package handoff

import (
	"fmt"
	"net"
	"os"

	"github.com/handoffd/handoffd/kernel"
)

// ListenPacket returns the UDP socket of the QUIC listener named name
// (protocol: quic), which handoffd made for this generation in the
// listener's steered group; package handoff/handoffquic serves QUIC on it.
// Like Listen, it takes an inherited socket once, by its name in
// LISTEN_FDNAMES; without handoffd it binds addr itself. The socket is
// not gated: datagrams wait in its buffer until the app reads them.
func ListenPacket(name, addr string) (*net.UDPConn, error) {
	inherited.once.Do(readInherited)
	inherited.mu.Lock()
	defer inherited.mu.Unlock()
	if inherited.err != nil {
		return nil, inherited.err
	}
	if !inherited.set {
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("handoff: listen %s on %s: %w", name, addr, err)
		}
		c, err := net.ListenUDP("udp", ua)
		if err != nil {
			return nil, fmt.Errorf("handoff: listen %s on %s: %w", name, addr, err)
		}
		return c, nil
	}
	fd, ok := inherited.fds[name]
	if !ok {
		return nil, fmt.Errorf("handoff: no inherited QUIC socket named %q (LISTEN_FDNAMES has %s)",
			name, describeNames(inherited.names))
	}
	if fd < 0 {
		return nil, fmt.Errorf("handoff: inherited socket %q was already taken", name)
	}
	if _, err := kernel.CheckUDP(fd); err != nil {
		return nil, fmt.Errorf("handoff: inherited socket %q (fd %d): %w", name, fd, err)
	}
	// net.FilePacketConn works on a dup: close ours, so that the socket
	// closes (and leaves its steering slot) when the app closes it.
	f := os.NewFile(uintptr(fd), "LISTEN_FDS:"+name)
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("handoff: inherited socket %q (fd %d): %w", name, fd, err)
	}
	inherited.fds[name] = -1
	c, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("handoff: inherited socket %q (fd %d) is a %T, not UDP", name, fd, pc)
	}
	return c, nil
}
