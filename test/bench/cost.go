package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cost is what steering costs in requests/s, and its parts.
type cost struct {
	Mode        string    `json:"client_mode"`
	Each        string    `json:"each_run"`
	PlainRPS    []float64 `json:"plain_socket_rps"`
	SteeredRPS  []float64 `json:"handoffd_ebpf_rps"`
	Failed      int       `json:"failed"`
	Ratio       float64   `json:"ratio_steered_over_plain"` // mean of the rounds' ratios
	CostPercent float64   `json:"cost_percent"`
	// CI95Points is the half-width of the 95 % confidence interval of
	// the mean ratio (Student's t over the rounds), in percentage points.
	CI95Points float64 `json:"ci95_points"`
	// The same from CPU time: the clients' and the server's processes'
	// CPU (sum_exec_runtime of every thread, softirqs run in their
	// context included) per request; CPU ratio is plain over steered,
	// which on a CPU-bound host is the requests/s ratio without the
	// share of the CPUs that other work on the host took.
	PlainCPUNS    []float64 `json:"plain_cpu_ns_per_request"`
	SteeredCPUNS  []float64 `json:"handoffd_ebpf_cpu_ns_per_request"`
	CPURatio      float64   `json:"cpu_ratio_plain_over_steered"`
	CPUCost       float64   `json:"cpu_cost_percent"`
	CPUCI95Points float64   `json:"cpu_ci95_points"`
	TargetPts     float64   `json:"target_points"`
	Seconds       float64   `json:"seconds"`
	Error         string    `json:"error,omitempty"`
	// Counted over one more steered run with BPF_ENABLE_STATS (which
	// costs something itself, hence apart).
	StatsConnections int         `json:"stats_connections"`
	StatsRPS         float64     `json:"stats_rps"`
	RequestCPUNS     float64     `json:"request_cpu_ns"` // CPUs × 1 s / requests/s
	Programs         []progStats `json:"programs,omitempty"`
	StatsError       string      `json:"stats_error,omitempty"`
	Parts            []costPart  `json:"parts,omitempty"`
	// KernelNSPerConn is the run time of every eBPF program handoffd
	// holds, per connection of the stats run: the kernel work handoffd
	// adds to a connection.
	KernelNSPerConn float64 `json:"kernel_ns_per_connection"`
}

// The goals of the cost part.
const (
	goalRatio           = 0.995 // the demo under handoffd serves this share of the demo alone
	goalSpreadPoints    = 0.5   // the rounds' ratios within ± this many points
	goalKernelNSPerConn = 500   // kernel work handoffd adds per connection
)

// costPart is one measured part of the cost: its time per connection and
// the share of a request's CPU that is (the host is CPU-bound: a request
// costs CPUs / requests/s).
type costPart struct {
	Name          string  `json:"name"`
	NSPerConn     float64 `json:"ns_per_connection"`
	PercentPoints float64 `json:"percent_points"`
}

