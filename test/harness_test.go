package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/loader"
)

// bin holds the binaries built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	// A copy of this binary runs as another user for a test (runAs).
	if len(os.Args) > 1 && os.Args[1] == asUserArg {
		os.Exit(asUser(os.Args[2:]))
	}
	// A guest without a Go toolchain (make test-vm) runs the binaries
	// built on its host.
	if dir := os.Getenv("HANDOFF_E2E_BIN"); dir != "" {
		bin = dir
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "handoffd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	args := []string{"build", "-o", dir + "/"}
	if raceBuild {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/handoffd", "../cmd/handoffctl", "../demo", "../demo/grpcdemo")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	if err := setupRace(); err != nil {
		fmt.Fprintln(os.Stderr, "race reports directory:", err)
		os.Exit(1)
	}
	code := m.Run()
	if finishRaces() && code == 0 {
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// slow stretches the waits and timeouts that assume a machine of normal
// speed: HANDOFF_E2E_SLOW times (make test-vm's emulated guest runs about
// 11 times slower), 1 unless set.
var slow = time.Duration(envInt("HANDOFF_E2E_SLOW", 1))

// requireEBPF skips a test that needs root and eBPF, or fails it when
// CI=true: in CI a missing privilege is a failure, never a silent skip.
func requireEBPF(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root"
	} else if err := loader.Probe(); err != nil {
		why = err.Error()
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("end-to-end test %s (CI=true: not skipping)", why)
	}
	t.Skipf("end-to-end test %s", why)
}

// portsIssued counts the ports freePort handed out in this test binary.
var portsIssued atomic.Int64

// freePort returns a TCP port that nothing is bound to now, taken below
// the kernel's ephemeral range (net.ipv4.ip_local_port_range): no socket
// bound to port 0 and no connecting client ever gets such a port, so it
// stays free until handoffd binds it. Ports are spread by pid and a
// counter, so that test binaries running side by side seldom try the same
// one, and each is checked free by binding it on every address.
func freePort(t *testing.T) int {
	t.Helper()
	low, err := ephemeralLow()
	if err != nil {
		t.Fatal(err)
	}
	// The upper half below the ephemeral range: clear of the ports that
	// well-known and registered services are usually configured on.
	floor := low / 2
	if floor < 1024 {
		t.Fatalf("ip_local_port_range starts at %d: no port below it is out of the way of services and ephemeral binds", low)
	}
	span := uint64(low - floor)
	// Fibonacci hashing (the high bits of pid·2⁶⁴/φ): near pids start far apart.
	start := uint64(os.Getpid()) * 11400714819323198485 >> 32
	for range 200 {
		port := floor + int((start+uint64(portsIssued.Add(1)))%span)
		if l, err := net.Listen("tcp", fmt.Sprintf(":%d", port)); err == nil {
			l.Close()
			return port
		}
	}
	t.Fatalf("200 ports in %d..%d were all taken", floor, low-1)
	return 0
}

// ephemeralLow returns the first port of the kernel's ephemeral range.
func ephemeralLow() (int, error) {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(data))
	if len(fields) != 2 {
		return 0, fmt.Errorf("ip_local_port_range: %q", data)
	}
	return strconv.Atoi(fields[0])
}

// daemon is a running handoffd with the demo service.
type daemon struct {
	t       *testing.T
	cmd     *exec.Cmd
	mode    string
	metrics string // host:port of /metrics, if served
	control string
	config  string // handoffd's config file, which a test may rewrite
	bpfDir  string // where handoffd pins its eBPF objects
	addr    string
	webAddr string // the second service's address, with daemonOptions.web
	client  *api.Client
	log     *bytes.Buffer
	exited  chan struct{}
}

type daemonOptions struct {
	mode         string // ebpf (the default), fdpass or auto
	drainTimeout string
	// unixSocket, if set, is the path of a unix:// listener that replaces
	// the TCP one; d.addr is then that path.
	unixSocket string
	// wrap is a command line that runs handoffd, such as setpriv's.
	wrap []string
	// metrics makes handoffd serve /metrics on a free port (daemon.metrics).
	metrics bool
	// demoArgs are added to the demo's command line.
	demoArgs []string
	// command, if set, replaces the demo's command line: a binary built
	// by TestMain (or an absolute path), and its arguments.
	command []string
	// readyTimeout and probation set the service's keys ("" = default).
	readyTimeout, probation string
	// web adds a second service, "web", running the demo on another
	// port (daemon.webAddr), listed after demo.
	web bool
	// starting makes startDaemon return as soon as generation 1 starts,
	// instead of once it is active.
	starting bool
	// demoCommand, if set, is the demo service's command line alone
	// (web keeps the demo); startDaemon then returns as soon as
	// handoffd answers, whatever the state of the demo service.
	demoCommand []string
	// serviceYAML is added to the demo service's keys, indented by four
	// spaces per line (health:, ready:).
	serviceYAML string
	// listen is the listener's address, %d standing for the port;
	// tcp://127.0.0.1:%d when empty. d.addr is where clients connect:
	// on an all-addresses listener, the loopback address of its family.
	listen string
	// quic adds a QUIC listener, h3, on the UDP port of the same number
	// (udp://127.0.0.1:PORT), which the demo serves HTTP/3 on with
	// --tls --http3 h3.
	quic bool
}

