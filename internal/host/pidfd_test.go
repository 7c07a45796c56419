package host

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

// TestPidfdProcess watches a process that is not handoffd's own doing
// (here it is the test's child, reaped by the test) through its pidfd.
func TestPidfdProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	pidfd, err := kernel.OpenPidfd(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPidfdProcess(pidfd)
	select {
	case <-p.Done():
		t.Fatal("Done before the process exited")
	case <-time.After(50 * time.Millisecond):
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed 5s after the process was killed")
	}
	<-waited
	if got := p.ExitStatus(); got != "exited" {
		t.Errorf("ExitStatus %q, want exited", got)
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Errorf("Signal after exit: %v, want nil", err)
	}
}

// TestPidfdProcessFindFiles copies files that another process holds,
// found by their st_dev and st_ino, as a restarted handoffd finds the fd
// store again.
func TestPidfdProcessFindFiles(t *testing.T) {
	memo, err := kernel.SealedMemfd("memo", func(w io.Writer) error { _, err := io.WriteString(w, "memo"); return err })
	if err != nil {
		t.Fatal(err)
	}
	id := fileIDOf(t, memo)
	p := holding(t, []*os.File{memo})
	memo.Close() // only the child holds it now
	other := lifecycle.FileID{Dev: id.Dev, Ino: id.Ino + 1<<40}
	found, err := p.FindFiles(map[lifecycle.FileID]bool{id: true, other: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[id] == nil {
		t.Fatalf("found %v, want the memo alone", found)
	}
	defer found[id].Close()
	if data, err := io.ReadAll(io.NewSectionReader(found[id], 0, 64)); err != nil || string(data) != "memo" {
		t.Fatalf("found file holds %q, %v; want memo", data, err)
	}
}

// TestPidfdProcessFindFilesOnePass: the fds of the process are read
// once, and each is stat'ed at most once, however many files are asked
// for: a search is linear in the fds the process holds.
func TestPidfdProcessFindFilesOnePass(t *testing.T) {
	const n = 64
	var files []*os.File
	want := map[lifecycle.FileID]bool{}
	for i := range n {
		f, err := kernel.SealedMemfd("memo", func(w io.Writer) error { _, err := fmt.Fprint(w, i); return err })
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
		want[fileIDOf(t, f)] = true
	}
	// What the process holds besides: stdio, and no file asked for.
	p := holding(t, files)
	// sleep opens and closes files of its own as it starts (its locale):
	// count once it sleeps, in clock_nanosleep (230 on x86-64).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		sc, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", p.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(string(sc), "230 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep not sleeping after 5s: /proc/%d/syscall says %q", p.Pid(), sc)
		}
	}
	fds := func() int {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	before := fds()
	stats := 0
	statFD = func(name string) (os.FileInfo, error) { stats++; return os.Stat(name) }
	defer func() { statFD = os.Stat }()
	found, err := p.FindFiles(want)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		f.Close()
	}
	if len(found) != n {
		t.Errorf("found %d of %d files", len(found), n)
	}
	if most := max(before, fds()); stats > most {
		t.Errorf("%d stats for %d files among %d fds: a file asked for is looked for in one pass", stats, n, most)
	}
}

// BenchmarkFindFiles finds every one of n files that a process holds:
// the time per op grows with n, not with n squared.
func BenchmarkFindFiles(b *testing.B) {
	for _, n := range []int{16, 64, 256, 1024} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			var files []*os.File
			want := map[lifecycle.FileID]bool{}
			for range n {
				f, err := kernel.SealedMemfd("memo", func(io.Writer) error { return nil })
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				files = append(files, f)
				want[fileIDOf(b, f)] = true
			}
			p := holding(b, files)
			b.ResetTimer()
			for b.Loop() {
				found, err := p.FindFiles(want)
				if err != nil || len(found) != n {
					b.Fatalf("found %d of %d: %v", len(found), n, err)
				}
				for _, f := range found {
					f.Close()
				}
			}
		})
	}
}

func fileIDOf(tb testing.TB, f *os.File) lifecycle.FileID {
	tb.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		tb.Fatal(err)
	}
	return lifecycle.FileID{Dev: st.Dev, Ino: st.Ino}
}

// holding starts a process that holds files (from fd 3) and watches it
// through a pidfd; it is killed and reaped when the test ends.
func holding(tb testing.TB, files []*os.File) *PidfdProcess {
	tb.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	pidfd, err := kernel.OpenPidfd(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		tb.Fatal(err)
	}
	p := NewPidfdProcess(pidfd)
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-p.Done()
	})
	return p
}
