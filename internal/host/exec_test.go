package host

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

func TestChildEnvIsOnlyWhatTheConfigGives(t *testing.T) {
	t.Setenv("SECRET_OF_HANDOFFD", "x")
	spec := lifecycle.LaunchSpec{Service: "web", Generation: 3, Control: "/run/handoff/handoffd.sock",
		Config: &config.ServiceConfig{Env: []string{"GIN_MODE=release", "LISTEN_FDS=9"},
			DrainTimeout: config.Duration(10 * time.Second), StopDelay: config.Duration(time.Second),
			Listeners: []config.ListenerConfig{{Name: "http"}, {Name: "admin"}}}}
	got := childEnv(spec, "@notify")
	want := []string{"PATH=" + DefaultPath, "GIN_MODE=release", "LISTEN_FDS=0", "LISTEN_FDNAMES=http:admin", "HANDOFF_LISTEN_FDS=0",
		"NOTIFY_SOCKET=@notify", "HANDOFF_SERVICE=web", "HANDOFF_GENERATION=3", "HANDOFF_CONTROL=/run/handoff/handoffd.sock",
		"HANDOFF_DRAIN_TIMEOUT_MS=9000"}
	if !slices.Equal(got, want) {
		t.Errorf("env\n got %q\nwant %q", got, want)
	}
	spec.Config.Env = []string{"PATH=/opt/bin"}
	if got := childEnv(spec, "@n"); got[0] != "PATH=/opt/bin" || slices.Contains(got, "PATH="+DefaultPath) {
		t.Errorf("the config's PATH must replace the default: %q", got)
	}
}

func TestParseNotify(t *testing.T) {
	for msg, want := range map[string][2]bool{
		"READY=1":                       {true, false},
		"STATUS=warming up\nREADY=1":    {true, false},
		"READY=1\n":                     {true, false},
		"READY=0":                       {false, false},
		"READY=10":                      {false, false},
		" READY=1":                      {false, false},
		"STOPPING=1":                    {false, false},
		"":                              {false, false},
		"READY=1\nHANDOFF_RELOAD=1":     {true, true},
		"HANDOFF_RELOAD=1":              {false, true},
		"HANDOFF_RELOAD=0\nRELOADING=1": {false, false},
	} {
		if ready, reloads := parseNotify([]byte(msg)); ready != want[0] || reloads != want[1] {
			t.Errorf("parseNotify(%q) = %v, %v; want %v, %v", msg, ready, reloads, want[0], want[1])
		}
	}
}

func TestLookupCredential(t *testing.T) {
	cred, err := lookupCredential("nobody", "")
	if err != nil {
		t.Skipf("no user nobody here: %v", err)
	}
	if cred.Uid != 65534 || cred.Groups == nil {
		t.Errorf("nobody: %+v", cred)
	}
	if cred, err := lookupCredential("nobody", "0"); err != nil || cred.Gid != 0 || cred.Uid != 65534 {
		t.Errorf("nobody with group 0: %+v, %v", cred, err)
	}
	if _, err := lookupCredential("no-such-user-here", ""); err == nil {
		t.Error("unknown user accepted")
	}
}

