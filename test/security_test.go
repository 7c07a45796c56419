package test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/api"
)

// nobody is the unprivileged uid (and nogroup the gid) the security tests
// run generations and clients as; both exist on Debian and Ubuntu.
const nobody = 65534

// adminGroup is the config's group: an existing group (users, gid 100)
// that uid nobody is not in unless a test gives it as a supplementary one.
const adminGroup, adminGID = "users", 100

// publicDir returns a fresh directory that every user may search, holding
// copies of the binaries: os.MkdirTemp's 0700 would keep nobody out, and
// a generation that runs as nobody re-executes handoffd.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "handoffd-security-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"handoffd", "handoffctl", "demo"} {
		data, err := os.ReadFile(filepath.Join(bin, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startPrivDropDaemon runs handoffd with the demo as user nobody, the
// control API open to adminGroup and, for status, to nogroup.
func startPrivDropDaemon(t *testing.T) (d *daemon, port int, bpfDir string) {
	t.Helper()
	requireEBPF(t)
	dir := publicDir(t)
	port = freePort(t)
	d = &daemon{t: t, control: filepath.Join(dir, "run", "handoffd.sock"), addr: fmt.Sprintf("127.0.0.1:%d", port),
		log: new(bytes.Buffer), exited: make(chan struct{})}
	bpfDir = fmt.Sprintf("/sys/fs/bpf/handoff-e2e-%d-%d", os.Getpid(), port)
	cfg := fmt.Sprintf(`control: %s
mode: ebpf
state_dir: %s
bpf_dir: %s
group: %s
read_group: nogroup
services:
  - name: demo
    command: ["./demo", "--version", "e2e"]
    dir: %s
    env: %s
    user: nobody
    listeners:
      - name: http
        address: tcp://%s
    ready_timeout: 10s
    drain_timeout: 10s
`, d.control, dir, bpfDir, adminGroup, dir, demoEnv(), d.addr)
	cfgPath := filepath.Join(dir, "handoff.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(filepath.Join(dir, "handoffd"), "--config", cfgPath)
	d.cmd.Stdout, d.cmd.Stderr = &lockedWriter{w: d.log}, &lockedWriter{w: d.log}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	d.client = api.NewClient(d.control)
	t.Cleanup(func() { d.shutdown(); os.RemoveAll(bpfDir) })
	d.waitFor("generation 1 active", 15*time.Second, func(st api.ServiceStatus) bool {
		return len(st.Generations) == 1 && st.Generations[0].State == api.StateActive
	})
	return d, port, bpfDir
}

// ctlAs runs handoffctl against d as uid nobody with gid and groups.
func (d *daemon) ctlAs(gid uint32, groups []uint32, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(filepath.Dir(filepath.Dir(d.control)), "handoffctl"),
		append([]string{"--control", d.control}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: gid, Groups: groups}}
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestControlSocketAccess(t *testing.T) {
	d, _, _ := startPrivDropDaemon(t)

	fi, err := os.Stat(d.control)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || st.Uid != 0 || st.Gid != adminGID {
		t.Errorf("control socket %s uid %d gid %d, want 0660 root:%s", fi.Mode().Perm(), st.Uid, st.Gid, adminGroup)
	}

	// nobody:nogroup is in read_group: it may read status...
	if out, err := d.ctlAs(nobody, nil, "status", "--json"); err != nil || !strings.Contains(out, `"name": "demo"`) {
		t.Errorf("status as a read_group member: %v: %s", err, out)
	}
	// ...but not swap, and says why in one line.
	out, err := d.ctlAs(nobody, nil, "swap", "demo")
	if err == nil || strings.Count(strings.TrimSpace(out), "\n") != 0 ||
		!strings.Contains(out, "handoffctl: permission denied: uid 65534 may not POST /v1/services/demo/swap") {
		t.Errorf("swap as a read_group member: %v: %q, want one line saying permission denied", err, out)
	}
	// A user in neither group may not even read.
	if out, err := d.ctlAs(12345, nil, "status"); err == nil || !strings.Contains(out, "permission denied") {
		t.Errorf("status as a stranger: %v: %q, want permission denied", err, out)
	}
	if g := d.status().Generations; len(g) != 1 {
		t.Fatalf("a denied swap changed the generations: %+v", g)
	}
	if log := d.logText(); !strings.Contains(log, "control API request denied") || !strings.Contains(log, "uid=65534") {
		t.Errorf("denials not logged with the peer's uid:\n%s", log)
	}

	// A member of group may swap, even through a supplementary group.
	if out, err := d.ctlAs(12345, []uint32{adminGID}, "swap", "demo"); err != nil || !strings.Contains(out, "generation 2 active") {
		t.Errorf("swap as a group member: %v: %s", err, out)
	}
}

// TestGenerationUnprivileged checks that a generation with user: nobody
// runs as nobody with no capabilities and no_new_privs, and holds its own
// listener and no other descriptor of handoffd.
func TestGenerationUnprivileged(t *testing.T) {
	d, port, bpfDir := startPrivDropDaemon(t)
	if out, err := d.ctl("swap", "demo"); err != nil {
		t.Fatalf("swap: %v: %s", err, out)
	}
	st := d.waitFor("generation 1 exited", 15*time.Second, func(st api.ServiceStatus) bool {
		return len(st.Generations) == 2 && !st.Generations[0].State.Live()
	})
	pid := st.Generations[1].PID
	checkPins(t, bpfDir)

	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		fields[k] = strings.Join(strings.Fields(v), " ")
	}
	for k, want := range map[string]string{"Uid": "65534 65534 65534 65534", "Gid": "65534 65534 65534 65534",
		"NoNewPrivs": "1", "CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapAmb": "0000000000000000"} {
		if fields[k] != want {
			t.Errorf("generation pid %d: %s %q, want %q", pid, k, fields[k], want)
		}
	}

	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range strings.Split(strings.TrimRight(string(env), "\x00"), "\x00") {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "PATH" || name == "GIN_MODE" || name == "NOTIFY_SOCKET":
		case name == "GORACE" && raceBuild: // given by the config, as demoEnv says
		case strings.HasPrefix(name, "LISTEN_") || strings.HasPrefix(name, "HANDOFF_"):
		default:
			t.Errorf("generation has %s in its environment, which its config does not give", name)
		}
	}

	if n := listenersHeld(t, pid, listeningInodes(t, port)); n != 1 {
		t.Errorf("generation holds %d listening sockets of port %d, want its own one", n, port)
	}
	// kcmp tells whether two fds are the same open file: anything the
	// generation shares with handoffd other than stdio and its listener
	// leaked to it.
	listeners := listeningInodes(t, port)
	hpid := d.cmd.Process.Pid
	daemonFDs := fdTargets(t, hpid)
	for fd, target := range fdTargets(t, pid) {
		if fd <= 2 {
			continue
		}
		if strings.HasPrefix(target, "socket:[") && listeners[strings.Trim(target[len("socket:"):], "[]")] {
			continue
		}
		for hfd := range daemonFDs {
			if sameFile(t, pid, fd, hpid, hfd) {
				t.Errorf("generation fd %d (%s) is handoffd's fd %d: it leaked", fd, target, hfd)
			}
		}
	}
}

// sameFile says whether fd1 of pid1 and fd2 of pid2 are one open file.
func sameFile(t *testing.T, pid1, fd1, pid2, fd2 int) bool {
	const kcmpFile = 0
	r, _, errno := syscall.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), kcmpFile, uintptr(fd1), uintptr(fd2), 0)
	if errno == syscall.EBADF {
		return false // closed meanwhile
	}
	if errno != 0 {
		t.Fatalf("kcmp: %v", errno)
	}
	return r == 0
}

