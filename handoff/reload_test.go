package handoff

import (
	"context"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// hangup sends SIGHUP to this test process.
func hangup(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOnReload checks that SIGHUPs run the callback one at a time, that
// a drain stops it, and that a SIGHUP after the drain began neither runs
// it nor ends the process.
func TestOnReload(t *testing.T) {
	reloads.mu.Lock()
	reloads.draining = false // other tests of the package drained already
	reloads.mu.Unlock()

	var calls, running, overlapped atomic.Int32
	release := make(chan struct{})
	stop := OnReload(func() {
		if running.Add(1) > 1 {
			overlapped.Add(1)
		}
		calls.Add(1)
		<-release
		running.Add(-1)
	})
	defer stop()

	hangup(t)
	waitUntil(t, "first call", func() bool { return calls.Load() == 1 })
	// Three more while the first runs: serial, so they make one more call.
	for range 3 {
		hangup(t)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	waitUntil(t, "second call", func() bool { return calls.Load() == 2 })
	time.Sleep(50 * time.Millisecond)
	if n := calls.Load(); n != 2 || overlapped.Load() != 0 {
		t.Fatalf("%d calls, %d overlapping; want 2 calls one after the other", n, overlapped.Load())
	}

	d := NewDrainer(&http.Server{})
	if err := d.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	hangup(t) // ignored now: the test process must live on
	time.Sleep(100 * time.Millisecond)
	if n := calls.Load(); n != 2 {
		t.Fatalf("callback ran %d times after the drain began", n-2)
	}
	if s := OnReload(func() { t.Error("OnReload after the drain ran") }); s == nil {
		t.Fatal("OnReload returned no stop function")
	}
	hangup(t)
	time.Sleep(50 * time.Millisecond)
}

// TestOnReloadTellsHandoffd: OnReload says HANDOFF_RELOAD=1 on
// NOTIFY_SOCKET, and Ready repeats it while a handler runs, so that
// handoffd sends SIGHUP only to a process that handles it.
func TestOnReloadTellsHandoffd(t *testing.T) {
	reloads.mu.Lock()
	reloads.draining = false // other tests of the package drained already
	reloads.mu.Unlock()
	notify := listenNotify(t, "reload")
	read := func() string {
		t.Helper()
		notify.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 128)
		n, err := notify.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return string(buf[:n])
	}
	stop := OnReload(func() {})
	if got := read(); got != "HANDOFF_RELOAD=1" {
		t.Errorf("OnReload sent %q, want HANDOFF_RELOAD=1", got)
	}
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "READY=1\nHANDOFF_RELOAD=1" {
		t.Errorf("Ready sent %q, want READY=1 and HANDOFF_RELOAD=1", got)
	}
	stop()
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "READY=1" {
		t.Errorf("Ready without a handler sent %q, want READY=1 alone", got)
	}
}
