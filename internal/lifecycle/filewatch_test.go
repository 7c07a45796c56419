package lifecycle

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestWatchDebounce checks that a file written many times, replaced by a
// rename or touched makes one swap each time once it is quiet, and that
// removing it or changing a file next to it makes none.
func TestWatchDebounce(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	if err := os.WriteFile(bin, []byte("v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	var swaps atomic.Int32
	const quiet = 150 * time.Millisecond
	w, err := newFileWatcher(dir, []string{"app"}, quiet, func(context.Context) error { swaps.Add(1); return nil }, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	expect := func(what string, want int32) {
		t.Helper()
		time.Sleep(3 * quiet)
		if n := swaps.Load(); n != want {
			t.Fatalf("%s: %d swaps in all, want %d", what, n, want)
		}
	}

	// A copy in progress: many writes closer together than quiet.
	f, err := os.OpenFile(bin, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 8 {
		f.Write([]byte("chunk"))
		time.Sleep(quiet / 5)
	}
	f.Close()
	expect("eight writes", 1)

	// Installed by rename, as install(1) and package managers do.
	tmp := filepath.Join(dir, ".app.new")
	os.WriteFile(tmp, []byte("v2"), 0o755)
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	expect("replace by rename", 2)

	now := time.Now()
	os.Chtimes(bin, now, now)
	expect("touch", 3)

	os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o644)
	os.Remove(bin)
	expect("a file next to it, and removal", 3)
}

// TestWatchStop checks that stop ends a swap the fileWatcher is waiting on.
func TestWatchStop(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	os.WriteFile(bin, nil, 0o755)
	started := make(chan struct{})
	w, err := newFileWatcher(dir, []string{bin}, 10*time.Millisecond, func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, []byte("v2"), 0o755)
	<-started
	done := make(chan struct{})
	go func() { w.stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("stop did not end the fileWatcher's swap")
	}
}
