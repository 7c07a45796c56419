// Command bench runs one workload against handoffd and its peers, one
// strategy after the other, and reports failures, throughput and swap
// phases side by side (issue 7). It must run as root: handoffd loads eBPF
// programs and one row sets net.ipv4.tcp_migrate_req.
//
//	cd test/bench && go run . -swaps 100 -out .
//
// It is its own module so that the peers (tableflip) and the plot library
// never become dependencies of handoffd.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

const (
	clients   = 32
	swapEvery = 700 * time.Millisecond
	warmup    = 500 * time.Millisecond
	tail      = time.Second
	path      = "/slow?ms=1"
)

var strategies = []string{"none", "naive", "reuseport", "reuseport-migrate", "tableflip", "endless",
	"haproxy", "handoffd-fdpass", "handoffd-ebpf", "handoffd-canary"}

type config struct {
	swaps      int
	costRounds int
	costEach   time.Duration
	costTarget float64
	costMax    time.Duration
	growth     growthConfig
	out        string
	only       string
	repo       string
}

// cleanups run on the way out, also after SIGINT or SIGTERM.
var cleanups struct {
	sync.Mutex
	fns []func()
}

func atExit(fn func()) {
	cleanups.Lock()
	cleanups.fns = append(cleanups.fns, fn)
	cleanups.Unlock()
}

func runCleanups() {
	cleanups.Lock()
	fns := cleanups.fns
	cleanups.fns = nil
	cleanups.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	killOwn()
}

