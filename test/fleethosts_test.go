//go:build fleet

package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/api"
)

// fleetHost is one host of the simulated fleet: a network namespace of
// its own, on a bridge in the root namespace, with an sshd that Ansible
// reaches at the host's address. The hosts share this machine's kernel and
// filesystem, so each has its own directory for handoffd's config,
// control socket, state_dir, pidfile and the releases, and its own bpf_dir.
type fleetHost struct {
	name   string // host1, host2, ...
	netns  string
	addr   string // the address in its namespace
	dir    string
	bpfDir string
	sshd   *exec.Cmd
	sshLog *lockedWriter
}

func (h *fleetHost) control() string  { return filepath.Join(h.dir, "run", "handoffd.sock") }
func (h *fleetHost) stateDir() string { return filepath.Join(h.dir, "run") }
func (h *fleetHost) configFile() string {
	return filepath.Join(h.dir, "etc", "handoff", "handoff.yaml")
}
func (h *fleetHost) pidfile() string     { return filepath.Join(h.dir, "handoffd.pid") }
func (h *fleetHost) logFile() string     { return filepath.Join(h.dir, "handoffd.log") }
func (h *fleetHost) releaseRoot() string { return filepath.Join(h.dir, "releases") }
func (h *fleetHost) client() *api.Client { return api.NewClient(h.control()) }

// fleetAppPort is the port of the app on every host: each host is a
// network namespace of its own, so all use the same number.
const fleetAppPort = 8080

// fleetNet is the simulated network: a bridge in the root namespace and
// one namespace per host on it.
type fleetNet struct {
	bridge string
	prefix string // the first three octets of the /24
	hosts  []*fleetHost
	keys   string // directory of the client's key, authorized_keys, known_hosts
	// controlDir holds the sockets of ssh's connection masters.
	controlDir string
}

