package host

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/loader"
)

// TestCounterServicesOnOnePort counts, from one sock_diag dump, two
// fdpass services that listen on one port number on different
// addresses: each holds the connections of its own socket alone, whether
// its address is written out or is every address of its family.
func TestCounterServicesOnOnePort(t *testing.T) {
	for _, tc := range []struct {
		a, b   string // listener addresses, %d the port
		dialA  string // where a's clients connect
		dialB  string
		na, nb int
	}{
		{"tcp4://127.0.0.1:%d", "tcp://127.0.0.2:%d", "127.0.0.1", "127.0.0.2", 3, 2},
		{"tcp://:%d", "tcp6://[::1]:%d", "127.0.0.1", "::1", 3, 2},
		{"tcp://0.0.0.0:%d", "tcp6://[::1]:%d", "127.0.0.1", "::1", 2, 4},
		{"tcp6://:%d", "tcp://127.0.0.1:%d", "::1", "127.0.0.1", 3, 2},
		{"tcp6://[::]:%d", "tcp://127.0.0.1:%d", "::1", "127.0.0.1", 1, 3},
	} {
		t.Run(strings.ReplaceAll(tc.a+" "+tc.b, "%d", "P"), func(t *testing.T) {
			a, b, port := twoServices(t, tc.a, tc.b)
			dialN(t, tc.dialA, port, tc.na)
			dialN(t, tc.dialB, port, tc.nb)
			var c Counter
			gens := []*lifecycle.Counted{
				{Service: a, Mode: api.ModeFDPass, ID: 1, PID: os.Getpid(), Primary: true},
				{Service: b, Mode: api.ModeFDPass, ID: 1, PID: os.Getpid(), Primary: true},
			}
			var got [2]int64
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				c.Count(gens)
				for i, g := range gens {
					if g.Total == nil {
						t.Fatalf("service %s not counted", g.Service.Name)
					}
					got[i] = *g.Total
				}
				if got == [2]int64{int64(tc.na), int64(tc.nb)} {
					return
				}
			}
			t.Errorf("service a (%s) holds %d connections, b (%s) %d; want %d and %d",
				a.Listeners[0].Address, got[0], b.Listeners[0].Address, got[1], tc.na, tc.nb)
		})
	}
}

// twoServices listens as fdpass does for services a and b on the
// addresses a and b, with one port number, and returns their configs.
func twoServices(t *testing.T, a, b string) (*config.ServiceConfig, *config.ServiceConfig, int) {
	t.Helper()
	for range 20 {
		_, p, _ := net.SplitHostPort(unusedAddr(t))
		port, _ := strconv.Atoi(p)
		fa := listenAt(t, fmt.Sprintf(a, port))
		if fa == nil {
			continue
		}
		fb := listenAt(t, fmt.Sprintf(b, port))
		if fb == nil {
			fa.Close()
			continue
		}
		t.Cleanup(func() { fa.Close(); fb.Close() })
		svc := func(name, addr string) *config.ServiceConfig {
			return &config.ServiceConfig{Name: name, Listeners: []config.ListenerConfig{{Name: "http", Address: fmt.Sprintf(addr, port)}}}
		}
		return svc("a", a), svc("b", b), port
	}
	t.Fatalf("no port free for both %s and %s", a, b)
	return nil, nil, 0
}

// listenAt makes the socket of an fdpass listener at address, as
// handoffd does; nil when the address is in use.
func listenAt(t *testing.T, address string) *os.File {
	t.Helper()
	f, err := listenShared(config.ListenerConfig{Name: "http", Address: address, Backlog: 64})
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// dialN connects n clients to host:port; they wait in the accept queue
// until the test ends.
func dialN(t *testing.T, host string, port, n int) {
	t.Helper()
	for range n {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
}

// fakeProcesses is a ProcessCounter whose listing of the host's processes
// is given, and that counts one connection per process asked for.
type fakeProcesses struct {
	parents map[int]int
	asked   [][]int
}

func (f *fakeProcesses) Count(pids []int, ports []uint16) (map[uint16]loader.PortHeld, error) {
	f.asked = append(f.asked, pids)
	out := map[uint16]loader.PortHeld{}
	for _, p := range ports {
		out[p] = loader.PortHeld{Connections: int64(len(pids))}
	}
	return out, nil
}

func (f *fakeProcesses) Parents() (map[int]int, error) { return f.parents, nil }

// TestCounterProcessTreeWithALoop counts a generation from a listing of
// the host's processes that is not a tree: the listing is no snapshot,
// and a pid that was reused while it ran can make a process its own
// ancestor. Each process is counted once, and the count ends.
func TestCounterProcessTreeWithALoop(t *testing.T) {
	const gen, worker, grandchild = 100, 200, 300
	procs := &fakeProcesses{parents: map[int]int{gen: grandchild, worker: gen, grandchild: worker}}
	c := Counter{Procs: procs}
	svc := &config.ServiceConfig{Name: "a", Listeners: []config.ListenerConfig{{Name: "http", Address: "tcp://127.0.0.1:8080"}}}
	g := &lifecycle.Counted{Service: svc, Mode: api.ModeEBPF, ID: 1, PID: gen, Primary: true}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Count([]*lifecycle.Counted{g})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Count did not return in 5s")
	}
	if len(procs.asked) != 1 || len(procs.asked[0]) != 3 {
		t.Fatalf("Count asked for processes %v, want %d, %d and %d once each", procs.asked, gen, worker, grandchild)
	}
	if g.Total == nil || *g.Total != 3 {
		t.Errorf("generation holds %v connections, want 3", g.Total)
	}
}
