package handoff

import (
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
	"golang.org/x/sys/unix"
)

// fakeNotify is handoffd's end of NOTIFY_SOCKET in a test: a unixgram
// socket that NOTIFY_SOCKET names.
type fakeNotify struct {
	t *testing.T
	c *net.UnixConn
}

func newFakeNotify(t *testing.T) *fakeNotify {
	t.Helper()
	dir, err := os.MkdirTemp("", "hs") // short: socket paths hold 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := dir + "/notify"
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", addr)
	return &fakeNotify{t: t, c: c}
}

// read returns the next datagram, parsed, and the files attached to it.
func (n *fakeNotify) read() (stateproto.Message, []*os.File) {
	n.t.Helper()
	buf := make([]byte, stateproto.MaxMessage)
	oob := make([]byte, kernel.RightsSpace(stateproto.MaxFDs))
	n.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	k, oobn, flags, _, err := n.c.ReadMsgUnix(buf, oob)
	if err != nil {
		n.t.Fatalf("read NOTIFY_SOCKET: %v", err)
	}
	fds, err := kernel.ParseRights(oob[:oobn], flags)
	if err != nil {
		n.t.Fatal(err)
	}
	var files []*os.File
	for _, fd := range fds {
		f := os.NewFile(uintptr(fd), "received")
		n.t.Cleanup(func() { f.Close() })
		files = append(files, f)
	}
	return stateproto.Parse(buf[:k]), files
}

// memfdHolding returns a sealed memfd that holds s.
func memfdHolding(t *testing.T, s string) *os.File {
	t.Helper()
	f, err := kernel.SealedMemfd("test", func(w io.Writer) error {
		_, err := io.WriteString(w, s)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func readAll(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sameFile(t *testing.T, a, b *os.File) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(a.Fd()), &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(int(b.Fd()), &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func TestStoreSendsFDStore(t *testing.T) {
	n := newFakeNotify(t)
	a, b := memfdHolding(t, "a"), memfdHolding(t, "b")
	defer a.Close()
	defer b.Close()
	if err := Store("cache", a, b); err != nil {
		t.Fatal(err)
	}
	m, files := n.read()
	if m[stateproto.FDStore] != "1" || m[stateproto.FDName] != "cache" || len(m) != 2 {
		t.Errorf("Store sent %v, want FDSTORE=1 FDNAME=cache", m)
	}
	if len(files) != 2 || !sameFile(t, files[0], a) || !sameFile(t, files[1], b) {
		t.Fatalf("Store sent %d files, want a and b in order", len(files))
	}

	if err := Unstore("cache"); err != nil {
		t.Fatal(err)
	}
	m, files = n.read()
	if m[stateproto.FDStoreRemove] != "1" || m[stateproto.FDName] != "cache" || len(files) != 0 {
		t.Errorf("Unstore sent %v with %d files, want FDSTOREREMOVE=1 FDNAME=cache", m, len(files))
	}
}

func TestStoreRefusesBadNames(t *testing.T) {
	newFakeNotify(t)
	f := memfdHolding(t, "x")
	defer f.Close()
	for name, want := range map[string]string{
		"":                       "empty",
		"a:b":                    "':'",
		strings.Repeat("x", 256): "over 255",
		stateproto.StateName:     "reserved",
		stateproto.FinalName:     "reserved",
	} {
		if err := Store(name, f); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Store(%.20q): %v, want an error with %q", name, err, want)
		}
	}
	if err := Store("cache"); err == nil || !strings.Contains(err.Error(), "want 1 to") {
		t.Errorf("Store without files: %v, want an error", err)
	}
}

func TestStoreWithoutNotifySocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	f := memfdHolding(t, "x")
	defer f.Close()
	if err := Store("cache", f); err != nil {
		t.Errorf("Store without NOTIFY_SOCKET: %v, want nil", err)
	}
	if err := Unstore("cache"); err != nil {
		t.Errorf("Unstore without NOTIFY_SOCKET: %v, want nil", err)
	}
}

func TestStoredAfterListeners(t *testing.T) {
	httpFile, httpAddr := listenerFile(t)
	adminFile, _ := listenerFile(t)
	a, b, c := memfdHolding(t, "a"), memfdHolding(t, "b"), memfdHolding(t, "c")
	// A stored listening socket named like no listener, as systemd's fd
	// store is often used: handoffd says where the listeners end.
	kept, keptAddr := listenerFile(t)
	inherit(t, os.Getpid(), []string{"http", "admin", "cache", "http", "cache", "kept"}, httpFile, adminFile, a, b, c, kept)
	t.Setenv(stateproto.EnvListenFDs, "2")

	if _, err := Listen("kept", ""); err == nil || !strings.Contains(err.Error(), "fd store") {
		t.Errorf("Listen(kept): %v, want an error: a stored fd is no listener", err)
	}
	ln, err := Listen("http", "")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != httpAddr {
		t.Errorf("Listen(http) took %s, want the listener %s", ln.Addr(), httpAddr)
	}
	cache := Stored("cache")
	if len(cache) != 2 || readAll(t, cache[0]) != "a" || readAll(t, cache[1]) != "c" {
		t.Fatalf("Stored(cache) = %d files, want a and c in order", len(cache))
	}
	for _, f := range append(cache, Stored("http")...) {
		defer f.Close()
		if flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("stored fd %d is not close-on-exec", f.Fd())
		}
	}
	if again := Stored("cache"); len(again) != 0 {
		t.Errorf("Stored(cache) again returned %d files, want none: each is taken once", len(again))
	}
	k := Stored("kept")
	if len(k) != 1 {
		t.Fatalf("Stored(kept) = %d files, want 1", len(k))
	}
	defer k[0].Close()
	if addr, err := kernel.ListeningAddr(k[0]); err != nil || addr.String() != keptAddr {
		t.Errorf("Stored(kept) is %v (%v), want the stored socket %s", addr, err, keptAddr)
	}
	if got := Stored("none"); got != nil {
		t.Errorf("Stored(none) = %v, want nil", got)
	}
	if _, ok := os.LookupEnv(stateproto.EnvListenFDs); ok {
		t.Errorf("%s still set", stateproto.EnvListenFDs)
	}
}

// Without HANDOFF_LISTEN_FDS (systemd), the listeners are the leading
// listening sockets with distinct names.
func TestStoredWithoutListenerCount(t *testing.T) {
	httpFile, _ := listenerFile(t)
	again, _ := listenerFile(t) // a stored socket named like the listener
	memfd := memfdHolding(t, "m")
	inherit(t, os.Getpid(), []string{"http", "http", "state"}, httpFile, again, memfd)
	os.Unsetenv(stateproto.EnvListenFDs)
	ln, err := Listen("http", "")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := Listen("state", ""); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen(state): %v, want an error: a memfd is not a socket", err)
	}
	for name, want := range map[string]int{"http": 1, "state": 1} {
		got := Stored(name)
		if len(got) != want {
			t.Errorf("Stored(%s) = %d files, want %d", name, len(got), want)
		}
		closeFiles(got)
	}
}

func TestStoredBadListenerCount(t *testing.T) {
	f, _ := listenerFile(t)
	inherit(t, os.Getpid(), []string{"http"}, f)
	t.Setenv(stateproto.EnvListenFDs, "2")
	if _, err := Listen("http", ""); err == nil || !strings.Contains(err.Error(), stateproto.EnvListenFDs) {
		t.Errorf("Listen with %s=2 of 1: %v, want an error naming it", stateproto.EnvListenFDs, err)
	}
	if got := Stored("http"); got != nil {
		t.Errorf("Stored after a bad environment = %v, want nil", got)
	}
}
