package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// results is everything one run measured; it is written as JSON.
type results struct {
	Command   string            `json:"command"`
	Started   time.Time         `json:"started"`
	Finished  time.Time         `json:"finished"`
	Host      map[string]string `json:"host"`
	Clients   int               `json:"clients"`
	Swaps     int               `json:"swaps"`
	SwapEvery string            `json:"swap_every"`
	Path      string            `json:"path"`
	Rows      []row             `json:"rows"`
	// H3Rows is the HTTP/3 part (h3.go).
	H3Rows []h3Row `json:"h3_rows,omitempty"`
	Cost   *cost   `json:"cost,omitempty"`
}

// row is one strategy in one client mode.
type row struct {
	Strategy    string         `json:"strategy"`
	Mode        string         `json:"mode"`
	Unavailable string         `json:"unavailable,omitempty"`
	OK          int            `json:"ok"`
	Failed      int            `json:"failed"`
	ByClass     map[string]int `json:"failed_by_class"`
	Samples     []string       `json:"failure_samples,omitempty"`
	Seconds     float64        `json:"seconds"`
	RPS         float64        `json:"requests_per_second"`
	SwapAt      []float64      `json:"swap_at_s"`
	SwapErrors  []string       `json:"swap_errors,omitempty"`
	Generations int            `json:"generations_answering"`
	Phases      swapPhases     `json:"phases"`
	Latency     latencies      `json:"latency"`
	// OKBins and FailBins count answers and failures per binWidth.
	BinMS    int   `json:"bin_ms"`
	OKBins   []int `json:"ok_bins"`
	FailBins []int `json:"failed_bins"`
	// The supervisor's own usage (handoffd rows).
	DaemonMaxRSSMB float64 `json:"daemon_max_rss_mb,omitempty"`
	DaemonCPUSec   float64 `json:"daemon_cpu_s,omitempty"`
	// StatusMS times the `handoffctl status` calls made during the row.
	StatusMS []float64 `json:"status_ms,omitempty"`
	// LoadAvg is /proc/loadavg before and after the row: other work on
	// the host shares the same CPUs.
	LoadAvg []string `json:"loadavg"`
	// Log is handoffd's log, kept when a request or a swap failed.
	Log string `json:"handoffd_log,omitempty"`
}

func (r *row) fill(st *loadStats, ph swapPhases) {
	r.OK, r.Failed, r.ByClass, r.Samples = st.OK, st.failedTotal(), st.Failed, st.Samples
	r.RPS = float64(st.OK) / r.Seconds
	r.Generations = len(st.ByGen)
	r.Phases = ph
	n := min(int(r.Seconds*float64(time.Second)/float64(binWidth)), maxBins) // the last, partial bin is left out
	r.BinMS = int(binWidth / time.Millisecond)
	r.OKBins, r.FailBins = st.OKBins[:n], st.FailBins[:n]
}

// spread formats the median and maximum of xs in ms.
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "–"
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return fmt.Sprintf("%s / %s", fmtMS(s[len(s)/2]), fmtMS(s[len(s)-1]))
}

// latCell formats one latency figure, or – for an empty window.
func latCell(l latency, v float64) string {
	if l.Requests == 0 {
		return "–"
	}
	return fmtMS(v)
}

