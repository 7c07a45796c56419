package loader

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireEBPF skips the test unless this process can load and attach the
// steering program (root on a kernel >= 5.14). In CI (CI=true) it fails
// instead, so a broken runner cannot pass by skipping.
func requireEBPF(t testing.TB) {
	t.Helper()
	if err := Probe(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("eBPF steering unavailable in CI: %v", err)
		}
		t.Skipf("eBPF steering unavailable: %v", err)
	}
}

// inNetns moves the test's goroutine onto a thread in a fresh network
// namespace with lo up, so tests own their ports and see the namespace's
// default sysctls. Sockets must be created on this goroutine; they stay in
// the namespace wherever they are used. The thread is never unlocked, so
// the runtime discards it when the test ends.
func inNetns(t testing.TB) {
	t.Helper()
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatalf("unshare network namespace: %v", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		t.Fatalf("get lo flags: %v", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		t.Fatalf("bring lo up: %v", err)
	}
}

// loadSteering loads a Steering pinned in a fresh directory under
// /sys/fs/bpf and removes it when the test ends.
func loadSteering(t *testing.T) *Steering {
	t.Helper()
	s, err := LoadSteering(testPinDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Remove(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func testPinDir(t testing.TB) string {
	b := make([]byte, 6)
	rand.Read(b)
	return filepath.Join(bpffsRoot, "handoff-test-"+hex.EncodeToString(b))
}

var loopback = [4]byte{127, 0, 0, 1}

// listen returns a non-blocking SO_REUSEPORT listening socket on
// 127.0.0.1:port and its port; port 0 picks one.
func listen(t *testing.T, port int) (int, int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: loopback, Port: port}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port
}

// dial returns a blocking client socket connected to 127.0.0.1:port.
func dial(t *testing.T, port int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: loopback, Port: port}); err != nil {
		t.Fatalf("connect to port %d: %v", port, err)
	}
	return fd
}

// acceptAll accepts from the non-blocking listeners until want
// connections came in or 5s passed, and returns the accepted sockets of
// each listener.
func acceptAll(t *testing.T, want int, listeners ...int) [][]int {
	t.Helper()
	got := make([][]int, len(listeners))
	total := 0
	deadline := time.Now().Add(5 * time.Second)
	for total < want && time.Now().Before(deadline) {
		for i, lfd := range listeners {
			nfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			if err != nil {
				t.Fatalf("accept: %v", err)
			}
			t.Cleanup(func() { unix.Close(nfd) })
			got[i] = append(got[i], nfd)
			total++
		}
		if total < want {
			time.Sleep(time.Millisecond)
		}
	}
	if total != want {
		t.Fatalf("accepted %d connections in 5s, want %d", total, want)
	}
	return got
}

// acceptQueueLen returns the length of a listener's accept queue.
func acceptQueueLen(t *testing.T, fd int) int {
	t.Helper()
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	return int(info.Unacked) // for a listener: the accept queue
}

func readMigrateReq(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func checkCounters(t *testing.T, s *Steering, slot uint32, want SlotCounters) {
	t.Helper()
	got, err := s.Counters(slot)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("counters of slot %d = %+v, want %+v", slot, got, want)
	}
}

func checkFallbacks(t *testing.T, s *Steering, want uint64) {
	t.Helper()
	got, err := s.Fallbacks()
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("fallbacks = %d, want %d", got, want)
	}
}

// group returns two listening sockets of one reuseport group with the
// steering program attached, in slots 1 and 2.
func group(t *testing.T, s *Steering) (int, int) {
	t.Helper()
	ln1, port := listen(t, 0)
	if err := s.Attach(ln1); err != nil {
		t.Fatal(err)
	}
	ln2, _ := listen(t, port)
	if err := s.Attach(ln2); err != nil {
		t.Fatal(err)
	}
	if err := s.Insert(1, ln1); err != nil {
		t.Fatal(err)
	}
	if err := s.Insert(2, ln2); err != nil {
		t.Fatal(err)
	}
	return ln1, ln2
}

func port(t *testing.T, fd int) int {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*unix.SockaddrInet4).Port
}

