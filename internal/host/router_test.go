package host

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/handoffd/handoffd/internal/config"
)

func TestListenerTarget(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"tcp://127.0.0.1:8080", "127.0.0.1:8080"},
		{"tcp6://[::1]:80", "[::1]:80"},
		{"tcp4://0.0.0.0:9000", "0.0.0.0:9000"},
	} {
		got, err := listenerTarget(config.ListenerConfig{Name: "http", Address: tc.addr})
		if err != nil || got != netip.MustParseAddrPort(tc.want) {
			t.Errorf("listenerTarget(%s) = %v, %v; want %s", tc.addr, got, err, tc.want)
		}
	}
}

// TestSharedLaneProbeAndSplit checks that a shared socket is probed on
// loopback when it listens on every address, and that it refuses a split.
func TestSharedLaneProbeAndSplit(t *testing.T) {
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	lane := &sharedLane{f: f}
	defer lane.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := lane.dialProbe(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ip := c.RemoteAddr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		t.Errorf("probe went to %s, want loopback", ip)
	}
	if err := lane.split(2, 0.5, false); !errors.Is(err, errShared) {
		t.Errorf("split of a shared lane: %v, want errShared", err)
	}
	if err := lane.promote(2); !errors.Is(err, errShared) {
		t.Errorf("promote of a shared lane: %v, want errShared", err)
	}
}