func main() {
	var c config
	flag.IntVar(&c.swaps, "swaps", 3, "swaps per strategy and client mode (0.7 s apart)")
	flag.IntVar(&c.costRounds, "cost-rounds", 3, "least A/B rounds of the steering cost measurement")
	flag.DurationVar(&c.costEach, "cost-each", 3*time.Second, "length of each A and B run of the cost measurement")
	flag.Float64Var(&c.costTarget, "cost-target", 0.5, "more A/B rounds until the 95% interval of the cost is within ± this many points")
	flag.DurationVar(&c.costMax, "cost-max", time.Minute, "time after which the cost measurement stops adding rounds")
	flag.StringVar(&c.out, "out", ".", "directory for results.json and results.png")
	flag.StringVar(&c.only, "only", "", "comma-separated strategies to run (default: all)")
	flag.StringVar(&c.repo, "repo", "../..", "handoffd's checkout")
	sizes := flag.String("growth-conns", "0,1000,10000,max", "growth part: idle connections held on the old generation; max: as many as RLIMIT_NOFILE allows, up to -growth-max")
	flag.IntVar(&c.growth.maxCap, "growth-max", 50000, "growth part: the most connections that max stands for (each costs the generation and this process memory)")
	fleet := flag.String("growth-fleet", "50x4", "growth part: services × listeners of the fleet rows (empty: none)")
	fleetSizes := flag.String("growth-fleet-conns", "0,10000", "growth part: idle connections held on the fleet's first service")
	flag.IntVar(&c.growth.repeats, "growth-repeats", 3, "growth part: swaps per number of connections")
	services := flag.String("growth-services", "1,10,50", "growth part: numbers of services at rest")
	listeners := flag.String("growth-listeners", "1,4", "growth part: listeners per service at rest")
	modes := flag.String("growth-modes", "ebpf,fdpass", "growth part: modes of the connection part")
	flag.DurationVar(&c.growth.restFor, "growth-rest", 5*time.Second, "growth part: how long handoffd is sampled at rest")
	flag.DurationVar(&steadyFor, "steady", steadyFor, "clients' run before the first swap, the steady-state latency window")
	from := flag.String("from", "", "print the tables and redraw the plot of an earlier results.json, run nothing")
	flag.Parse()
	var err error
	for _, l := range []struct {
		s   string
		dst *[]int
	}{{*sizes, &c.growth.sizes}, {*services, &c.growth.services}, {*listeners, &c.growth.listeners}, {*fleetSizes, &c.growth.fleetSizes}} {
		if *l.dst, err = intList(l.s); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
	}
	c.growth.modes = strings.Split(*modes, ",")
	if *fleet != "" {
		if _, err := fmt.Sscanf(*fleet, "%dx%d", &c.growth.fleetServices, &c.growth.fleetListeners); err != nil {
			fmt.Fprintf(os.Stderr, "bench: -growth-fleet %q: want SERVICESxLISTENERS, as 50x4\n", *fleet)
			os.Exit(2)
		}
	}

	if *from != "" {
		if err := rerender(*from); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: run as root (handoffd loads eBPF programs; a row sets net.ipv4.tcp_migrate_req)")
		os.Exit(1)
	}
	if err := raiseLimits(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	// tableflip's children outlive their parent: as a subreaper we get
	// them back, so that we can reap and, if need be, kill them.
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: cleaning up\n", sig)
		runCleanups()
		os.Exit(130)
	}()
	err = run(c)
	runCleanups()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	tmp, err := os.MkdirTemp("", "handoffd-bench-")
	if err != nil {
		return err
	}
	atExit(func() { os.RemoveAll(tmp) })
	bins := filepath.Join(tmp, "bin")
	if err := build(c.repo, bins); err != nil {
		return err
	}
	res := &results{
		Command:   "cd test/bench && go run . " + strings.Join(os.Args[1:], " "),
		Started:   time.Now(),
		Host:      hostInfo(c.repo),
		Clients:   clients,
		Swaps:     c.swaps,
		SwapEvery: swapEvery.String(),
		Path:      path,
	}
	want := map[string]bool{}
	for s := range strings.SplitSeq(c.only, ",") {
		if s != "" {
			want[s] = true
		}
	}
	for _, strategy := range strategies {
		if len(want) > 0 && !want[strategy] {
			continue
		}
		for _, keepAlive := range []bool{false, true} {
			r := runRow(c, bins, tmp, strategy, keepAlive)
			res.Rows = append(res.Rows, r)
			fmt.Fprintln(os.Stderr, progressLine(r))
		}
	}
	if len(want) == 0 || want["h3"] || want["h3-naive"] || want["h3-reuseport"] || want["h3-handoffd"] {
		res.H3Rows = runH3Rows(c, bins, tmp, want)
	}
	if len(want) == 0 || want["cost"] {
		res.Cost = measureCost(c, bins, tmp)
	}
	res.Finished = time.Now()
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	if len(want) == 0 || want["growth"] {
		g := measureGrowth(c.growth, bins, tmp, c.repo)
		p, err := writeGrowth(g, c.out)
		if err != nil {
			return err
		}
		png := strings.TrimSuffix(p, ".json") + ".png"
		if err := plotGrowth(g, png); err != nil {
			return fmt.Errorf("plot growth: %w", err)
		}
		fmt.Print(growthMarkdown(g))
		fmt.Printf("\ngrowth: %s, plot %s\n", p, png)
		if len(want) > 0 && len(res.Rows) == 0 && res.Cost == nil {
			return nil
		}
	}
	jsonPath, _ := filepath.Abs(filepath.Join(c.out, "results.json"))
	data, _ := json.MarshalIndent(res, "", " ")
	if err := os.WriteFile(jsonPath, data, 0o644); err != nil {
		return err
	}
	pngPath, _ := filepath.Abs(filepath.Join(c.out, "results.png"))
	if err := plotResults(res, pngPath); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	fmt.Print(markdown(res))
	if len(res.H3Rows) > 0 {
		fmt.Print(h3Markdown(res.H3Rows))
	}
	fmt.Printf("\nraw results: %s\nplot: %s\n", jsonPath, pngPath)
	return nil
}

