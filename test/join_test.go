package test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/loader"
)

// requireRoot skips a test that needs root, or fails it when CI=true.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("end-to-end test needs root (CI=true: not skipping)")
	}
	t.Skip("end-to-end test needs root")
}

// outsider is the demo started by the test itself, not by handoffd, set
// up to join the daemon's service over its control socket.
type outsider struct {
	cmd    *exec.Cmd
	out    lockedWriter
	exited chan struct{}
}

func startOutsider(t *testing.T, d *daemon, demo string, cred *syscall.Credential, args ...string) *outsider {
	t.Helper()
	o := &outsider{exited: make(chan struct{})}
	o.cmd = exec.Command(demo, append([]string{"--version", "outsider"}, args...)...)
	o.cmd.Env = append([]string{"PATH=/usr/bin:/bin", "GIN_MODE=release",
		"HANDOFF_CONTROL=" + d.control, "HANDOFF_SERVICE=demo"}, raceEnv()...)
	o.out.w = new(bytes.Buffer)
	o.cmd.Stdout, o.cmd.Stderr = &o.out, &o.out
	if cred != nil {
		o.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := o.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { o.cmd.Wait(); close(o.exited) }()
	t.Cleanup(func() {
		o.cmd.Process.Kill()
		<-o.exited
	})
	return o
}

func (o *outsider) wait(t *testing.T, limit time.Duration) {
	t.Helper()
	select {
	case <-o.exited:
	case <-time.After(limit):
		t.Fatalf("the outside process did not exit within %s; its output:\n%s", limit, o.out.String())
	}
}

// TestJoinFromOutside: a demo started by the test joins as generation 2
// through the control socket (SCM_RIGHTS) under load, then a normal swap
// replaces it; not one request may fail.
func TestJoinFromOutside(t *testing.T) {
	for _, mode := range modes {
		for _, tc := range []struct {
			name      string
			keepAlive bool
		}{{"new-connection", false}, {"keep-alive", true}} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) { joinFromOutside(t, mode, tc.keepAlive) })
		}
	}
}

func joinFromOutside(t *testing.T, mode string, keepAlive bool) {
	requireRoot(t)
	d := startDaemon(t, daemonOptions{mode: mode, serviceYAML: "    join: true\n"})
	l := startLoad(d.addr, "/slow?ms=2", loadClients, keepAlive)
	time.Sleep(500 * time.Millisecond)

	o := startOutsider(t, d, filepath.Join(bin, "demo"), nil)
	st := d.waitFor("the outside process active as generation 2", 15*time.Second, func(st api.ServiceStatus) bool {
		g := st.Generations[len(st.Generations)-1]
		return g.ID == 2 && g.State == api.StateActive
	})
	if g := st.Generations[len(st.Generations)-1]; g.PID != o.cmd.Process.Pid {
		t.Errorf("generation 2 has pid %d, want the outside process's %d", g.PID, o.cmd.Process.Pid)
	}
	d.waitFor("generation 1 exited", 15*time.Second, func(st api.ServiceStatus) bool {
		return st.Generations[0].ID == 1 && st.Generations[0].State == api.StateExited
	})
	time.Sleep(700 * time.Millisecond)

	out, err := d.ctl("swap", "demo")
	if err != nil || !strings.Contains(out, "demo: generation 3 active") {
		t.Fatalf("swap after the join: %v: %q", err, out)
	}
	o.wait(t, 15*time.Second) // stop signal through the pidfd, then a drain
	if !o.cmd.ProcessState.Success() {
		t.Errorf("the outside process ended with %s, want a clean drain; output:\n%s", o.cmd.ProcessState, o.out.String())
	}
	time.Sleep(500 * time.Millisecond)
	res := l.stop()
	st = d.waitFor("generation 2 exited", 15*time.Second, func(st api.ServiceStatus) bool {
		for _, g := range st.Generations {
			if g.ID == 2 {
				return g.State == api.StateExited
			}
		}
		return false
	})

	t.Logf("requests: %d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d requests failed, first ones: %q", res.Failed, res.Failures)
	}
	for gen := 1; gen <= 3; gen++ {
		if res.ByGen[gen] == 0 {
			t.Errorf("generation %d answered no request", gen)
		}
	}
	if !strings.Contains(o.out.String(), `"generation":2`) && !strings.Contains(o.out.String(), "generation=2") {
		t.Errorf("the outside process does not say it serves as generation 2:\n%s", o.out.String())
	}
}

