package host

import (
	"errors"
	"io"
	"os"
	"os/exec"
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

// TestPidfdProcessFindFile copies a file that another process holds,
// found by its st_dev and st_ino, as a restarted handoffd finds the fd
// store again.
func TestPidfdProcessFindFile(t *testing.T) {
	memo, err := kernel.SealedMemfd("memo", func(w io.Writer) error { _, err := io.WriteString(w, "memo"); return err })
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(memo.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "30")
	cmd.ExtraFiles = []*os.File{memo}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	memo.Close() // only the child holds it now
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pidfd, err := kernel.OpenPidfd(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPidfdProcess(pidfd)
	f, err := p.FindFile(st.Dev, st.Ino)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if data, err := io.ReadAll(io.NewSectionReader(f, 0, 64)); err != nil || string(data) != "memo" {
		t.Fatalf("found file holds %q, %v; want memo", data, err)
	}
	if _, err := p.FindFile(st.Dev, st.Ino+1<<40); !errors.Is(err, lifecycle.ErrGone) {
		t.Fatalf("FindFile of a file the process does not hold: %v, want ErrGone", err)
	}
}
