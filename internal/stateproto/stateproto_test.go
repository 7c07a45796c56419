package stateproto

import (
	"strings"
	"testing"
)

func TestMessageRoundTrip(t *testing.T) {
	m := Message{State: "0", Reason: "no previous generation"}
	got := Parse(m.Encode())
	if len(got) != 2 || got[State] != "0" || got[Reason] != "no previous generation" {
		t.Errorf("round trip: %v", got)
	}
	if p := Parse([]byte("FDSTORE=1\nFDNAME=a=b\ngarbage\n=x\n")); p[FDStore] != "1" || p[FDName] != "a=b" || len(p) != 2 {
		t.Errorf("parse: %v", p)
	}
}

func TestValidFDName(t *testing.T) {
	for _, ok := range []string{"stored", "handoff.state", strings.Repeat("x", MaxFDName), "a b"} {
		if err := ValidFDName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a:b", strings.Repeat("x", MaxFDName+1), "tab\there", "é"} {
		if err := ValidFDName(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}
