package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
	"github.com/handoffd/handoffd/loader"
)

// Steering moves the new connections of one listener between the
// generations' sockets, and counts what the kernel did per slot.
// *loader.Steering implements it.
type Steering interface {
	// Attach attaches the steering program to the reuseport group of fd.
	Attach(fd int) error
	// Insert puts the listening socket fd in slot.
	Insert(slot uint32, fd int) error
	// Activate sends every new connection to the socket in slot, in one
	// map update.
	Activate(slot uint32) error
	// Remove releases the program and maps, pins included.
	Remove() error
	// Stats returns what the steering program counted for slot.
	Stats(slot uint32) (loader.SlotStats, error)
	// Migrated returns the requests migrated into any slot since load.
	Migrated() (uint64, error)
	// SetSplit shares new connections between the active slot and a
	// canary's, in one map update.
	SetSplit(sp loader.Split) error
	// DialProbe connects to target as a health check of the socket in
	// slot, whatever the active slot and the split say.
	DialProbe(ctx context.Context, target netip.AddrPort, slot uint32) (net.Conn, error)
}

// errShared refuses a canary on a listener whose generations share one
// socket.
var errShared = errors.New("canary needs ebpf mode: in fdpass mode (and on unix:// listeners) every generation shares one listening socket, so new connections cannot be split")

// NewSteering returns the Steering of one listener of a service: a fresh
// one, or with reuse the one pinned by an earlier handoffd, whose
// generations are being re-adopted.
type NewSteering func(service, listener string, reuse bool) (Steering, error)

// lane is how one listener moves between generations.
type lane interface {
	socket(gen int) (*os.File, error)
	adopt(gen int, f *os.File) error
	activate(gen int) error
	stats(gen int) (lifecycle.SlotStats, bool)
	migrated() uint64
	forget(gen int)
	release() error
	close() error
	split(gen int, share float64, sticky bool) error
	promote(gen int) error
	dialProbe(ctx context.Context, gen int) (net.Conn, error)
}

// steeredLane (ebpf mode) gives every generation its own SO_REUSEPORT
// socket and flips steering between them.
type steeredLane struct {
	l     config.ListenerConfig
	st    Steering
	slots int
	base  slotBaselines
	bound boundAddrs

	// used are the slots this handoffd gave a socket: requests migrate
	// only into those, so migrated reads their counters alone. A lane
	// re-adopted from pins (all) reads every slot's.
	mu   sync.Mutex
	used map[uint32]bool
	all  bool
}

func (s *steeredLane) slot(gen int) uint32 { return uint32(gen % s.slots) }

