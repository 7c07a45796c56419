package host

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/internal/stateproto"
)

// channelChild is a re-adopted generation whose state channel died: it
// sends a new one on NOTIFY_SOCKET (every 20ms until the socket is bound
// again), writes to stdout the message it reads on it, and exits.
func channelChild() error {
	notify, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	to := &unix.SockaddrUnix{Name: os.Getenv("NOTIFY_SOCKET")}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	for i := 0; ; i++ {
		err := unix.Sendmsg(notify, []byte("HANDOFF_STATE_CHANNEL=1"), unix.UnixRights(fds[1]), to, 0)
		if err == nil {
			break
		}
		if i == 250 {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	unix.Close(fds[1])
	buf := make([]byte, stateproto.MaxMessage)
	n, err := unix.Read(fds[0], buf)
	if err != nil {
		return err
	}
	fmt.Printf("read %q\n", buf[:n])
	return nil
}

// TestRenotify re-adopts a generation as a restarted handoffd does: its
// NOTIFY_SOCKET is bound again at the address in its environment (a
// stale file there is replaced), the channel it sends there becomes its
// state channel, a second one is refused, and once it exited the socket
// file is gone.
func TestRenotify(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	stale, err := listenNotify(dir, "web", 4, nil) // the previous handoffd's
	if err != nil {
		t.Fatal(err)
	}
	stale.Close() // the file stays, as after a SIGKILL
	path := filepath.Join(dir, "web.4", "sock")
	var out syncBuffer
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), wireChildEnv+"=channel", "NOTIFY_SOCKET="+path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	l := &ExecLauncher{NotifyDir: dir}
	proc, err := l.Adopt("web", 4, cmd.Process.Pid, l.StartTicks(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	p := proc.(*adoptedProcess)
	if p.Channel() != nil {
		t.Fatal("a re-adopted generation has a state channel before it sent one")
	}
	notices := make(chan lifecycle.Notice, 1)
	if err := p.Renotify(func(n lifecycle.Notice) { notices <- n }); err != nil {
		t.Fatal(err)
	}
	var n lifecycle.Notice
	select {
	case n = <-notices:
	case <-time.After(5 * time.Second):
		t.Fatalf("no notice from the child in 5s: %s", out.String())
	}
	if n.Msg[stateproto.NotifyChannel] != "1" || len(n.Files) != 1 {
		t.Fatalf("notice %+v, want %s=1 with one fd", n, stateproto.NotifyChannel)
	}
	second, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AttachChannel(second); err == nil || !strings.Contains(err.Error(), "SOCK_SEQPACKET") {
		t.Errorf("attach /dev/null: %v, want an error that asks for a SOCK_SEQPACKET socket", err)
	}
	if err := p.AttachChannel(n.Files[0]); err != nil {
		t.Fatal(err)
	}
	dup, err := dupSeqpacket(t)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AttachChannel(dup); err == nil || !strings.Contains(err.Error(), "has one already") {
		t.Errorf("second channel: %v, want it refused", err)
	}
	if err := p.Channel().Send(stateproto.Message{stateproto.Attached: "1"}, nil); err != nil {
		t.Fatal(err)
	}
	out.await(t, `read "ATTACHED=1\n"`)
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed 5s after the child exited")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("notify socket file left after the generation exited: %v", err)
	}
}

// dupSeqpacket returns one end of a new SOCK_SEQPACKET pair; the other
// end is closed.
func dupSeqpacket(t *testing.T) (*os.File, error) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	unix.Close(fds[1])
	return os.NewFile(uintptr(fds[0]), "seqpacket"), nil
}

// TestNotifyAddrs: a re-adopted generation's NOTIFY_SOCKET is bound again
// only at the path that handoffd gives: its file in its directory in the
// notify directory, or where an older handoffd put it. Never an abstract
// name, which anyone could have bound.
func TestNotifyAddrs(t *testing.T) {
	ok := notifyAddrs("/run/handoffd/notify", "web", 4)
	for addr, want := range map[string]bool{
		"/run/handoffd/notify/web.4/sock":    true,
		"/run/handoffd/notify/web.4.sock":    true,
		"/run/handoffd/notify/web.5/sock":    false,
		"/run/handoffd/notify/web.5.sock":    false,
		"/run/handoffd/notify/web.4/other":   false,
		"/run/handoffd/notify/../x.4.sock":   false,
		"/etc/passwd":                        false,
		"@handoffd/1234/web/4":               false,
		"@handoffd/1234/web/40":              false,
		"@other/1234/web/4":                  false,
		"@handoffd/1234/web/4/../../x/web/4": false,
		"":                                   false,
	} {
		if got := ok(addr); got != want {
			t.Errorf("%q: %t, want %t", addr, got, want)
		}
	}
	if notifyAddrs("", "web", 4)("/web.4.sock") {
		t.Error("without a notify directory, a file was taken")
	}
}

// TestRenotifyRefusesAForeignAddress: a NOTIFY_SOCKET that handoffd did
// not give is not bound (nor its file removed).
func TestRenotifyRefusesAForeignAddress(t *testing.T) {
	foreign := filepath.Join(t.TempDir(), "keep")
	if err := os.WriteFile(foreign, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	cmd.Env = []string{"NOTIFY_SOCKET=" + foreign}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	l := &ExecLauncher{NotifyDir: t.TempDir()}
	proc, err := l.Adopt("web", 4, cmd.Process.Pid, l.StartTicks(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	err = proc.(lifecycle.Renotifier).Renotify(func(lifecycle.Notice) {})
	if err == nil || !strings.Contains(err.Error(), "not one that handoffd gives") {
		t.Errorf("Renotify: %v, want a refusal", err)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("the foreign file: %v", err)
	}
}
