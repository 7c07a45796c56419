package main

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// haproxyServer is blue/green behind HAProxy: Debian's haproxy listens on
// the service's address and forwards to one of two backend servers, blue
// and green, each a bin/peer with a plain listener on a port of its own.
// A swap starts the next generation on the idle port, enables its server,
// drains the old one through the runtime API (state drain, then maint
// once it holds no session) and stops the old process.
type haproxyServer struct {
	bins, dir, addr string
	ports           [2]string // blue, green
	sock            string    // runtime API
	proxy           *exec.Cmd
	proxyExited     chan struct{}
	logFile         *os.File

	mu        sync.Mutex
	gen       int
	pids      map[int]int
	swapAt    map[int]time.Time
	ready     map[int]time.Time
	exited    map[int]time.Time
	drainedMS []float64 // drain → no session on the old server, per swap
}

var haproxyServers = [2]string{"blue", "green"}

func newHAProxyServer(bins, dir, addr string) *haproxyServer {
	return &haproxyServer{bins: bins, dir: dir, addr: addr, sock: filepath.Join(dir, "haproxy.sock"),
		proxyExited: make(chan struct{}), pids: map[int]int{}, swapAt: map[int]time.Time{},
		ready: map[int]time.Time{}, exited: map[int]time.Time{}}
}

// slot is the backend server (0 blue, 1 green) that generation gen runs as.
func slot(gen int) int { return (gen + 1) % 2 }

func (h *haproxyServer) Start() error {
	if _, err := exec.LookPath("haproxy"); err != nil {
		return fmt.Errorf("haproxy not installed (apt-get install haproxy): %w", err)
	}
	for i := range h.ports {
		a, err := freeAddr()
		if err != nil {
			return err
		}
		h.ports[i] = a
	}
	var err error
	if h.logFile, err = os.OpenFile(filepath.Join(h.dir, "haproxy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		return err
	}
	// A plain configuration: HTTP mode with its default keep-alive on both
	// sides and server connection reuse, no health checks (the runtime API
	// decides which server takes traffic), maxconn fixed so that the
	// descriptor limit the benchmark raises for other parts does not size
	// HAProxy's tables.
	cfg := fmt.Sprintf(`global
    maxconn 4096
    stats socket %s mode 600 level admin
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend service
    bind %s
    default_backend generations
backend generations
    server blue %s
    server green %s disabled
`, h.sock, h.addr, h.ports[0], h.ports[1])
	cfgPath := filepath.Join(h.dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	if err := h.startGen(1); err != nil {
		return err
	}
	h.proxy = exec.Command("haproxy", "-db", "-f", cfgPath)
	h.proxy.Stdout, h.proxy.Stderr = h.logFile, h.logFile
	if err := h.proxy.Start(); err != nil {
		return fmt.Errorf("start haproxy: %w", err)
	}
	own(h.proxy.Process.Pid)
	go func() { h.proxy.Wait(); close(h.proxyExited) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-h.proxyExited:
			return fmt.Errorf("haproxy exited (log %s)", h.logFile.Name())
		default:
		}
		if _, err := h.api("show info"); err == nil {
			return waitServing(h.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("haproxy's runtime API not up within 10s (log %s)", h.logFile.Name())
}

// startGen starts generation gen on its server's port and waits until it
// says it serves.
func (h *haproxyServer) startGen(gen int) error {
	cmd := exec.Command(filepath.Join(h.bins, "peer"), "-strategy", "plain", "-addr", h.ports[slot(gen)])
	cmd.Env = append(os.Environ(), fmt.Sprintf("BENCH_GEN=%d", gen))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = h.logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start backend generation %d: %w", gen, err)
	}
	own(cmd.Process.Pid)
	ready := make(chan time.Time, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready ") {
				ready <- time.Now()
			}
		}
		io.Copy(io.Discard, out)
	}()
	exit := watchExit(cmd.Process.Pid, 10*time.Minute)
	go func() {
		if t, ok := <-exit; ok {
			h.mu.Lock()
			h.exited[gen] = t
			h.mu.Unlock()
		}
	}()
	h.mu.Lock()
	h.pids[gen] = cmd.Process.Pid
	h.mu.Unlock()
	select {
	case t := <-ready:
		h.mu.Lock()
		h.ready[gen], h.gen = t, gen
		h.mu.Unlock()
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("backend generation %d not ready within 10s (log %s)", gen, h.logFile.Name())
	}
}

// api sends one command to HAProxy's runtime API and returns its answer.
func (h *haproxyServer) api(cmd string) (string, error) {
	c, err := net.DialTimeout("unix", h.sock, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", err
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("haproxy %q: %w", cmd, err)
	}
	s := strings.TrimSpace(string(out))
	if s != "" && !strings.HasPrefix(cmd, "show ") {
		return s, fmt.Errorf("haproxy %q: %s", cmd, s)
	}
	return s, nil
}

// sessions is the number of sessions HAProxy has on a backend server now
// (scur in `show stat`).
func (h *haproxyServer) sessions(server string) (int, error) {
	out, err := h.api("show stat")
	if err != nil {
		return 0, err
	}
	recs, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# "))).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("parse show stat: %w", err)
	}
	for _, r := range recs[1:] {
		if len(r) > 4 && r[0] == "generations" && r[1] == server {
			return strconv.Atoi(r[4])
		}
	}
	return 0, fmt.Errorf("show stat has no server generations/%s", server)
}

