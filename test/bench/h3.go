package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/sys/unix"
)

// The HTTP/3 part: the same swaps under HTTP/3 load, over UDP, for a
// naive restart, plain SO_REUSEPORT and handoffd (ebpf mode, a QUIC
// listener beside the TCP one, the demo serving HTTP/3 with
// handoff/handoffquic).
var h3Strategies = []string{"h3-naive", "h3-reuseport", "h3-handoffd"}

// h3Row is one HTTP/3 strategy in one client mode.
type h3Row struct {
	Strategy    string `json:"strategy"`
	Mode        string `json:"mode"` // kept (a connection until GOAWAY) or new-conn (one per request)
	Unavailable string `json:"unavailable,omitempty"`
	OK          int    `json:"ok"`
	// Failed counts requests that got no answer: a timeout, a connection
	// closed under them, a dial that failed.
	Failed int `json:"failed"`
	// Broken counts kept connections that ended by an error rather than
	// by a GOAWAY (a stateless reset, an idle timeout, a close).
	Broken int `json:"broken_connections"`
	// Rejected counts requests refused with H3_REQUEST_REJECTED, which
	// the server did not process; they are not resent.
	Rejected   int      `json:"rejected"`
	Conns      int      `json:"connections"`
	Samples    []string `json:"failure_samples,omitempty"`
	Seconds    float64  `json:"seconds"`
	Swaps      int      `json:"swaps"`
	SwapErrors []string `json:"swap_errors,omitempty"`
	// Programs (handoffd's row) are its SK_REUSEPORT programs' runs and
	// run time over the row (BPF_ENABLE_STATS, on for the row): the QUIC
	// program runs once per datagram, so NSPerRun is its cost per packet.
	Programs []h3Program `json:"programs,omitempty"`
}

// h3Program is one steering program's count over a row.
type h3Program struct {
	ID       string  `json:"id"`
	Runs     uint64  `json:"runs"`
	NSPerRun float64 `json:"ns_per_run"`
}

// runH3Rows runs every HTTP/3 strategy in both client modes.
func runH3Rows(c config, bins, tmp string, want map[string]bool) []h3Row {
	var rows []h3Row
	for _, strategy := range h3Strategies {
		if len(want) > 0 && !want[strategy] && !want["h3"] {
			continue
		}
		for _, kept := range []bool{false, true} {
			r := runH3Row(c, bins, tmp, strategy, kept)
			fmt.Fprintf(os.Stderr, "%-14s %-8s ok %6d failed %5d broken %4d rejected %4d %s\n",
				r.Strategy, r.Mode, r.OK, r.Failed, r.Broken, r.Rejected, r.Unavailable)
			rows = append(rows, r)
		}
	}
	return rows
}

func runH3Row(c config, bins, tmp, strategy string, kept bool) (r h3Row) {
	pruneOwn()
	r = h3Row{Strategy: strategy, Mode: "new-conn"}
	if kept {
		r.Mode = "kept"
	}
	dir, err := os.MkdirTemp(tmp, strategy+"-")
	if err != nil {
		r.Unavailable = err.Error()
		return r
	}
	addr, err := freeAddr() // a TCP port; the UDP port of that number is the QUIC one
	if err != nil {
		r.Unavailable = err.Error()
		return r
	}
	var srv server
	switch strategy {
	case "h3-naive":
		srv = newH3PeerServer(bins, "plain", addr, filepath.Join(dir, "peer.log"))
	case "h3-reuseport":
		srv = newH3PeerServer(bins, "reuseport", addr, filepath.Join(dir, "peer.log"))
	default:
		h := newHandoffdServer(bins, dir, "ebpf", addr)
		h.quic = true
		srv = h
	}
	if err := srv.Start(); err != nil {
		srv.Stop()
		r.Unavailable = err.Error()
		return r
	}
	defer srv.Stop()
	var before map[string]progStats
	if pid := srv.DaemonPID(); pid != 0 {
		if fd, err := enableBPFStats(); err == nil {
			defer unix.Close(fd)
			before = bpfPrograms(pid)
		}
	}
	start := time.Now()
	l := startH3Load(addr, clients, kept)
	for i := range c.swaps {
		time.Sleep(time.Until(start.Add(warmup + steadyFor + time.Duration(i)*swapEvery)))
		if err := srv.Swap(); err != nil {
			r.SwapErrors = append(r.SwapErrors, fmt.Sprintf("swap %d: %v", i+1, err))
			break
		}
		r.Swaps++
	}
	time.Sleep(time.Until(start.Add(warmup + steadyFor + time.Duration(max(c.swaps, 1))*swapEvery + tail)))
	res := l.stop()
	r.Seconds = time.Since(start).Seconds()
	if before != nil {
		for id, p := range bpfPrograms(srv.DaemonPID()) {
			b := before[id]
			if p.Type != "sk_reuseport" || p.RunCount <= b.RunCount {
				continue
			}
			runs := p.RunCount - b.RunCount
			r.Programs = append(r.Programs, h3Program{ID: id, Runs: runs, NSPerRun: float64(p.RunTimeNS-b.RunTimeNS) / float64(runs)})
		}
	}
	srv.Settle()
	r.OK, r.Failed, r.Broken, r.Rejected, r.Conns, r.Samples = res.ok, res.failed, res.broken, res.rejected, res.conns, res.samples
	return r
}

