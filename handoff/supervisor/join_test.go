package supervisor

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestJoinedProcess watches a process that is not handoffd's own doing
// (here it is the test's child, reaped by the test) through its pidfd.
func TestJoinedProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := newPidfdProcess(cmd.Process.Pid, pidfd)
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

func TestJoinAccess(t *testing.T) {
	api := testAPI(t, &Config{Group: "100"})
	api.sup.services[0].cfg.User = "65534"
	h := api.Handler()
	stranger := &PeerCred{PID: 43, UID: 1234, GID: 1234}
	code, msg := call(t, h, stranger, "POST", "/v1/services/demo/join", "")
	if code != 403 || msg != "permission denied: uid 1234 may not POST /v1/services/demo/join; only root and members of group 100 or service demo's user 65534 may" {
		t.Errorf("stranger: %d %q", code, msg)
	}
	// The service's user gets past the check; without the upgrade
	// headers the handler then says what is missing.
	user := &PeerCred{PID: 44, UID: 65534, GID: 65534}
	if code, msg := call(t, h, user, "POST", "/v1/services/demo/join", ""); code != 426 {
		t.Errorf("service user without Upgrade: %d %q, want 426", code, msg)
	}
	// The service's user may do nothing else.
	if code, _ := call(t, h, user, "POST", "/v1/services/demo/swap", ""); code != 403 {
		t.Errorf("service user swapping: %d, want 403", code)
	}
}
