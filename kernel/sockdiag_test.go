package kernel

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// serve listens on network's loopback and holds n accepted connections;
// it returns the port, the accepted connections' inodes and the dialed
// client conns, all closed when the test ends.
func serve(t *testing.T, network string, n int) (uint16, []uint64, []net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "tcp6" {
		addr = "[::1]:0"
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var inodes []uint64
	var clients []net.Conn
	for range n {
		c, err := net.Dial(network, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		f, err := s.(*net.TCPConn).File()
		if err != nil {
			t.Fatal(err)
		}
		var st = mustStat(t, f)
		f.Close()
		inodes = append(inodes, st)
	}
	return uint16(ln.Addr().(*net.TCPAddr).Port), inodes, clients
}

func mustStat(t *testing.T, f *os.File) uint64 {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestConnectionsFiltersPorts lists the connections of some ports, IPv4
// and IPv6, through the kernel's port filter: exactly the accepted
// sockets of those ports, none of another port, and none of the clients.
func TestConnectionsFiltersPorts(t *testing.T) {
	p4, in4, _ := serve(t, "tcp4", 5)
	p6, in6, _ := serve(t, "tcp6", 3)
	other, _, _ := serve(t, "tcp4", 2)
	// A long filter: offsets past what 8 bits hold, the asked ports last.
	var ports []uint16
	for p := range uint16(300) {
		if q := 1 + p; q != p4 && q != p6 && q != other {
			ports = append(ports, q)
		}
	}
	ports = append(ports, p4, p6)
	conns, err := Connections(ports)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, c := range conns {
		if !slices.Contains(ports, c.Port) {
			t.Errorf("connection %+v of a port not asked for", c)
		}
		if c.Port != p4 && c.Port != p6 {
			continue // another server of the host on a low port
		}
		if c.Port == p4 && (c.Addr.String() != "127.0.0.1" || c.Family != syscall.AF_INET) ||
			c.Port == p6 && (c.Addr.String() != "::1" || c.Family != syscall.AF_INET6) {
			t.Errorf("connection %+v: wrong local address or family", c)
		}
		got = append(got, c.Inode)
	}
	want := append(slices.Clone(in4), in6...)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Connections(%d ports) inodes = %v, want %v", len(ports), got, want)
	}
	if conns, err := Connections([]uint16{other}); err != nil || len(conns) != 2 {
		t.Errorf("Connections(%d) = %d connections, %v; want 2", other, len(conns), err)
	}
}

// TestConnectionsMapped lists an IPv4 client's connection to a dual-stack
// IPv6 listener as IPv6, with its local address unmapped.
func TestConnectionsMapped(t *testing.T) {
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	c, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conns, err := Connections([]uint16{uint16(port)})
	if err != nil {
		t.Fatal(err)
	}
	want := Conn{Family: syscall.AF_INET6, Addr: netip.MustParseAddr("127.0.0.1"), Port: uint16(port)}
	if len(conns) != 1 || conns[0] != want {
		t.Errorf("Connections(%d) = %+v, want %+v (queued: no inode)", port, conns, want)
	}
}

// TestSocketInodes finds the accepted sockets among this process's fds.
func TestSocketInodes(t *testing.T) {
	_, inodes, _ := serve(t, "tcp4", 4)
	own, err := SocketInodes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range inodes {
		if !slices.Contains(own, ino) {
			t.Errorf("socket %d not among the process's socket inodes", ino)
		}
	}
}

// TestDescendants finds the grandchildren of a process.
func TestDescendants(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 30 & sleep 30 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, pid := range Descendants(cmd.Process.Pid)[1:] {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
	}()
	var got []int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got = Descendants(cmd.Process.Pid); len(got) == 3 {
			break
		}
	}
	if len(got) != 3 || got[0] != cmd.Process.Pid {
		t.Errorf("Descendants(%d) = %v, want it and its two children", cmd.Process.Pid, got)
	}
	if got := Descendants(1 << 30); len(got) != 1 {
		t.Errorf("Descendants of no process = %v, want just the pid", got)
	}
}
