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
	Cost      *cost             `json:"cost,omitempty"`
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

// cost is the steering program's price in requests/s.
type cost struct {
	Mode        string    `json:"client_mode"`
	Each        string    `json:"each_run"`
	PlainRPS    []float64 `json:"plain_socket_rps"`
	SteeredRPS  []float64 `json:"handoffd_ebpf_rps"`
	Failed      int       `json:"failed"`
	Ratio       float64   `json:"ratio_steered_over_plain"`
	CostPercent float64   `json:"cost_percent"`
	Error       string    `json:"error,omitempty"`
	// eBPF programs held by handoffd, counted over one more steered run.
	StatsConnections int         `json:"stats_connections"`
	Programs         []progStats `json:"programs,omitempty"`
	StatsError       string      `json:"stats_error,omitempty"`
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
	b.WriteString("| strategy | clients | ok | failed | refused | reset | eof | timeout | other | req/s | swaps | ready ms | first answer ms | old exited ms | activation → first conn ms |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
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
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %d | %d | %d | %.0f | %s | %s | %s | %s | %s |\n",
			r.Strategy, r.Mode, r.OK, r.Failed, c[classRefused], c[classReset], c[classEOF], c[classTimeout], c[classOther],
			r.RPS, swaps, spread(r.Phases.Ready), spread(r.Phases.FirstResp), spread(r.Phases.OldExited), spread(r.Phases.ActToConn))
	}
	b.WriteString("\nPhases are median / max over the swaps, in ms, from the start of each swap (handoffd: the new generation's started_at).\n")
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
	b.WriteString("\nLatency of successful requests as the clients timed them (dial included for a new connection): steady is the 2 s before the first swap, after swap every request begun within 1 s of a swap's start.\n")
	b.WriteString("\n| supervisor or proxy | clients | max RSS MB | CPU s | CPU % of one core | `handoffctl status` ms |\n|---|---|--:|--:|--:|--:|\n")
	for _, r := range res.Rows {
		if r.Unavailable == "" && r.DaemonMaxRSSMB > 0 {
			fmt.Fprintf(&b, "| %s | %s | %.1f | %.2f | %.1f | %s |\n", r.Strategy, r.Mode, r.DaemonMaxRSSMB, r.DaemonCPUSec,
				100*r.DaemonCPUSec/r.Seconds, spread(r.StatusMS))
		}
	}
	if c := res.Cost; c != nil {
		b.WriteString("\nSteering cost (demo alone on a plain socket vs the same demo under handoffd-ebpf, no swaps, new connection per request, alternated):\n\n")
		if c.Error != "" {
			fmt.Fprintf(&b, "not measured: %s\n", c.Error)
		} else {
			b.WriteString("| round | plain req/s | handoffd-ebpf req/s | ratio |\n|--:|--:|--:|--:|\n")
			for i := range c.PlainRPS {
				fmt.Fprintf(&b, "| %d | %.0f | %.0f | %.3f |\n", i+1, c.PlainRPS[i], c.SteeredRPS[i], c.SteeredRPS[i]/c.PlainRPS[i])
			}
			fmt.Fprintf(&b, "| all | | | **%.3f** (cost %.1f%%, %d failed) |\n", c.Ratio, c.CostPercent, c.Failed)
			for _, p := range c.Programs {
				if p.Type == "" {
					fmt.Fprintf(&b, "\neBPF program %s is held through a bpf_link (%s): its run time is not visible from /proc\n", p.ID, p.LinkType)
					continue
				}
				per := "–"
				if p.RunCount > 0 {
					per = fmt.Sprintf("%.0f ns/run", float64(p.RunTimeNS)/float64(p.RunCount))
				}
				fmt.Fprintf(&b, "\neBPF program %s (type %s): %d runs for %d connections, %s\n", p.ID, p.Type, p.RunCount, c.StatsConnections, per)
			}
			if c.StatsError != "" {
				fmt.Fprintf(&b, "\neBPF run time not measured: %s\n", c.StatsError)
			}
		}
	}
	return b.String()
}
