package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/handoffd/handoffd/bpf"
)

// Kernel is what one handoffd loads into the kernel in ebpf mode: a
// Steering per listener, and the ConnCounter that counts the connections
// of generations when status or a scrape asks.
//
// A handoffd before on-demand counting left a sock_ops counter attached
// to its cgroup and pinned under dir/tracking, and a tracking base beside
// each listener's steering. LoadKernel removes those pins, which detaches
// the counter: nothing of it runs for a connection any more. The
// steering programs that an earlier handoffd pinned stay, and their
// generations are re-adopted as before.
type Kernel struct {
	dir     string
	counter *ConnCounter // nil when it could not load
	log     *slog.Logger
}

// LoadKernel removes what an older handoffd pinned for counting under dir
// and loads the ConnCounter. When the counter cannot load, handoffd still
// steers, and counts connections without it: the reason is logged.
func LoadKernel(dir string, log *slog.Logger) *Kernel {
	k := &Kernel{dir: dir, log: log}
	if n, err := removeTrackingPins(dir); err != nil {
		log.Warn("remove the pins of the former connection counter", "err", err)
	} else if n > 0 {
		log.Info("detached the former connection counter", "pins", n)
	}
	c, err := LoadConnCounter()
	if err != nil {
		log.Warn("connection counter unavailable; counting connections from /proc", "reason", err)
		return k
	}
	k.counter = c
	return k
}

// Counter returns the ConnCounter, or nil when it did not load.
func (k *Kernel) Counter() *ConnCounter { return k.counter }

// Steering loads the steering of one listener. With reuse it opens the
// steering an earlier handoffd pinned, whose sockets and active slot serve
// the generations being re-adopted.
func (k *Kernel) Steering(service, listener string, reuse bool) (*Steering, error) {
	dir := filepath.Join(k.dir, service, listener)
	if reuse {
		return OpenPinned(dir)
	}
	return LoadSteering(dir)
}

// Close releases the ConnCounter. Nothing it loaded is pinned.
func (k *Kernel) Close() error {
	if k.counter == nil {
		return nil
	}
	return k.counter.Close()
}

// The pins of the sock_ops connection counter of handoffd before
// on-demand counting: its directory under the bpf dir, and the tracking
// base beside each listener's steering.
const (
	trackingDir = "tracking"
	pinBase     = "tracking_base"
)

// removeTrackingPins removes the pins of the former connection counter
// under dir and returns how many it removed. Unpinning its links detaches
// the sock_ops program (a link lives as long as a pin or an fd holds it);
// its maps go with the last program that uses them.
func removeTrackingPins(dir string) (int, error) {
	var errs []error
	n := 0
	remove := func(path string) {
		err := os.Remove(path)
		switch {
		case err == nil:
			n++
		case !errors.Is(err, os.ErrNotExist):
			errs = append(errs, err)
		}
	}
	bases, err := filepath.Glob(filepath.Join(dir, "*", "*", pinBase))
	if err != nil {
		return 0, err
	}
	for _, p := range bases {
		remove(p)
	}
	tracking := filepath.Join(dir, trackingDir)
	pins, err := os.ReadDir(tracking)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return n, err
	}
	for _, p := range pins {
		remove(filepath.Join(tracking, p.Name()))
	}
	if len(pins) > 0 {
		remove(tracking)
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("remove tracking pins under %s: %w", dir, err)
	}
	return n, nil
}

// SlotStats is what the steering program counted for one slot.
type SlotStats struct {
	// Selected counts new connections the steering program sent to it.
	Selected uint64
	// Migrated counts requests moved to it from a closing listener.
	Migrated uint64
}

// Stats returns what the steering program counted for slot since the
// maps were created.
func (s *Steering) Stats(slot uint32) (SlotStats, error) {
	counts, err := s.Counters(slot)
	if err != nil {
		return SlotStats{}, err
	}
	return SlotStats(counts), nil
}

// Migrated returns the requests migrated into any slot since load: the
// sum of Counters(s).Migrated over the slots, read in one batch where the
// kernel has them (Linux >= 5.6).
func (s *Steering) Migrated() (uint64, error) {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return 0, fmt.Errorf("read migrated requests: %w", err)
	}
	keys := make([]uint32, Slots)
	values := make([]bpf.SteerSlotCounters, Slots*cpus)
	var cursor ebpf.MapBatchCursor
	n, err := s.counters.BatchLookup(&cursor, keys, values, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) || n != Slots {
		return s.migratedBySlot()
	}
	var sum uint64
	for _, v := range values {
		sum += v.Migrated
	}
	return sum, nil
}

func (s *Steering) migratedBySlot() (uint64, error) {
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
