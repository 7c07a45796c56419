package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// growth is the second part of the benchmark: how handoffd's own costs
// grow with the connections a generation holds and with the services and
// listeners it runs. It is written to growth.json and drawn in growth.png.
type growth struct {
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished"`
	Host     map[string]string `json:"host"`
	// FDLimit is RLIMIT_NOFILE (soft = hard) of this process and of
	// everything it starts, the demo's generations included.
	FDLimit uint64        `json:"rlimit_nofile"`
	Conns   []growthConns `json:"connections"`
	Fleet   []growthFleet `json:"fleet,omitempty"`
	Rest    []growthRest  `json:"at_rest"`
	LoadAvg []string      `json:"loadavg"`
}

// The goals the growth part's figures are plotted and tabled against.
const (
	goalReadMS     = 20  // status and a scrape, 50 × 4 listeners, 0 or 10,000 held
	goalRestCPUPct = 0.1 // handoffd at rest, 50 services
	goalFlatPct    = 10  // start → active, activation → first connection, CPU per swap: within this of the 0-held figure
)

// growthConns is one size of the connection part, in one mode: idle
// keep-alive connections are opened on the active generation, `status`
// and /metrics are timed with them open, then a swap leaves them on the
// old generation, whose drain closes them after the SDK's idle grace.
type growthConns struct {
	Mode  string `json:"mode"`
	Conns int    `json:"idle_connections"`
	// Held is how many connections were open at each repeat.
	Held     []int     `json:"held"`
	StatusMS []float64 `json:"status_ms"`
	ScrapeMS []float64 `json:"scrape_ms"`
	// From the new generation's started_at to its active_at, and to the
	// old generation's exited_at.
	ActiveMS    []float64 `json:"start_to_active_ms"`
	OldExitedMS []float64 `json:"start_to_old_exited_ms"`
	// FirstConnMS is from the swap command's return (the new generation
	// is active) to the answer of the first new connection that the new
	// generation took.
	FirstConnMS []float64 `json:"active_to_first_connection_ms"`
	// CPUMS is handoffd's CPU (every thread's sum_exec_runtime) from the
	// swap command to the old generation's exit.
	CPUMS []float64 `json:"handoffd_cpu_ms"`
	// HostTCP and HostTimeWait are the host's TCP sockets in use and in
	// TIME_WAIT (/proc/net/sockstat) while status and scrape were timed:
	// fdpass counts through sock_diag, which walks them all.
	HostTCP      []int `json:"host_tcp_inuse"`
	HostTimeWait []int `json:"host_tcp_timewait"`
	// RSS of the generation holding the connections and of handoffd,
	// with them open (the last repeat's).
	GenRSSMB      float64 `json:"generation_rss_mb"`
	HandoffdRSSMB float64 `json:"handoffd_rss_mb"`
	// LoadAvg is the host's load (/proc/loadavg) when the row began and
	// ended.
	LoadAvg []string `json:"loadavg"`
	Error   string   `json:"error,omitempty"`
}

// growthFleet is handoffd with many services of several listeners each,
// every generation active, with idle connections held on the first
// service: `status` of every service and a scrape, timed.
type growthFleet struct {
	Mode      string    `json:"mode"`
	Services  int       `json:"services"`
	Listeners int       `json:"listeners_per_service"`
	Conns     int       `json:"idle_connections"`
	Held      int       `json:"held"`
	StatusMS  []float64 `json:"status_ms"`
	ScrapeMS  []float64 `json:"scrape_ms"`
	LoadAvg   []string  `json:"loadavg"`
	Error     string    `json:"error,omitempty"`
}

// growthRest is handoffd at rest with some services, each with some
// listeners, every generation active and no traffic.
type growthRest struct {
	Mode      string  `json:"mode"`
	Services  int     `json:"services"`
	Listeners int     `json:"listeners_per_service"`
	RSSMB     float64 `json:"rss_mb"`
	CPUPct    float64 `json:"cpu_percent_of_one_core"`
	FDs       int     `json:"fds"`
	Seconds   float64 `json:"seconds"`
	StartS    float64 `json:"start_s"` // handoffd started → every service active
	// StatusMS times `handoffctl status --json` of every service, after
	// the sample.
	StatusMS []float64 `json:"status_ms"`
	LoadAvg  []string  `json:"loadavg"`
	Error    string    `json:"error,omitempty"`
}

