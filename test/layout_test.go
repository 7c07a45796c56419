package test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/api"
)

// account is a user made for one test, in a group of the same name.
type account struct {
	name     string
	uid, gid uint32
}

// accountsMade numbers the accounts this test binary makes.
var accountsMade atomic.Int64

// newAccount makes a system user in a group of its own, both removed when
// the test ends.
func newAccount(t *testing.T, what string) account {
	t.Helper()
	name := fmt.Sprintf("hot%s%d%d", what, os.Getpid()%100000, accountsMade.Add(1))
	run := func(args ...string) {
		t.Helper()
		var out []byte
		var err error
		// Another test binary may hold the lock of /etc/passwd a moment.
		for range 20 {
			if out, err = exec.Command(args[0], args[1:]...).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	run("groupadd", "--system", name)
	t.Cleanup(func() { exec.Command("groupdel", name).Run() })
	run("useradd", "--system", "--no-create-home", "--gid", name, "--shell", "/usr/sbin/nologin", name)
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return account{name: name, uid: uint32(uid), gid: uint32(gid)}
}

// asUserArg makes this test binary run asUser instead of the tests.
const asUserArg = "__handoffd_test_as_user"

// asUser does, as whatever user it runs as, what its arguments say, one
// line of output each: "bind PATH" binds a unixgram socket there, "send
// PATH" sends a datagram there, "mkdir PATH" makes a directory, and
// "abstract NAME" binds an abstract unixgram socket and keeps it until
// standard input closes. Each line is "ACTION ARG: ok" or the error.
func asUser(args []string) int {
	var held []int
	for i := 0; i+1 < len(args); i += 2 {
		action, arg := args[i], args[i+1]
		var err error
		switch action {
		case "bind", "abstract", "send":
			var fd int
			if fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
				break
			}
			name := arg
			if action == "abstract" {
				name = "@" + arg
			}
			if action == "send" {
				err = unix.Sendto(fd, []byte("READY=1"), 0, &unix.SockaddrUnix{Name: name})
			} else {
				err = unix.Bind(fd, &unix.SockaddrUnix{Name: name})
			}
			held = append(held, fd)
		case "mkdir":
			err = os.Mkdir(arg, 0o777)
		default:
			err = fmt.Errorf("unknown action")
		}
		if err == nil {
			fmt.Printf("%s %s: ok\n", action, arg)
		} else {
			fmt.Printf("%s %s: %v\n", action, arg, err)
		}
	}
	os.Stdout.Sync()
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// runAs runs asUser as a with args from the copy of this binary in dir,
// and returns its output once every action is done; the process goes on
// holding what it bound until stop is called.
func runAs(t *testing.T, dir string, a account, args ...string) (out string, stop func()) {
	t.Helper()
	self := filepath.Join(dir, "handoffd-test")
	if _, err := os.Stat(self); err != nil {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(self, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(self, append([]string{asUserArg}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: []uint32{}}}
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(stdout)
	for len(lines) < len(args)/2 && sc.Scan() {
		lines = append(lines, sc.Text())
	}
	stop = func() { stdin.Close(); cmd.Wait() }
	t.Cleanup(stop)
	return strings.Join(lines, "\n"), stop
}

// layoutDaemon is a handoffd whose state_dir (and control socket in it)
// every user may reach the way the default /run/handoff is reached: under
// dir, a directory that all may search.
type layoutOptions struct {
	stateDir     string // under a public dir
	user         string // the service's user:
	group        string // the config's group:
	stateHandoff bool
}

func startLayoutDaemon(t *testing.T, dir string, o layoutOptions) *daemon {
	t.Helper()
	requireEBPF(t)
	port := freePort(t)
	d := &daemon{t: t, mode: "ebpf", control: filepath.Join(o.stateDir, "handoffd.sock"), addr: fmt.Sprintf("127.0.0.1:%d", port),
		log: new(bytes.Buffer), exited: make(chan struct{})}
	d.bpfDir = fmt.Sprintf("/sys/fs/bpf/handoff-e2e-%d-%d", os.Getpid(), port)
	extra := ""
	if o.stateHandoff {
		extra = "    state_handoff: true\n"
	}
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
    user: %s
    listeners:
      - name: http
        address: tcp://%s
    ready_timeout: 10s
    drain_timeout: 10s
`, d.control, o.stateDir, d.bpfDir, o.group, dir, demoEnv(), o.user, d.addr) + extra
	d.config = filepath.Join(dir, "handoff.yaml")
	if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(filepath.Join(dir, "handoffd"), "--config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = &lockedWriter{w: d.log}, &lockedWriter{w: d.log}
	d.cmd.WaitDelay = time.Second
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	d.client = api.NewClient(d.control)
	t.Cleanup(func() { d.shutdown(); os.RemoveAll(d.bpfDir) })
	d.waitFor("generation 1 active", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		return len(st.Generations) == 1 && st.Generations[0].State == api.StateActive
	})
	return d
}

// ctlAsAccount runs handoffctl as a, with its group's members' rights.
func (d *daemon) ctlAsAccount(dir string, a account, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(dir, "handoffctl"), append([]string{"--control", d.control}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: []uint32{}}}
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// modeOf returns the permission bits, uid and gid of path.
func modeOf(t *testing.T, path string) (os.FileMode, uint32, uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode().Perm(), st.Uid, st.Gid
}

// TestFreshStateDir starts handoffd on a host with no state_dir yet, and
// on one where an older handoffd left it 0700 with notify/ 0755: a member
// of the config's group (a user and group this test makes) may use the
// control socket in it, a member of read_group may read status, a service
// that runs as another user starts and swaps, and under 32 clients that
// never retry no request fails. The layout ends as documented: state_dir
// searchable by all, logs/ and state.json handoffd's alone, notify/
// searchable by all but listed by none.
func TestFreshStateDir(t *testing.T) {
	for _, older := range []bool{false, true} {
		name := "empty"
		if older {
			name = "left-by-an-older-handoffd"
		}
		t.Run(name, func(t *testing.T) {
			op := newAccount(t, "op")
			svc := newAccount(t, "svc")
			dir := publicDir(t)
			stateDir := filepath.Join(dir, "run", "handoff")
			wantState := os.FileMode(0o755)
			if older {
				for _, d := range []struct {
					path string
					mode os.FileMode
				}{{stateDir, 0o700}, {filepath.Join(stateDir, "logs"), 0o700}, {filepath.Join(stateDir, "notify"), 0o755}} {
					if err := os.MkdirAll(d.path, d.mode); err != nil {
						t.Fatal(err)
					}
					os.Chmod(d.path, d.mode)
				}
				os.Chmod(filepath.Dir(stateDir), 0o755)
				wantState = 0o711
			}
			d := startLayoutDaemon(t, dir, layoutOptions{stateDir: stateDir, user: svc.name, group: op.name})
			l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
			time.Sleep(300 * time.Millisecond)
			if out, err := d.ctlAsAccount(dir, op, "status"); err != nil || !strings.Contains(out, "active") {
				t.Errorf("status as a member of group %s: %v: %s", op.name, err, out)
			}
			if out, err := d.ctlAsAccount(dir, op, "swap", "demo"); err != nil || !strings.Contains(out, "generation 2 active") {
				t.Errorf("swap as a member of group %s: %v: %s", op.name, err, out)
			}
			if out, err := d.ctlAsAccount(dir, account{name: "nobody", uid: nobody, gid: nobody}, "status"); err != nil || !strings.Contains(out, "active") {
				t.Errorf("status as a member of read_group: %v: %s", err, out)
			}
			time.Sleep(300 * time.Millisecond)
			res := l.stop()
			t.Logf("%d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
			if res.Failed > 0 || res.ByGen[2] == 0 {
				t.Errorf("%d requests failed, %d answered by generation 2: %q", res.Failed, res.ByGen[2], res.Failures)
			}
			for _, c := range []struct {
				path string
				mode os.FileMode
				gid  uint32
			}{
				{stateDir, wantState, 0},
				{filepath.Join(stateDir, "logs"), 0o700, 0},
				{filepath.Join(stateDir, "notify"), 0o711, 0},
				{filepath.Join(stateDir, "state.json"), 0o600, 0},
				{d.control, 0o660, op.gid},
			} {
				if mode, uid, gid := modeOf(t, c.path); mode != c.mode || uid != 0 || gid != c.gid {
					t.Errorf("%s: mode %s, owner %d:%d; want %s, 0:%d", c.path, mode, uid, gid, c.mode, c.gid)
				}
			}
		})
	}
}

// TestNotifySocketsOwned runs a service as another user while a third
// user (both made by this test) tries to take its notify sockets: it
// binds the abstract names an older handoffd would have given the next
// generations, and tries to reach, bind and make names in the notify
// directory. It reaches nothing, the service swaps under 32 clients that
// never retry with 0 failed, and after a SIGKILL of handoffd, while
// none listens on the generation's socket, the intruder still cannot bind
// it; the restarted handoffd binds the file again, and the generation's
// state channel comes back through it.
func TestNotifySocketsOwned(t *testing.T) {
	svc := newAccount(t, "svc")
	intruder := newAccount(t, "in")
	dir := publicDir(t)
	stateDir := filepath.Join(dir, "state")
	d := startLayoutDaemon(t, dir, layoutOptions{stateDir: stateDir, user: svc.name, group: "root", stateHandoff: true})
	hpid := d.cmd.Process.Pid
	var squat []string
	for gen := 2; gen <= 4; gen++ {
		squat = append(squat, "abstract", fmt.Sprintf("handoffd/%d/demo/%d", hpid, gen))
	}
	out, _ := runAs(t, dir, intruder, squat...)
	t.Logf("the intruder squats the abstract names:\n%s", out)

	notify := func(pid int) string {
		t.Helper()
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		for kv := range strings.SplitSeq(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "NOTIFY_SOCKET="); ok {
				return v
			}
		}
		t.Fatalf("pid %d has no NOTIFY_SOCKET", pid)
		return ""
	}
	gen1 := notify(d.status().Generations[0].PID)
	if want := filepath.Join(stateDir, "notify", "demo.1", "sock"); gen1 != want {
		t.Errorf("generation 1's NOTIFY_SOCKET is %q, want %q", gen1, want)
	}
	tries := func(when string) {
		t.Helper()
		out, _ := runAs(t, dir, intruder,
			"send", gen1,
			"bind", gen1,
			"mkdir", filepath.Join(stateDir, "notify", "demo.9"),
			"bind", filepath.Join(stateDir, "notify", "demo.9.sock"))
		for _, line := range strings.Split(out, "\n") {
			if !strings.HasSuffix(line, "permission denied") {
				t.Errorf("%s, the intruder: %s; want permission denied", when, line)
			}
		}
	}
	tries("while handoffd runs")

	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)
	if out, err := d.ctl("swap", "demo"); err != nil || !strings.Contains(out, "generation 2 active") {
		t.Fatalf("swap with the abstract names taken: %v: %s", err, out)
	}
	st := d.waitFor("generation 1 exited", 15*time.Second*slow, func(st api.ServiceStatus) bool { return stateOf(st, 1) == api.StateExited })
	gen2pid := st.Generations[len(st.Generations)-1].PID
	gen2 := notify(gen2pid)
	if mode, uid, _ := modeOf(t, filepath.Dir(gen2)); mode&0o007 != 0 || uid != 0 {
		t.Errorf("generation 2's notify directory: mode %s uid %d, want root's with nothing for others", mode, uid)
	}

	d.restart(syscall.SIGKILL)
	gen1 = gen2
	tries("while handoffd is down")
	d.waitFor("generation 2 re-adopted", 15*time.Second*slow, func(st api.ServiceStatus) bool { return stateOf(st, 2) == api.StateActive })
	deadline := time.Now().Add(10 * time.Second * slow)
	for !strings.Contains(d.logText(), `msg="state channel re-attached" service=demo generation=2`) {
		if time.Now().After(deadline) {
			t.Fatalf("generation 2's state channel did not come back through %s within 10s", gen2)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tries("after the restart")
	if out, err := d.ctl("swap", "demo"); err != nil || !strings.Contains(out, "generation 3 active") {
		t.Fatalf("swap after the restart: %v: %s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	res := l.stop()
	t.Logf("%d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 || res.ByGen[3] == 0 {
		t.Errorf("%d requests failed, %d answered by generation 3: %q", res.Failed, res.ByGen[3], res.Failures)
	}
}