// build compiles handoffd, handoffctl and the demo in handoffd's own
// module, and the peer server in this one.
func build(repo, bins string) error {
	steps := []struct {
		dir  string
		args []string
	}{
		{repo, []string{"build", "-o", bins + "/", "./cmd/handoffd", "./cmd/handoffctl", "./demo"}},
		{".", []string{"build", "-o", filepath.Join(bins, "peer"), "./peer"}},
		{".", []string{"build", "-o", filepath.Join(bins, "h3peer"), "./h3peer"}},
	}
	for _, s := range steps {
		cmd := exec.Command("go", s.args...)
		cmd.Dir = s.dir
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go %s in %s: %w", strings.Join(s.args, " "), s.dir, err)
		}
	}
	return nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func newServer(strategy, bins, dir, addr string) (server, error) {
	peer := filepath.Join(bins, "peer")
	logPath := filepath.Join(dir, "peer.log")
	switch strategy {
	case "none", "naive", "reuseport", "tableflip", "endless":
		return newPeerServer(peer, strategy, addr, logPath), nil
	case "reuseport-migrate":
		return newPeerServer(peer, "reuseport", addr, logPath), nil
	case "haproxy":
		return newHAProxyServer(bins, dir, addr), nil
	case "handoffd-ebpf":
		return newHandoffdServer(bins, dir, "ebpf", addr), nil
	case "handoffd-fdpass":
		return newHandoffdServer(bins, dir, "fdpass", addr), nil
	case "handoffd-canary":
		h := newHandoffdServer(bins, dir, "ebpf", addr)
		h.canary = true
		return h, nil
	}
	return nil, fmt.Errorf("unknown strategy %q", strategy)
}

// runRow runs the workload against one strategy in one client mode.
func runRow(c config, bins, tmp, strategy string, keepAlive bool) (r row) {
	pruneOwn()
	r = row{Strategy: strategy, Mode: modeName(keepAlive)}
	dir, err := os.MkdirTemp(tmp, strategy+"-")
	if err != nil {
		r.Unavailable = err.Error()
		return r
	}
	addr, err := freeAddr()
	if err != nil {
		r.Unavailable = err.Error()
		return r
	}
	if strategy == "reuseport-migrate" {
		restore, err := setMigrate()
		if err != nil {
			r.Unavailable = err.Error()
			return r
		}
		defer restore()
	}
	srv, err := newServer(strategy, bins, dir, addr)
	if err != nil {
		r.Unavailable = err.Error()
		return r
	}
	if err := srv.Start(); err != nil {
		srv.Stop()
		r.Unavailable = err.Error()
		return r
	}
	defer srv.Stop()

	r.LoadAvg = append(r.LoadAvg, loadAvg())
	defer func() { r.LoadAvg = append(r.LoadAvg, loadAvg()) }()
	start := time.Now()
	var usage *usageSampler
	if pid := srv.DaemonPID(); pid != 0 {
		usage = sampleUsage(pid)
	}
	l := startLoad(addr, path, clients, keepAlive, start)
	swaps := c.swaps
	if strategy == "none" {
		swaps = 0
	}
	for i := range swaps {
		time.Sleep(time.Until(start.Add(warmup + steadyFor + time.Duration(i)*swapEvery)))
		r.SwapAt = append(r.SwapAt, time.Since(start).Seconds())
		if err := srv.Swap(); err != nil {
			r.SwapErrors = append(r.SwapErrors, fmt.Sprintf("swap %d: %v", i+1, err))
			break
		}
		time.Sleep(time.Until(start.Add(warmup + steadyFor + time.Duration(i)*swapEvery + swapEvery/2)))
		srv.Observe()
	}
	time.Sleep(time.Until(start.Add(warmup + steadyFor + time.Duration(max(c.swaps, 1))*swapEvery + tail)))
	st := l.stop()
	r.Seconds = time.Since(start).Seconds()
	if usage != nil {
		r.DaemonMaxRSSMB, r.DaemonCPUSec = usage.end()
	}
	srv.Settle()
	r.fill(st, srv.Phases(st.ByGen))
	steadyTo := warmup + steadyFor
	if len(r.SwapAt) == 0 {
		steadyTo = time.Duration(r.Seconds * float64(time.Second))
	}
	r.Latency = splitLatency(st.Timings, warmup, steadyTo, r.SwapAt)
	r.Latency.SteadyS = (steadyTo - warmup).Seconds()
	if h, ok := srv.(*handoffdServer); ok {
		r.StatusMS = h.statusMS
	}
	// A handoffd row that failed a request keeps handoffd's log; any row
	// whose swap failed keeps its server's log.
	_, isHandoffd := srv.(*handoffdServer)
	if len(r.SwapErrors) > 0 || isHandoffd && r.Failed > 0 {
		r.Log = filepath.Join(c.out, fmt.Sprintf("%s-%s.log", strategy, r.Mode))
		if err := os.MkdirAll(c.out, 0o755); err == nil {
			os.WriteFile(r.Log, []byte(srv.LogText()), 0o644)
		}
	}
	return r
}

