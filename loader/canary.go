package loader

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/handoffd/handoffd/bpf"
)

// ErrNoSplit is wrapped by the errors of the canary and probe methods of a
// Steering that OpenPinned found as an older handoffd pinned it, without
// the maps they need. Such a steering goes on steering everything to the
// active slot; a steering loaded afresh has them.
var ErrNoSplit = errors.New("the pinned steering program predates canary splits and health probes")

// fullShare is the split threshold that sends every connection to the
// canary: the program compares a 32-bit hash with it.
const fullShare = 1 << 32

// Split shares the new connections of a listener between the active slot
// and one canary slot. The zero Split sends everything to the active slot.
type Split struct {
	// Slot is the canary's slot. A Split that names the active slot
	// changes nothing.
	Slot uint32
	// Share is the fraction of new connections, from 0 to 1, that go to
	// Slot; the rest go to the active slot. It is kept in steps of 2^-32.
	Share float64
	// Sticky splits by a hash of the client address instead of the
	// kernel's flow hash: every connection of a client goes to the same
	// slot for as long as the Split lasts, and Share is then the share of
	// client addresses rather than of connections. Raising Share only
	// moves clients to the canary, lowering it only moves them back.
	Sticky bool
}

// SplitCounts counts what the steering program did for one slot beyond
// what SlotCounters holds.
type SplitCounts struct {
	// Probed is the number of health-probe connections sent to the slot
	// (not counted in SlotCounters.Selected).
	Probed uint64
	// ProbeDrops is the number of probe SYNs dropped because the slot
	// held no socket.
	ProbeDrops uint64
	// Failovers is the number of connections sent to the slot because
	// the one the split chose held no socket, as when a canary crashed
	// or a closing listener's requests migrate (also counted in
	// SlotCounters).
	Failovers uint64
}

// openSplitPins opens the split and probe maps pinned in s.dir, leaving
// them nil when the steering there was pinned without them.
func (s *Steering) openSplitPins(spec *ebpf.CollectionSpec) error {
	maps := []struct {
		name string
		m    **ebpf.Map
	}{{pinSplits, &s.splits}, {pinProbes, &s.probes}, {pinSplitCounters, &s.splitCounters}, {pinProbeCount, &s.probeCount}}
	present := 0
	for _, pm := range maps {
		if _, err := os.Stat(filepath.Join(s.dir, pm.name)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		m, err := s.openSplitPin(spec, pm.name)
		if err != nil {
			return err
		}
		*pm.m = m
		present++
	}
	if present != 0 && present != len(maps) {
		return fmt.Errorf("%d of the %d split and probe maps are pinned", present, len(maps))
	}
	if present == 0 {
		return nil
	}
	if !s.legacySplits {
		if err := s.mapSplits(); err != nil {
			return err
		}
	}
	return s.forgetProbes()
}

// openSplitPin opens the pinned map name. A splits map of the layout
// before the split was one word is taken as it is, and written in that
// layout, which its program reads: the steering of a running service
// keeps its canaries across an upgrade of handoffd.
func (s *Steering) openSplitPin(spec *ebpf.CollectionSpec, name string) (*ebpf.Map, error) {
	if name != pinSplits {
		return openPinnedMap(spec, s.dir, name)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(s.dir, name), nil)
	if err != nil {
		return nil, err
	}
	if isLegacySplits(m) {
		s.legacySplits = true
		return m, nil
	}
	if err := spec.Maps[name].Compatible(m); err != nil {
		m.Close()
		return nil, fmt.Errorf("pinned map %s: %w", name, err)
	}
	return m, nil
}

// forgetProbes empties the probes map of a steering opened from its pins:
// the probe connections of the handoffd that pinned it died with it, and
// a source left behind would catch a client that reuses its port.
func (s *Steering) forgetProbes() error {
	var k bpf.SteerProbeKey
	var v uint32
	var keys []bpf.SteerProbeKey
	it := s.probes.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read probe sources: %w", err)
	}
	for _, k := range keys {
		if err := s.probes.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget probe source: %w", err)
		}
	}
	if err := s.probeCount.Update(uint32(0), uint32(0), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset probe count: %w", err)
	}
	return nil
}