type growthConfig struct {
	modes     []string
	sizes     []int // maxConns: as many as the fd limit allows, up to maxCap
	maxCap    int
	repeats   int
	services  []int
	listeners []int
	restFor   time.Duration
	// The fleet: services × listeners, with these idle connections.
	fleetServices, fleetListeners int
	fleetSizes                    []int
}

// maxConns in a list of sizes stands for the most connections the fd
// limit allows.
const maxConns = -1

// fdHeadroom is what a size that follows the fd limit leaves to the rest
// of a process's fds (the bench's clients, the generation's other files).
const fdHeadroom = 1000

// resolveSizes replaces maxConns with what limit allows, capped.
func resolveSizes(sizes []int, limit uint64, capAt int) []int {
	var out []int
	for _, n := range sizes {
		if n == maxConns {
			n = min(int(min(limit, 1<<30))-fdHeadroom, capAt)
		}
		if n >= 0 && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

func measureGrowth(gc growthConfig, bins, tmp, repo string) *growth {
	g := &growth{Started: time.Now(), Host: hostInfo(repo)}
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	g.FDLimit = lim.Cur
	gc.sizes = resolveSizes(gc.sizes, lim.Cur, gc.maxCap)
	gc.fleetSizes = resolveSizes(gc.fleetSizes, lim.Cur, gc.maxCap)
	g.LoadAvg = append(g.LoadAvg, loadAvg())
	for _, mode := range gc.modes {
		g.Conns = append(g.Conns, connGrowth(gc, bins, tmp, mode)...)
	}
	if gc.fleetServices > 0 {
		for _, mode := range gc.modes {
			g.Fleet = append(g.Fleet, fleetGrowth(gc, bins, tmp, mode)...)
		}
	}
	for _, mode := range gc.modes {
		for _, s := range gc.services {
			for _, l := range gc.listeners {
				r := restAt(bins, tmp, mode, s, l, gc.restFor)
				fmt.Fprintf(os.Stderr, "bench: growth at rest, %s, %d services × %d listeners: RSS %.1f MB, CPU %.3f %%, %d fds, status %s ms %s\n",
					mode, s, l, r.RSSMB, r.CPUPct, r.FDs, spread(r.StatusMS), r.Error)
				g.Rest = append(g.Rest, r)
			}
		}
	}
	g.LoadAvg = append(g.LoadAvg, loadAvg())
	g.Finished = time.Now()
	return g
}

func connGrowth(gc growthConfig, bins, tmp, mode string) []growthConns {
	var out []growthConns
	fail := func(err error) []growthConns {
		return append(out, growthConns{Mode: mode, Error: err.Error()})
	}
	dir, err := os.MkdirTemp(tmp, "growth-"+mode+"-")
	if err != nil {
		return fail(err)
	}
	addr, err := freeAddr()
	if err != nil {
		return fail(err)
	}
	maddr, err := freeAddr()
	if err != nil {
		return fail(err)
	}
	h := newHandoffdServer(bins, dir, mode, addr)
	h.metrics = maddr
	if err := h.Start(); err != nil {
		h.Stop()
		return fail(err)
	}
	defer h.Stop()
	for _, n := range gc.sizes {
		gcn := growthConns{Mode: mode, Conns: n, LoadAvg: []string{loadAvg()}}
		for range gc.repeats {
			// A round opens n connections in a minute at most, drains
			// them in one, and reads status in seconds.
			err := bounded(h, 4*time.Minute, func() error { return growthRound(h, maddr, n, &gcn) })
			if err != nil {
				gcn.Error = err.Error()
				break
			}
		}
		gcn.LoadAvg = append(gcn.LoadAvg, loadAvg())
		fmt.Fprintf(os.Stderr, "bench: growth %s, %d idle connections: held %v, status %s ms, scrape %s ms, active %s ms, first connection %s ms, old exited %s ms, handoffd CPU %s ms, load %v %s\n",
			mode, n, gcn.Held, spread(gcn.StatusMS), spread(gcn.ScrapeMS), spread(gcn.ActiveMS), spread(gcn.FirstConnMS),
			spread(gcn.OldExitedMS), spread(gcn.CPUMS), gcn.LoadAvg, failed(gcn.Error))
		out = append(out, gcn)
		if h.dead() {
			break // the rest of the mode's rows would fail the same way
		}
	}
	return out
}

// failed marks a row's error so that it stands out in the progress lines.
func failed(err string) string {
	if err == "" {
		return ""
	}
	return "ROW FAILED: " + err
}

// bounded runs fn, a step of a row, and returns its error, or an error at
// once when handoffd exits or limit passes first: a dead handoffd fails
// the row loudly instead of leaving the benchmark waiting. fn is left to
// end on its own deadlines.
func bounded(h *handoffdServer, limit time.Duration, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-h.exited:
		return fmt.Errorf("handoffd exited in the middle of the row: %s", lastLine(h.logText()))
	case <-time.After(limit):
		return fmt.Errorf("the row took more than %s", limit)
	}
}

// fleetGrowth runs handoffd with gc.fleetServices × gc.fleetListeners in
// mode and times `status` of every service and a scrape with each number
// of idle connections held on the first service.
func fleetGrowth(gc growthConfig, bins, tmp, mode string) []growthFleet {
	var out []growthFleet
	fail := func(err error) []growthFleet {
		return append(out, growthFleet{Mode: mode, Services: gc.fleetServices, Listeners: gc.fleetListeners, Error: err.Error()})
	}
	dir, err := os.MkdirTemp(tmp, "fleet-"+mode+"-")
	if err != nil {
		return fail(err)
	}
	addr, err := freeAddr()
	if err != nil {
		return fail(err)
	}
	maddr, err := freeAddr()
	if err != nil {
		return fail(err)
	}
	h := newHandoffdServer(bins, dir, mode, addr)
	h.metrics, h.services, h.listeners = maddr, gc.fleetServices, gc.fleetListeners
	if err := h.Start(); err != nil {
		h.Stop()
		return fail(err)
	}
	defer h.Stop()
	for _, n := range gc.fleetSizes {
		f := growthFleet{Mode: mode, Services: gc.fleetServices, Listeners: gc.fleetListeners, Conns: n, LoadAvg: []string{loadAvg()}}
		err := bounded(h, 3*time.Minute, func() error {
			pruneOwn()
			conns, err := openIdle(h.addr, n)
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			f.Held = len(conns)
			if err != nil {
				return err
			}
			for range 5 {
				t0 := time.Now()
				if _, err := h.activeServices(); err != nil {
					return err
				}
				f.StatusMS = append(f.StatusMS, ms(time.Since(t0)))
				t0 = time.Now()
				if err := scrape(maddr); err != nil {
					return err
				}
				f.ScrapeMS = append(f.ScrapeMS, ms(time.Since(t0)))
			}
			return nil
		})
		if err != nil {
			f.Error = err.Error()
		}
		f.LoadAvg = append(f.LoadAvg, loadAvg())
		fmt.Fprintf(os.Stderr, "bench: growth %s, %d services × %d listeners, %d idle connections: status %s ms, scrape %s ms, load %v %s\n",
			mode, f.Services, f.Listeners, f.Held, spread(f.StatusMS), spread(f.ScrapeMS), f.LoadAvg, failed(f.Error))
		out = append(out, f)
		if h.dead() {
			break
		}
	}
	return out
}

// growthRound opens n idle connections, times status and a scrape five
// times each, then a swap that leaves the connections to drain.
func growthRound(h *handoffdServer, maddr string, n int, g *growthConns) error {
	pruneOwn()
	conns, err := openIdle(h.addr, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	g.Held = append(g.Held, len(conns))
	if err != nil {
		return err
	}
	inuse, tw := sockstat()
	g.HostTCP, g.HostTimeWait = append(g.HostTCP, inuse), append(g.HostTimeWait, tw)
	for range 5 {
		t0 := time.Now()
		if _, err := h.status(); err != nil {
			return err
		}
		g.StatusMS = append(g.StatusMS, ms(time.Since(t0)))
		t0 = time.Now()
		if err := scrape(maddr); err != nil {
			return err
		}
		g.ScrapeMS = append(g.ScrapeMS, ms(time.Since(t0)))
	}
	gens, err := h.status()
	if err != nil {
		return err
	}
	var old genStatus
	for _, gen := range gens {
		if gen.State == "active" {
			old = gen
		}
	}
	if old.PID == 0 {
		return fmt.Errorf("no active generation in %v", gens)
	}
	if u, err := readUsage(old.PID); err == nil {
		g.GenRSSMB = float64(u.RSSKB) / 1024
	}
	if u, err := readUsage(h.DaemonPID()); err == nil {
		g.HandoffdRSSMB = float64(u.RSSKB) / 1024
	}
	// Use every connection once more, so that at the swap each has been
	// idle for at most the time this takes, whatever the mode (status and
	// scrapes take longer in fdpass, the call above too): the SDK closes
	// an idle connection of a draining generation once it has been idle
	// for its IdleGrace (1 s).
	if err := touch(conns, h.addr); err != nil {
		return err
	}
	exit := watchExit(old.PID, time.Minute)
	cpu0 := threadsCPU(h.DaemonPID())
	if err := h.Swap(); err != nil {
		return err
	}
	first, err := firstConnection(h.addr, old.ID+1)
	if err != nil {
		return err
	}
	g.FirstConnMS = append(g.FirstConnMS, ms(first))
	if _, ok := <-exit; !ok {
		return fmt.Errorf("generation %d (pid %d) did not exit within a minute", old.ID, old.PID)
	}
	// handoffd learns of the exit through its own pidfd at the same
	// moment; give it the time to record it before reading its CPU.
	time.Sleep(50 * time.Millisecond)
	g.CPUMS = append(g.CPUMS, ms(threadsCPU(h.DaemonPID())-cpu0))
	// On a busy host handoffd may record the exit later than that.
	var next, prev genStatus
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := h.status(); err != nil {
			return err
		}
		next, prev = h.gens[old.ID+1], h.gens[old.ID]
		if next.ActiveAt != nil && prev.ExitedAt != nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("status lacks the stamps of generations %d and %d after 10s", old.ID, old.ID+1)
		}
	}
	g.ActiveMS = append(g.ActiveMS, ms(next.ActiveAt.Sub(next.StartedAt)))
	g.OldExitedMS = append(g.OldExitedMS, ms(prev.ExitedAt.Sub(next.StartedAt)))
	return nil
}

