package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/kernel"
	"github.com/handoffd/handoffd/loader"
)

func TestListenerTarget(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"tcp://127.0.0.1:8080", "127.0.0.1:8080"},
		{"tcp6://[::1]:80", "[::1]:80"},
		{"tcp4://0.0.0.0:9000", "0.0.0.0:9000"},
		{"tcp://:8080", "0.0.0.0:8080"},
		{"tcp4://:8080", "0.0.0.0:8080"},
		{"tcp6://:8080", "[::]:8080"},
		{"tcp6://[::]:8080", "[::]:8080"},
		{"tcp4://localhost:8080", "127.0.0.1:8080"},
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

// probeRecorder is a Steering that records where DialProbe was asked to
// connect and connects nowhere.
type probeRecorder struct {
	Steering
	target netip.AddrPort
	slot   uint32
}

func (p *probeRecorder) Attach(int) error         { return nil }
func (p *probeRecorder) Insert(uint32, int) error { return nil }
func (p *probeRecorder) Stats(uint32) (loader.SlotStats, error) {
	return loader.SlotStats{}, nil
}

func (p *probeRecorder) DialProbe(_ context.Context, target netip.AddrPort, slot uint32) (net.Conn, error) {
	p.target, p.slot = target, slot
	return nil, errors.New("recorded")
}

// TestSteeredLaneProbeTarget checks that a health check of a steered
// listener dials the address its generation's socket is bound to, a
// valid address for each form of listener address (the loader turns
// every-address into loopback), and the configured address for a
// generation whose socket it never saw.
func TestSteeredLaneProbeTarget(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"tcp://:%d", "0.0.0.0"},
		{"tcp4://:%d", "0.0.0.0"},
		{"tcp6://:%d", "::"},
		{"tcp6://[::]:%d", "::"},
		{"tcp://localhost:%d", "127.0.0.1"},
		{"tcp6://[::1]:%d", "::1"},
	} {
		st := &probeRecorder{}
		address := fmt.Sprintf(tc.addr, freePort(t))
		lane := &steeredLane{l: config.ListenerConfig{Name: "http", Address: address, Backlog: 16}, st: st, slots: int(loader.Slots)}
		f, err := lane.socket(3)
		if err != nil {
			t.Fatalf("%s: %v", address, err)
		}
		bound, err := boundPort(f)
		if err != nil {
			t.Fatal(err)
		}
		lane.dialProbe(context.Background(), 3)
		if want := netip.AddrPortFrom(netip.MustParseAddr(tc.want), bound); st.target != want || st.slot != 3 {
			t.Errorf("%s: probe dialled %s for slot %d, want %s for slot 3", address, st.target, st.slot, want)
		}
		lane.forget(3)
		lane.dialProbe(context.Background(), 3)
		if want := netip.AddrPortFrom(netip.MustParseAddr(tc.want), bound); st.target != want {
			t.Errorf("%s: probe of a socket never seen dialled %s, want %s", address, st.target, want)
		}
		if err := lane.adopt(3, f); err != nil {
			t.Fatal(err)
		}
		lane.dialProbe(context.Background(), 3)
		if want := netip.AddrPortFrom(netip.MustParseAddr(tc.want), bound); st.target != want {
			t.Errorf("%s: probe of an adopted socket dialled %s, want %s", address, st.target, want)
		}
		f.Close()
	}
}

// freePort returns a port that no TCP socket is bound to now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// boundPort returns the port f listens on.
func boundPort(f *os.File) (uint16, error) {
	a, err := kernel.ListeningAddr(f)
	if err != nil {
		return 0, err
	}
	return uint16(a.(*net.TCPAddr).Port), nil
}

// countingSteering is a Steering whose slot s migrated s+1 requests.
type countingSteering struct{ Steering }

func (countingSteering) Stats(slot uint32) (loader.SlotStats, error) {
	return loader.SlotStats{Migrated: uint64(slot) + 1}, nil
}

func (countingSteering) Migrated() (uint64, error) { return 64 * 65 / 2, nil }

// TestSteeredLaneMigrated reads the counters of the slots the lane gave
// sockets, and every slot's of a lane re-adopted from pins, whose earlier
// slots it does not know.
func TestSteeredLaneMigrated(t *testing.T) {
	lane := &steeredLane{st: countingSteering{}, slots: 64, used: map[uint32]bool{1: true, 2: true}}
	if n := lane.migrated(); n != 2+3 {
		t.Errorf("migrated = %d, want 5 (slots 1 and 2)", n)
	}
	adopted := &steeredLane{st: countingSteering{}, slots: 64, all: true}
	if n := adopted.migrated(); n != 64*65/2 {
		t.Errorf("migrated of a re-adopted lane = %d, want every slot's, %d", n, 64*65/2)
	}
}

// TestSteeredRouterHasSlots: a router with a steered listener limits how
// many generations may hold sockets at once to the steering map's slots,
// so that no generation takes the slot of one that still runs.
func TestSteeredRouterHasSlots(t *testing.T) {
	svc := &config.ServiceConfig{Name: "web", Listeners: []config.ListenerConfig{{Name: "http", Address: "tcp://127.0.0.1:1"}}}
	r, err := newRouter(svc, api.ModeEBPF, 64, steerings{tcp: func(string, string, bool) (Steering, error) {
		return struct{ Steering }{}, nil
	}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if n := r.Slots(); n != 64 {
		t.Errorf("Slots() = %d, want 64", n)
	}
}

func TestReportedConns(t *testing.T) {
	var r reportedConns
	if _, ok := r.ReportedConnections("h3"); ok {
		t.Error("a count before any report")
	}
	r.note([]byte("STATUS=serving\nHANDOFF_CONNECTIONS=h3:17,alt:2"))
	r.note([]byte("HANDOFF_CONNECTIONS=h3:5,bad,x:-1,:3"))
	for name, want := range map[string]int64{"h3": 5, "alt": 2} {
		if n, ok := r.ReportedConnections(name); !ok || n != want {
			t.Errorf("%s: %d, %v; want %d", name, n, ok, want)
		}
	}
	for _, name := range []string{"x", "", "bad"} {
		if n, ok := r.ReportedConnections(name); ok {
			t.Errorf("malformed entry %q kept as %d", name, n)
		}
	}
}
