package loader

import (
	"io"
	"log/slog"
	"os"
	"testing"
	"time"
)

// TestKernelKeepsTrackingBases gives two listeners their tracking ranges,
// counts a connection on each, then opens them again from their pins the
// other way round, as a restarted handoffd whose config lists them in
// another order does: each keeps its range and its count, and a new
// listener gets a range nobody pinned.
func TestKernelKeepsTrackingBases(t *testing.T) {
	f, tr, k := countedKernel(t)
	want := map[string]struct {
		base  uint32
		conns int
	}{"a": {0, 1}, "b": {Slots, 2}}
	for _, name := range []string{"a", "b"} {
		s, err := k.Steering(name, "http", false)
		if err != nil {
			t.Fatal(err)
		}
		if s.base != want[name].base || !s.Counted() {
			t.Fatalf("listener %s: base %d (counted %v), want %d", name, s.base, s.Counted(), want[name].base)
		}
		// Insert tags the socket: its connections count in base+1.
		ln := serveInSlot1(t, f, s)
		for range want[name].conns {
			f.dial(t, port(t, ln))
		}
		f.acceptN(t, ln, want[name].conns)
		waitHeld(t, tr, want[name].base+1, int64(want[name].conns))
		s.Close() // the pins stay, as when handoffd exits
	}

	again := newKernel(k.dir, tr, k.log)
	for _, name := range []string{"b", "a"} {
		s, err := again.Steering(name, "http", true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Remove() })
		st, err := s.Stats(1)
		if err != nil || s.base != want[name].base || st.Held != int64(want[name].conns) {
			t.Errorf("listener %s re-opened: base %d, held %d (%v); want base %d, held %d",
				name, s.base, st.Held, err, want[name].base, want[name].conns)
		}
	}
	c, err := again.Steering("c", "http", false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove()
	if c.base != 2*Slots {
		t.Errorf("a new listener got base %d, want %d: the first range nobody pinned", c.base, 2*Slots)
	}
}

// TestKernelWithoutProbes steers without counting when the probes did not
// load.
func TestKernelWithoutProbes(t *testing.T) {
	requireEBPF(t)
	dir := testPinDir(t)
	t.Cleanup(func() { os.RemoveAll(dir) })
	k := newKernel(dir, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s, err := k.Steering("a", "http", false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Remove()
	if _, err := s.Stats(0); s.Counted() || err != ErrNotCounted {
		t.Errorf("uncounted steering: Counted %v, Stats error %v", s.Counted(), err)
	}
}

// TestKernelReusesARemovedRange removes a listener whose connections are
// still open, then loads a new one: it gets the freed range, and its
// Insert forgets what the old listener counted there, so the new count
// starts at zero and the old connections' end leaves it alone.
func TestKernelReusesARemovedRange(t *testing.T) {
	f, tr, k := countedKernel(t)

	a, err := k.Steering("a", "http", false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := k.Steering("b", "http", false)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Remove()
	lnA := serveInSlot1(t, f, a)
	for range 2 {
		f.dial(t, port(t, lnA))
	}
	old := f.acceptN(t, lnA, 2)
	waitHeld(t, tr, a.base+1, 2)
	f.close(t, lnA) // the service is gone; two of its connections remain
	if err := a.Remove(); err != nil {
		t.Fatal(err)
	}

	c, err := k.Steering("c", "http", false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove()
	if c.base != a.base {
		t.Fatalf("a new listener got base %d, want %d: the range the removed one freed", c.base, a.base)
	}
	lnC := serveInSlot1(t, f, c)
	waitHeld(t, tr, c.base+1, 0)
	f.dial(t, port(t, lnC))
	f.acceptN(t, lnC, 1)
	waitHeld(t, tr, c.base+1, 1)
	for _, fd := range old {
		f.close(t, fd)
	}
	time.Sleep(50 * time.Millisecond)
	waitHeld(t, tr, c.base+1, 1)
}

// countedKernel moves the test into a network namespace of its own and
// returns a Kernel over freshly loaded probes, pinning under a directory
// of its own.
func countedKernel(t *testing.T) (fds, *Tracking, *Kernel) {
	t.Helper()
	requireTracking(t)
	inNetns(t)
	f := newFDs(t)
	tr := loadTracking(t)
	dir := testPinDir(t)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return f, tr, newKernel(dir, tr, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// serveInSlot1 makes a listener of its own group for s, inserts it in
// slot 1 and makes that slot active.
func serveInSlot1(t *testing.T, f fds, s *Steering) int {
	t.Helper()
	ln := f.listen(t, 0, 16)
	if err := s.Attach(ln); err != nil {
		t.Fatal(err)
	}
	if err := s.Insert(1, ln); err != nil {
		t.Fatal(err)
	}
	if err := s.Activate(1); err != nil {
		t.Fatal(err)
	}
	return ln
}