// Swap starts the next generation, enables its server, drains the old
// server until it holds no session (bounded), puts it in maintenance and
// stops the old process with SIGTERM (http.Server.Shutdown).
func (h *haproxyServer) Swap() error {
	h.mu.Lock()
	old := h.gen
	next := old + 1
	h.swapAt[next] = time.Now()
	prev, hasPrev := h.pids[next-2]
	h.mu.Unlock()
	// The generation before the old one used the same port: it must be gone.
	if hasPrev && !h.waitExit(next-2, 10*time.Second) {
		return fmt.Errorf("generation %d (pid %d) still runs on %s", next-2, prev, h.ports[slot(next)])
	}
	if err := h.startGen(next); err != nil {
		return err
	}
	newSrv, oldSrv := "generations/"+haproxyServers[slot(next)], "generations/"+haproxyServers[slot(old)]
	if _, err := h.api("set server " + newSrv + " state ready"); err != nil {
		return err
	}
	drainAt := time.Now()
	if _, err := h.api("set server " + oldSrv + " state drain"); err != nil {
		return err
	}
	for time.Since(drainAt) < 10*time.Second {
		n, err := h.sessions(haproxyServers[slot(old)])
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	h.mu.Lock()
	h.drainedMS = append(h.drainedMS, ms(time.Since(drainAt)))
	h.mu.Unlock()
	if _, err := h.api("set server " + oldSrv + " state maint"); err != nil {
		return err
	}
	return signalOwn(h.pid(old), syscall.SIGTERM)
}

func (h *haproxyServer) pid(gen int) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pids[gen]
}

func (h *haproxyServer) waitExit(gen int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		_, ok := h.exited[gen]
		h.mu.Unlock()
		if ok {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

func (h *haproxyServer) Observe() {}

func (h *haproxyServer) Settle() {
	for gen := 1; gen < h.gen; gen++ {
		h.waitExit(gen, 35*time.Second)
	}
}

// Phases: ready is the backend's ready line; there is no activation to
// first connection, since the clients' connections end at HAProxy.
func (h *haproxyServer) Phases(seen map[int]*genSeen) swapPhases {
	h.mu.Lock()
	defer h.mu.Unlock()
	ph := swapPhases{Drained: h.drainedMS}
	for gen := 2; gen <= h.gen; gen++ {
		t0 := h.swapAt[gen]
		if r, ok := h.ready[gen]; ok {
			ph.Ready = append(ph.Ready, ms(r.Sub(t0)))
		}
		if s := seen[gen]; s != nil && !s.FirstAnswer.IsZero() {
			ph.FirstResp = append(ph.FirstResp, ms(s.FirstAnswer.Sub(t0)))
		}
		if e, ok := h.exited[gen-1]; ok {
			ph.OldExited = append(ph.OldExited, ms(e.Sub(t0)))
		}
	}
	return ph
}

// DaemonPID is HAProxy's: its RSS and CPU are what the proxy hop costs.
func (h *haproxyServer) DaemonPID() int {
	if h.proxy == nil || h.proxy.Process == nil {
		return 0
	}
	return h.proxy.Process.Pid
}

func (h *haproxyServer) LogText() string {
	b, _ := os.ReadFile(filepath.Join(h.dir, "haproxy.log"))
	return string(b)
}

func (h *haproxyServer) Stop() {
	h.mu.Lock()
	pids := make(map[int]int, len(h.pids))
	for g, p := range h.pids {
		pids[g] = p
	}
	gen := h.gen
	h.mu.Unlock()
	if p := pids[gen]; p != 0 {
		signalOwn(p, syscall.SIGTERM)
		h.waitExit(gen, 35*time.Second)
	}
	if h.proxy != nil && h.proxy.Process != nil {
		h.proxy.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.proxyExited:
		case <-time.After(10 * time.Second):
			h.proxy.Process.Kill()
			<-h.proxyExited
		}
	}
	for _, p := range pids {
		signalOwn(p, syscall.SIGKILL)
	}
	if h.logFile != nil {
		h.logFile.Close()
	}
}