func fmtMS(v float64) string {
	if v > -10 && v < 10 {
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func progressLine(r row) string {
	if r.Unavailable != "" {
		return fmt.Sprintf("bench: %s %s: not available: %s", r.Strategy, r.Mode, r.Unavailable)
	}
	return fmt.Sprintf("bench: %s %s: %d ok, %d failed %v, %.0f req/s, %d swaps %s", r.Strategy, r.Mode,
		r.OK, r.Failed, r.ByClass, r.RPS, len(r.SwapAt), strings.Join(r.SwapErrors, "; "))
}

// markdown renders the results as the tables of RESULTS.md.
func markdown(res *results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n%d clients, POST %s, %d swaps %s apart per row; kernel %s, %s CPUs, %s, handoffd %s\n\n",
		res.Clients, res.Path, res.Swaps, res.SwapEvery, res.Host["kernel"], res.Host["cpus"], res.Host["go"], res.Host["handoffd"])
	b.WriteString("| strategy | clients | ok | failed | refused | reset | eof | timeout | other | req/s | swaps | ready ms | first answer ms | old exited ms | activation → first conn ms | host load |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range res.Rows {
		if r.Unavailable != "" {
			fmt.Fprintf(&b, "| %s | %s | not available: %s |\n", r.Strategy, r.Mode, strings.ReplaceAll(r.Unavailable, "|", "\\|"))
			continue
		}
		c := r.ByClass
		swaps := fmt.Sprint(len(r.SwapAt))
		if len(r.SwapErrors) > 0 {
			swaps += " (" + strings.ReplaceAll(r.SwapErrors[0], "|", "\\|") + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %d | %d | %d | %.0f | %s | %s | %s | %s | %s | %s |\n",
			r.Strategy, r.Mode, r.OK, r.Failed, c[classRefused], c[classReset], c[classEOF], c[classTimeout], c[classOther],
			r.RPS, swaps, spread(r.Phases.Ready), spread(r.Phases.FirstResp), spread(r.Phases.OldExited), spread(r.Phases.ActToConn),
			hostLoad(r.LoadAvg))
	}
	b.WriteString("\nPhases are median / max over the swaps, in ms, from the start of each swap (handoffd: the new generation's started_at). Host load: the 1-minute load average before → after the row.\n")
	for _, r := range res.Rows {
		if len(r.Phases.Drained) > 0 {
			fmt.Fprintf(&b, "%s %s: from `state drain` to no session on the old server, %s ms.\n", r.Strategy, r.Mode, spread(r.Phases.Drained))
		}
	}
	b.WriteString("\n| strategy | clients | steady p50 ms | steady p99 ms | steady max ms | after swap p50 ms | after swap p99 ms | after swap max ms |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range res.Rows {
		if r.Unavailable != "" {
			continue
		}
		l := r.Latency
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Strategy, r.Mode,
			latCell(l.Steady, l.Steady.P50), latCell(l.Steady, l.Steady.P99), latCell(l.Steady, l.Steady.Max),
			latCell(l.AfterSwap, l.AfterSwap.P50), latCell(l.AfterSwap, l.AfterSwap.P99), latCell(l.AfterSwap, l.AfterSwap.Max))
	}
	b.WriteString("\nLatency of successful requests as the clients timed them (dial included for a new connection): steady is the window before the first swap (the whole row without swaps), after swap every request begun within 1 s of a swap's start.\n")
	b.WriteString("\n| supervisor or proxy | clients | max RSS MB | CPU s | CPU % of one core | `handoffctl status` ms |\n|---|---|--:|--:|--:|--:|\n")
	for _, r := range res.Rows {
		if r.Unavailable == "" && r.DaemonMaxRSSMB > 0 {
			fmt.Fprintf(&b, "| %s | %s | %.1f | %.2f | %.1f | %s |\n", r.Strategy, r.Mode, r.DaemonMaxRSSMB, r.DaemonCPUSec,
				100*r.DaemonCPUSec/r.Seconds, spread(r.StatusMS))
		}
	}
	if c := res.Cost; c != nil {
		b.WriteString(costMarkdown(c))
	}
	return b.String()
}

