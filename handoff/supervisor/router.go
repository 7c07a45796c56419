package supervisor

import (
	"errors"
	"fmt"
	"os"
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

// NewSteering returns the Steering of one listener of a service.
type NewSteering func(service, listener string) (Steering, error)

// router gives generations their listening sockets and moves new
// connections to the active one.
type router interface {
	// prepare returns handoffd's copies of the sockets of generation gen,
	// in the order of the service's listeners.
	prepare(gen int) ([]*os.File, error)
	// activate makes gen the generation that receives new connections.
	activate(gen int) error
	// close releases what the router holds for the service.
	close() error
}

func slot(gen int) uint32 { return uint32(gen % Slots) }

// ebpfRouter gives every generation its own SO_REUSEPORT socket per
// listener and flips steering between them.
type ebpfRouter struct {
	listeners []ListenerConfig
	steering  []Steering
	listen    func(ListenerConfig) (*os.File, error)
}

func newEBPFRouter(svc *ServiceConfig, newSteering NewSteering) (*ebpfRouter, error) {
	r := &ebpfRouter{listeners: svc.Listeners, listen: listenReuseport}
	for _, l := range svc.Listeners {
		st, err := newSteering(svc.Name, l.Name)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("load steering for listener %s: %w", l.Name, err)
		}
		r.steering = append(r.steering, st)
	}
	return r, nil
}

func (r *ebpfRouter) prepare(gen int) ([]*os.File, error) {
	var files []*os.File
	for i, l := range r.listeners {
		f, err := r.listen(l)
		if err == nil {
			err = r.join(i, gen, f)
			if err != nil {
				f.Close()
			}
		}
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		files = append(files, f)
	}
	return files, nil
}

// join attaches the program (the group keeps one; attaching again is
// harmless and covers the first socket of a group) and inserts the socket.
func (r *ebpfRouter) join(i, gen int, f *os.File) error {
	fd := int(f.Fd())
	if err := r.steering[i].Attach(fd); err != nil {
		return err
	}
	return r.steering[i].Insert(slot(gen), fd)
}

func (r *ebpfRouter) activate(gen int) error {
	for i, st := range r.steering {
		if err := st.Activate(slot(gen)); err != nil {
			return fmt.Errorf("listener %s: %w", r.listeners[i].Name, err)
		}
	}
	return nil
}

func (r *ebpfRouter) close() error {
	var errs []error
	for _, st := range r.steering {
		errs = append(errs, st.Remove())
	}
	return errors.Join(errs...)
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
