package host

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
)

// TestSharedLaneListensUntilClose checks what keeps fdpass clients from
// ever being refused: every generation gets a copy of one socket, and
// handoffd's own copy keeps it listening while no generation holds one
// (one crashed, the next is not started yet), so connections wait in its
// queue for the next generation. Only closing the router (the service
// stops) closes the socket.
func TestSharedLaneListensUntilClose(t *testing.T) {
	for _, tc := range []struct {
		name    string
		address func(t *testing.T) string
	}{
		{"tcp", func(t *testing.T) string { return "tcp://" + unusedAddr(t) }},
		{"unix", func(t *testing.T) string { return "unix://" + filepath.Join(t.TempDir(), "web.sock") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := &config.ServiceConfig{Name: "web", Listeners: []config.ListenerConfig{
				{Name: "http", Address: tc.address(t), Backlog: 16}}}
			r, err := newRouter(svc, api.ModeFDPass, 0, steerings{}, false)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			network, addr, _ := config.ParseAddress(svc.Listeners[0].Address)

			first, err := r.Prepare(1)
			if err != nil {
				t.Fatal(err)
			}
			second, err := r.Prepare(2)
			if err != nil {
				t.Fatal(err)
			}
			if a, b := inode(t, first[0]), inode(t, second[0]); a != b {
				t.Fatalf("generations 1 and 2 got sockets %d and %d; want copies of one socket", a, b)
			}
			closeFiles(first)
			closeFiles(second)

			c, err := net.DialTimeout(network, addr, 2*time.Second)
			if err != nil {
				t.Fatalf("dial with no generation holding the socket: %v; want the connection to wait in handoffd's copy", err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}

			third, err := r.Prepare(3)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.FileListener(third[0])
			if err != nil {
				t.Fatal(err)
			}
			ln.(interface{ SetDeadline(time.Time) error }).SetDeadline(time.Now().Add(5 * time.Second))
			got, err := ln.Accept()
			if err != nil {
				t.Fatalf("generation 3 took no waiting connection: %v", err)
			}
			buf := make([]byte, 4)
			got.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(got, buf); err != nil || string(buf) != "ping" {
				t.Errorf("generation 3 read %q, %v from the waiting connection; want \"ping\"", buf, err)
			}
			got.Close()
			ln.Close()
			closeFiles(third)

			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if c, err := net.DialTimeout(network, addr, 2*time.Second); err == nil {
				c.Close()
				t.Fatal("dial after the router closed connected; want it refused")
			} else if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
				t.Fatalf("dial after the router closed: %v; want connection refused (or no socket file)", err)
			}
		})
	}
}

// unusedAddr returns 127.0.0.1:PORT with a port that was free a moment
// ago; the router binds it again with SO_REUSEADDR.
func unusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Fatalf("no Stat_t for %s", f.Name())
	}
	return st.Ino
}
