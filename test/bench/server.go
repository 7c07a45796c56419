package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// server is one strategy's way of running and swapping the service.
type server interface {
	// Start runs generation 1 and returns once it serves.
	Start() error
	// Swap replaces the serving generation with the next one and returns
	// once the new one is in place (what "in place" means is the
	// strategy's: see each implementation).
	Swap() error
	// Observe records what the server says about its generations; it is
	// called halfway between swaps, away from the cutover it would disturb.
	Observe()
	// Settle waits, bounded, until every old generation has exited.
	Settle()
	// Phases times the swaps from what the server and the clients saw.
	Phases(seen map[int]*genSeen) swapPhases
	// DaemonPID is the supervisor's pid whose RSS and CPU are reported (0: none).
	DaemonPID() int
	// Stop ends every process of the server, by pid.
	Stop()
	// LogText is what the server's processes logged so far.
	LogText() string
}

// swapPhases are the durations of every swap, in ms, from the start of
// the swap: the new process ready, its first answer received by a client,
// the old process exited; and from the activation (handoffd: active_at,
// peers: the ready line) to the dial of the first connection the new
// generation answered.
type swapPhases struct {
	Ready     []float64 `json:"ready_ms"`
	FirstResp []float64 `json:"first_response_ms"`
	OldExited []float64 `json:"old_exited_ms"`
	ActToConn []float64 `json:"activation_to_first_conn_ms"`
	// Drained (HAProxy): from `state drain` to no session left on the
	// old server.
	Drained []float64 `json:"drained_ms,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// peerServer runs bin/peer: naive, reuseport(-migrate), tableflip, endless and none.
type peerServer struct {
	bin, listen, addr, logPath string
	kind                       string // none, naive, reuseport, tableflip, endless

	pipeR, pipeW *os.File
	logFile      *os.File

	mu      sync.Mutex
	gen     int
	pids    map[int]int
	ready   map[int]time.Time
	swapAt  map[int]time.Time // when the swap to this generation began
	exited  map[int]time.Time
	readyCh chan int
}

func newPeerServer(bin, kind, addr, logPath string) *peerServer {
	listen := map[string]string{"none": "plain", "naive": "plain", "reuseport": "reuseport", "tableflip": "tableflip",
		"endless": "endless"}[kind]
	return &peerServer{bin: bin, kind: kind, listen: listen, addr: addr, logPath: logPath,
		pids: map[int]int{}, ready: map[int]time.Time{}, swapAt: map[int]time.Time{}, exited: map[int]time.Time{},
		readyCh: make(chan int, 4096)}
}

func (p *peerServer) Start() error {
	var err error
	if p.pipeR, p.pipeW, err = os.Pipe(); err != nil {
		return err
	}
	if p.logFile, err = os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		return err
	}
	go p.readEvents()
	p.swapAt[1] = time.Now()
	return p.startGen(1)
}

// readEvents reads "ready GEN PID" lines from every generation (tableflip's
// and endless's children inherit the pipe) until all writers are gone.
func (p *peerServer) readEvents() {
	sc := bufio.NewScanner(p.pipeR)
	for sc.Scan() {
		now := time.Now()
		var gen, pid int
		if n, _ := fmt.Sscanf(sc.Text(), "ready %d %d", &gen, &pid); n != 2 {
			continue
		}
		own(pid)
		exit := watchExit(pid, 10*time.Minute)
		p.mu.Lock()
		p.ready[gen], p.pids[gen] = now, pid
		p.mu.Unlock()
		go func() {
			if t, ok := <-exit; ok {
				p.mu.Lock()
				p.exited[gen] = t
				p.mu.Unlock()
			}
		}()
		p.readyCh <- gen
	}
}

func (p *peerServer) startGen(gen int) error {
	cmd := exec.Command(p.bin, "-strategy", p.listen, "-addr", p.addr)
	cmd.Env = append(os.Environ(), fmt.Sprintf("BENCH_GEN=%d", gen))
	cmd.Stdout, cmd.Stderr = p.pipeW, p.logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start peer generation %d: %w", gen, err)
	}
	own(cmd.Process.Pid)
	// Reaped by watchExit through the pidfd; cmd.Wait is never called.
	return p.waitReady(gen)
}

func (p *peerServer) waitReady(gen int) error {
	timeout := time.After(10 * time.Second)
	for {
		select {
		case g := <-p.readyCh:
			if g == gen {
				p.mu.Lock()
				p.gen = gen
				p.mu.Unlock()
				return nil
			}
		case <-timeout:
			return fmt.Errorf("generation %d not ready within 10s (log %s)", gen, p.logPath)
		}
	}
}

func (p *peerServer) pid(gen int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pids[gen]
}

func (p *peerServer) waitExit(gen int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		_, ok := p.exited[gen]
		p.mu.Unlock()
		if ok {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

// Swap: naive stops the old process and waits for its exit before it
// starts the new one; reuseport starts the new one, waits until it is
// ready, then sends SIGTERM to the old one; tableflip and endless send
// SIGHUP to the old process and wait until the child it forks is ready
// (endless's child then sends SIGTERM to its parent itself).
func (p *peerServer) Swap() error {
	old := p.gen
	next := old + 1
	p.mu.Lock()
	p.swapAt[next] = time.Now()
	p.mu.Unlock()
	switch p.kind {
	case "naive":
		signalOwn(p.pid(old), syscall.SIGTERM)
		if !p.waitExit(old, 35*time.Second) {
			return fmt.Errorf("generation %d did not exit within 35s", old)
		}
		return p.startGen(next)
	case "reuseport":
		if err := p.startGen(next); err != nil {
			return err
		}
		return signalOwn(p.pid(old), syscall.SIGTERM)
	case "tableflip", "endless":
		if err := signalOwn(p.pid(old), syscall.SIGHUP); err != nil {
			return err
		}
		return p.waitReady(next)
	}
	return fmt.Errorf("%s does not swap", p.kind)
}

func (p *peerServer) Observe() {}

func (p *peerServer) Settle() {
	for gen := 1; gen < p.gen; gen++ {
		p.waitExit(gen, 35*time.Second)
	}
}

func (p *peerServer) Phases(seen map[int]*genSeen) swapPhases {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ph swapPhases
	for gen := 2; gen <= p.gen; gen++ {
		t0 := p.swapAt[gen]
		if r, ok := p.ready[gen]; ok {
			ph.Ready = append(ph.Ready, ms(r.Sub(t0)))
			if s := seen[gen]; s != nil && !s.FirstConn.IsZero() {
				ph.ActToConn = append(ph.ActToConn, ms(s.FirstConn.Sub(r)))
			}
		}
		if s := seen[gen]; s != nil && !s.FirstAnswer.IsZero() {
			ph.FirstResp = append(ph.FirstResp, ms(s.FirstAnswer.Sub(t0)))
		}
		if e, ok := p.exited[gen-1]; ok {
			ph.OldExited = append(ph.OldExited, ms(e.Sub(t0)))
		}
	}
	return ph
}

func (p *peerServer) DaemonPID() int { return 0 }

func (p *peerServer) LogText() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func (p *peerServer) Stop() {
	if pid := p.pid(p.gen); pid != 0 {
		signalOwn(pid, syscall.SIGTERM)
		p.waitExit(p.gen, 35*time.Second)
	}
	p.mu.Lock()
	for _, pid := range p.pids {
		signalOwn(pid, syscall.SIGKILL)
	}
	p.mu.Unlock()
	if p.pipeW != nil {
		p.pipeW.Close()
	}
	if p.logFile != nil {
		p.logFile.Close()
	}
}

// handoffdServer runs handoffd with the demo as its one service.
type handoffdServer struct {
	bins, dir, addr, mode string
	control, bpfDir       string
	cmd                   *exec.Cmd
	log                   *bytes.Buffer
	logMu                 sync.Mutex
	exited                chan struct{}
	gens                  map[int]genStatus
	statusMS              []float64 // how long each `handoffctl status` took
	observed              int
	// The growth part's settings: a metrics address, and more services
	// (demo2, demo3, ...) and listeners per service than the one.
	metrics             string
	services, listeners int
	// canary makes every swap 5 % → 50 % → promote.
	canary bool
	// quic adds a QUIC listener, h3, on the UDP port of addr's number,
	// which the demo serves HTTP/3 on.
	quic bool
}

// genStatus is one generation in `handoffctl status --json`.
type genStatus struct {
	ID         int        `json:"id"`
	PID        int        `json:"pid"`
	State      string     `json:"state"`
	StartedAt  time.Time  `json:"started_at"`
	ReadyAt    *time.Time `json:"ready_at"`
	ActiveAt   *time.Time `json:"active_at"`
	DrainingAt *time.Time `json:"draining_at"`
	ExitedAt   *time.Time `json:"exited_at"`
	Exit       string     `json:"exit"`
}

func newHandoffdServer(bins, dir, mode, addr string) *handoffdServer {
	return &handoffdServer{bins: bins, dir: dir, mode: mode, addr: addr,
		control: filepath.Join(dir, "handoffd.sock"),
		bpfDir:  fmt.Sprintf("/sys/fs/bpf/handoff-bench-%d-%s", os.Getpid(), filepath.Base(dir)),
		log:     new(bytes.Buffer), exited: make(chan struct{}), gens: map[int]genStatus{}}
}

type syncWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w syncWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

func (h *handoffdServer) LogText() string { return h.logText() }

func (h *handoffdServer) logText() string {
	h.logMu.Lock()
	defer h.logMu.Unlock()
	return h.log.String()
}

func (h *handoffdServer) Start() error {
	cfg, err := h.config()
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(h.dir, "handoff.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	h.cmd = exec.Command(filepath.Join(h.bins, "handoffd"), "--config", cfgPath)
	w := syncWriter{&h.logMu, h.log}
	h.cmd.Stdout, h.cmd.Stderr = w, w
	if err := h.cmd.Start(); err != nil {
		return err
	}
	own(h.cmd.Process.Pid)
	go func() { h.cmd.Wait(); close(h.exited) }()
	deadline := time.Now().Add(15*time.Second + time.Duration(h.services)*time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-h.exited:
			return fmt.Errorf("handoffd exited: %s", lastLine(h.logText()))
		default:
		}
		if h.services > 1 {
			if n, err := h.activeServices(); err == nil && n == h.services {
				return nil
			}
		} else if gens, err := h.status(); err == nil && len(gens) == 1 && gens[0].State == "active" {
			own(gens[0].PID)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not every service active within %s: %s", 15*time.Second+time.Duration(h.services)*time.Second, lastLine(h.logText()))
}

// config is handoffd's configuration: the demo as service "demo" on
// h.addr, and for the growth part more services and listeners on free
// addresses.
func (h *handoffdServer) config() (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "control: %s\nmode: %s\nstate_dir: %s\nbpf_dir: %s\n", h.control, h.mode, h.dir, h.bpfDir)
	if h.metrics != "" {
		fmt.Fprintf(&b, "metrics: %s\n", h.metrics)
	}
	b.WriteString("services:\n")
	// freeAddr's port is free again once it returns: keep them apart.
	used := map[string]bool{h.addr: true, h.metrics: true}
	for i := range max(h.services, 1) {
		name := "demo"
		if i > 0 {
			name = fmt.Sprintf("demo%d", i+1)
		}
		quicArgs := ""
		if h.quic && i == 0 {
			quicArgs = `, "--tls", "--http3", "h3"`
		}
		fmt.Fprintf(&b, "  - name: %s\n    command: [%q, \"--version\", \"bench\"%s]\n    env: [\"GIN_MODE=release\"]\n    listeners:\n",
			name, filepath.Join(h.bins, "demo"), quicArgs)
		if h.quic && i == 0 {
			fmt.Fprintf(&b, "      - name: h3\n        address: udp://%s\n        protocol: quic\n", h.addr)
		}
		for j := range max(h.listeners, 1) {
			addr, lname := h.addr, "http"
			for i > 0 || j > 0 {
				a, err := freeAddr()
				if err != nil {
					return "", err
				}
				if !used[a] {
					used[a], addr = true, a
					break
				}
			}
			if j > 0 {
				lname = fmt.Sprintf("extra%d", j)
			}
			fmt.Fprintf(&b, "      - name: %s\n        address: tcp://%s\n        backlog: 4096\n", lname, addr)
		}
		b.WriteString("    ready_timeout: 30s\n    drain_timeout: 30s\n")
	}
	return b.String(), nil
}

// activeServices counts the services that have an active generation.
func (h *handoffdServer) activeServices() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.ctl(ctx, "status", "--json")
	if err != nil {
		return 0, err
	}
	var st struct {
		Services []struct {
			Generations []genStatus `json:"generations"`
		} `json:"services"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, fmt.Errorf("decode status: %w", err)
	}
	n := 0
	for _, s := range st.Services {
		for _, g := range s.Generations {
			if g.State == "active" {
				own(g.PID)
				n++
				break
			}
		}
	}
	return n, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func (h *handoffdServer) ctl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(h.bins, "handoffctl"), append([]string{"--control", h.control}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("handoffctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// status returns the demo's generations and remembers each one's latest state.
func (h *handoffdServer) status() ([]genStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	t0 := time.Now()
	out, err := h.ctl(ctx, "status", "--json", "demo")
	h.statusMS = append(h.statusMS, ms(time.Since(t0)))
	if err != nil {
		return nil, err
	}
	var st struct {
		Services []struct {
			Generations []genStatus `json:"generations"`
		} `json:"services"`
	}
	if err := json.Unmarshal(out, &st); err != nil || len(st.Services) != 1 {
		return nil, fmt.Errorf("decode status %q: %v", out, err)
	}
	for _, g := range st.Services[0].Generations {
		h.gens[g.ID] = g
		if g.ExitedAt == nil {
			own(g.PID) // an exited one's pid may be someone else's by now
		}
	}
	return st.Services[0].Generations, nil
}

// Swap runs `handoffctl swap demo`, which returns once the new generation
// is active.
func (h *handoffdServer) Swap() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if h.canary {
		return h.canarySwap(ctx)
	}
	_, err := h.ctl(ctx, "swap", "demo")
	return err
}

// canarySwap starts the next generation as a canary with 5 % of new
// connections, raises it to 50 % a quarter of the swap interval after the
// start, and promotes it at half of it; it returns once promoted.
func (h *handoffdServer) canarySwap(ctx context.Context) error {
	t0 := time.Now()
	if _, err := h.ctl(ctx, "swap", "--canary", "5%", "demo"); err != nil {
		return err
	}
	time.Sleep(time.Until(t0.Add(swapEvery / 4)))
	if _, err := h.ctl(ctx, "canary", "demo", "50%"); err != nil {
		return err
	}
	time.Sleep(time.Until(t0.Add(swapEvery / 2)))
	_, err := h.ctl(ctx, "promote", "demo")
	return err
}

// Observe reads the generations' stamps. handoffd keeps the last 8
// exited generations, so reading every 4th swap loses none; reading less
// often keeps the status calls (which scan /proc/net/tcp when counting
// connections) from weighing on handoffd's measured CPU.
func (h *handoffdServer) Observe() {
	h.observed++
	if h.observed%4 == 0 {
		h.status()
	}
}

func (h *handoffdServer) Settle() {
	deadline := time.Now().Add(40 * time.Second)
	for time.Now().Before(deadline) {
		gens, err := h.status()
		live := 0
		for _, g := range gens {
			if g.State != "exited" && g.State != "failed" {
				live++
			}
		}
		if err == nil && live <= 1 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *handoffdServer) Phases(seen map[int]*genSeen) swapPhases {
	var ph swapPhases
	for id := 2; ; id++ {
		g, ok := h.gens[id]
		if !ok {
			break
		}
		t0 := g.StartedAt
		if g.ReadyAt != nil {
			ph.Ready = append(ph.Ready, ms(g.ReadyAt.Sub(t0)))
		}
		if s := seen[id]; s != nil {
			if !s.FirstAnswer.IsZero() {
				ph.FirstResp = append(ph.FirstResp, ms(s.FirstAnswer.Sub(t0)))
			}
			if g.ActiveAt != nil && !s.FirstConn.IsZero() {
				ph.ActToConn = append(ph.ActToConn, ms(s.FirstConn.Sub(*g.ActiveAt)))
			}
		}
		if old, ok := h.gens[id-1]; ok && old.ExitedAt != nil {
			ph.OldExited = append(ph.OldExited, ms(old.ExitedAt.Sub(t0)))
		}
	}
	return ph
}

// dead reports whether handoffd has exited.
func (h *handoffdServer) dead() bool {
	select {
	case <-h.exited:
		return true
	default:
		return false
	}
}

func (h *handoffdServer) DaemonPID() int {
	if h.cmd == nil || h.cmd.Process == nil {
		return 0
	}
	return h.cmd.Process.Pid
}

// Stop sends SIGINT (stop every service, then handoffd), then kills by
// pid whatever is left of it.
func (h *handoffdServer) Stop() {
	if h.cmd != nil && h.cmd.Process != nil {
		h.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-h.exited:
		case <-time.After(40 * time.Second):
			h.cmd.Process.Kill()
			<-h.exited
		}
	}
	for _, g := range h.gens {
		signalOwn(g.PID, syscall.SIGKILL)
	}
	os.RemoveAll(h.bpfDir)
}