// firstConnection opens new connections to addr, one after the other,
// until generation gen answers one, and returns how long that took. It
// gives up after 10 s.
func firstConnection(addr string, gen int) (time.Duration, error) {
	t0 := time.Now()
	deadline := t0.Add(10 * time.Second)
	req := fmt.Appendf(nil, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
		if err != nil {
			return 0, err
		}
		c.SetDeadline(deadline)
		_, err = c.Write(req)
		var got struct {
			Generation int `json:"generation"`
		}
		if err == nil {
			var resp *http.Response
			if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil {
				err = json.NewDecoder(resp.Body).Decode(&got)
				resp.Body.Close()
			}
		}
		c.Close()
		if err != nil {
			return 0, fmt.Errorf("first connection to generation %d: %w", gen, err)
		}
		if got.Generation == gen {
			return time.Since(t0), nil
		}
	}
	return 0, fmt.Errorf("generation %d answered no new connection within 10s of its activation", gen)
}

// idleSources is how many connections openIdle makes from one source
// address: the ephemeral ports of one address to one listener run out at
// about 28,000 (net.ipv4.ip_local_port_range).
const idleSources = 20000

// openIdle opens n keep-alive connections to addr, each after one
// answered request, and leaves them idle, from 127.0.0.1, then 127.0.0.2
// and on, idleSources each. It gives up after a minute.
func openIdle(addr string, n int) ([]net.Conn, error) {
	var mu sync.Mutex
	var conns []net.Conn
	var firstErr error
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	deadline := time.Now().Add(time.Minute)
	req := fmt.Appendf(nil, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := openOne(addr, req, deadline, i/idleSources)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = fmt.Errorf("connection %d of %d: %w", len(conns)+1, n, err)
					}
					mu.Unlock()
					return
				}
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return conns, firstErr
}

