package handoff

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// testFDStart is where the tests place "inherited" fds: far above what
// the test binary has open, standing in for fd 3.
const testFDStart = 600

// inherit sets up the environment of a process that handoffd started with
// files as its LISTEN_FDS, placed at testFDStart, testFDStart+1, ...
// names is LISTEN_FDNAMES, or unset when nil.
func inherit(t *testing.T, pid int, names []string, files ...*os.File) {
	t.Helper()
	resetInherited(t)
	for i, f := range files {
		fd := testFDStart + i
		if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
			t.Fatalf("dup to fd %d: %v", fd, err)
		}
		f.Close()
		t.Cleanup(func() { unix.Close(fd) }) // EBADF once Listen took it
	}
	t.Setenv("LISTEN_FDS", strconv.Itoa(len(files)))
	t.Setenv("LISTEN_PID", strconv.Itoa(pid))
	if names != nil {
		t.Setenv("LISTEN_FDNAMES", strings.Join(names, ":"))
	} else {
		t.Setenv("LISTEN_FDNAMES", "")
		os.Unsetenv("LISTEN_FDNAMES")
	}
}

func resetInherited(t *testing.T) {
	t.Helper()
	old := listenFDsStart
	listenFDsStart = testFDStart
	clear := func() {
		inherited.once = sync.Once{}
		inherited.set, inherited.names, inherited.fds, inherited.stored, inherited.err = false, nil, nil, nil, nil
	}
	clear()
	t.Cleanup(func() { listenFDsStart = old; clear() })
}

// listenerFile returns a listening TCP socket as a file, and its address.
func listenerFile(t *testing.T) (*os.File, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // the file holds its own fd of the socket
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	return f, ln.Addr().String()
}

func TestListenInherited(t *testing.T) {
	httpFile, httpAddr := listenerFile(t)
	adminFile, adminAddr := listenerFile(t)
	inherit(t, os.Getpid(), []string{"http", "admin"}, httpFile, adminFile)

	admin, err := Listen("admin", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		if v, ok := os.LookupEnv(name); ok {
			t.Errorf("%s=%q still set after Listen", name, v)
		}
	}
	http, err := Listen("http", "127.0.0.1:1")
	if err != nil {
		t.Fatal("second Listen must use the cached set:", err)
	}
	defer http.Close()
	if got := admin.Addr().String(); got != adminAddr {
		t.Errorf("admin listener on %s, want %s", got, adminAddr)
	}
	if got := http.Addr().String(); got != httpAddr {
		t.Errorf("http listener on %s, want %s", got, httpAddr)
	}
	assertAccepts(t, admin)

	// The inherited fd must be closed: otherwise closing the listener
	// would leave the socket listening.
	admin.Close()
	if c, err := net.Dial("tcp", adminAddr); err == nil {
		c.Close()
		t.Fatal("socket still accepts connections after its listener was closed")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after close: %v, want connection refused", err)
	}

	if _, err := Listen("admin", ""); err == nil || !strings.Contains(err.Error(), "already taken") {
		t.Errorf("Listen(admin) again: %v, want an already-taken error", err)
	}
	_, err = Listen("metrics", "")
	if err == nil || !strings.Contains(err.Error(), `"http", "admin"`) {
		t.Errorf("Listen(metrics): %v, want an error naming http and admin", err)
	}
}

func TestListenOneUnnamed(t *testing.T) {
	f, addr := listenerFile(t)
	inherit(t, os.Getpid(), nil, f)
	ln, err := Listen("whatever", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != addr {
		t.Errorf("listener on %s, want %s", ln.Addr(), addr)
	}
}

func TestListenOtherPID(t *testing.T) {
	f, addr := listenerFile(t)
	inherit(t, os.Getpid()+1, []string{"http"}, f)
	ln, err := Listen("http", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() == addr {
		t.Error("took the fds of another process; want a listener of its own")
	}
	if _, ok := os.LookupEnv("LISTEN_FDS"); ok {
		t.Error("LISTEN_FDS still set")
	}
}

func TestListenStandalone(t *testing.T) {
	resetInherited(t)
	t.Setenv("LISTEN_FDS", "")
	os.Unsetenv("LISTEN_FDS")
	ln, err := Listen("http", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	assertAccepts(t, ln)
}

func TestListenNotListening(t *testing.T) {
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpFile, _ := udp.(*net.UDPConn).File()
	udp.Close()

	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0) // never listen(2)ed
	if err != nil {
		t.Fatal(err)
	}
	streamFile := os.NewFile(uintptr(sock), "stream")

	inherit(t, os.Getpid(), []string{"udp", "stream"}, udpFile, streamFile)
	for name, want := range map[string]string{"udp": "not a stream socket", "stream": "not listening"} {
		if _, err := Listen(name, ""); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Listen(%s): %v, want %q", name, err, want)
		}
	}
}

func TestListenBadEnv(t *testing.T) {
	f, _ := listenerFile(t)
	inherit(t, os.Getpid(), []string{"a", "b"}, f)
	if _, err := Listen("a", ""); err == nil || !strings.Contains(err.Error(), "LISTEN_FDNAMES") {
		t.Errorf("two names for one fd: %v, want an error about LISTEN_FDNAMES", err)
	}
}

func assertAccepts(t *testing.T, ln net.Listener) {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}