// The notify socket is a file in a directory of its generation's own in
// the notify directory, writable by all and removed with its directory on
// close; the directory is root's alone, or opened to the generation's
// user alone. There is no abstract one.
func TestListenNotifyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "notify")
	if err := os.Mkdir(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	c, err := listenNotify(dir, "web", 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "web.3", "sock")
	if got := c.LocalAddr().String(); got != path {
		t.Errorf("notify socket %q, want %q", got, path)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o666 {
		t.Errorf("notify socket file: %v, %v; want mode 0666", fi, err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("notify socket directory of a generation that runs as root: %v, %v; want mode 0700", fi, err)
	}
	sender, err := net.Dial("unixgram", path)
	if err != nil {
		t.Fatal(err)
	}
	sender.Write([]byte("READY=1"))
	sender.Close()
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "READY=1" {
		t.Errorf("read %q, %v", buf[:n], err)
	}
	closeNotify(c)
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Errorf("notify socket directory left after close: %v", err)
	}

	// Another user's: its directory lets that uid alone search it.
	u, err := listenNotify(dir, "web", 4, &syscall.Credential{Uid: 4244, Gid: 4244})
	if errors.Is(err, kernel.ErrNoACLs) && os.Getenv("CI") != "true" {
		t.Skipf("no ACLs: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer closeNotify(u)
	genDir := filepath.Join(dir, "web.4")
	buf = make([]byte, 256)
	n, err := unix.Getxattr(genDir, "system.posix_acl_access", buf)
	if err != nil {
		t.Fatal(err)
	}
	entry := binary.LittleEndian.AppendUint16(binary.LittleEndian.AppendUint16(nil, 0x02), 1)
	entry = binary.LittleEndian.AppendUint32(entry, 4244)
	if !bytes.Contains(buf[:n], entry) {
		t.Errorf("ACL %x of %s has no search entry for uid 4244", buf[:n], genDir)
	}
	if fi, err := os.Stat(genDir); err != nil || fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("notify socket directory of uid 4244: %v, %v; want nothing for others", fi, err)
	}

	if _, err := listenNotify("", "web", 3, nil); err == nil {
		t.Error("a notify socket without a notify directory")
	}
	long := filepath.Join(dir, strings.Repeat("x", 100))
	if _, err := listenNotify(long, "web", 3, nil); err == nil || !strings.Contains(err.Error(), "choose a shorter state_dir") {
		t.Errorf("a notify socket path over 107 bytes: %v, want an error that says so", err)
	}
}

func TestTraversableByAll(t *testing.T) {
	open := t.TempDir()
	os.Chmod(filepath.Dir(open), 0o755) // t.TempDir makes both 0700
	os.Chmod(open, 0o755)
	closed := filepath.Join(open, "closed")
	os.Mkdir(closed, 0o700)
	for dir, want := range map[string]bool{
		filepath.Join(open, "notify"):   true, // not made yet: its parents decide
		filepath.Join(closed, "notify"): false,
		"":                              false,
	} {
		if got := traversableByAll(dir); got != want {
			t.Errorf("traversableByAll(%q) = %v, want %v", dir, got, want)
		}
	}
}

func TestChildEnvStoredFDsAndStateChannel(t *testing.T) {
	spec := lifecycle.LaunchSpec{Service: "web", Generation: 2, Files: []*os.File{os.Stdin},
		Stored:       []lifecycle.StoredFile{{Name: "cache", File: os.Stdin}, {Name: "cache", File: os.Stdin}, {Name: "stored", File: os.Stdin}},
		StateChannel: true,
		Config: &config.ServiceConfig{Listeners: []config.ListenerConfig{{Name: "http"}},
			StateTimeout: config.Duration(1500 * time.Millisecond)}}
	got := childEnv(spec, "@n")
	for _, want := range []string{"LISTEN_FDS=4", "LISTEN_FDNAMES=http:cache:cache:stored", "HANDOFF_LISTEN_FDS=1",
		"HANDOFF_STATE_FD=7", "HANDOFF_STATE_TIMEOUT_MS=1500"} {
		if !slices.Contains(got, want) {
			t.Errorf("env lacks %s: %q", want, got)
		}
	}
	spec.StateChannel = false
	for _, e := range childEnv(spec, "@n") {
		if strings.HasPrefix(e, "HANDOFF_STATE") {
			t.Errorf("env without a state channel has %s", e)
		}
	}
}

// TestStartRunsNothingUntilRecorded: the command of a generation runs
// only once LaunchSpec.Started has recorded its pid, and not at all when
// Started fails.
func TestStartRunsNothingUntilRecorded(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l := &ExecLauncher{Self: self, Stdout: io.Discard, Stderr: io.Discard, NotifyDir: t.TempDir()}
	for _, refuse := range []bool{false, true} {
		marker := filepath.Join(dir, fmt.Sprintf("ran-%v", refuse))
		cfg := &config.ServiceConfig{Name: "web", Command: []string{"/bin/sh", "-c", "echo > " + marker}, Dir: "."}
		var pid int
		ranEarly := false
		p, err := l.Start(lifecycle.LaunchSpec{Service: "web", Generation: 1, Config: cfg, Started: func(n int) error {
			pid = n
			// Give a command that did not wait time to run.
			time.Sleep(200 * time.Millisecond)
			_, err := os.Stat(marker)
			ranEarly = err == nil
			if refuse {
				return errors.New("state_dir is read-only")
			}
			return nil
		}})
		if ranEarly {
			t.Errorf("refuse=%v: the command ran before Started returned", refuse)
		}
		if refuse {
			if err == nil || !strings.Contains(err.Error(), "read-only") {
				t.Errorf("Start with Started failing: %v, want its error", err)
			}
			if p != nil || kernelAlive(pid) {
				t.Errorf("the process (pid %d) of a refused start is left", pid)
			}
			time.Sleep(100 * time.Millisecond)
			if _, err := os.Stat(marker); err == nil {
				t.Error("the command of a refused start ran")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if p.Pid() != pid {
			t.Errorf("Started got pid %d, the process is %d", pid, p.Pid())
		}
		<-p.Done()
		if _, err := os.Stat(marker); err != nil {
			t.Errorf("the command did not run once recorded: %v (%s)", err, p.ExitStatus())
		}
	}
}

// kernelAlive reports whether pid names a process that has not exited.
func kernelAlive(pid int) bool { return pid != 0 && kernel.StartTicks(pid) != 0 }