// touch sends one more request on each connection and reads its answer.
func touch(conns []net.Conn, addr string) error {
	req := fmt.Appendf(nil, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	deadline := time.Now().Add(time.Minute)
	var mu sync.Mutex
	var firstErr error
	next := make(chan net.Conn, len(conns))
	for _, c := range conns {
		next <- c
	}
	close(next)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range next {
				if err := roundTrip(c, req, deadline); err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, fmt.Errorf("request on an idle connection: %w", err))
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func openOne(addr string, req []byte, deadline time.Time, source int) (net.Conn, error) {
	d := net.Dialer{Deadline: deadline}
	if source > 0 {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, byte(source>>8), byte(1+source&0xff))}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if err := roundTrip(c, req, deadline); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// roundTrip sends req on c and reads a 200 answer, within deadline.
func roundTrip(c net.Conn, req []byte, deadline time.Time) error {
	c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return err
}

func scrape(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("scrape: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scrape: %s", resp.Status)
	}
	return nil
}

// restAt runs handoffd with services × listeners and samples its RSS and
// CPU once every generation is active.
func restAt(bins, tmp, mode string, services, listeners int, d time.Duration) (r growthRest) {
	r = growthRest{Mode: mode, Services: services, Listeners: listeners, LoadAvg: []string{loadAvg()}}
	defer func() { r.LoadAvg = append(r.LoadAvg, loadAvg()) }()
	dir, err := os.MkdirTemp(tmp, fmt.Sprintf("rest-%d-%d-", services, listeners))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	addr, err := freeAddr()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	h := newHandoffdServer(bins, dir, mode, addr)
	h.services, h.listeners = services, listeners
	t0 := time.Now()
	if err := h.Start(); err != nil {
		h.Stop()
		r.Error = err.Error()
		return r
	}
	defer h.Stop()
	r.StartS = time.Since(t0).Seconds()
	time.Sleep(time.Second) // the start's own work settles
	pid := h.DaemonPID()
	cpu0 := threadsCPU(pid)
	u := sampleUsage(pid)
	t1 := time.Now()
	select {
	case <-time.After(d):
	case <-h.exited:
		r.Error = "handoffd exited in the middle of the row: " + lastLine(h.logText())
		return r
	}
	rss, _ := u.end()
	r.Seconds = time.Since(t1).Seconds()
	r.RSSMB = rss
	r.CPUPct = 100 * float64(threadsCPU(pid)-cpu0) / float64(time.Since(t1))
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	r.FDs = len(fds)
	for range 3 {
		t := time.Now()
		if _, err := h.activeServices(); err != nil {
			r.Error = err.Error()
			break
		}
		r.StatusMS = append(r.StatusMS, ms(time.Since(t)))
	}
	return r
}

func writeGrowth(g *growth, out string) (string, error) {
	p, _ := filepath.Abs(filepath.Join(out, "growth.json"))
	data, _ := json.MarshalIndent(g, "", " ")
	return p, os.WriteFile(p, data, 0o644)
}

// sockstat reads the host's TCP sockets in use and in TIME_WAIT.
func sockstat() (inuse, timeWait int) {
	data, _ := os.ReadFile("/proc/net/sockstat")
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "TCP: "); ok {
			f := strings.Fields(rest)
			for i := 0; i+1 < len(f); i += 2 {
				switch f[i] {
				case "inuse":
					fmt.Sscan(f[i+1], &inuse)
				case "tw":
					fmt.Sscan(f[i+1], &timeWait)
				}
			}
		}
	}
	return inuse, timeWait
}
