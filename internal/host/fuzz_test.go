package host

import (
	"slices"
	"strings"
	"testing"
)

// FuzzNotifyMessage checks the sd_notify parser against the protocol:
// ready when one of the newline-separated lines is exactly READY=1, and
// reloads when one is HANDOFF_RELOAD=1.
func FuzzNotifyMessage(f *testing.F) {
	f.Add([]byte("READY=1"))
	f.Add([]byte("STATUS=starting\nREADY=1\n"))
	f.Add([]byte("READY=0\nSTOPPING=1"))
	f.Add([]byte("READY=1\nHANDOFF_RELOAD=1"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		lines := strings.Split(string(msg), "\n")
		wantReady, wantReloads := slices.Contains(lines, "READY=1"), slices.Contains(lines, "HANDOFF_RELOAD=1")
		if ready, reloads := parseNotify(msg); ready != wantReady || reloads != wantReloads {
			t.Fatalf("parseNotify(%q) = %v, %v; want %v, %v", msg, ready, reloads, wantReady, wantReloads)
		}
	})
}
