package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/handoffd/handoffd/handoff/supervisor"
	"github.com/handoffd/handoffd/loader"
)

// kernel holds what handoffd loaded into the kernel for ebpf mode: one
// Tracking for the daemon and a Steering per listener.
type kernel struct {
	cfg      *supervisor.Config
	tracking *loader.Tracking // nil when the probes could not load
	log      *slog.Logger

	mu sync.Mutex
	// bases gives each service's listener its range of tracking slots,
	// in the order listeners first appear (config reloads add some).
	bases map[[2]string]uint32
}

// loadKernel loads the connection-tracking probes; when they cannot load,
// handoffd still steers and counts connections from /proc instead.
func loadKernel(cfg *supervisor.Config, log *slog.Logger) *kernel {
	k := &kernel{cfg: cfg, bases: map[[2]string]uint32{}, log: log}
	if cg, err := loader.LeaveRootCgroup("handoffd"); err != nil {
		log.Warn("staying in the root cgroup: the connection counter runs for every socket of the host", "reason", err)
	} else {
		log.Info("connection counter attached to handoffd's cgroup", "cgroup", cg)
	}
	t, err := loader.LoadTracking(filepath.Join(cfg.BPFDir, "tracking"))
	if err != nil {
		log.Warn("connection-tracking probes unavailable; counting connections from /proc", "reason", err)
		return k
	}
	k.tracking = t
	return k
}

// steering loads the steering of one listener, counting if it can. With
// reuse it opens the steering an earlier handoffd pinned, whose sockets
// and active slot serve the generations being re-adopted.
func (k *kernel) steering(service, listener string, reuse bool) (supervisor.Steering, error) {
	dir := filepath.Join(k.cfg.BPFDir, service, listener)
	base, counted := k.base(service, listener)
	if !counted && k.tracking != nil {
		k.log.Warn("too many listeners for the kernel probes; counting this one's connections from /proc",
			"service", service, "listener", listener, "max", loader.TrackingSlots/loader.Slots)
	}
	var st *loader.Steering
	var err error
	switch {
	case reuse:
		st, err = loader.OpenPinned(dir)
	case k.tracking == nil || !counted:
		return loader.LoadSteering(dir)
	default:
		st, err = loader.LoadSteeringWith(dir, k.tracking, base)
	}
	if err != nil || k.tracking == nil || !counted {
		return st, err
	}
	return &countingSteering{Steering: st, tracking: k.tracking, base: base}, nil
}

// base returns the first tracking slot of a listener's range, giving it
// the next free range on first use; false when none is left.
func (k *kernel) base(service, listener string) (uint32, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := [2]string{service, listener}
	b, ok := k.bases[key]
	if !ok {
		b = uint32(len(k.bases)) * loader.Slots
		if b+loader.Slots > loader.TrackingSlots {
			return 0, false
		}
		k.bases[key] = b
	}
	return b, true
}

// remove detaches the probes and removes their pins.
func (k *kernel) remove() {
	if k.tracking == nil {
		return
	}
	if err := k.tracking.Remove(); err != nil {
		k.log.Error("remove connection-tracking probes", "err", err)
	}
}

// countingSteering is a listener's Steering that also tags each new
// listening socket for the daemon's Tracking, so that the kernel counts
// the connections of every generation.
type countingSteering struct {
	*loader.Steering
	tracking *loader.Tracking
	base     uint32
}

// Insert gives the slot to a new generation's socket: it forgets what the
// slot's previous generation (exited, since the supervisor never reuses a
// live one's slot) left, and tags the socket so its connections count.
func (c *countingSteering) Insert(slot uint32, fd int) error {
	if _, err := c.tracking.ResetSlot(c.base + slot); err != nil {
		return fmt.Errorf("reset tracking slot %d: %w", c.base+slot, err)
	}
	if err := c.tracking.Tag(fd, c.base+slot); err != nil {
		return err
	}
	return c.Steering.Insert(slot, fd)
}

// Stats implements supervisor.CountingSteering.
func (c *countingSteering) Stats(slot uint32) (supervisor.SlotStats, error) {
	held, err := c.tracking.Held(c.base + slot)
	if err != nil {
		return supervisor.SlotStats{}, err
	}
	accepted, err := c.tracking.Accepted(c.base + slot)
	if err != nil {
		return supervisor.SlotStats{}, err
	}
	counts, err := c.Steering.Counters(slot)
	if err != nil {
		return supervisor.SlotStats{}, err
	}
	return supervisor.SlotStats{Held: held, Accepted: accepted, Selected: counts.Selected, Migrated: counts.Migrated}, nil
}

// Migrated implements supervisor.CountingSteering.
func (c *countingSteering) Migrated() (uint64, error) {
	var n uint64
	for slot := range uint32(loader.Slots) {
		counts, err := c.Steering.Counters(slot)
		if err != nil {
			return n, err
		}
		n += counts.Migrated
	}
	return n, nil
}
