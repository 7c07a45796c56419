package host

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lockedBuffer is an io.Writer that the follower's goroutine and the test
// may use at once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestLogFollower follows three generations' stderr files with one
// follower: what each writes reaches handoffd's stderr shortly after the
// write, a re-adopted one's earlier output is skipped, finish copies the
// last bytes and removes the file, and the follower's goroutine ends with
// the last log.
func TestLogFollower(t *testing.T) {
	dir := t.TempDir()
	var f logFollower
	var out lockedBuffer
	var logs []*stderrLog
	for gen := range 3 {
		l, err := openStderrLog(dir, "svc", gen)
		if err != nil {
			t.Fatal(err)
		}
		if gen == 2 {
			// Written before a restart of handoffd: already copied.
			fmt.Fprintln(l.child, "before the restart")
		}
		l.follow(&f, &out, gen == 2)
		logs = append(logs, l)
	}
	if f.w == nil {
		t.Fatal("no inotify watcher")
	}
	for gen, l := range logs {
		fmt.Fprintf(l.child, "line %d\n", gen)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !(strings.Contains(out.String(), "line 0") && strings.Contains(out.String(), "line 1") && strings.Contains(out.String(), "line 2")) {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s handoffd's stderr holds %q, want every generation's line", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if strings.Contains(out.String(), "before the restart") {
		t.Errorf("a re-adopted generation's earlier output was copied again: %q", out.String())
	}
	// The last bytes, written just before the exit, come with finish.
	fmt.Fprintln(logs[0].child, "last words")
	for _, l := range logs {
		l.child.Close()
		l.finish()
		if _, err := os.Stat(l.path); !os.IsNotExist(err) {
			t.Errorf("%s still there after finish: %v", l.path, err)
		}
	}
	if !strings.Contains(out.String(), "last words") || logs[0].tail(1) != "last words" {
		t.Errorf("last words lost: stderr %q, tail %q", out.String(), logs[0].tail(1))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.w != nil || len(f.logs) != 0 {
		t.Errorf("follower still watching %d logs after the last finished", len(f.logs))
	}
}

// slowWriter is a handoffd stderr that takes pause per write (a journal
// that falls behind), until fast is set; it notes when it sees want.
type slowWriter struct {
	pause time.Duration
	want  []byte
	fast  atomic.Bool
	seen  atomic.Bool
}

func (w *slowWriter) Write(p []byte) (int, error) {
	if bytes.Contains(p, w.want) {
		w.seen.Store(true)
	}
	if !w.fast.Load() {
		time.Sleep(w.pause)
	}
	return len(p), nil
}

// TestLogFollowerFlood floods one generation's stderr faster than
// handoffd's stderr takes it: another generation's line still comes
// through within a few seconds, not after the flood has been copied.
func TestLogFollowerFlood(t *testing.T) {
	dir := t.TempDir()
	var f logFollower
	out := &slowWriter{pause: 20 * time.Millisecond, want: []byte("a line of b")}
	flood, err := openStderrLog(dir, "a", 1)
	if err != nil {
		t.Fatal(err)
	}
	quiet, err := openStderrLog(dir, "b", 1)
	if err != nil {
		t.Fatal(err)
	}
	flood.follow(&f, out, false)
	quiet.follow(&f, out, false)
	defer func() {
		out.fast.Store(true)
		for _, l := range []*stderrLog{flood, quiet} {
			l.child.Close()
			l.finish()
		}
	}()
	// 16 MiB: at 32 KiB per 20 ms write, 10 s to copy.
	line := bytes.Repeat([]byte("a"), 1023)
	line = append(line, '\n')
	for range 16 << 10 {
		if _, err := flood.child.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Fprintln(quiet.child, "a line of b")
	start := time.Now()
	for !out.seen.Load() {
		if time.Since(start) > 3*time.Second {
			t.Fatalf("b's line not copied %s after its write, while a's flood is", time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("b's line copied %s after its write", time.Since(start).Round(time.Millisecond))
}

// TestLogFollowerRestart follows a generation's stderr across a restart
// of handoffd: what the process wrote while no handoffd ran is copied by
// the next one, and what the first one copied is not copied again.
func TestLogFollowerRestart(t *testing.T) {
	dir := t.TempDir()
	var before lockedBuffer
	var f logFollower
	l, err := openStderrLog(dir, "svc", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.child.Close()
	l.follow(&f, &before, false)
	fmt.Fprintln(l.child, "copied before the restart")
	waitFor(t, &before, "copied before the restart")
	// handoffd dies: nothing copies the log until the next one runs.
	f.remove(l)
	fmt.Fprintln(l.child, "written while no handoffd ran")

	var after lockedBuffer
	next := &ExecLauncher{LogDir: dir, Stderr: &after}
	done := make(chan struct{})
	next.resume("svc", 1, done)
	fmt.Fprintln(l.child, "written after the restart")
	waitFor(t, &after, "written after the restart")
	close(done)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		_, err := os.Stat(l.path)
		_, merr := os.Stat(markPath(l.path))
		if os.IsNotExist(err) && os.IsNotExist(merr) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log and its mark are still there 5s after the process exited: %v, %v", err, merr)
		}
	}
	if !strings.Contains(after.String(), "written while no handoffd ran") {
		t.Errorf("the next handoffd copied %q: the lines written while no handoffd ran are lost", after.String())
	}
	if strings.Contains(after.String(), "copied before the restart") {
		t.Errorf("the next handoffd copied %q: a line the first one copied came again", after.String())
	}
}

// waitFor waits up to 5s for out to hold s.
func waitFor(t *testing.T, out *lockedBuffer, s string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), s); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s the copy holds %q, want %q", out.String(), s)
		}
	}
}

// TestLogFollowerTruncated follows a log that something else empties (a
// copytruncate rotation, an operator freeing space): what is written
// after that is copied from its first byte.
func TestLogFollowerTruncated(t *testing.T) {
	var f logFollower
	var out lockedBuffer
	l, err := openStderrLog(t.TempDir(), "svc", 1)
	if err != nil {
		t.Fatal(err)
	}
	l.follow(&f, &out, false)
	defer func() {
		l.child.Close()
		l.finish()
	}()
	fmt.Fprintln(l.child, "a long line before the truncation")
	waitFor(t, &out, "a long line before the truncation")
	if err := os.Truncate(l.path, 0); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(l.child, "after")
	waitFor(t, &out, "a long line before the truncation\nafter\n")
}
