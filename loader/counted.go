package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
)

// Kernel is what one handoffd loads into the kernel in ebpf mode: the
// connection-tracking probes, once, and a counted Steering per listener.
//
// Each listener that the probes count gets a range of Slots tracking
// slots, starting at its tracking base. The base is pinned next to the
// listener's steering program, and a Kernel reads back every base its
// predecessor pinned before it hands out new ones: a restarted handoffd,
// whatever order its config lists the services in now, counts each
// re-adopted listener in the range its connections are counted in. The
// range of a removed listener is free again; Steering.Insert forgets what
// was counted in a slot before it counts a new generation there.
type Kernel struct {
	dir      string
	tracking *Tracking // nil when the probes could not load
	log      *slog.Logger

	// mu is held from the choice of a new listener's tracking base until
	// the base is pinned, which is what marks a range taken.
	mu sync.Mutex
}

// LoadKernel moves handoffd out of the root cgroup (so that the probes see
// its own sockets only) and loads the connection-tracking probes, pinned
// under dir/tracking. When they cannot load, handoffd still steers, and
// counts connections without them: the reason is logged.
func LoadKernel(dir string, log *slog.Logger) *Kernel {
	k := &Kernel{dir: dir, log: log}
	if cg, err := LeaveRootCgroup("handoffd"); err != nil {
		log.Warn("staying in the root cgroup: the connection counter runs for every socket of the host", "reason", err)
	} else {
		log.Info("connection counter attached to handoffd's cgroup", "cgroup", cg)
	}
	t, err := LoadTracking(filepath.Join(dir, "tracking"))
	if err != nil {
		log.Warn("connection-tracking probes unavailable; counting connections without them", "reason", err)
		return k
	}
	k.tracking = t
	return k
}

// newKernel is a Kernel over probes loaded already (nil: none), for tests.
func newKernel(dir string, t *Tracking, log *slog.Logger) *Kernel {
	return &Kernel{dir: dir, tracking: t, log: log}
}

// Tracking returns the probes, or nil when they did not load.
func (k *Kernel) Tracking() *Tracking { return k.tracking }

// Steering loads the steering of one listener, counted when the probes
// loaded and a tracking range is left. With reuse it opens the steering an
// earlier handoffd pinned, whose sockets and active slot serve the
// generations being re-adopted, with its pinned tracking base.
func (k *Kernel) Steering(service, listener string, reuse bool) (*Steering, error) {
	dir := filepath.Join(k.dir, service, listener)
	if reuse {
		return OpenPinned(dir, k.tracking)
	}
	if k.tracking == nil {
		return LoadSteering(dir)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	base, ok, err := k.base(service, listener)
	if err != nil {
		return nil, err
	}
	if !ok {
		k.log.Warn("too many listeners for the kernel probes; counting this one's connections without them",
			"service", service, "listener", listener, "max", TrackingSlots/Slots)
		return LoadSteering(dir)
	}
	return LoadSteeringWith(dir, k.tracking, base)
}

// base returns the tracking base of a listener: the one pinned for it, or
// the lowest range that no pinned base takes (a removed listener's pins
// are gone, so its range is free again); false when none is left. The
// caller holds k.mu.
func (k *Kernel) base(service, listener string) (uint32, bool, error) {
	bases, err := pinnedBases(k.dir)
	if err != nil {
		return 0, false, err
	}
	if b, ok := bases[service+"/"+listener]; ok {
		return b, true, nil
	}
	taken := map[uint32]bool{}
	for _, b := range bases {
		taken[b] = true
	}
	for b := uint32(0); b+Slots <= TrackingSlots; b += Slots {
		if !taken[b] {
			return b, true, nil
		}
	}
	return 0, false, nil
}

// pinnedBases reads the tracking base pinned in every listener directory
// under dir (dir/SERVICE/LISTENER/tracking_base).
func pinnedBases(dir string) (map[string]uint32, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*", "*", pinBase))
	if err != nil {
		return nil, err
	}
	bases := map[string]uint32{}
	for _, p := range paths {
		b, err := readBase(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read tracking base: %w", err)
		}
		rel, _ := filepath.Rel(dir, filepath.Dir(p))
		bases[filepath.ToSlash(rel)] = b
	}
	return bases, nil
}

// Remove detaches the probes and removes their pins.
func (k *Kernel) Remove() error {
	if k.tracking == nil {
		return nil
	}
	return k.tracking.Remove()
}

// pinBase is the pinned one-entry array that holds the tracking base of a
// counted Steering, next to its program.
const pinBase = "tracking_base"

func newBaseMap(base uint32) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "tracking_base", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create tracking base map: %w", err)
	}
	if err := m.Update(uint32(0), base, ebpf.UpdateAny); err != nil {
		m.Close()
		return nil, fmt.Errorf("write tracking base: %w", err)
	}
	return m, nil
}

func readBase(path string) (uint32, error) {
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return 0, err
	}
	defer m.Close()
	var b uint32
	if err := m.Lookup(uint32(0), &b); err != nil {
		return 0, err
	}
	if b > TrackingSlots-Slots {
		return 0, fmt.Errorf("%s holds %d, out of range [0, %d]", path, b, TrackingSlots-Slots)
	}
	return b, nil
}

// SlotStats is what the kernel counted for one slot of a counted Steering.
type SlotStats struct {
	// Held is the number of connections the slot's socket holds now:
	// ESTABLISHED or CLOSE_WAIT, accepted or still in the accept queue.
	Held int64
	// Accepted counts connections that reached ESTABLISHED on the slot.
	Accepted uint64
	// Selected counts new connections the steering program sent to it.
	Selected uint64
	// Migrated counts requests moved to it from a closing listener.
	Migrated uint64
}

// ErrNotCounted is returned by Stats of a Steering whose connections the
// probes do not count.
var ErrNotCounted = errors.New("the listener's connections are not counted by the kernel probes")

// Counted reports whether the probes count the connections of this
// Steering's sockets.
func (s *Steering) Counted() bool { return s.tracking != nil }

// Stats returns what the kernel counted for slot: the probes' counts and
// the steering program's, since the slot was last given to a socket.
func (s *Steering) Stats(slot uint32) (SlotStats, error) {
	if s.tracking == nil {
		return SlotStats{}, ErrNotCounted
	}
	held, err := s.tracking.Held(s.base + slot)
	if err != nil {
		return SlotStats{}, err
	}
	accepted, err := s.tracking.Accepted(s.base + slot)
	if err != nil {
		return SlotStats{}, err
	}
	counts, err := s.Counters(slot)
	if err != nil {
		return SlotStats{}, err
	}
	return SlotStats{Held: held, Accepted: accepted, Selected: counts.Selected, Migrated: counts.Migrated}, nil
}

// Migrated returns the requests migrated into any slot since load: the
// sum of Counters(s).Migrated over the slots.
func (s *Steering) Migrated() (uint64, error) {
	var n uint64
	for slot := range uint32(Slots) {
		counts, err := s.Counters(slot)
		if err != nil {
			return n, err
		}
		n += counts.Migrated
	}
	return n, nil
}