// h3PeerServer runs bin/h3peer, one process per generation: plain swaps
// by stopping the old one and then starting the new one (which binds once
// the port is free), reuseport by starting the new one beside the old
// one and then stopping the old one.
type h3PeerServer struct {
	bin, strategy, addr, logPath string

	mu   sync.Mutex
	gen  int
	cmds map[int]*exec.Cmd
	log  *os.File
}

func newH3PeerServer(bins, strategy, addr, logPath string) *h3PeerServer {
	return &h3PeerServer{bin: filepath.Join(bins, "h3peer"), strategy: strategy, addr: addr, logPath: logPath,
		cmds: map[int]*exec.Cmd{}}
}

// startGen starts generation gen and returns once it printed "ready".
func (p *h3PeerServer) startGen(gen int) error {
	cmd := exec.Command(p.bin, "-strategy", p.strategy, "-addr", p.addr)
	cmd.Env = append(os.Environ(), fmt.Sprintf("BENCH_GEN=%d", gen))
	cmd.Stderr = p.log
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	own(cmd.Process.Pid)
	p.mu.Lock()
	p.cmds[gen] = cmd
	p.mu.Unlock()
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && strings.HasPrefix(sc.Text(), "ready ")
		ready <- ok
		io.Copy(io.Discard, out)
		cmd.Wait()
	}()
	select {
	case ok := <-ready:
		if !ok {
			return fmt.Errorf("h3peer generation %d exited before it was ready", gen)
		}
		return nil
	case <-time.After(15 * time.Second):
		return fmt.Errorf("h3peer generation %d not ready within 15s", gen)
	}
}

func (p *h3PeerServer) Start() error {
	f, err := os.Create(p.logPath)
	if err != nil {
		return err
	}
	p.log = f
	p.gen = 1
	return p.startGen(1)
}

// stopGen sends SIGTERM to generation gen, which drains (GOAWAY) and
// exits; with wait, it returns once it has exited.
func (p *h3PeerServer) stopGen(gen int, wait bool) {
	p.mu.Lock()
	cmd := p.cmds[gen]
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if wait {
		for deadline := time.Now().Add(shutdownWait); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			if syscall.Kill(cmd.Process.Pid, 0) != nil {
				return
			}
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid)); err != nil ||
				strings.Contains(string(st[strings.LastIndexByte(string(st), ')'):]), ") Z ") {
				return
			}
		}
	}
}

// shutdownWait bounds how long a naive restart waits for the old
// generation to exit.
const shutdownWait = 35 * time.Second

func (p *h3PeerServer) Swap() error {
	old := p.gen
	p.gen++
	if p.strategy == "plain" {
		p.stopGen(old, true)
		return p.startGen(p.gen)
	}
	if err := p.startGen(p.gen); err != nil {
		return err
	}
	p.stopGen(old, false)
	return nil
}

func (p *h3PeerServer) Observe() {}

func (p *h3PeerServer) Settle() {
	p.mu.Lock()
	gens := make([]int, 0, len(p.cmds))
	for g := range p.cmds {
		if g != p.gen {
			gens = append(gens, g)
		}
	}
	p.mu.Unlock()
	for _, g := range gens {
		p.stopGen(g, true)
	}
}

