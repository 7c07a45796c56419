package supervisor

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Slots is the number of sockets one steering map holds; generation g
// uses slot g % Slots.
const Slots = 64

// Steering moves the new connections of one listener between the
// generations' sockets. *loader.Steering implements it.
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
}

// NewSteering returns the Steering of one listener of a service: a fresh
// one, or with reuse the one pinned by an earlier handoffd, whose
// generations are being re-adopted.
type NewSteering func(service, listener string, reuse bool) (Steering, error)

// router gives generations their listening sockets and moves new
// connections to the active one.
type router interface {
	// prepare returns handoffd's copies of the sockets of generation gen,
	// in the order of the service's listeners. Closing them is the
	// caller's job and never affects another generation.
	prepare(gen int) ([]*os.File, error)
	// activate makes gen the generation that receives new connections.
	activate(gen int) error
	// stats returns what the kernel counted for generation gen on the
	// i-th listener; false when that listener is not counted.
	stats(gen, i int) (SlotStats, bool)
	// migrated returns the requests migrated on all listeners since load.
	migrated() uint64
	// forget drops what the router remembers of an exited generation.
	forget(gen int)
	// adopt takes the sockets of a re-adopted active generation
	// (handoffd's new copies, in listener order).
	adopt(gen int, files []*os.File) error
	// close releases what the router holds for the service.
	close() error
}

func slot(gen int) uint32 { return uint32(gen % Slots) }

// lane is how one listener moves between generations.
type lane interface {
	socket(gen int) (*os.File, error)
	adopt(f *os.File) error
	activate(gen int) error
	stats(gen int) (SlotStats, bool)
	migrated() uint64
	forget(gen int)
	close() error
}

// steeredLane (ebpf mode) gives every generation its own SO_REUSEPORT
// socket and flips steering between them.
type steeredLane struct {
	l    ListenerConfig
	st   Steering
	base slotBaselines
}

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
		err = s.st.Insert(slot(gen), fd)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	if cs, ok := s.st.(CountingSteering); ok {
		if now, err := cs.Stats(slot(gen)); err == nil {
			s.base.set(gen, now)
		}
	}
	return f, nil
}

func (s *steeredLane) activate(gen int) error { return s.st.Activate(slot(gen)) }
func (s *steeredLane) close() error           { return s.st.Remove() }
func (s *steeredLane) forget(gen int)         { s.base.forget(gen) }

// adopt needs nothing: the socket is in the pinned steering map already.
func (s *steeredLane) adopt(*os.File) error { return nil }

func (s *steeredLane) stats(gen int) (SlotStats, bool) {
	cs, ok := s.st.(CountingSteering)
	if !ok {
		return SlotStats{}, false
	}
	now, err := cs.Stats(slot(gen))
	if err != nil {
		return SlotStats{}, false
	}
	return s.base.since(gen, now), true
}

func (s *steeredLane) migrated() uint64 {
	cs, ok := s.st.(CountingSteering)
	if !ok {
		return 0
	}
	n, _ := cs.Migrated()
	return n
}

// sharedLane (fdpass mode) has one listening socket that every generation
// gets a copy of. Activation is the old generation's stop signal: it stops
// accepting, and what waits in the shared queue is left to the new one.
type sharedLane struct {
	f *os.File
}

func (s *sharedLane) socket(int) (*os.File, error) {
	if s.f == nil {
		return nil, errors.New("no shared socket: the re-adopted generation did not hand it over")
	}
	return dupFile(s.f)
}

func (s *sharedLane) activate(int) error          { return nil }
func (s *sharedLane) stats(int) (SlotStats, bool) { return SlotStats{}, false }
func (s *sharedLane) migrated() uint64            { return 0 }
func (s *sharedLane) forget(int)                  {}

// adopt makes a re-adopted generation's socket the shared one again.
func (s *sharedLane) adopt(f *os.File) error {
	dup, err := dupFile(f)
	s.f = dup
	return err
}

// dupFile returns a close-on-exec duplicate of f: closing either never
// closes the socket while the other is open.
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate socket %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func (s *sharedLane) close() error {
	if s.f == nil {
		return nil // an adopting lane that never got its socket
	}
	var err error
	if sa, _ := unix.Getsockname(int(s.f.Fd())); sa != nil {
		if u, ok := sa.(*unix.SockaddrUnix); ok && u.Name != "" && u.Name[0] == '/' {
			err = os.Remove(u.Name)
		}
	}
	return errors.Join(s.f.Close(), err)
}

// laneRouter routes each listener of a service through its own lane.
type laneRouter struct {
	names []string
	lanes []lane
}

// newRouter builds the lanes of svc: steered in ModeEBPF, except for unix
// listeners (SO_REUSEPORT does not apply to them), shared in ModeFDPass.
//
// With adopting, the router is for generations that an earlier handoffd
// started: steering is reopened from its pins and shared sockets are taken
// from the active generation (adopt) instead of being created.
func newRouter(svc *ServiceConfig, mode Mode, newSteering NewSteering, adopting bool) (*laneRouter, error) {
	r := &laneRouter{}
	for _, l := range svc.Listeners {
		ln, err := newLane(svc.Name, l, mode, newSteering, adopting)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		r.names = append(r.names, l.Name)
		r.lanes = append(r.lanes, ln)
	}
	return r, nil
}

func newLane(service string, l ListenerConfig, mode Mode, newSteering NewSteering, adopting bool) (lane, error) {
	network, _, err := ParseAddress(l.Address)
	if err != nil {
		return nil, err
	}
	if mode == ModeEBPF && network != "unix" {
		st, err := newSteering(service, l.Name, adopting)
		if err != nil {
			return nil, fmt.Errorf("load steering: %w", err)
		}
		return &steeredLane{l: l, st: st}, nil
	}
	if adopting {
		return &sharedLane{}, nil
	}
	f, err := listenShared(l)
	if err != nil {
		return nil, err
	}
	return &sharedLane{f: f}, nil
}

// laneMode says how a listener is handed over in a service of mode mode.
func laneMode(l ListenerConfig, mode Mode) Mode {
	if network, _, _ := ParseAddress(l.Address); mode == ModeEBPF && network != "unix" {
		return ModeEBPF
	}
	return ModeFDPass
}

func (r *laneRouter) prepare(gen int) ([]*os.File, error) {
	var files []*os.File
	for i, ln := range r.lanes {
		f, err := ln.socket(gen)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("listener %s: %w", r.names[i], err)
		}
		files = append(files, f)
	}
	return files, nil
}

func (r *laneRouter) activate(gen int) error {
	for i, ln := range r.lanes {
		if err := ln.activate(gen); err != nil {
			return fmt.Errorf("listener %s: %w", r.names[i], err)
		}
	}
	return nil
}

func (r *laneRouter) stats(gen, i int) (SlotStats, bool) { return r.lanes[i].stats(gen) }

func (r *laneRouter) migrated() uint64 {
	var n uint64
	for _, ln := range r.lanes {
		n += ln.migrated()
	}
	return n
}

func (r *laneRouter) adopt(gen int, files []*os.File) error {
	for i, ln := range r.lanes {
		if err := ln.adopt(files[i]); err != nil {
			return fmt.Errorf("listener %s: %w", r.names[i], err)
		}
	}
	return nil
}

func (r *laneRouter) forget(gen int) {
	for _, ln := range r.lanes {
		ln.forget(gen)
	}
}

func (r *laneRouter) close() error {
	var errs []error
	for _, ln := range r.lanes {
		errs = append(errs, ln.close())
	}
	return errors.Join(errs...)
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
