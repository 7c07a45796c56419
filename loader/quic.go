package loader

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/bpf"
	"github.com/handoffd/handoffd/internal/quicid"
)

// pinQUICProgram and quicPinNames name the pins of a QUICSteering: the
// program and each map under its name in steer_quic.c.
const pinQUICProgram = bpf.SteerQuicProgSteerQuic

var quicPinNames = []string{pinQUICProgram, bpf.SteerQuicMapSockets, bpf.SteerQuicMapSocketIds,
	bpf.SteerQuicMapRoute, bpf.SteerQuicMapFlows, bpf.SteerQuicMapCounters, bpf.SteerQuicMapMisses}

// QUICSteering is the steering program and maps of one QUIC listener (a
// UDP SO_REUSEPORT group), pinned under a directory in bpffs like a
// Steering. Every datagram is steered: by the cookie in its destination
// connection ID to the generation that minted it, else (a new connection)
// to the active slot or by the split; see bpf/steer_quic.c. Its methods
// may be called from several goroutines, but not after Close.
type QUICSteering struct {
	dir  string
	objs bpf.SteerQuicObjects

	// mu orders the read-modify-write updates of the route word, which
	// holds the active slot and the split together, and guards routeMem:
	// the route map, mapped into memory (nil once closed).
	mu       sync.Mutex
	routeMem []byte
}

// QUICCounters counts what the program did for one slot.
type QUICCounters struct {
	// Initials is the number of new connections placed in the slot.
	Initials uint64
	// ByCID is the number of packets sent to the slot by the cookie of
	// their connection ID.
	ByCID uint64
	// ByFlow is the number of packets of a handshake sent to the slot
	// because its first packet went there.
	ByFlow uint64
}

// QUICMisses counts packets that no cookie and no handshake placed.
type QUICMisses struct {
	// Strays are short-header packets without a known cookie (of a
	// generation that is gone, or not QUIC), placed as new connections.
	Strays uint64
	// Fallbacks are packets for which no slot the route names held a
	// socket: the kernel's hash chose among the group.
	Fallbacks uint64
}

// LoadQUICSteering loads a fresh QUIC steering program and its maps and
// pins them under dir, as LoadSteering does for a TCP listener; pins an
// earlier run left there are replaced.
func LoadQUICSteering(dir string) (*QUICSteering, error) {
	liftMemlock()
	if err := makePinDir(dir); err != nil {
		return nil, fmt.Errorf("load QUIC steering in %s: %w", dir, err)
	}
	q := &QUICSteering{dir: dir}
	if err := bpf.LoadSteerQuicObjects(&q.objs, nil); err != nil {
		return nil, fmt.Errorf("QUIC: %w", explainLoad(err))
	}
	if err := q.pin(); err != nil {
		q.Close()
		return nil, fmt.Errorf("load QUIC steering in %s: %w", dir, err)
	}
	if err := q.mapRoute(); err != nil {
		q.Close()
		return nil, fmt.Errorf("load QUIC steering in %s: %w", dir, err)
	}
	return q, nil
}

// mapRoute maps the route map's one value into memory, for update.
func (q *QUICSteering) mapRoute() error {
	mem, err := unix.Mmap(q.objs.Route.FD(), 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the route into memory: %w", err)
	}
	q.routeMem = mem
	return nil
}

// routeWord is the mapped word. Callers hold mu, and routeMem is set.
func (q *QUICSteering) routeWord() *uint64 {
	return (*uint64)(unsafe.Pointer(&q.routeMem[0]))
}

func (q *QUICSteering) pinners() map[string]interface{ Pin(string) error } {
	o := &q.objs
	return map[string]interface{ Pin(string) error }{
		pinQUICProgram:            o.SteerQuic,
		bpf.SteerQuicMapSockets:   o.Sockets,
		bpf.SteerQuicMapSocketIds: o.SocketIds,
		bpf.SteerQuicMapRoute:     o.Route,
		bpf.SteerQuicMapFlows:     o.Flows,
		bpf.SteerQuicMapCounters:  o.Counters,
		bpf.SteerQuicMapMisses:    o.Misses,
	}
}

func (q *QUICSteering) pin() error {
	pinners := q.pinners()
	for _, name := range quicPinNames {
		path := filepath.Join(q.dir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove old pin: %w", err)
		}
		if err := pinners[name].Pin(path); err != nil {
			return fmt.Errorf("pin %s: %w", name, err)
		}
	}
	return nil
}