func (s *steeredLane) socket(gen int) (*os.File, error) {
	f, err := listenReuseport(s.l)
	if err != nil {
		return nil, err
	}
	// The group keeps one program; attaching again through every new
	// socket is harmless and covers the first socket of a group.
	fd := int(f.Fd())
	err = s.st.Attach(fd)
	if err == nil {
		err = s.st.Insert(s.slot(gen), fd)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	if now, err := s.st.Stats(s.slot(gen)); err == nil {
		s.base.set(gen, lifecycle.SlotStats(now))
	}
	s.bound.set(gen, f)
	s.mu.Lock()
	if s.used == nil {
		s.used = map[uint32]bool{}
	}
	s.used[s.slot(gen)] = true
	s.mu.Unlock()
	return f, nil
}

func (s *steeredLane) activate(gen int) error { return s.st.Activate(s.slot(gen)) }

func (s *steeredLane) split(gen int, share float64, sticky bool) error {
	return s.st.SetSplit(loader.Split{Slot: s.slot(gen), Share: share, Sticky: sticky})
}

// promote makes the canary gen active, then clears the split, which from
// the first update on names the active slot and changes nothing.
func (s *steeredLane) promote(gen int) error {
	if err := s.st.Activate(s.slot(gen)); err != nil {
		return err
	}
	return s.st.SetSplit(loader.Split{})
}

// dialProbe connects to the address gen's socket is bound to (the
// loader dials the loopback address of its family when that is every
// address), through the steering program's probes map.
func (s *steeredLane) dialProbe(ctx context.Context, gen int) (net.Conn, error) {
	target, ok := s.bound.get(gen)
	if !ok {
		var err error
		if target, err = listenerTarget(s.l); err != nil {
			return nil, err
		}
	}
	return s.st.DialProbe(ctx, target, s.slot(gen))
}

// listenerTarget is the address a health check of listener l dials when
// no socket of it is at hand: the address kernel.ListenTCP binds, an
// empty host being every address of the network's family.
func listenerTarget(l config.ListenerConfig) (netip.AddrPort, error) {
	network, hostport, err := config.ParseAddress(l.Address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	a, err := net.ResolveTCPAddr(network, hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolve %s: %w", l.Address, err)
	}
	ap := a.AddrPort()
	addr := ap.Addr().Unmap()
	if a.IP == nil {
		addr = netip.IPv4Unspecified()
		if network == "tcp6" {
			addr = netip.IPv6Unspecified()
		}
	}
	return netip.AddrPortFrom(addr, ap.Port()), nil
}

func (s *steeredLane) close() error { return s.st.Remove() }

func (s *steeredLane) forget(gen int) {
	s.base.forget(gen)
	s.bound.forget(gen)
}

// adopt keeps the address of the re-adopted socket; the socket itself is
// in the pinned steering map already.
func (s *steeredLane) adopt(gen int, f *os.File) error {
	s.bound.set(gen, f)
	return nil
}

// release has nothing to close: every socket is a generation's.
func (s *steeredLane) release() error { return nil }

func (s *steeredLane) stats(gen int) (lifecycle.SlotStats, bool) {
	now, err := s.st.Stats(s.slot(gen))
	if err != nil {
		return lifecycle.SlotStats{}, false
	}
	return s.base.since(gen, lifecycle.SlotStats(now)), true
}

func (s *steeredLane) migrated() uint64 {
	s.mu.Lock()
	all := s.all
	var slots []uint32
	for slot := range s.used {
		slots = append(slots, slot)
	}
	s.mu.Unlock()
	if all {
		n, _ := s.st.Migrated()
		return n
	}
	var n uint64
	for _, slot := range slots {
		if st, err := s.st.Stats(slot); err == nil {
			n += st.Migrated
		}
	}
	return n
}

// sharedLane (fdpass mode) has one listening socket that every generation
// gets a copy of. Activation is the old generation's stop signal: it stops
// accepting, and what waits in the shared queue is left to the new one.
// The socket is made by the first socket call, unless a re-adopted
// generation handed it over (adopt), and again after release.
type sharedLane struct {
	l config.ListenerConfig
	f *os.File
}

func (s *sharedLane) socket(int) (*os.File, error) {
	if s.f == nil {
		f, err := listenShared(s.l)
		if err != nil {
			return nil, err
		}
		s.f = f
	}
	return kernel.Dup(s.f)
}

// release closes the shared socket: its queue is reset, and new
// connections are refused until the next socket call binds it again
// (the generations' copies, if any still run, keep it open till then).
func (s *sharedLane) release() error {
	if s.f == nil {
		return nil
	}
	err := s.close()
	s.f = nil
	return err
}

func (s *sharedLane) activate(int) error             { return nil }
func (s *sharedLane) split(int, float64, bool) error { return errShared }
func (s *sharedLane) promote(int) error              { return errShared }

// dialProbe connects to the shared socket: whichever generation accepts
// answers, so it checks only once one generation is left accepting.
func (s *sharedLane) dialProbe(ctx context.Context, _ int) (net.Conn, error) {
	if s.f == nil {
		return nil, errors.New("no shared socket: no generation was started on it")
	}
	addr, err := kernel.ListeningAddr(s.f)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	if a, ok := addr.(*net.TCPAddr); ok && a.IP.IsUnspecified() {
		lo := net.IPv4(127, 0, 0, 1)
		if a.IP.To4() == nil {
			lo = net.IPv6loopback
		}
		addr = &net.TCPAddr{IP: lo, Port: a.Port}
	}
	return d.DialContext(ctx, addr.Network(), addr.String())
}
func (s *sharedLane) stats(int) (lifecycle.SlotStats, bool) { return lifecycle.SlotStats{}, false }
func (s *sharedLane) migrated() uint64                      { return 0 }
func (s *sharedLane) forget(int)                            {}

// adopt makes a re-adopted generation's socket the shared one again.
func (s *sharedLane) adopt(_ int, f *os.File) error {
	dup, err := kernel.Dup(f)
	if err != nil {
		return err
	}
	if s.f != nil {
		s.f.Close()
	}
	s.f = dup
	return nil
}

func (s *sharedLane) close() error {
	if s.f == nil {
		return nil // never made, or released
	}
	var err error
	if addr, _ := kernel.ListeningAddr(s.f); addr != nil {
		if u, ok := addr.(*net.UnixAddr); ok && u.Name != "" && u.Name[0] == '/' {
			err = os.Remove(u.Name)
		}
	}
	return errors.Join(s.f.Close(), err)
}

// laneRouter routes each listener of a service through its own lane.
type laneRouter struct {
	names []string
	lanes []lane
	slots int
}

// NewRouter returns the lifecycle.NewRouter of handoffd in mode: slots is
// how many sockets one steering map holds (0 in fdpass mode), and
// newSteering loads a listener's steering.
func NewRouter(mode api.Mode, slots int, newSteering NewSteering) lifecycle.NewRouter {
	return NewRouterWithQUIC(mode, slots, newSteering, nil)
}

// NewRouterWithQUIC is NewRouter for a handoffd that also steers QUIC
// listeners in ebpf mode, each with a steering from newQUIC.
func NewRouterWithQUIC(mode api.Mode, slots int, newSteering NewSteering, newQUIC NewQUICSteering) lifecycle.NewRouter {
	return func(svc *config.ServiceConfig, adopting bool) (lifecycle.Router, error) {
		return newRouter(svc, mode, slots, steerings{newSteering, newQUIC}, adopting)
	}
}

// steerings loads the steering of a TCP and of a QUIC listener.
type steerings struct {
	tcp  NewSteering
	quic NewQUICSteering
}

// newRouter builds the lanes of svc: steered in api.ModeEBPF, except for unix
// listeners (SO_REUSEPORT does not apply to them), shared in api.ModeFDPass.
// Shared sockets are bound by the first Prepare: a port that something
// else holds fails that generation's start, not the router.
//
// With adopting, the router is for generations that an earlier handoffd
// started: steering is reopened from its pins, and shared sockets are
// taken from a re-adopted generation (adopt) when one still holds them.
func newRouter(svc *config.ServiceConfig, mode api.Mode, slots int, newSteering steerings, adopting bool) (*laneRouter, error) {
	r := &laneRouter{slots: slots}
	for _, l := range svc.Listeners {
		ln, err := newLane(svc.Name, l, mode, slots, newSteering, adopting)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		r.names = append(r.names, l.Name)
		r.lanes = append(r.lanes, ln)
	}
	return r, nil
}

func newLane(service string, l config.ListenerConfig, mode api.Mode, slots int, newSteering steerings, adopting bool) (lane, error) {
	network, _, err := config.ParseAddress(l.Address)
	if err != nil {
		return nil, err
	}
	if l.QUIC() {
		if mode != api.ModeEBPF || newSteering.quic == nil {
			return nil, config.ErrQUICNeedsEBPF
		}
		st, err := newSteering.quic(service, l.Name, adopting)
		if err != nil {
			return nil, fmt.Errorf("load QUIC steering: %w", err)
		}
		return &quicLane{l: l, st: st, slots: slots}, nil
	}
	if mode == api.ModeEBPF && network != "unix" {
		st, err := newSteering.tcp(service, l.Name, adopting)
		if err != nil {
			return nil, fmt.Errorf("load steering: %w", err)
		}
		return &steeredLane{l: l, st: st, slots: slots, all: adopting}, nil
	}
	return &sharedLane{l: l}, nil
}

func (r *laneRouter) Prepare(gen int) ([]*os.File, error) {
	var files []*os.File
	for i, ln := range r.lanes {
		f, err := ln.socket(gen)
		if err != nil {
			closeFiles(files)
			return nil, fmt.Errorf("listener %s: %w", r.names[i], err)
		}
		files = append(files, f)
	}
	return files, nil
}

func (r *laneRouter) Activate(gen int) error {
	for i, ln := range r.lanes {
		if err := ln.activate(gen); err != nil {
			return fmt.Errorf("listener %s: %w", r.names[i], err)
		}
	}
	return nil
}

// SetSplit implements lifecycle.Router: the same split on every listener.
func (r *laneRouter) SetSplit(gen int, share float64, sticky bool) error {
	for i, ln := range r.lanes {
		if err := ln.split(gen, share, sticky); err != nil {
			return fmt.Errorf("listener %s: %w", r.names[i], err)
		}
	}
	return nil
}

// Promote implements lifecycle.Router.
func (r *laneRouter) Promote(gen int) error {
	for i, ln := range r.lanes {
		if err := ln.promote(gen); err != nil {
			return fmt.Errorf("listener %s: %w", r.names[i], err)
		}
	}
	return nil
}

// DialProbe implements lifecycle.Router.
func (r *laneRouter) DialProbe(ctx context.Context, gen, i int) (net.Conn, error) {
	if i < 0 || i >= len(r.lanes) {
		return nil, fmt.Errorf("no listener %d", i)
	}
	return r.lanes[i].dialProbe(ctx, gen)
}

func (r *laneRouter) Stats(gen, i int) (lifecycle.SlotStats, bool) { return r.lanes[i].stats(gen) }

func (r *laneRouter) Migrated() uint64 {
	var n uint64
	for _, ln := range r.lanes {
		n += ln.migrated()
	}
	return n
}

func (r *laneRouter) Adopt(gen int, files []*os.File) error {
	for i, ln := range r.lanes {
		if err := ln.adopt(gen, files[i]); err != nil {
			return fmt.Errorf("listener %s: %w", r.names[i], err)
		}
	}
	return nil
}

// Release implements lifecycle.Router.
func (r *laneRouter) Release() error {
	var errs []error
	for i, ln := range r.lanes {
		if err := ln.release(); err != nil {
			errs = append(errs, fmt.Errorf("listener %s: %w", r.names[i], err))
		}
	}
	return errors.Join(errs...)
}

func (r *laneRouter) Forget(gen int) {
	for _, ln := range r.lanes {
		ln.forget(gen)
	}
}

// Slots implements lifecycle.Router: a steered listener has the steering
// map's slots; shared ones put no limit.
func (r *laneRouter) Slots() int {
	for _, ln := range r.lanes {
		switch ln.(type) {
		case *steeredLane, *quicLane:
			return r.slots
		}
	}
	return 0
}

func (r *laneRouter) Close() error {
	var errs []error
	for _, ln := range r.lanes {
		errs = append(errs, ln.close())
	}
	return errors.Join(errs...)
}

// boundAddrs remembers, per generation, the address its listening socket
// is bound to: what a health check of that socket dials. A host name may
// resolve to other addresses by the next generation, and an empty host
// binds every address, which a client cannot dial.
type boundAddrs struct {
	mu   sync.Mutex
	addr map[int]netip.AddrPort
}

// set reads the address f is bound to; a socket whose address cannot be
// read leaves gen to the listener's configured address.
func (b *boundAddrs) set(gen int, f *os.File) {
	if f == nil {
		return
	}
	a, err := kernel.ListeningAddr(f)
	tcp, ok := a.(*net.TCPAddr)
	if err != nil || !ok {
		return
	}
	ap := tcp.AddrPort()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.addr == nil {
		b.addr = map[int]netip.AddrPort{}
	}
	b.addr[gen] = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (b *boundAddrs) get(gen int) (netip.AddrPort, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.addr[gen]
	return a, ok
}

func (b *boundAddrs) forget(gen int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.addr, gen)
}
