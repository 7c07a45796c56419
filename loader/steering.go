package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/bpf"
)

// Slots is the number of listening sockets one Steering holds; generation
// g uses slot uint32(g % Slots).
const Slots = bpf.Slots

// Names of the pins in a Steering's directory: the program and each map
// under its name in steer.c.
const (
	pinProgram   = bpf.SteerProgSteer
	pinSockets   = bpf.SteerMapSockets
	pinActive    = bpf.SteerMapActive
	pinCounters  = bpf.SteerMapCounters
	pinFallbacks = bpf.SteerMapFallbacks
	// Canary split and health-probe steering; a steering pinned by an
	// older handoffd lacks them.
	pinSplits        = bpf.SteerMapSplits
	pinProbes        = bpf.SteerMapProbes
	pinSplitCounters = bpf.SteerMapSplitCounters
	pinProbeCount    = bpf.SteerMapProbeCount
)

var pinNames = []string{pinProgram, pinSockets, pinActive, pinCounters, pinFallbacks,
	pinSplits, pinProbes, pinSplitCounters, pinProbeCount}

// Steering is the steering program and maps of one listener (one
// SO_REUSEPORT group), pinned under a directory in bpffs so that steering
// keeps working while handoffd restarts. Its methods may be called from
// several goroutines, but not after Close.
type Steering struct {
	dir       string
	prog      *ebpf.Program
	sockets   *ebpf.Map
	active    *ebpf.Map
	counters  *ebpf.Map
	fallbacks *ebpf.Map

	// nil in a Steering that OpenPinned found without them (pinned by a
	// handoffd that predates canaries): see ErrNoSplit.
	splits        *ebpf.Map
	probes        *ebpf.Map
	splitCounters *ebpf.Map
	probeCount    *ebpf.Map

	// splitMu orders the writes of the split, held in splitMem (splits
	// mapped into memory) or, with legacySplits, in a splits map of the
	// layout before the split was one word. splitsClosed is set by Close.
	splitMu      sync.Mutex
	splitMem     []byte
	legacySplits bool
	splitsClosed bool

	// probeMu orders the updates of probes and probeCount, which
	// holds probeN: the program reads client addresses only while it is
	// not 0.
	probeMu sync.Mutex
	// closed is set by Close, under probeMu: probes are no longer
	// added or removed.
	closed bool
	probeN uint32
}

// SlotCounters counts what the steering program did for one slot.
type SlotCounters struct {
	// Selected is the number of new connections sent to the slot's socket.
	Selected uint64
	// Migrated is the number of requests moved to the slot's socket from
	// the queue of a closing listener.
	Migrated uint64
}

// LoadSteering loads a fresh steering program and its maps and pins them
// under dir, creating dir (and mounting bpffs at /sys/fs/bpf when dir is
// under it and nothing is mounted there).
//
// Pins that an earlier run left in dir are replaced, not reused: a fresh
// daemon starts with empty maps. Replacing a pin does not detach the old
// program from the sockets it was attached to; it lives until they close.
// Use OpenPinned to re-adopt the pins of an earlier run instead.
func LoadSteering(dir string) (*Steering, error) {
	liftMemlock()
	if err := makePinDir(dir); err != nil {
		return nil, fmt.Errorf("load steering in %s: %w", dir, err)
	}
	var objs bpf.SteerObjects
	if err := bpf.LoadSteerObjects(&objs, nil); err != nil {
		return nil, explainLoad(err)
	}
	s := &Steering{
		dir:       dir,
		prog:      objs.Steer,
		sockets:   objs.Sockets,
		active:    objs.Active,
		counters:  objs.Counters,
		fallbacks: objs.Fallbacks,

		splits:        objs.Splits,
		probes:        objs.Probes,
		splitCounters: objs.SplitCounters,
		probeCount:    objs.ProbeCount,
	}
	err := s.mapSplits()
	if err == nil {
		err = s.pin()
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("load steering in %s: %w", dir, err)
	}
	return s, nil
}

