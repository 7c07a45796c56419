package host

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// FuzzNotifyMessage checks the sd_notify parser against the protocol:
// ready when one of the newline-separated lines is exactly READY=1, and
// reloads when one is HANDOFF_RELOAD=1; the fd store's messages are those
// whose last FDSTORE or FDSTOREREMOVE is 1, or that set HANDOFF_STATE or
// HANDOFF_FINAL.
func FuzzNotifyMessage(f *testing.F) {
	f.Add([]byte("READY=1"))
	f.Add([]byte("STATUS=starting\nREADY=1\n"))
	f.Add([]byte("READY=0\nSTOPPING=1"))
	f.Add([]byte("READY=1\nHANDOFF_RELOAD=1"))
	f.Add([]byte("FDSTORE=1\nFDNAME=cache"))
	f.Add([]byte("FDSTOREREMOVE=1\nFDNAME=cache\nFDSTORE=1"))
	f.Add([]byte("FDSTORE=1\nFDNAME=handoff.state\nHANDOFF_STATE=1"))
	f.Add([]byte("HANDOFF_STATE=0\nSTATUS=nothing"))
	f.Add([]byte("FDSTORE=1\nFDNAME=handoff.final\nHANDOFF_FINAL=1"))
	f.Add([]byte("FDSTORE=1\nFDSTORE=0\nFDPOLL=0"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		lines := strings.Split(string(msg), "\n")
		wantReady, wantReloads := slices.Contains(lines, "READY=1"), slices.Contains(lines, "HANDOFF_RELOAD=1")
		if ready, reloads := parseNotify(msg); ready != wantReady || reloads != wantReloads {
			t.Fatalf("parseNotify(%q) = %v, %v; want %v, %v", msg, ready, reloads, wantReady, wantReloads)
		}
		last := map[string]string{}
		for _, l := range lines {
			if k, v, ok := strings.Cut(l, "="); ok && k != "" {
				last[k] = v
			}
		}
		_, state := last["HANDOFF_STATE"]
		_, final := last["HANDOFF_FINAL"]
		wantStore := last["FDSTORE"] == "1" || last["FDSTOREREMOVE"] == "1" || state || final
		if m, store := parseStoreNotice(msg); store != wantStore || !maps.Equal(m, last) {
			t.Fatalf("parseStoreNotice(%q) = %v, %v; want %v, %v", msg, m, store, last, wantStore)
		}
	})
}