// measureCost compares requests/s of the demo alone on a plain socket (A)
// with the same demo under handoffd-ebpf (B), no swaps, a new connection
// per request (the steering program and the counter run per connection).
// Rounds alternate AB and BA so that a drift of the host's load weighs on
// both; they go on until the 95 % interval of the mean ratio is within
// costTarget points (after at least costRounds) or costMax has passed.
// A last B run counts the eBPF programs' run time (BPF_ENABLE_STATS).
func measureCost(c config, bins, tmp string) *cost {
	res := &cost{Each: c.costEach.String(), Mode: "new-conn", TargetPts: c.costTarget}
	dir, _ := os.MkdirTemp(tmp, "cost-")
	addrA, _ := freeAddr()
	addrB, _ := freeAddr()
	demo := exec.Command(filepath.Join(bins, "demo"), "--addr", addrA, "--version", "bench")
	demo.Env = append(os.Environ(), "GIN_MODE=release")
	if err := demo.Start(); err != nil {
		res.Error = err.Error()
		return res
	}
	own(demo.Process.Pid)
	defer func() { demo.Process.Signal(syscall.SIGTERM); demo.Wait() }()
	h := newHandoffdServer(bins, dir, "ebpf", addrB)
	if err := h.Start(); err != nil {
		h.Stop()
		res.Error = err.Error()
		return res
	}
	defer h.Stop()
	if err := waitServing(addrA); err != nil {
		res.Error = err.Error()
		return res
	}
	gen1 := h.gens[1].PID
	rps := func(addr string) (float64, int, int) {
		r, ok, failed, _ := measureRun(addr, c.costEach)
		return r, ok, failed
	}
	began := time.Now()
	var ratios, cpuRatios []float64
	run := func(addr string, pids ...int) {
		r, _, failed, cpu := measureRun(addr, c.costEach, pids...)
		res.Failed += failed
		if addr == addrA {
			res.PlainRPS, res.PlainCPUNS = append(res.PlainRPS, r), append(res.PlainCPUNS, cpu)
		} else {
			res.SteeredRPS, res.SteeredCPUNS = append(res.SteeredRPS, r), append(res.SteeredCPUNS, cpu)
		}
	}
	for i := 0; ; i++ {
		if i%2 == 0 {
			run(addrA, demo.Process.Pid)
			run(addrB, gen1, h.DaemonPID())
		} else {
			run(addrB, gen1, h.DaemonPID())
			run(addrA, demo.Process.Pid)
		}
		ratios = append(ratios, res.SteeredRPS[i]/res.PlainRPS[i])
		cpuRatios = append(cpuRatios, res.PlainCPUNS[i]/res.SteeredCPUNS[i])
		res.Ratio, res.CI95Points = meanCI(ratios)
		res.CPURatio, res.CPUCI95Points = meanCI(cpuRatios)
		if len(ratios) >= max(c.costRounds, 2) &&
			(min(res.CI95Points, res.CPUCI95Points) <= c.costTarget || time.Since(began) >= c.costMax) {
			break
		}
	}
	res.Seconds = time.Since(began).Seconds()
	res.CostPercent = (1 - res.Ratio) * 100
	res.CPUCost = (1 - res.CPURatio) * 100
	statsRun(res, h, addrB, rps)
	return res
}

// measureRun runs the clients against addr for d with a new connection
// per request and returns requests/s, the answered and the failed
// requests, and the CPU time per answered request, in ns, of the clients
// (this process) and of pids.
func measureRun(addr string, d time.Duration, pids ...int) (rps float64, ok, failed int, cpuNS float64) {
	pids = append(pids, os.Getpid())
	cpu0 := threadsCPU(pids...)
	start := time.Now()
	l := startLoad(addr, path, clients, false, start)
	time.Sleep(d)
	st := l.stop()
	elapsed := time.Since(start)
	cpu := threadsCPU(pids...) - cpu0
	if st.OK > 0 {
		cpuNS = float64(cpu) / float64(st.OK)
	}
	return float64(st.OK) / elapsed.Seconds(), st.OK, st.failedTotal(), cpuNS
}

// threadsCPU sums the time on CPU (sum_exec_runtime, ns) of every thread
// of pids. A thread that has exited no longer counts; Go programs keep
// theirs.
func threadsCPU(pids ...int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
		for _, t := range tasks {
			data, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			var ns int64
			fmt.Sscan(string(data), &ns)
			total += time.Duration(ns)
		}
	}
	return total
}

// meanCI returns the mean of xs and the half-width of its 95 % confidence
// interval in percentage points (xs are ratios).
func meanCI(xs []float64) (mean, halfPts float64) {
	n := float64(len(xs))
	for _, x := range xs {
		mean += x
	}
	mean /= n
	if len(xs) < 2 {
		return mean, math.Inf(1)
	}
	var ss float64
	for _, x := range xs {
		ss += (x - mean) * (x - mean)
	}
	sd := math.Sqrt(ss / (n - 1))
	return mean, studentT975(len(xs)-1) * sd / math.Sqrt(n) * 100
}

// studentT975 is the 97.5 % quantile of Student's t with df degrees of freedom.
func studentT975(df int) float64 {
	table := []float64{12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
		2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
		2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042}
	if df <= len(table) {
		return table[df-1]
	}
	return 1.96 + 2.4/float64(df) // within 0.002 of the exact quantile above 30
}