func (p *h3PeerServer) Phases(map[int]*genSeen) swapPhases { return swapPhases{} }
func (p *h3PeerServer) DaemonPID() int                     { return 0 }

func (p *h3PeerServer) Stop() {
	p.mu.Lock()
	cmds := p.cmds
	p.cmds = map[int]*exec.Cmd{}
	p.mu.Unlock()
	for _, cmd := range cmds {
		cmd.Process.Kill()
	}
	if p.log != nil {
		p.log.Close()
	}
}

func (p *h3PeerServer) LogText() string {
	data, _ := os.ReadFile(p.logPath)
	return string(data)
}

// h3Load is the benchmark's HTTP/3 load: clients that each keep a
// connection until its GOAWAY (kept) or dial one per request, never
// sending a request twice.
type h3Load struct {
	addr   string
	kept   bool
	stopCh chan struct{}
	wg     sync.WaitGroup

	mu  sync.Mutex
	res h3LoadResult
}

type h3LoadResult struct {
	ok, failed, broken, rejected, conns int
	samples                             []string
}

func startH3Load(addr string, n int, kept bool) *h3Load {
	l := &h3Load{addr: addr, kept: kept, stopCh: make(chan struct{})}
	for range n {
		l.wg.Go(l.client)
	}
	return l
}

func (l *h3Load) stop() h3LoadResult {
	close(l.stopCh)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res
}

func (l *h3Load) client() {
	var qc *quic.Conn
	var cc *http3.ClientConn
	closeConn := func() {
		if qc != nil {
			qc.CloseWithError(0, "")
			qc, cc = nil, nil
		}
	}
	defer closeConn()
	for range requestLimit {
		select {
		case <-l.stopCh:
			return
		default:
		}
		fresh := qc == nil
		if fresh {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var err error
			qc, err = quic.DialAddr(ctx, l.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{http3.NextProtoH3}}, &quic.Config{})
			cancel()
			if err != nil {
				qc = nil
				l.note(&l.res.failed, "dial: "+err.Error())
				continue
			}
			cc = (&http3.Transport{}).NewClientConn(qc)
			l.mu.Lock()
			l.res.conns++
			l.mu.Unlock()
		}
		err := h3Get(cc, l.addr)
		var h3err *http3.Error
		switch {
		case err == nil:
			l.note(&l.res.ok, "")
		case strings.Contains(err.Error(), "conn unusable") && (strings.Contains(err.Error(), "connection in graceful shutdown") ||
			strings.Contains(err.Error(), "H3_NO_ERROR (local)")):
			// GOAWAY: the request never left; the next goes on a new connection.
		case errors.As(err, &h3err) && h3err.ErrorCode == http3.ErrCodeRequestRejected:
			l.note(&l.res.rejected, "")
		default:
			l.note(&l.res.failed, err.Error())
			if !fresh {
				l.note(&l.res.broken, "")
			}
		}
		if err != nil || !l.kept {
			closeConn()
		}
	}
}

func (l *h3Load) note(n *int, sample string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	*n++
	if sample != "" && len(l.res.samples) < 10 {
		l.res.samples = append(l.res.samples, sample)
	}
}

func h3Get(cc *http3.ClientConn, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/", nil)
	if err != nil {
		return err
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var reply struct {
		Generation int `json:"generation"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil || reply.Generation == 0 {
		return fmt.Errorf("answer: %v", err)
	}
	return nil
}

// h3Markdown is the HTTP/3 part's table.
func h3Markdown(rows []h3Row) string {
	var b strings.Builder
	b.WriteString("\n| HTTP/3 strategy | clients | ok | failed | broken connections | rejected (not processed) | connections | swaps | steering ns per packet |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		if r.Unavailable != "" {
			fmt.Fprintf(&b, "| %s | %s | unavailable: %s |||||\n", r.Strategy, r.Mode, r.Unavailable)
			continue
		}
		cost := "-"
		for _, p := range r.Programs {
			if p.Runs > uint64(r.OK) { // the QUIC program: a run per datagram
				cost = fmt.Sprintf("%.0f (%d runs)", p.NSPerRun, p.Runs)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %d | %d | %s |\n", r.Strategy, r.Mode, r.OK, r.Failed, r.Broken,
			r.Rejected, r.Conns, r.Swaps, cost)
	}
	return b.String()
}
