package loader

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/bpf"
)

// DialProbe connects to the listener at target as a health check of the
// generation in slot: the steering program knows the connection by its
// source address and port and sends it to the socket in slot, whatever the
// active slot and the split say, while every other connection is steered
// as before. When slot holds no socket the program drops the SYN instead
// of sending it to another generation, and the dial fails when ctx ends.
//
// target is the listener's address; an unspecified address (a wildcard
// listener) is dialed on loopback. The connection comes from target's
// address, so target must be an address of this host. The source stays
// known to the program until the returned connection is closed, which
// covers a handshake finished by a SYN cookie.
func (s *Steering) DialProbe(ctx context.Context, target netip.AddrPort, slot uint32) (net.Conn, error) {
	if s.probes == nil {
		return nil, fmt.Errorf("dial probe to %s: %w", target, ErrNoSplit)
	}
	if err := checkSlot(slot); err != nil {
		return nil, fmt.Errorf("dial probe to %s for slot %d: %w", target, slot, err)
	}
	addr := target.Addr().Unmap()
	switch {
	case addr.IsUnspecified() && addr.Is4():
		addr = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case addr.IsUnspecified():
		addr = netip.IPv6Loopback()
	}
	if !addr.IsValid() || addr.Zone() != "" {
		return nil, fmt.Errorf("dial probe to %s: want an IPv4 or IPv6 address without zone", target)
	}
	target = netip.AddrPortFrom(addr, target.Port())
	network := "tcp6"
	if addr.Is4() {
		network = "tcp4"
	}

	p := &probeSource{s: s}
	d := net.Dialer{ControlContext: func(_ context.Context, _, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = p.register(int(fd), addr, slot) }); cerr != nil {
			return cerr
		}
		return err
	}}
	d.SetMultipathTCP(false)
	conn, err := d.DialContext(ctx, network, target.String())
	if err != nil {
		return nil, errors.Join(fmt.Errorf("dial probe to %s for slot %d: %w", target, slot, err), p.forget())
	}
	return &probeConn{Conn: conn, src: p}, nil
}

// probeSource is the source address and port of one probe connection, as
// the steering program's probes map knows it.
type probeSource struct {
	s     *Steering
	key   bpf.SteerProbeKey
	added bool
}

// register binds the socket fd to addr on a port the kernel picks and
// tells the steering program that connections from there go to slot.
func (p *probeSource) register(fd int, addr netip.Addr, slot uint32) error {
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: addr.As16()}
	if addr.Is4() {
		sa = &unix.SockaddrInet4{Addr: addr.As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind probe socket to %s: %w", addr, err)
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("read probe socket's port: %w", err)
	}
	var port int
	switch a := local.(type) {
	case *unix.SockaddrInet4:
		port = a.Port
	case *unix.SockaddrInet6:
		port = a.Port
	}
	// The program sees the address as IPv6 or IPv4-mapped IPv6, in
	// network byte order: the words' bytes are the address's bytes.
	a16 := addr.As16()
	for i := range p.key.Addr {
		p.key.Addr[i] = binary.NativeEndian.Uint32(a16[4*i:])
	}
	p.key.Port = uint32(port)
	if err := p.s.addProbe(&p.key, slot); err != nil {
		return fmt.Errorf("register probe source %s: %w", netip.AddrPortFrom(addr, uint16(port)), err)
	}
	p.added = true
	return nil
}

// addProbe adds a probe source, counting it first so that the program
// looks for it as soon as it is there.
func (s *Steering) addProbe(key *bpf.SteerProbeKey, slot uint32) error {
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if s.closed {
		return errors.New("the steering is closed")
	}
	if err := s.probeCount.Update(uint32(0), s.probeN+1, ebpf.UpdateAny); err != nil {
		return err
	}
	if err := s.probes.Update(key, slot, ebpf.UpdateNoExist); err != nil {
		return errors.Join(err, s.probeCount.Update(uint32(0), s.probeN, ebpf.UpdateAny))
	}
	s.probeN++
	return nil
}

// removeProbe removes a probe source, then uncounts it.
func (s *Steering) removeProbe(key *bpf.SteerProbeKey) error {
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if s.closed {
		return nil // a reopened Steering clears what the pins still hold
	}
	if err := s.probes.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	s.probeN--
	return s.probeCount.Update(uint32(0), s.probeN, ebpf.UpdateAny)
}

// forget removes the source from the probes map, if it was added.
func (p *probeSource) forget() error {
	if !p.added {
		return nil
	}
	p.added = false
	if err := p.s.removeProbe(&p.key); err != nil {
		return fmt.Errorf("forget probe source port %d: %w", p.key.Port, err)
	}
	return nil
}

// probeConn is a probe connection; closing it forgets its source.
type probeConn struct {
	net.Conn
	once sync.Once
	src  *probeSource
	err  error
}

// Close closes the connection and removes its source from the probes map.
func (c *probeConn) Close() error {
	c.once.Do(func() { c.err = errors.Join(c.Conn.Close(), c.src.forget()) })
	return c.err
}