// pin replaces whatever is pinned under the Steering's names in its dir,
// and removes the tracking base that a handoffd older than on-demand
// counting pinned beside them.
func (s *Steering) pin() error {
	if err := os.Remove(filepath.Join(s.dir, pinBase)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old pin: %w", err)
	}
	pinners := map[string]interface{ Pin(string) error }{
		pinProgram:   s.prog,
		pinSockets:   s.sockets,
		pinActive:    s.active,
		pinCounters:  s.counters,
		pinFallbacks: s.fallbacks,

		pinSplits:        s.splits,
		pinProbes:        s.probes,
		pinSplitCounters: s.splitCounters,
		pinProbeCount:    s.probeCount,
	}
	for _, name := range pinNames {
		path := filepath.Join(s.dir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove old pin: %w", err)
		}
		if err := pinners[name].Pin(path); err != nil {
			return fmt.Errorf("pin %s: %w", name, err)
		}
	}
	return nil
}

// OpenPinned opens the steering that an earlier LoadSteering pinned under
// dir, without replacing anything: the program, the sockets in its slots
// and the counters stay as they are. It fails if a pin is missing or does
// not match the program this build carries. A steering pinned by a
// handoffd that counted connections with probes keeps its program, which
// also moves counts nobody reads any more when the kernel migrates a
// connection. A steering pinned by a handoffd that predates canaries opens without
// its split and probe maps: it steers as before, and the canary methods
// return ErrNoSplit.
func OpenPinned(dir string) (*Steering, error) {
	liftMemlock()
	spec, err := bpf.LoadSteer()
	if err != nil {
		return nil, err
	}
	s := &Steering{dir: dir}
	maps := map[string]**ebpf.Map{
		pinSockets:   &s.sockets,
		pinActive:    &s.active,
		pinCounters:  &s.counters,
		pinFallbacks: &s.fallbacks,
	}
	for name, m := range maps {
		if *m, err = openPinnedMap(spec, dir, name); err != nil {
			s.Close()
			return nil, fmt.Errorf("open pinned steering in %s: %w", dir, err)
		}
	}
	if err := s.openSplitPins(spec); err != nil {
		s.Close()
		return nil, fmt.Errorf("open pinned steering in %s: %w", dir, err)
	}
	s.prog, err = ebpf.LoadPinnedProgram(filepath.Join(dir, pinProgram), nil)
	if err == nil && s.prog.Type() != ebpf.SkReuseport {
		err = fmt.Errorf("pin %s is a %s program, want %s", pinProgram, s.prog.Type(), ebpf.SkReuseport)
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open pinned steering in %s: %w", dir, err)
	}
	return s, nil
}

func openPinnedMap(spec *ebpf.CollectionSpec, dir, name string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
	if err != nil {
		return nil, err
	}
	if err := spec.Maps[name].Compatible(m); err != nil {
		m.Close()
		return nil, fmt.Errorf("pinned map %s: %w", name, err)
	}
	return m, nil
}

// Dir returns the directory the Steering is pinned in.
func (s *Steering) Dir() string { return s.dir }

// Attach attaches the steering program to the SO_REUSEPORT group of the
// socket fd (SO_ATTACH_REUSEPORT_EBPF). A group holds one program;
// attaching again through any socket of the group replaces it, so doing it
// for every new socket is harmless.
func (s *Steering) Attach(fd int) error {
	err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, s.prog.FD())
	if err != nil {
		return fmt.Errorf("attach steering program to socket %d: %w", fd, err)
	}
	return nil
}