// SetSplit sends Share of the new connections to sp.Slot from now on, and
// the rest to the active slot. It is one atomic store of the split's one
// word, which the program reads whole: it starts a canary, changes its
// share, or, with Share 0, rolls it back. Requests migrated
// from a closing listener follow the same split. Whichever slot the split
// chooses, a connection whose chosen slot holds no socket goes to the
// other one, so a canary that dies sends nothing into the void.
//
// SetSplit refuses a slot out of range, and a Share above 0 for a slot
// that holds no socket.
func (s *Steering) SetSplit(sp Split) error {
	if s.splits == nil {
		return fmt.Errorf("set split: %w", ErrNoSplit)
	}
	if err := checkSlot(sp.Slot); err != nil {
		return fmt.Errorf("set split to slot %d: %w", sp.Slot, err)
	}
	if math.IsNaN(sp.Share) || sp.Share < 0 || sp.Share > 1 {
		return fmt.Errorf("set split to slot %d: share %v out of range [0, 1]", sp.Slot, sp.Share)
	}
	if sp.Share > 0 {
		var cookie uint64
		if err := s.sockets.Lookup(sp.Slot, &cookie); err != nil {
			return fmt.Errorf("set split to slot %d: no listening socket in it: %w", sp.Slot, err)
		}
	}
	s.splitMu.Lock()
	defer s.splitMu.Unlock()
	if err := s.storeSplit(sp); err != nil {
		return fmt.Errorf("set split to slot %d: %w", sp.Slot, err)
	}
	return nil
}

// Split returns the split in force. It is the zero Split until SetSplit.
func (s *Steering) Split() (Split, error) {
	if s.splits == nil {
		return Split{}, fmt.Errorf("read split: %w", ErrNoSplit)
	}
	s.splitMu.Lock()
	defer s.splitMu.Unlock()
	sp, err := s.loadSplit()
	if err != nil {
		return Split{}, fmt.Errorf("read split: %w", err)
	}
	return sp, nil
}

// Promote makes the canary the active slot and ends the split. The
// cutover is one map update (Activate of the canary's slot): from then on
// the split names the active slot and changes nothing, and the second
// update, which clears it, changes no decision. The generation that was
// active gets no new connection after the first update; its queued
// requests migrate to the canary when it closes its listener.
// Promote fails, changing nothing, when no canary is set.
func (s *Steering) Promote() error {
	sp, err := s.Split()
	if err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if sp.Share == 0 {
		return errors.New("promote: no canary: the split sends nothing to another slot")
	}
	if err := s.Activate(sp.Slot); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if err := s.SetSplit(Split{}); err != nil {
		return fmt.Errorf("promote: clear split after the cutover: %w", err)
	}
	return nil
}

// Rollback ends the split in one map update: every new connection goes to
// the active slot again, and the canary's queued requests migrate there
// when it closes its listener. The canary's socket stays in its slot.
func (s *Steering) Rollback() error {
	if err := s.SetSplit(Split{}); err != nil {
		return fmt.Errorf("roll back: %w", err)
	}
	return nil
}

// SplitCounts returns the split and probe counters of slot, summed over
// CPUs, since the maps were created.
func (s *Steering) SplitCounts(slot uint32) (SplitCounts, error) {
	if s.splitCounters == nil {
		return SplitCounts{}, fmt.Errorf("read split counters of slot %d: %w", slot, ErrNoSplit)
	}
	if err := checkSlot(slot); err != nil {
		return SplitCounts{}, fmt.Errorf("read split counters of slot %d: %w", slot, err)
	}
	var perCPU []bpf.SteerSplitCounts
	if err := s.splitCounters.Lookup(slot, &perCPU); err != nil {
		return SplitCounts{}, fmt.Errorf("read split counters of slot %d: %w", slot, err)
	}
	var sum SplitCounts
	for _, c := range perCPU {
		sum.Probed += c.Probed
		sum.ProbeDrops += c.ProbeDrops
		sum.Failovers += c.Failovers
	}
	return sum, nil
}
