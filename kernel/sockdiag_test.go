package kernel

import (
	"net"
	"os"
	"testing"
)

// TestConnCounterCountsOwnConnections counts this process's own server-side
// connections on a port through sock_diag and /proc/self/fd.
func TestConnCounterCountsOwnConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	const n = 5
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	pc, err := NewConnCounter(map[int]bool{port: true})
	if err != nil {
		t.Fatal(err)
	}
	// The client ends are on other ports, and the listener is not
	// ESTABLISHED: exactly the n accepted sockets count.
	if got, err := pc.Held(os.Getpid()); err != nil || got != n {
		t.Fatalf("held = %d, %v; want %d", got, err, n)
	}
}