// statsRun measures the parts of the cost over one more steered run.
func statsRun(res *cost, h *handoffdServer, addr string, rps func(string) (float64, int, int)) {
	fd, err := enableBPFStats()
	if err != nil {
		res.StatsError = err.Error()
		return
	}
	defer unix.Close(fd)
	before := bpfPrograms(h.DaemonPID())
	r, conns, _ := rps(addr)
	after := bpfPrograms(h.DaemonPID())
	res.StatsConnections, res.StatsRPS = conns, r
	// One request costs this much CPU time, in ns: as measured over the
	// steered rounds, or else what a CPU-bound host's throughput says
	// (which counts the share other work on the host took, too).
	perRequestNS := median(res.SteeredCPUNS)
	if perRequestNS == 0 {
		perRequestNS = float64(runtime.NumCPU()) * 1e9 / r
	}
	res.RequestCPUNS = perRequestNS
	part := func(name string, ns float64) {
		res.Parts = append(res.Parts, costPart{Name: name, NSPerConn: ns, PercentPoints: 100 * ns / perRequestNS})
	}
	for id, p := range after {
		b := before[id]
		p.RunCount -= b.RunCount
		p.RunTimeNS -= b.RunTimeNS
		res.Programs = append(res.Programs, p)
		if conns > 0 {
			part(fmt.Sprintf("%s program (id %s)", p.Type, id), float64(p.RunTimeNS)/float64(conns))
			res.KernelNSPerConn += float64(p.RunTimeNS) / float64(conns)
		}
	}
	if len(res.Programs) == 0 {
		res.StatsError = "handoffd holds no eBPF program fd to read run time from"
	}
}

// progStats is one eBPF program's counters, read from the fdinfo of a
// program fd.
type progStats struct {
	Type      string `json:"type"`
	LinkType  string `json:"link_type,omitempty"` // set when handoffd holds it through a bpf_link
	ID        string `json:"id"`
	RunCount  uint64 `json:"run_count"`
	RunTimeNS uint64 `json:"run_time_ns"`
}

// bpfPrograms lists the eBPF programs that pid holds an fd of, directly
// or through a link; a linked program's counters are read from an fd of
// it that this process opens by id.
func bpfPrograms(pid int) map[string]progStats {
	progs := map[string]progStats{}
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		p := readFdinfo(filepath.Join(dir, e.Name()))
		if p.ID == "" {
			continue
		}
		if p.LinkType != "" {
			q, err := progByID(p.ID)
			if err != nil {
				continue
			}
			q.LinkType = p.LinkType
			p = q
		}
		progs[p.ID] = p
	}
	return progs
}

func readFdinfo(path string) progStats {
	var p progStats
	data, err := os.ReadFile(path)
	if err != nil {
		return p
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "prog_type":
			p.Type = progTypes[v]
			if p.Type == "" {
				p.Type = v
			}
		case "link_type":
			p.LinkType = v
		case "prog_id":
			p.ID = v
		case "run_cnt":
			fmt.Sscan(v, &p.RunCount)
		case "run_time_ns":
			fmt.Sscan(v, &p.RunTimeNS)
		}
	}
	return p
}

// progTypes names the program types (enum bpf_prog_type) that fdinfo shows as numbers.
var progTypes = map[string]string{"13": "sock_ops", "21": "sk_reuseport", "8": "cgroup_sock", "26": "tracing"}

// progByID opens program id (BPF_PROG_GET_FD_BY_ID) and reads its counters.
func progByID(id string) (progStats, error) {
	var attr struct{ id, next, flags uint32 }
	if _, err := fmt.Sscan(id, &attr.id); err != nil {
		return progStats{}, err
	}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_GET_FD_BY_ID, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return progStats{}, fmt.Errorf("BPF_PROG_GET_FD_BY_ID %s: %w", id, errno)
	}
	defer unix.Close(int(fd))
	return readFdinfo(fmt.Sprintf("/proc/self/fdinfo/%d", fd)), nil
}
