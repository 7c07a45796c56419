package handoff

import (
	"net"
	"sync"
)

// A listener handed over by handoffd accepts nothing until the app has
// said it is ready. In fdpass mode the socket is shared with the previous
// generation, which keeps serving from it until then: a new generation
// that accepted early and then failed to start would take those
// connections down with it. In ebpf mode no connection reaches the new
// socket before the activation anyway, so the gate costs nothing.
var gate = struct {
	once sync.Once
	open chan struct{}
}{open: make(chan struct{})}

// openGate lets every gated listener accept; Ready calls it.
func openGate() { gate.once.Do(func() { close(gate.open) }) }

type gatedListener struct {
	net.Listener
	open      <-chan struct{} // the gate: closed once the app is ready
	closeOnce sync.Once
	closed    chan struct{}
}

func gated(ln net.Listener) net.Listener {
	return &gatedListener{Listener: ln, open: gate.open, closed: make(chan struct{})}
}

// Accept waits for Ready, then accepts.
func (g *gatedListener) Accept() (net.Conn, error) {
	select {
	case <-g.open:
	case <-g.closed:
		return nil, net.ErrClosed
	}
	return g.Listener.Accept()
}

// Close closes the listener and ends an Accept that waits for Ready.
func (g *gatedListener) Close() error {
	g.closeOnce.Do(func() { close(g.closed) })
	return g.Listener.Close()
}
