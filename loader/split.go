package loader

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/bpf"
)

// The split is one 64-bit word, which the steering program reads with one
// load. An update through the bpf syscall copies the value with the
// kernel's memcpy, which may store it in pieces (rep movsb on x86), so a
// connection could still see a split half old, half new. handoffd
// therefore maps the splits map (it is mmapable) and writes the word with
// one atomic store.

// splitThresholdMask keeps the threshold of a split word.
const splitThresholdMask = 1<<bpf.SplitThresholdBits - 1

// packSplit is the word of steer.c's splits map that sp is.
func packSplit(sp Split) uint64 {
	w := uint64(math.Round(sp.Share*fullShare)) & splitThresholdMask
	w |= uint64(sp.Slot&0xff) << bpf.SplitSlotShift
	if sp.Sticky {
		w |= 1 << bpf.SplitStickyShift
	}
	return w
}

// unpackSplit is the Split of a splits-map word.
func unpackSplit(w uint64) Split {
	return Split{
		Slot:   uint32(w>>bpf.SplitSlotShift) & 0xff,
		Share:  float64(w&splitThresholdMask) / fullShare,
		Sticky: w>>bpf.SplitStickyShift&1 != 0,
	}
}

// legacySplit is the value of the splits map of a steering pinned by a
// handoffd before the split was one word: the program read its fields one
// by one. Such a steering keeps it until it is loaded afresh.
type legacySplit struct {
	Slot      uint32
	Flags     uint32
	Threshold uint64
}

// isLegacySplits reports whether m is the splits map of that older layout.
func isLegacySplits(m *ebpf.Map) bool {
	return m.Type() == ebpf.Array && m.KeySize() == 4 && m.ValueSize() == uint32(unsafe.Sizeof(legacySplit{})) && m.MaxEntries() == 1
}

// mapSplits maps the value of the splits map into memory, for storeSplit.
func (s *Steering) mapSplits() error {
	mem, err := unix.Mmap(s.splits.FD(), 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the split into memory: %w", err)
	}
	s.splitMem = mem
	return nil
}

// splitWord is the mapped word; nil when the split is not mapped.
func (s *Steering) splitWord() *uint64 {
	if s.splitMem == nil {
		return nil
	}
	return (*uint64)(unsafe.Pointer(&s.splitMem[0]))
}

// storeSplit writes sp in one store, or, in a steering of the older layout,
// through the bpf syscall. Callers hold splitMu.
func (s *Steering) storeSplit(sp Split) error {
	if s.splitsClosed {
		return errors.New("steering closed")
	}
	if s.legacySplits {
		v := legacySplit{Slot: sp.Slot, Threshold: packSplit(sp) & splitThresholdMask}
		if sp.Sticky {
			v.Flags = 1
		}
		return s.splits.Update(uint32(0), v, ebpf.UpdateAny)
	}
	atomic.StoreUint64(s.splitWord(), packSplit(sp))
	return nil
}

// loadSplit reads the split in force. Callers hold splitMu.
func (s *Steering) loadSplit() (Split, error) {
	if s.splitsClosed {
		return Split{}, errors.New("steering closed")
	}
	if s.legacySplits {
		var v legacySplit
		if err := s.splits.Lookup(uint32(0), &v); err != nil {
			return Split{}, err
		}
		return Split{Slot: v.Slot, Share: float64(v.Threshold) / fullShare, Sticky: v.Flags&1 != 0}, nil
	}
	return unpackSplit(atomic.LoadUint64(s.splitWord())), nil
}

// unmapSplits releases the mapping. Callers hold splitMu.
func (s *Steering) unmapSplits() error {
	if s.splitMem == nil {
		return nil
	}
	err := unix.Munmap(s.splitMem)
	s.splitMem = nil
	if err != nil {
		return fmt.Errorf("unmap the split: %w", err)
	}
	return nil
}
