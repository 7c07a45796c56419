package host

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

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