// TestJoinRefusesStranger: a process of a uid that is neither root, the
// service's user nor in the admin group may not join, and says why.
func TestJoinRefusesStranger(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, daemonOptions{mode: "fdpass", serviceYAML: "    join: true\n"})
	// Let everybody reach the socket, so that the peer check, not the
	// file mode, is what refuses.
	for _, dir := range []string{filepath.Dir(filepath.Dir(d.control)), filepath.Dir(d.control)} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(d.control, 0o666); err != nil {
		t.Fatal(err)
	}
	pub := publicDir(t)
	o := startOutsider(t, d, filepath.Join(pub, "demo"), &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}})
	o.wait(t, 10*time.Second)
	if o.cmd.ProcessState.Success() {
		t.Fatalf("a process of uid %d joined; output:\n%s", nobody, o.out.String())
	}
	for _, want := range []string{"join service demo", "permission denied: uid 65534 (gid 65534) may not join service demo"} {
		if !strings.Contains(o.out.String(), want) {
			t.Errorf("output of the refused process lacks %q:\n%s", want, o.out.String())
		}
	}
	st := d.status()
	if len(st.Generations) != 1 || st.Generations[0].State != api.StateActive {
		t.Errorf("after a refused join: %+v, want generation 1 alone and active", st.Generations)
	}
}

// TestAutoModeWithoutBPF runs handoffd with mode auto and no eBPF
// capabilities in its bounding set: it must choose fdpass, say why, and
// still swap under load without a failed request.
func TestAutoModeWithoutBPF(t *testing.T) {
	requireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux) not found: %v", err)
	}
	d := startDaemon(t, daemonOptions{mode: "auto",
		wrap: []string{setpriv, "--bounding-set", "-bpf,-sys_admin,-perfmon,-net_admin", "--inh-caps", "-all", "--"}})
	if st := d.status(); st.Mode != api.ModeFDPass {
		t.Errorf("status mode %q, want fdpass", st.Mode)
	}
	log := d.logText()
	if !strings.Contains(log, "eBPF steering unavailable; using fdpass") || !strings.Contains(log, "CAP_BPF") {
		t.Errorf("the log does not say why fdpass was chosen:\n%s", log)
	}
	swapsUnderLoad(t, d, 5, false)
}

// TestAutoModeByProbe runs handoffd as root with mode auto: it takes ebpf
// where loader.Probe loads and attaches the steering program, and fdpass
// where the kernel lacks the migrate attach type (before 5.14), saying why
// on one log line; either way it swaps under load without a failed
// request. HANDOFF_E2E_AUTO_MODE, when set (make test-vm sets it for each
// guest kernel), names the mode this kernel must give: a kernel that does
// not lack what it should fails the test instead of testing the other
// branch.
func TestAutoModeByProbe(t *testing.T) {
	requireRoot(t)
	kernel, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatalf("kernel release: %v", err)
	}
	want := api.ModeEBPF
	if err := loader.Probe(); errors.Is(err, loader.ErrNotSupported) {
		want = api.ModeFDPass
		t.Logf("kernel %s: %v", bytes.TrimSpace(kernel), err)
	} else if err != nil {
		t.Fatalf("probe on kernel %s: %v", bytes.TrimSpace(kernel), err)
	}
	if env := os.Getenv("HANDOFF_E2E_AUTO_MODE"); env != "" && api.Mode(env) != want {
		t.Fatalf("kernel %s gives mode %s by probe; HANDOFF_E2E_AUTO_MODE wants %s", bytes.TrimSpace(kernel), want, env)
	}
	d := startDaemon(t, daemonOptions{mode: "auto"})
	if st := d.status(); st.Mode != want || st.Listeners[0].Mode != want {
		t.Errorf("status: service mode %s, listener mode %s; want %s", st.Mode, st.Listeners[0].Mode, want)
	}
	var fallback []string
	for _, line := range strings.Split(d.logText(), "\n") {
		if strings.Contains(line, "using fdpass") {
			fallback = append(fallback, line)
		}
	}
	switch {
	case want == api.ModeEBPF && len(fallback) > 0:
		t.Errorf("mode ebpf, yet the log says it falls back: %q", fallback)
	case want == api.ModeFDPass && (len(fallback) != 1 || !strings.Contains(fallback[0], "eBPF steering unavailable") ||
		!strings.Contains(fallback[0], "BPF_SK_REUSEPORT_SELECT_OR_MIGRATE") || !strings.Contains(fallback[0], "5.14")):
		t.Errorf("want one log line that says fdpass was chosen for want of BPF_SK_REUSEPORT_SELECT_OR_MIGRATE (5.14), got %q\n%s",
			fallback, d.logText())
	default:
		t.Logf("mode %s; fallback line: %q", want, fallback)
	}
	swapsUnderLoad(t, d, 5, false)
}

// TestUnixListenerSwap swaps a service whose listener is a unix socket,
// with the load over that socket.
func TestUnixListenerSwap(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			requireRoot(t)
			d := startDaemon(t, daemonOptions{mode: mode, unixSocket: filepath.Join(t.TempDir(), "demo.sock")})
			if st := d.status(); st.Listeners[0].Mode != api.ModeFDPass {
				t.Errorf("unix listener handed over in mode %q, want fdpass", st.Listeners[0].Mode)
			}
			swapsUnderLoad(t, d, 5, true)
		})
	}
}

