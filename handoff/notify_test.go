package handoff

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestReady(t *testing.T) {
	dir, err := os.MkdirTemp("", "hn") // short: socket paths hold 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for _, addr := range []string{
		filepath.Join(dir, "notify"),
		fmt.Sprintf("@handoff-test/%d/%d", os.Getpid(), time.Now().UnixNano()),
	} {
		t.Run(addr, func(t *testing.T) {
			c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			t.Setenv("NOTIFY_SOCKET", addr)
			if err := Ready(); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 256)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(buf[:n]); got != "READY=1" {
				t.Errorf("got %q, want READY=1", got)
			}
		})
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Ready(); err != nil {
		t.Errorf("Ready without NOTIFY_SOCKET: %v, want nil", err)
	}
}

func TestNotifyErrors(t *testing.T) {
	for _, addr := range []string{"relative/path", "/nonexistent/handoff/notify"} {
		t.Setenv("NOTIFY_SOCKET", addr)
		if err := Ready(); err == nil {
			t.Errorf("NOTIFY_SOCKET=%s: want an error", addr)
		}
	}
}
