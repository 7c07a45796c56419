package host

import (
	"slices"
	"strings"
	"testing"
)

// FuzzNotifyMessage checks the sd_notify parser against the protocol:
// ready when one of the newline-separated lines is exactly READY=1.
func FuzzNotifyMessage(f *testing.F) {
	f.Add([]byte("READY=1"))
	f.Add([]byte("STATUS=starting\nREADY=1\n"))
	f.Add([]byte("READY=0\nSTOPPING=1"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		want := slices.Contains(strings.Split(string(msg), "\n"), "READY=1")
		if got := parseNotify(msg); got != want {
			t.Fatalf("parseNotify(%q) = %v, want %v", msg, got, want)
		}
	})
}