// startDaemon runs handoffd with one demo service on a fresh port, and
// waits until generation 1 is active.
func startDaemon(t *testing.T, opts daemonOptions) *daemon {
	t.Helper()
	if opts.mode == "" {
		opts.mode = "ebpf"
	}
	if opts.mode == "ebpf" {
		requireEBPF(t)
	}
	if opts.drainTimeout == "" {
		opts.drainTimeout = "30s"
	}
	if opts.readyTimeout == "" {
		opts.readyTimeout = (10 * time.Second * slow).String()
	}
	if opts.probation == "" {
		opts.probation = "0s"
	}
	if opts.listen == "" {
		opts.listen = "tcp://127.0.0.1:%d"
	}
	dir := t.TempDir()
	port := freePort(t)
	listen := fmt.Sprintf(opts.listen, port)
	d := &daemon{t: t, mode: opts.mode, control: filepath.Join(dir, "handoffd.sock"), addr: dialAddr(t, listen),
		log: new(bytes.Buffer), exited: make(chan struct{})}
	bpfDir := fmt.Sprintf("/sys/fs/bpf/handoff-e2e-%d-%d", os.Getpid(), port)
	d.bpfDir = bpfDir
	if opts.metrics {
		d.metrics = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	}
	command := []string{filepath.Join(bin, "demo"), "--version", "e2e"}
	if slow > 1 {
		// A client starved of CPU can take longer than the default 1 s
		// between its connect and its request.
		command = append(command, "--idle-grace", (time.Second * slow).String())
	}
	command = append(command, opts.demoArgs...)
	if len(opts.command) > 0 {
		command = append([]string{}, opts.command...)
		if !filepath.IsAbs(command[0]) {
			command[0] = filepath.Join(bin, command[0])
		}
	}
	quicListener := ""
	if opts.quic {
		quicListener = fmt.Sprintf("\n      - name: h3\n        address: udp://127.0.0.1:%d\n        protocol: quic", port)
		command = append(command, "--tls", "--http3", "h3")
	}
	argv, _ := json.Marshal(command)
	if opts.unixSocket != "" {
		listen, d.addr = "unix://"+opts.unixSocket, opts.unixSocket
	}
	service := func(name string, argv []byte, address string) string {
		return fmt.Sprintf(`  - name: %s
    command: %s
    env: %s
    listeners:
      - name: http
        address: %s
        backlog: 4096%s
    ready_timeout: %s
    drain_timeout: %s
    probation: %s
`, name, argv, demoEnv(), address, quicListener, opts.readyTimeout, opts.drainTimeout, opts.probation) + opts.serviceYAML
	}
	demoArgv := argv
	if opts.demoCommand != nil {
		demoArgv, _ = json.Marshal(opts.demoCommand)
	}
	cfg := fmt.Sprintf(`control: %s
metrics: %q
mode: %s
state_dir: %s
bpf_dir: %s
services:
`, d.control, d.metrics, opts.mode, dir, bpfDir) + service("demo", demoArgv, listen)
	if opts.web {
		d.webAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		cfg += service("web", argv, "tcp://"+d.webAddr)
	}
	cfgPath := filepath.Join(dir, "handoff.yaml")
	d.config = cfgPath
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	run := append(append([]string{}, opts.wrap...), filepath.Join(bin, "handoffd"), "--config", cfgPath)
	d.cmd = exec.Command(run[0], run[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = &lockedWriter{w: d.log}, &lockedWriter{w: d.log}
	// Generations inherit handoffd's stdout: when handoffd dies before
	// them, Wait must not wait for them to close it.
	d.cmd.WaitDelay = time.Second
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	d.client = api.NewClient(d.control)
	t.Cleanup(func() { d.shutdown(); os.RemoveAll(bpfDir) })
	if opts.demoCommand != nil {
		d.waitFor("handoffd answering", 15*time.Second*slow, func(api.ServiceStatus) bool { return true })
		return d
	}
	if opts.starting {
		d.waitFor("generation 1 started", 15*time.Second*slow, func(st api.ServiceStatus) bool {
			return len(st.Generations) == 1 && st.Generations[0].PID != 0
		})
		return d
	}
	d.waitFor("generation 1 active", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		return len(st.Generations) == 1 && st.Generations[0].State == api.StateActive
	})
	return d
}

// demoEnv is the env: list, in YAML, of a demo service.
func demoEnv() string {
	env, _ := json.Marshal(append([]string{"GIN_MODE=release"}, raceEnv()...))
	return string(env)
}

// dialAddr returns where a client reaches a TCP listener at address: its
// own host, or the loopback address of its family when it listens on all.
func dialAddr(t *testing.T, address string) string {
	t.Helper()
	u, err := url.Parse(address)
	if err != nil {
		t.Fatal(err)
	}
	host := u.Hostname()
	switch {
	case host == "" && u.Scheme == "tcp6", host == "::":
		host = "::1"
	case host == "", host == "0.0.0.0":
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, u.Port())
}

// shutdown stops every service and handoffd, killing (by pid) whatever
// this test started and is still running.
func (d *daemon) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-d.exited:
	case <-ctx.Done():
		d.t.Errorf("handoffd did not stop on SIGINT within 40s")
		d.cmd.Process.Kill()
		<-d.exited
	}
	// Whatever still runs with this daemon's control socket in its
	// environment is a generation it started (or a test started to join
	// it): none may outlive handoffd's stop, even when the test failed.
	for _, pid := range generationsOf(d.control) {
		d.t.Errorf("generation pid %d still runs after handoffd stopped", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	checkRaces(d.t)
	if d.t.Failed() {
		d.t.Logf("handoffd log:\n%s", d.logText())
	}
}

func (d *daemon) logText() string {
	return d.cmd.Stdout.(*lockedWriter).String()
}

func (d *daemon) status() api.ServiceStatus {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := d.client.Status(ctx, "demo")
	if err != nil {
		d.t.Fatalf("status: %v", err)
	}
	return st.Services[0]
}

func (d *daemon) waitFor(what string, limit time.Duration, cond func(api.ServiceStatus) bool) api.ServiceStatus {
	d.t.Helper()
	return d.waitForService("demo", what, limit, cond)
}

// waitForService polls the status of the named service until cond holds,
// failing the test after limit or when handoffd exits.
func (d *daemon) waitForService(name, what string, limit time.Duration, cond func(api.ServiceStatus) bool) api.ServiceStatus {
	d.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := d.client.Status(ctx, name)
		cancel()
		if err == nil && cond(st.Services[0]) {
			return st.Services[0]
		}
		select {
		case <-d.exited:
			d.t.Fatalf("handoffd exited (%v) while waiting for %s:\n%s", d.cmd.ProcessState, what, d.logText())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out after %s waiting for %s (last status %+v, err %v)\n%s", limit, what, st, err, d.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ctl runs handoffctl against the daemon and returns its output.
func (d *daemon) ctl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(bin, "handoffctl"), append([]string{"--control", d.control}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// listeningInodes returns the inodes of the sockets listening on port.
func listeningInodes(t *testing.T, port int) map[string]bool {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	inodes := map[string]bool{}
	want := fmt.Sprintf(":%04X", port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local rem st ... inode at 9; st 0A is LISTEN.
		if len(fields) > 9 && strings.HasSuffix(fields[1], want) && fields[3] == "0A" {
			inodes[fields[9]] = true
		}
	}
	return inodes
}

// listenersHeld counts the fds of pid that are sockets in inodes.
func listenersHeld(t *testing.T, pid int, inodes map[string]bool) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") && inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] {
			n++
		}
	}
	return n
}

// generationsOf lists the live processes whose environment names control
// as HANDOFF_CONTROL: the generations of the handoffd serving it.
func generationsOf(control string) []int {
	ents, _ := os.ReadDir("/proc")
	want := []byte("HANDOFF_CONTROL=" + control + "\x00")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		zombie := len(stat) > 0 && strings.Contains(string(stat[bytes.LastIndexByte(stat, ')'):]), ") Z ")
		if err == nil && !zombie && bytes.Contains(env, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// zombieChildren lists the children of pid that are zombies.
func zombieChildren(t *testing.T, pid int) []int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	var z []int
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		rest := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(rest) > 1 && rest[0] == "Z" && rest[1] == strconv.Itoa(pid) {
			z = append(z, child)
		}
	}
	return z
}

func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}
