package quicid

import "testing"

func TestCookieRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		slot   uint32
		cookie uint64
		id     uint32
	}{
		{0, 1, 1},
		{63, 0xdeadbeef_12345678, 0x12345678},
		{64 + 5, 0xffffffff, 0xffffffff},
		// The low half 0 would read as an empty slot: the high half
		// stands in, never 0.
		{7, 0x00000002_00000000, 3},
		{7, 0, 1},
	} {
		c := Cookie(tc.slot, tc.cookie)
		cid := make([]byte, Len)
		copy(cid, c[:])
		slot, id, ok := Parse(cid)
		if !ok || slot != tc.slot%Slots || id != tc.id {
			t.Errorf("Cookie(%d, %#x) parses as slot %d id %#x ok %v; want slot %d id %#x", tc.slot, tc.cookie, slot, id, ok, tc.slot%Slots, tc.id)
		}
	}
	if _, _, ok := Parse(make([]byte, Len)); ok {
		t.Error("an ID without the tag parsed")
	}
	if _, _, ok := Parse(make([]byte, 8)); ok {
		t.Error("an ID of another length parsed")
	}
}
