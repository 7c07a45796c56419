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
