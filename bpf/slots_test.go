package bpf

import (
	"os"
	"regexp"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/internal/quicid"
)

// TestSlotsMatchTheSources keeps the Go constants, the C sources and the
// compiled objects in step: a change to one without the others fails here.
func TestSlotsMatchTheSources(t *testing.T) {
	for _, tc := range []struct {
		file, define string
		want         int
	}{
		{"steer.c", "SLOTS", Slots},
		{"steer.c", "SPLIT_THRESHOLD_BITS", SplitThresholdBits},
		{"steer.c", "SPLIT_SLOT_SHIFT", SplitSlotShift},
		{"steer.c", "SPLIT_STICKY_SHIFT", SplitStickyShift},
	} {
		src, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^#define ` + tc.define + `\s+(\d+)\b`).FindSubmatch(src)
		if m == nil {
			t.Fatalf("%s: no #define %s", tc.file, tc.define)
		}
		if n, _ := strconv.Atoi(string(m[1])); n != tc.want {
			t.Errorf("%s: %s is %d, Go says %d", tc.file, tc.define, n, tc.want)
		}
	}
	steer, err := LoadSteer()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{SteerMapSockets, SteerMapCounters, SteerMapSplitCounters} {
		if n := steer.Maps[name].MaxEntries; n != Slots {
			t.Errorf("compiled steer map %s has %d entries, want Slots = %d", name, n, Slots)
		}
	}
	if sp := steer.Maps[SteerMapSplits]; sp.ValueSize != 8 || sp.Flags&unix.BPF_F_MMAPABLE == 0 {
		t.Errorf("compiled steer map %s has values of %d bytes, flags %#x: want one mmapable 64-bit word", SteerMapSplits, sp.ValueSize, sp.Flags)
	}
}

func TestQUICConstantsMatchTheSource(t *testing.T) {
	src, err := os.ReadFile("steer_quic.c")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		define string
		want   int
	}{
		{"SLOTS", quicid.Slots},
		{"QUIC_CID_LEN", quicid.Len},
		{"QUIC_CID_TAG", quicid.Tag},
		{"QUIC_CID_TAG_MASK", quicid.TagMask},
	} {
		m := regexp.MustCompile(`(?m)^#define ` + tc.define + `\s+(0x[0-9a-f]+|\d+)\b`).FindSubmatch(src)
		if m == nil {
			t.Fatalf("steer_quic.c: no #define %s", tc.define)
		}
		if n, _ := strconv.ParseInt(string(m[1]), 0, 64); int(n) != tc.want {
			t.Errorf("steer_quic.c: %s is %d, package quicid says %d", tc.define, n, tc.want)
		}
	}
	if quicid.Slots != Slots {
		t.Errorf("quicid.Slots is %d, Slots %d", quicid.Slots, Slots)
	}
	spec, err := LoadSteerQuic()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{SteerQuicMapSockets, SteerQuicMapSocketIds, SteerQuicMapCounters} {
		if n := spec.Maps[name].MaxEntries; n != Slots {
			t.Errorf("compiled steer_quic map %s has %d entries, want Slots = %d", name, n, Slots)
		}
	}
}