// costMarkdown renders the steering cost: a summary of the rounds (each
// is in results.json) and the parts measured apart.
func costMarkdown(c *cost) string {
	var b strings.Builder
	b.WriteString("\nSteering cost (demo alone on a plain socket vs the same demo under handoffd-ebpf, no swaps, new connection per request, rounds alternated AB/BA):\n\n")
	if c.Error != "" {
		fmt.Fprintf(&b, "not measured: %s\n", c.Error)
		return b.String()
	}
	rpsRatios := make([]float64, len(c.PlainRPS))
	for i := range c.PlainRPS {
		rpsRatios[i] = c.SteeredRPS[i] / c.PlainRPS[i]
	}
	cpuRatios := make([]float64, len(c.PlainCPUNS))
	for i := range c.PlainCPUNS {
		cpuRatios[i] = c.PlainCPUNS[i] / c.SteeredCPUNS[i]
	}
	fmt.Fprintf(&b, "%d rounds of %s runs each, %.0f s.\n\n", len(rpsRatios), c.Each, c.Seconds)
	b.WriteString("| measure | plain (median) | handoffd-ebpf (median) | ratio, mean | 95 % interval | rounds' range | ratio, median | cost (from the mean) |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
	line := func(name, unit string, plain, steered float64, ratios []float64, mean, ci, cost float64) {
		if len(ratios) == 0 {
			return
		}
		s := slices.Clone(ratios)
		slices.Sort(s)
		fmt.Fprintf(&b, "| %s | %.1f %s | %.1f %s | %.4f | ± %.2f points | %.3f – %.3f | %.4f | %.2f %% |\n",
			name, plain, unit, steered, unit, mean, ci, s[0], s[len(s)-1], median(s), cost)
	}
	line("requests/s (steered / plain)", "req/s", median(c.PlainRPS), median(c.SteeredRPS), rpsRatios, c.Ratio, c.CI95Points, c.CostPercent)
	line("CPU per request (plain / steered)", "µs", median(c.PlainCPUNS)/1000, median(c.SteeredCPUNS)/1000, cpuRatios, c.CPURatio, c.CPUCI95Points, c.CPUCost)
	b.WriteString("\nCPU per request: the clients' and the servers' processes, every thread's sum_exec_runtime (the softirqs they ran included), per answered request.\n")
	if min(c.CI95Points, c.CPUCI95Points) > c.TargetPts {
		fmt.Fprintf(&b, "\nNeither interval narrowed to ± %.1f points in %.0f s.\n", c.TargetPts, c.Seconds)
	}
	if c.Failed > 0 {
		fmt.Fprintf(&b, "\n%d requests failed during the rounds.\n", c.Failed)
	}
	if len(c.Parts) > 0 {
		fmt.Fprintf(&b, "\nParts, over one more steered run (%d connections at %.0f req/s, BPF_ENABLE_STATS on):\n\n", c.StatsConnections, c.StatsRPS)
		b.WriteString("| part | runs or calls | ns per run | ns per connection | share of a request's CPU |\n|---|--:|--:|--:|--:|\n")
		for _, p := range c.Programs {
			name := p.Type + " program"
			if p.LinkType != "" {
				name += " (" + p.LinkType + " link)"
			}
			per := "–"
			if p.RunCount > 0 {
				per = fmt.Sprintf("%.0f", float64(p.RunTimeNS)/float64(p.RunCount))
			}
			pc := float64(p.RunTimeNS) / float64(max(c.StatsConnections, 1))
			fmt.Fprintf(&b, "| %s | %d | %s | %.0f | %.3f %% |\n", name, p.RunCount, per, pc, share(c, pc))
		}
		fmt.Fprintf(&b, "\nKernel work handoffd adds per connection: %.0f ns %s (goal ≤ %d ns).\n",
			c.KernelNSPerConn, verdict(c.KernelNSPerConn <= goalKernelNSPerConn), goalKernelNSPerConn)
	}
	if c.StatsError != "" {
		fmt.Fprintf(&b, "\neBPF run time not measured: %s\n", c.StatsError)
	}
	if len(rpsRatios) > 0 {
		s := slices.Clone(rpsRatios)
		slices.Sort(s)
		half := 100 * (s[len(s)-1] - s[0]) / 2
		fmt.Fprintf(&b, "\nAgainst the goals: requests/s ratio %.4f %s (goal ≥ %.3f); the rounds' spread ± %.2f points %s (goal ± %.1f).\n",
			c.Ratio, verdict(c.Ratio >= goalRatio), goalRatio, half, verdict(half <= goalSpreadPoints), goalSpreadPoints)
	}
	return b.String()
}

// share is ns per connection as a percentage of one request's CPU time.
func share(c *cost, nsPerConn float64) float64 {
	if c.RequestCPUNS == 0 {
		return 0
	}
	return 100 * nsPerConn / c.RequestCPUNS
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// readmeLabels name the strategies in the table of docs/benchmarks.md.
var readmeLabels = map[string]string{
	"none":              "none (no swap: the baseline)",
	"naive":             "naive (stop, then start)",
	"reuseport":         "reuseport + `Shutdown`",
	"reuseport-migrate": "reuseport + `tcp_migrate_req=1`",
	"tableflip":         "cloudflare/tableflip",
	"endless":           "fvbock/endless",
	"haproxy":           "HAProxy blue/green",
	"handoffd-fdpass":   "handoffd, fdpass",
	"handoffd-ebpf":     "handoffd, ebpf",
	"handoffd-canary":   "handoffd, ebpf, canary 5 % → 50 % → promote",
}

// readmeTable is docs/benchmarks.md's summary of a run: failures, requests/s and
// p99 latency before and after swaps, in both client modes.
func readmeTable(res *results) string {
	var b strings.Builder
	b.WriteString("| strategy | failed (new connection per request) | failed (keep-alive) | req/s (new conn / keep-alive) | p99 ms, steady → after swaps (new conn) | p99 ms, steady → after swaps (keep-alive) |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|\n")
	var names []string
	by := map[string]map[string]row{}
	for _, r := range res.Rows {
		if r.Unavailable != "" {
			continue
		}
		if by[r.Strategy] == nil {
			by[r.Strategy] = map[string]row{}
			names = append(names, r.Strategy)
		}
		by[r.Strategy][r.Mode] = r
	}
	failed := func(r row) string {
		if r.Failed == 0 {
			return fmt.Sprintf("0 of %s", thousands(r.OK))
		}
		return thousands(r.Failed)
	}
	p99 := func(r row) string {
		l := r.Latency
		if l.AfterSwap.Requests == 0 {
			return latCell(l.Steady, l.Steady.P99)
		}
		return latCell(l.Steady, l.Steady.P99) + " → " + latCell(l.AfterSwap, l.AfterSwap.P99)
	}
	for _, n := range names {
		nc, ka := by[n]["new-conn"], by[n]["keep-alive"]
		label := readmeLabels[n]
		if label == "" {
			label = n
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s / %s | %s | %s |\n", label, failed(nc), failed(ka),
			thousands(int(nc.RPS+0.5)), thousands(int(ka.RPS+0.5)), p99(nc), p99(ka))
	}
	return b.String()
}

// thousands writes n with commas between groups of three digits.
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// hostLoad gives the 1-minute load averages of /proc/loadavg lines as "a → b".
func hostLoad(lines []string) string {
	var out []string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	if len(out) == 0 {
		return "–"
	}
	return strings.Join(out, " → ")
}