// checkPins checks that the pinned programs and maps under dir are root's
// alone: directories 0700, pins 0600 at most.
func checkPins(t *testing.T, dir string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		limit := os.FileMode(0o600)
		if e.IsDir() {
			limit = 0o700
		} else {
			n++
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Mode().Perm()&^limit != 0 {
			t.Errorf("%s: mode %s uid %d, want at most %s and root", path, fi.Mode(), st.Uid, limit)
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Errorf("pins under %s: %d found, %v", dir, n, err)
	}
}

// fdTargets maps each open fd of pid to what it refers to.
func fdTargets(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fds := map[int]string{}
	for _, e := range ents {
		var fd int
		fmt.Sscan(e.Name(), &fd)
		if link, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			fds[fd] = link
		}
	}
	return fds
}

// TestBadConfigRefused starts handoffd with a config that is wrong in
// several ways: it must exit 1 with one line on stderr that names each.
func TestBadConfigRefused(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "handoff.yaml")
	cfg := `control: ` + filepath.Join(dir, "handoffd.sock") + `
services:
  - name: demo
    command: ["./demo"]
    dir: /no/such/dir
    user: no-such-user-here
    listeners:
      - name: http
        address: tcp://127.0.0.1:99999
`
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "handoffd"), "--config", cfgPath)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	err := cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("handoffd exit code %d (%v), want 1", code, err)
	}
	msg := stderr.String()
	if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "handoffd: config "+cfgPath+": ") {
		t.Errorf("stderr is not one line naming the config: %q", msg)
	}
	for _, want := range []string{"port 99999: use 1..65535", `dir "/no/such/dir"`, `user: unknown user "no-such-user-here"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("stderr %q does not say %q", msg, want)
		}
	}
}