// OpenPinnedQUIC opens the QUIC steering that an earlier LoadQUICSteering
// pinned under dir, without replacing anything: the sockets in its slots,
// their ids, the route and the handshakes under way stay as they are. It
// fails if a pin is missing or does not match the program this build
// carries.
func OpenPinnedQUIC(dir string) (*QUICSteering, error) {
	liftMemlock()
	spec, err := bpf.LoadSteerQuic()
	if err != nil {
		return nil, err
	}
	q := &QUICSteering{dir: dir}
	o := &q.objs
	maps := map[string]**ebpf.Map{
		bpf.SteerQuicMapSockets:   &o.Sockets,
		bpf.SteerQuicMapSocketIds: &o.SocketIds,
		bpf.SteerQuicMapRoute:     &o.Route,
		bpf.SteerQuicMapFlows:     &o.Flows,
		bpf.SteerQuicMapCounters:  &o.Counters,
		bpf.SteerQuicMapMisses:    &o.Misses,
	}
	for name, m := range maps {
		if *m, err = openPinnedMap(spec, dir, name); err != nil {
			q.Close()
			return nil, fmt.Errorf("open pinned QUIC steering in %s: %w", dir, err)
		}
	}
	o.SteerQuic, err = ebpf.LoadPinnedProgram(filepath.Join(dir, pinQUICProgram), nil)
	if err == nil && o.SteerQuic.Type() != ebpf.SkReuseport {
		err = fmt.Errorf("pin %s is a %s program, want %s", pinQUICProgram, o.SteerQuic.Type(), ebpf.SkReuseport)
	}
	if err == nil {
		err = q.mapRoute()
	}
	if err != nil {
		q.Close()
		return nil, fmt.Errorf("open pinned QUIC steering in %s: %w", dir, err)
	}
	return q, nil
}

// Dir returns the directory the QUICSteering is pinned in.
func (q *QUICSteering) Dir() string { return q.dir }

// Attach attaches the program to the SO_REUSEPORT group of the UDP socket
// fd; as for Steering.Attach, doing it for every new socket is harmless.
func (q *QUICSteering) Attach(fd int) error {
	err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, q.objs.SteerQuic.FD())
	if err != nil {
		return fmt.Errorf("attach QUIC steering program to socket %d: %w", fd, err)
	}
	return nil
}

// Insert puts the bound UDP socket fd in slot, replacing the socket that
// was there, and makes the program send it the packets whose connection
// IDs carry its cookie (quicid.Cookie of slot and its SO_COOKIE). The id
// goes in before the socket, so a connection ID of the socket is never
// seen without it; a stale connection ID of the slot's previous socket
// no longer matches. The map holds its own reference: fd may be closed
// after.
func (q *QUICSteering) Insert(slot uint32, fd int) error {
	if err := checkSlot(slot); err != nil {
		return fmt.Errorf("insert socket in slot %d: %w", slot, err)
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return fmt.Errorf("insert socket in slot %d: read SO_COOKIE: %w", slot, err)
	}
	if err := q.objs.SocketIds.Update(slot, quicid.SocketID(cookie), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("insert socket in slot %d: %w", slot, err)
	}
	if err := q.objs.Sockets.Update(slot, uint64(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("insert socket in slot %d: %w", slot, err)
	}
	return nil
}

// route is the decoded route word of steer_quic.c.
type route struct {
	active, canary uint32
	sticky         bool
	threshold      uint64
}

func (r route) word() uint64 {
	w := uint64(r.active&0x3f) | uint64(r.canary&0x3f)<<8 | min(r.threshold, fullShare)<<16
	if r.sticky {
		w |= 1 << 15
	}
	return w
}

func parseRoute(w uint64) route {
	return route{active: uint32(w & 0x3f), canary: uint32(w>>8) & 0x3f, sticky: w>>15&1 == 1,
		threshold: w >> 16 & 0x1ffffffff}
}

// update changes the route word under q.mu, in one atomic store.
func (q *QUICSteering) update(change func(*route)) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.routeMem == nil {
		return errors.New("QUIC steering closed")
	}
	r := parseRoute(atomic.LoadUint64(q.routeWord()))
	change(&r)
	atomic.StoreUint64(q.routeWord(), r.word())
	return nil
}

// Activate sends every new connection to the socket in slot, in one map
// update; connections under way stay where their cookies say. It keeps
// the split, and refuses a slot that holds no socket.
func (q *QUICSteering) Activate(slot uint32) error {
	if err := checkSlot(slot); err != nil {
		return fmt.Errorf("activate slot %d: %w", slot, err)
	}
	var cookie uint64
	if err := q.objs.Sockets.Lookup(slot, &cookie); err != nil {
		return fmt.Errorf("activate slot %d: no socket in it: %w", slot, err)
	}
	if err := q.update(func(r *route) { r.active = slot }); err != nil {
		return fmt.Errorf("activate slot %d: %w", slot, err)
	}
	return nil
}

