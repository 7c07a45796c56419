package host

import (
	"errors"
	"fmt"
	"net"
	"os"

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
	// Insert puts the listening socket fd in slot (and, counted, makes the
	// kernel count its connections there).
	Insert(slot uint32, fd int) error
	// Activate sends every new connection to the socket in slot, in one
	// map update.
	Activate(slot uint32) error
	// Remove releases the program and maps, pins included.
	Remove() error
	// Counted reports whether Stats counts connections.
	Counted() bool
	// Stats returns what the kernel counted for slot.
	Stats(slot uint32) (loader.SlotStats, error)
	// Migrated returns the requests migrated into any slot since load.
	Migrated() (uint64, error)
}

// NewSteering returns the Steering of one listener of a service: a fresh
// one, or with reuse the one pinned by an earlier handoffd, whose
// generations are being re-adopted.
type NewSteering func(service, listener string, reuse bool) (Steering, error)

// lane is how one listener moves between generations.
type lane interface {
	socket(gen int) (*os.File, error)
	adopt(f *os.File) error
	activate(gen int) error
	stats(gen int) (lifecycle.SlotStats, bool)
	migrated() uint64
	forget(gen int)
	close() error
}

// steeredLane (ebpf mode) gives every generation its own SO_REUSEPORT
// socket and flips steering between them.
type steeredLane struct {
	l     config.ListenerConfig
	st    Steering
	slots int
	base  slotBaselines
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
	if s.st.Counted() {
		if now, err := s.st.Stats(s.slot(gen)); err == nil {
			s.base.set(gen, lifecycle.SlotStats(now))
		}
	}
	return f, nil
}

func (s *steeredLane) activate(gen int) error { return s.st.Activate(s.slot(gen)) }
func (s *steeredLane) close() error           { return s.st.Remove() }
func (s *steeredLane) forget(gen int)         { s.base.forget(gen) }

// adopt needs nothing: the socket is in the pinned steering map already.
func (s *steeredLane) adopt(*os.File) error { return nil }

func (s *steeredLane) stats(gen int) (lifecycle.SlotStats, bool) {
	if !s.st.Counted() {
		return lifecycle.SlotStats{}, false
	}
	now, err := s.st.Stats(s.slot(gen))
	if err != nil {
		return lifecycle.SlotStats{}, false
	}
	return s.base.since(gen, lifecycle.SlotStats(now)), true
}

func (s *steeredLane) migrated() uint64 {
	if !s.st.Counted() {
		return 0
	}
	n, _ := s.st.Migrated()
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
	return kernel.Dup(s.f)
}

func (s *sharedLane) activate(int) error                    { return nil }
func (s *sharedLane) stats(int) (lifecycle.SlotStats, bool) { return lifecycle.SlotStats{}, false }
func (s *sharedLane) migrated() uint64                      { return 0 }
func (s *sharedLane) forget(int)                            {}

// adopt makes a re-adopted generation's socket the shared one again.
func (s *sharedLane) adopt(f *os.File) error {
	dup, err := kernel.Dup(f)
	s.f = dup
	return err
}

func (s *sharedLane) close() error {
	if s.f == nil {
		return nil // an adopting lane that never got its socket
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
	return func(svc *config.ServiceConfig, adopting bool) (lifecycle.Router, error) {
		return newRouter(svc, mode, slots, newSteering, adopting)
	}
}

// newRouter builds the lanes of svc: steered in api.ModeEBPF, except for unix
// listeners (SO_REUSEPORT does not apply to them), shared in api.ModeFDPass.
//
// With adopting, the router is for generations that an earlier handoffd
// started: steering is reopened from its pins and shared sockets are taken
// from the active generation (adopt) instead of being created.
func newRouter(svc *config.ServiceConfig, mode api.Mode, slots int, newSteering NewSteering, adopting bool) (*laneRouter, error) {
	r := &laneRouter{}
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

func newLane(service string, l config.ListenerConfig, mode api.Mode, slots int, newSteering NewSteering, adopting bool) (lane, error) {
	network, _, err := config.ParseAddress(l.Address)
	if err != nil {
		return nil, err
	}
	if mode == api.ModeEBPF && network != "unix" {
		st, err := newSteering(service, l.Name, adopting)
		if err != nil {
			return nil, fmt.Errorf("load steering: %w", err)
		}
		return &steeredLane{l: l, st: st, slots: slots}, nil
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
		if err := ln.adopt(files[i]); err != nil {
			return fmt.Errorf("listener %s: %w", r.names[i], err)
		}
	}
	return nil
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
		if _, ok := ln.(*steeredLane); ok {
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
