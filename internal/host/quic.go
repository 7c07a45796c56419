package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
	"github.com/handoffd/handoffd/loader"
)

// QUICSteering moves the packets of one QUIC listener between the
// generations' UDP sockets: by connection ID for connections under way,
// by the active slot and the split for new ones. *loader.QUICSteering
// implements it.
type QUICSteering interface {
	// Attach attaches the steering program to the reuseport group of fd.
	Attach(fd int) error
	// Insert puts the bound UDP socket fd in slot; connection IDs minted
	// with its cookie reach it from then on.
	Insert(slot uint32, fd int) error
	// Activate sends every new connection to the socket in slot.
	Activate(slot uint32) error
	// SetSplit shares new connections between the active slot and a
	// canary's.
	SetSplit(sp loader.Split) error
	// Counters returns what the program counted for slot.
	Counters(slot uint32) (loader.QUICCounters, error)
	// Remove releases the program and maps, pins included.
	Remove() error
}

// NewQUICSteering returns the QUICSteering of one QUIC listener of a
// service: a fresh one, or with reuse the one an earlier handoffd pinned.
type NewQUICSteering func(service, listener string, reuse bool) (QUICSteering, error)

// errQUICProbe refuses a health check through a QUIC listener.
var errQUICProbe = errors.New("a QUIC listener cannot be health-checked: name a TCP listener in health.listener")

// quicLane (ebpf mode, protocol: quic) gives every generation its own UDP
// socket in the listener's reuseport group. One socket per generation:
// quic-go serves one socket with one Transport, whose connection IDs
// carry that socket's cookie, and the kernel spreads a socket's receive
// work over CPUs by RPS without more sockets; the program can tell
// sockets apart by cookie, so more per generation would need only more
// Transports in the SDK.
type quicLane struct {
	l     config.ListenerConfig
	st    QUICSteering
	slots int
}

func (q *quicLane) slot(gen int) uint32 { return uint32(gen % q.slots) }

func (q *quicLane) socket(gen int) (*os.File, error) {
	network, hostport, err := config.ParseAddress(q.l.Address)
	if err != nil {
		return nil, err
	}
	f, err := kernel.ListenUDP(q.l.Name, network, hostport)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", q.l.Address, err)
	}
	fd := int(f.Fd())
	err = q.st.Attach(fd)
	if err == nil {
		err = q.st.Insert(q.slot(gen), fd)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (q *quicLane) activate(gen int) error { return q.st.Activate(q.slot(gen)) }

func (q *quicLane) split(gen int, share float64, sticky bool) error {
	return q.st.SetSplit(loader.Split{Slot: q.slot(gen), Share: share, Sticky: sticky})
}

// promote makes the canary gen active, then clears the split.
func (q *quicLane) promote(gen int) error {
	if err := q.st.Activate(q.slot(gen)); err != nil {
		return err
	}
	return q.st.SetSplit(loader.Split{})
}

func (q *quicLane) dialProbe(context.Context, int) (net.Conn, error) { return nil, errQUICProbe }

// stats reports nothing the kernel counted: a QUIC connection has no
// socket of its own to count.
func (q *quicLane) stats(int) (lifecycle.SlotStats, bool) { return lifecycle.SlotStats{}, false }
func (q *quicLane) migrated() uint64                      { return 0 }
func (q *quicLane) forget(int)                            {}

// release has nothing to close: every socket is a generation's.
func (q *quicLane) release() error { return nil }

// adopt needs nothing: the socket is in the pinned steering map already.
func (q *quicLane) adopt(int, *os.File) error { return nil }
func (q *quicLane) close() error              { return q.st.Remove() }