func modeName(keepAlive bool) string {
	if keepAlive {
		return "keep-alive"
	}
	return "new-conn"
}

const migrateSysctl = "net.ipv4.tcp_migrate_req"

// setMigrate sets tcp_migrate_req=1 and returns what puts it back; the
// restore also runs on an interrupt.
func setMigrate() (func(), error) {
	old, err := sysctl(migrateSysctl)
	if err != nil {
		return nil, err
	}
	if err := setSysctl(migrateSysctl, "1"); err != nil {
		return nil, fmt.Errorf("set %s=1: %w", migrateSysctl, err)
	}
	var once sync.Once
	restore := func() {
		once.Do(func() {
			if err := setSysctl(migrateSysctl, old); err != nil {
				fmt.Fprintf(os.Stderr, "bench: restore %s=%s: %v\n", migrateSysctl, old, err)
			}
		})
	}
	atExit(restore)
	return restore, nil
}

func hostInfo(repo string) map[string]string {
	var u unix.Utsname
	unix.Uname(&u)
	rev, _ := exec.Command("git", "-C", repo, "describe", "--always", "--dirty").Output()
	migrate, _ := sysctl(migrateSysctl)
	return map[string]string{
		"kernel":            unix.ByteSliceToString(u.Release[:]),
		"cpus":              fmt.Sprint(runtime.NumCPU()),
		"go":                runtime.Version(),
		"handoffd":          strings.TrimSpace(string(rev)),
		"tcp_migrate_req":   migrate,
		"client_and_server": "same host, sharing the CPUs",
	}
}

func waitServing(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nothing serves %s after 10s", addr)
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

// rerender prints the tables of an earlier run and redraws its plot
// (results.json, or growth.json of the growth part).
func rerender(jsonPath string) error {
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		return err
	}
	pngPath := strings.TrimSuffix(jsonPath, ".json") + ".png"
	if filepath.Base(jsonPath) == "growth.json" {
		var g growth
		if err := json.Unmarshal(data, &g); err != nil {
			return fmt.Errorf("%s: %w", jsonPath, err)
		}
		if err := plotGrowth(&g, pngPath); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		fmt.Print(growthMarkdown(&g))
		fmt.Printf("\nplot: %s\n", pngPath)
		return nil
	}
	var res results
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("%s: %w", jsonPath, err)
	}
	if err := plotResults(&res, pngPath); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	fmt.Print(markdown(&res))
	fmt.Print("\nTable for docs/benchmarks.md:\n\n" + readmeTable(&res))
	fmt.Printf("\nplot: %s\n", pngPath)
	return nil
}

// raiseLimits lifts the memlock limit, which eBPF maps are charged to on
// kernels without memcg accounting, and raises RLIMIT_NOFILE, soft and
// hard, to fs.nr_open, the most the kernel allows (raising the hard
// limit needs CAP_SYS_RESOURCE: without it, the soft limit goes up to the
// hard one). handoffd and its generations inherit it; the growth part
// reports the limit it met.
func raiseLimits() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove the memlock limit: %w", err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if data, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		var nrOpen uint64
		if _, err := fmt.Sscan(string(data), &nrOpen); err == nil && nrOpen > lim.Max {
			if unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: nrOpen, Max: nrOpen}) == nil {
				return nil
			}
		}
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Max, err)
	}
	return nil
}

func intList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		if f == "max" {
			out = append(out, maxConns)
			continue
		}
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil || n < 0 {
			return nil, fmt.Errorf("%q: want a comma-separated list of counts (or max)", s)
		}
		out = append(out, n)
	}
	return out, nil
}