// swapsUnderLoad makes n swaps 0.7 s apart under load and checks that no
// request failed and every generation answered.
func swapsUnderLoad(t *testing.T, d *daemon, n int, keepAlive bool) {
	t.Helper()
	l := startLoad(d.addr, "/slow?ms=2", loadClients, keepAlive)
	time.Sleep(300 * time.Millisecond)
	for i := range n {
		time.Sleep(swapEvery)
		out, err := d.ctl("swap", "demo")
		if want := fmt.Sprintf("demo: generation %d active", i+2); err != nil || !strings.Contains(out, want) {
			t.Errorf("swap %d: %v: %q, want %q", i+1, err, out, want)
		}
	}
	time.Sleep(500 * time.Millisecond)
	res := l.stop()
	t.Logf("requests: %d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d requests failed, first ones: %q", res.Failed, res.Failures)
	}
	for gen := 2; gen <= n+1; gen++ {
		if res.ByGen[gen] == 0 {
			t.Errorf("generation %d answered no request", gen)
		}
	}
}

// TestJoinTiedToService runs two services as one user (made by the test):
// demo, which accepts joins, and web, which does not. A process started
// by web's generation tries to join demo and is refused, since it runs
// under another service's generation; web refuses a join from anyone,
// root included; a process of the same user that no service started joins
// demo as its generation 2 under 32 clients that never retry, with 0
// failed.
func TestJoinTiedToService(t *testing.T) {
	requireEBPF(t)
	svc := newAccount(t, "svc")
	dir := publicDir(t)
	stateDir := filepath.Join(dir, "state")
	port, webPort := freePort(t), freePort(t)
	d := &daemon{t: t, mode: "ebpf", control: filepath.Join(stateDir, "handoffd.sock"), addr: fmt.Sprintf("127.0.0.1:%d", port),
		log: new(bytes.Buffer), exited: make(chan struct{})}
	d.bpfDir = fmt.Sprintf("/sys/fs/bpf/handoff-e2e-%d-%d", os.Getpid(), port)
	joinLog := filepath.Join(dir, "web-child.log")
	if err := os.WriteFile(joinLog, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(joinLog, 0o666)
	// web's generation starts a child that tries to join demo a second
	// later, without the listeners it inherited, then serves web itself.
	child := fmt.Sprintf("(sleep 1; exec env -u LISTEN_FDS -u LISTEN_PID -u LISTEN_FDNAMES -u HANDOFF_LISTEN_FDS -u NOTIFY_SOCKET "+
		"HANDOFF_SERVICE=demo ./demo --version web-child >%s 2>&1) & exec ./demo --version e2e", joinLog)
	webCmd, _ := json.Marshal([]string{"/bin/sh", "-c", child})
	cfg := fmt.Sprintf(`control: %s
mode: ebpf
state_dir: %s
bpf_dir: %s
services:
  - name: demo
    command: ["./demo", "--version", "e2e"]
    dir: %s
    env: %s
    user: %s
    join: true
    listeners:
      - name: http
        address: tcp://%s
  - name: web
    command: %s
    dir: %s
    env: %s
    user: %s
    listeners:
      - name: http
        address: tcp://127.0.0.1:%d
`, d.control, stateDir, d.bpfDir, dir, demoEnv(), svc.name, d.addr, webCmd, dir, demoEnv(), svc.name, webPort)
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
	// The service's user reaches the control socket, as a member of
	// group would: the peer check, not the file mode, decides.
	if err := os.Chmod(d.control, 0o666); err != nil {
		t.Fatal(err)
	}
	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)

	deadline := time.Now().Add(15 * time.Second * slow)
	for {
		out, _ := os.ReadFile(joinLog)
		if strings.Contains(string(out), "of service web or runs under it, and may not join service demo") {
			t.Logf("web's child: %s", strings.TrimSpace(string(out)))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("web's child was not refused within 15s; its output:\n%s\nhandoffd:\n%s", out, d.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := d.status(); len(st.Generations) != 1 {
		t.Fatalf("after the refused join of web's child, demo has %+v", st.Generations)
	}

	web := exec.Command(filepath.Join(dir, "demo"), "--version", "outsider")
	web.Env = append([]string{"PATH=/usr/bin:/bin", "GIN_MODE=release", "HANDOFF_CONTROL=" + d.control, "HANDOFF_SERVICE=web"}, raceEnv()...)
	web.WaitDelay = time.Second
	if out, err := web.CombinedOutput(); err == nil || !strings.Contains(string(out), "service web does not accept joins") {
		t.Errorf("root joining web, which does not accept joins: %v: %s", err, out)
	}

	o := startOutsider(t, d, filepath.Join(dir, "demo"), &syscall.Credential{Uid: svc.uid, Gid: svc.gid, Groups: []uint32{}})
	d.waitFor("the outside process of the service's user active as generation 2", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		g := st.Generations[len(st.Generations)-1]
		return g.ID == 2 && g.State == api.StateActive && g.PID == o.cmd.Process.Pid
	})
	time.Sleep(500 * time.Millisecond)
	res := l.stop()
	t.Logf("%d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 || res.ByGen[2] == 0 {
		t.Errorf("%d requests failed, %d answered by the joined generation 2: %q", res.Failed, res.ByGen[2], res.Failures)
	}
}