// Insert puts the listening socket fd in slot, replacing the socket that
// was there. The socket must listen and belong to the group the program is
// attached to. The map holds its own reference: fd may be closed after.
// A socket that is closed leaves its slot by itself. A socket can be in
// the sockets map of one Steering only; the kernel answers EBUSY otherwise.
// It is one map update whatever the connections held: nothing is counted
// per slot that would have to be reset.
func (s *Steering) Insert(slot uint32, fd int) error {
	if err := checkSlot(slot); err != nil {
		return fmt.Errorf("insert socket in slot %d: %w", slot, err)
	}
	if err := s.sockets.Update(slot, uint64(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("insert socket in slot %d: %w", slot, err)
	}
	return nil
}

// Activate sends every new connection, and every request migrated from a
// closing listener, to the socket in slot. It is one map update, so no
// connection sees a mix. It refuses a slot that holds no socket, which
// would leave the choice to the kernel's hash.
func (s *Steering) Activate(slot uint32) error {
	if err := checkSlot(slot); err != nil {
		return fmt.Errorf("activate slot %d: %w", slot, err)
	}
	var cookie uint64
	if err := s.sockets.Lookup(slot, &cookie); err != nil {
		return fmt.Errorf("activate slot %d: no listening socket in it: %w", slot, err)
	}
	if err := s.active.Update(uint32(0), slot, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("activate slot %d: %w", slot, err)
	}
	return nil
}

// Active returns the active slot. It is 0 until Activate is called.
func (s *Steering) Active() (uint32, error) {
	var slot uint32
	if err := s.active.Lookup(uint32(0), &slot); err != nil {
		return 0, fmt.Errorf("read active slot: %w", err)
	}
	return slot, nil
}

// Counters returns the counters of slot, summed over CPUs, since the
// maps were created.
func (s *Steering) Counters(slot uint32) (SlotCounters, error) {
	if err := checkSlot(slot); err != nil {
		return SlotCounters{}, fmt.Errorf("read counters of slot %d: %w", slot, err)
	}
	var perCPU []bpf.SteerSlotCounters
	if err := s.counters.Lookup(slot, &perCPU); err != nil {
		return SlotCounters{}, fmt.Errorf("read counters of slot %d: %w", slot, err)
	}
	var sum SlotCounters
	for _, c := range perCPU {
		sum.Selected += c.Selected
		sum.Migrated += c.Migrated
	}
	return sum, nil
}

// Fallbacks returns how many times, summed over CPUs, the program found no
// socket in the active slot and left the choice to the kernel's hash.
func (s *Steering) Fallbacks() (uint64, error) {
	var perCPU []uint64
	if err := s.fallbacks.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read fallback counter: %w", err)
	}
	var sum uint64
	for _, n := range perCPU {
		sum += n
	}
	return sum, nil
}

// Close releases the Steering's handles and keeps the pins, so steering
// goes on in the kernel and OpenPinned can find it again.
func (s *Steering) Close() error {
	// A probe connection closed later must not touch the closed maps
	// (their fd numbers may belong to something else by then).
	s.probeMu.Lock()
	s.closed = true
	s.probeMu.Unlock()
	s.splitMu.Lock()
	s.splitsClosed = true
	unmapErr := s.unmapSplits()
	s.splitMu.Unlock()
	// Close of a nil *ebpf.Map or *ebpf.Program is a no-op, which covers
	// a half-opened Steering.
	err := errors.Join(unmapErr, s.prog.Close(), s.sockets.Close(), s.active.Close(),
		s.counters.Close(), s.fallbacks.Close(),
		s.splits.Close(), s.probes.Close(), s.splitCounters.Close(), s.probeCount.Close())
	if err != nil {
		return fmt.Errorf("close steering: %w", err)
	}
	return nil
}

// Remove closes the Steering and removes its pins and their directory.
// The program stays attached to open sockets of the group until they
// close. Remove leaves files it did not create in place and then fails
// to remove the directory.
func (s *Steering) Remove() error {
	errs := []error{s.Close()}
	for _, name := range append(pinNames, pinBase) {
		err := os.Remove(filepath.Join(s.dir, name))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(s.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove steering in %s: %w", s.dir, err)
	}
	return nil
}

func checkSlot(slot uint32) error {
	if slot >= Slots {
		return fmt.Errorf("slot out of range [0, %d)", Slots)
	}
	return nil
}