// Active returns the active slot.
func (q *QUICSteering) Active() (uint32, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.routeMem == nil {
		return 0, errors.New("read route: QUIC steering closed")
	}
	return parseRoute(atomic.LoadUint64(q.routeWord())).active, nil
}

// SetSplit sends sp.Share of the new connections to sp.Slot and the rest
// to the active slot, in one map update, as Steering.SetSplit does for
// TCP. Without Sticky each connection is one draw (a hash of the
// destination connection ID its client chose at random); with Sticky a
// client address goes to one side for as long as the split lasts. The
// packets of connections under way follow their cookies whatever the
// split says.
func (q *QUICSteering) SetSplit(sp Split) error {
	if err := checkSlot(sp.Slot); err != nil {
		return fmt.Errorf("split to slot %d: %w", sp.Slot, err)
	}
	if math.IsNaN(sp.Share) || sp.Share < 0 || sp.Share > 1 {
		return fmt.Errorf("split to slot %d: share %v out of [0, 1]", sp.Slot, sp.Share)
	}
	err := q.update(func(r *route) {
		r.canary, r.sticky = sp.Slot, sp.Sticky
		r.threshold = uint64(math.Round(sp.Share * fullShare))
	})
	if err != nil {
		return fmt.Errorf("split to slot %d: %w", sp.Slot, err)
	}
	return nil
}

// Counters returns the counters of slot, summed over CPUs, since load.
func (q *QUICSteering) Counters(slot uint32) (QUICCounters, error) {
	if err := checkSlot(slot); err != nil {
		return QUICCounters{}, fmt.Errorf("read QUIC counters of slot %d: %w", slot, err)
	}
	var perCPU []bpf.SteerQuicQuicCounters
	if err := q.objs.Counters.Lookup(slot, &perCPU); err != nil {
		return QUICCounters{}, fmt.Errorf("read QUIC counters of slot %d: %w", slot, err)
	}
	var sum QUICCounters
	for _, c := range perCPU {
		sum.Initials += c.Initials
		sum.ByCID += c.ByCid
		sum.ByFlow += c.ByFlow
	}
	return sum, nil
}

// Misses returns the packets that no cookie and no handshake placed,
// summed over CPUs, since load.
func (q *QUICSteering) Misses() (QUICMisses, error) {
	var perCPU []bpf.SteerQuicQuicMisses
	if err := q.objs.Misses.Lookup(uint32(0), &perCPU); err != nil {
		return QUICMisses{}, fmt.Errorf("read QUIC misses: %w", err)
	}
	var sum QUICMisses
	for _, m := range perCPU {
		sum.Strays += m.Strays
		sum.Fallbacks += m.Fallbacks
	}
	return sum, nil
}

// Program returns the steering program, for measuring its cost.
func (q *QUICSteering) Program() *ebpf.Program { return q.objs.SteerQuic }

// Close releases the handles and keeps the pins, so steering goes on in
// the kernel and OpenPinnedQUIC can find it again.
func (q *QUICSteering) Close() error {
	q.mu.Lock()
	var err error
	if q.routeMem != nil {
		err = unix.Munmap(q.routeMem)
		q.routeMem = nil
	}
	q.mu.Unlock()
	if err := errors.Join(err, q.objs.Close()); err != nil {
		return fmt.Errorf("close QUIC steering: %w", err)
	}
	return nil
}

// Remove closes the QUICSteering and removes its pins and their
// directory; the program stays attached to the group's open sockets.
func (q *QUICSteering) Remove() error {
	errs := []error{q.Close()}
	for _, name := range quicPinNames {
		if err := os.Remove(filepath.Join(q.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(q.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove QUIC steering in %s: %w", q.dir, err)
	}
	return nil
}

// QUICSteering loads the steering of one QUIC listener, pinned beside the
// TCP ones under the Kernel's directory; with reuse it opens the one an
// earlier handoffd pinned. QUIC listeners are not counted by the probes.
func (k *Kernel) QUICSteering(service, listener string, reuse bool) (*QUICSteering, error) {
	dir := filepath.Join(k.dir, service, listener)
	if reuse {
		return OpenPinnedQUIC(dir)
	}
	return LoadQUICSteering(dir)
}