// newFleet makes n hosts under dir, each with a running sshd, and
// registers their removal (namespaces, bridge, processes, pins) with t.
func newFleet(t *testing.T, dir string, n int) *fleetNet {
	t.Helper()
	id := os.Getpid()
	f := &fleetNet{bridge: fmt.Sprintf("hfl%d", id), keys: filepath.Join(dir, "ssh"), controlDir: filepath.Join(dir, "ansible", "cp")}
	f.prefix = freeSubnet(t, id)
	t.Cleanup(f.remove)
	fleetCmd(t, "ip", "link", "add", f.bridge, "type", "bridge")
	fleetCmd(t, "ip", "addr", "add", f.prefix+".1/24", "dev", f.bridge)
	fleetCmd(t, "ip", "link", "set", f.bridge, "up")

	if err := os.MkdirAll(f.keys, 0o700); err != nil {
		t.Fatal(err)
	}
	fleetCmd(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f", filepath.Join(f.keys, "id"))
	pub, err := os.ReadFile(filepath.Join(f.keys, "id.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.keys, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	// sshd's privilege separation directory; Debian's unit makes it.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	var known strings.Builder
	for i := 1; i <= n; i++ {
		h := &fleetHost{name: fmt.Sprintf("host%d", i), netns: fmt.Sprintf("hfl%d-%d", id, i),
			addr: fmt.Sprintf("%s.%d", f.prefix, 10+i), dir: filepath.Join(dir, fmt.Sprintf("host%d", i)),
			bpfDir: fmt.Sprintf("/sys/fs/bpf/handoff-fleet-%d-%d", id, i), sshLog: &lockedWriter{w: new(bytes.Buffer)}}
		f.hosts = append(f.hosts, h)
		for _, d := range []string{h.dir, filepath.Dir(h.configFile()), h.stateDir(), filepath.Join(h.dir, "tmp")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		veth := fmt.Sprintf("hfl%dv%d", id, i)
		fleetCmd(t, "ip", "netns", "add", h.netns)
		fleetCmd(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
		fleetCmd(t, "ip", "link", "set", veth, "master", f.bridge, "up")
		fleetCmd(t, "ip", "-n", h.netns, "addr", "add", h.addr+"/24", "dev", "eth0")
		fleetCmd(t, "ip", "-n", h.netns, "link", "set", "eth0", "up")
		fleetCmd(t, "ip", "-n", h.netns, "link", "set", "lo", "up")
		key := filepath.Join(h.dir, "ssh_host_ed25519_key")
		fleetCmd(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", key)
		hostPub, err := os.ReadFile(key + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		fields := strings.Fields(string(hostPub))
		fmt.Fprintf(&known, "%s %s %s\n", h.addr, fields[0], fields[1])
		h.startSSHD(t, f.keys)
	}
	if err := os.WriteFile(filepath.Join(f.keys, "known_hosts"), []byte(known.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, h := range f.hosts {
		h.waitSSH(t)
	}
	return f
}

// startSSHD runs Debian's sshd in the host's network namespace (and in
// the root's mount namespace, unlike ip netns exec, so that /sys/fs/bpf is
// the machine's), with a config, host key and authorized_keys of the test.
func (h *fleetHost) startSSHD(t *testing.T, keys string) {
	t.Helper()
	cfg := filepath.Join(h.dir, "sshd_config")
	conf := fmt.Sprintf(`ListenAddress %s:22
HostKey %s
PidFile none
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
`, h.addr, filepath.Join(h.dir, "ssh_host_ed25519_key"), filepath.Join(keys, "authorized_keys"))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	h.sshd = exec.Command("nsenter", "--net=/run/netns/"+h.netns, "/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	h.sshd.Stdout, h.sshd.Stderr = h.sshLog, h.sshLog
	if err := h.sshd.Start(); err != nil {
		t.Fatalf("start sshd of %s: %v", h.name, err)
	}
}

// waitSSH waits until the host's sshd accepts connections, for 20 s at most.
func (h *fleetHost) waitSSH(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second * slow)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(h.addr, "22"), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd of %s at %s:22: %v\n%s", h.name, h.addr, err, h.sshLog.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// remove stops whatever runs on the hosts (handoffd and its generations,
// sshd and its sessions), by pid, and removes the namespaces, the bridge
// and the pins. It runs even when the test failed half-way.
func (f *fleetNet) remove() {
	for _, h := range f.hosts {
		h.stopHandoffd()
	}
	// ssh's connection masters (ControlPersist) keep their sessions, and
	// sshd's processes of those sessions, alive: end them first.
	socks, _ := filepath.Glob(filepath.Join(f.controlDir, "*"))
	for _, s := range socks {
		exec.Command("ssh", "-F", "/dev/null", "-o", "ControlPath="+s, "-O", "exit", "fleet").Run()
	}
	for _, h := range f.hosts {
		if h.sshd != nil && h.sshd.Process != nil {
			h.sshd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { h.sshd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				h.sshd.Process.Kill()
				<-done
			}
		}
	}
	endOrphans(10 * time.Second)
	for _, h := range f.hosts {
		exec.Command("ip", "netns", "del", h.netns).Run()
		os.RemoveAll(h.bpfDir)
	}
	exec.Command("ip", "link", "del", f.bridge).Run()
}

// stopHandoffd stops the host's handoffd and its services (POST /v1/stop,
// as handoffctl stop does) and reaps it: started detached by
// start-stop-daemon, it is this process's child through the subreaper
// flag. Whatever still runs then is killed by pid.
func (h *fleetHost) stopHandoffd() {
	pid := readPid(h.pidfile())
	if pid > 0 && processAlive(pid) {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		h.client().Stop(ctx, "")
		cancel()
		if !waitExit(pid, 40*time.Second) {
			syscall.Kill(pid, syscall.SIGKILL)
			waitExit(pid, 5*time.Second)
		}
	}
	for _, g := range generationsOf(h.control()) {
		syscall.Kill(g, syscall.SIGKILL)
		waitExit(g, 5*time.Second)
	}
}

// readPid returns the pid in a pidfile, or 0.
func readPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// processAlive says whether pid runs (and is no zombie).
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || !strings.HasPrefix(string(stat[i:]), ") Z")
}

// waitExit waits up to limit for pid to end, reaping it when it is a
// child of this process; it says whether it ended.
func waitExit(pid int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got == pid || (errors.Is(err, unix.ECHILD) && !processAlive(pid)) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// endOrphans ends the children this process inherited as subreaper and
// that still run once the hosts are stopped (an ssh master, an sshd
// session): SIGTERM, then SIGKILL after limit, by pid, and reaps them.
func endOrphans(limit time.Duration) {
	for _, pid := range childrenOf(os.Getpid()) {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline, killed := time.Now().Add(limit), false
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.ECHILD):
			return
		case pid > 0:
			continue
		case time.Now().After(deadline) && killed:
			return
		case time.Now().After(deadline):
			for _, pid := range childrenOf(os.Getpid()) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			deadline, killed = time.Now().Add(5*time.Second), true
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		rest := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(rest) > 1 && rest[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// freeSubnet returns the first three octets of a /24 in 10.0.0.0/8 that
// no address or route of this machine overlaps, picked from the pid so
// that two runs side by side take different ones.
func freeSubnet(t *testing.T, id int) string {
	t.Helper()
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route: %v: %s", err, out)
	}
	var used []*net.IPNet
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		for _, f := range fields {
			if !strings.Contains(f, ".") {
				continue
			}
			if !strings.Contains(f, "/") {
				f += "/32"
			}
			if _, n, err := net.ParseCIDR(f); err == nil {
				used = append(used, n)
			}
		}
	}
	for i := range 200 {
		k := (id + i*7919) % (200 * 250)
		prefix := fmt.Sprintf("10.%d.%d", 50+k/250, k%250)
		_, mine, _ := net.ParseCIDR(prefix + ".0/24")
		clash := false
		for _, n := range used {
			if n.Contains(mine.IP) || mine.Contains(n.IP) {
				clash = true
				break
			}
		}
		if !clash {
			return prefix
		}
	}
	t.Fatal("no free /24 in 10.50.0.0-10.249.255.0")
	return ""
}

// fleetCmd runs a command that sets the fleet up, failing t with its
// output when it fails.
func fleetCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