func TestSteering(t *testing.T) {
	requireEBPF(t)
	inNetns(t)
	s := loadSteering(t)
	ln1, ln2 := group(t, s)

	for _, slot := range []uint32{1, 2} {
		if err := s.Activate(slot); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Active(); err != nil || got != slot {
			t.Fatalf("Active() = %d, %v; want %d", got, err, slot)
		}
		for range 50 {
			dial(t, port(t, ln1))
		}
		got := acceptAll(t, 50, ln1, ln2)
		if n := len(got[slot-1]); n != 50 {
			t.Errorf("slot %d active: socket %d accepted %d of 50 connections", slot, slot, n)
		}
	}
	checkCounters(t, s, 1, SlotCounters{Selected: 50})
	checkCounters(t, s, 2, SlotCounters{Selected: 50})
	checkFallbacks(t, s, 0)
}

func TestMigration(t *testing.T) {
	requireEBPF(t)
	inNetns(t)
	// A fresh namespace has the kernel's default, 0: the migrate attach
	// type must be enough on its own.
	if v := readMigrateReq(t); v != "0" {
		t.Fatalf("net.ipv4.tcp_migrate_req = %s in a fresh namespace, want 0", v)
	}
	s := loadSteering(t)
	ln1, ln2 := group(t, s)
	p := port(t, ln1)
	if err := s.Activate(1); err != nil {
		t.Fatal(err)
	}

	const n = 20
	clients := make([]int, n)
	for i := range clients {
		clients[i] = dial(t, p)
		// The byte waits in the queued connection and must move with it.
		if _, err := unix.Write(clients[i], []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for acceptQueueLen(t, ln1) < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if q := acceptQueueLen(t, ln1); q != n {
		t.Fatalf("accept queue of socket 1 holds %d connections, want %d", q, n)
	}

	if err := s.Activate(2); err != nil {
		t.Fatal(err)
	}
	if err := unix.Close(ln1); err != nil {
		t.Fatal(err)
	}

	for _, fd := range acceptAll(t, n, ln2)[0] {
		echo(t, fd)
	}
	seen := make(map[byte]bool)
	for i, c := range clients {
		b := make([]byte, 1)
		if m, err := unix.Read(c, b); err != nil || m != 1 {
			t.Fatalf("client %d: read echo: %d bytes, %v", i, m, err)
		}
		if b[0] != byte(i) {
			t.Errorf("client %d: echo %d, want %d", i, b[0], i)
		}
		seen[b[0]] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct echoes, want %d", len(seen), n)
	}
	checkCounters(t, s, 1, SlotCounters{Selected: n})
	checkCounters(t, s, 2, SlotCounters{Migrated: n})
	checkFallbacks(t, s, 0)
	if v := readMigrateReq(t); v != "0" {
		t.Errorf("net.ipv4.tcp_migrate_req changed to %s", v)
	}
}

// echo reads one byte from the accepted socket fd and writes it back.
func echo(t *testing.T, fd int) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, 5000); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if m, err := unix.Read(fd, b); err != nil || m != 1 {
		t.Fatalf("server: read: %d bytes, %v", m, err)
	}
	if _, err := unix.Write(fd, b); err != nil {
		t.Fatal(err)
	}
}

func TestProbe(t *testing.T) {
	requireEBPF(t) // runs Probe; here that must succeed
}

func TestLoadSteeringReplacesPins(t *testing.T) {
	requireEBPF(t)
	inNetns(t)
	dir := testPinDir(t)
	first, err := LoadSteering(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	ln, _ := listen(t, 0)
	if err := first.Insert(3, ln); err != nil {
		t.Fatal(err)
	}
	if err := first.Activate(3); err != nil {
		t.Fatal(err)
	}

	second, err := LoadSteering(dir)
	if err != nil {
		t.Fatalf("second LoadSteering on the same dir: %v", err)
	}
	defer func() {
		if err := second.Remove(); err != nil {
			t.Error(err)
		}
	}()
	if got, err := second.Active(); err != nil || got != 0 {
		t.Fatalf("fresh steering: Active() = %d, %v; want 0", got, err)
	}
	// A socket sits in one sockarray at a time: the first Steering's map
	// still holds ln.
	ln2, _ := listen(t, 0)
	if err := second.Insert(5, ln2); err != nil {
		t.Fatal(err)
	}
	if err := second.Activate(5); err != nil {
		t.Fatal(err)
	}

	pinned, err := OpenPinned(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if got, err := pinned.Active(); err != nil || got != 5 {
		t.Fatalf("OpenPinned after replace: Active() = %d, %v; want 5 (the second load's)", got, err)
	}
	if err := pinned.Activate(7); err == nil {
		t.Error("Activate of an empty slot succeeded")
	}
	if _, err := OpenPinned(filepath.Join(dir, "missing")); err == nil {
		t.Error("OpenPinned of a missing dir succeeded")
	}
}
