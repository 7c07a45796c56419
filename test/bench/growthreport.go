package main

import (
	"fmt"
	"strings"
)

// growthMarkdown renders the growth part's tables, each figure beside its
// goal.
func growthMarkdown(g *growth) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nGrowth part, RLIMIT_NOFILE %d; median / max in ms; load is /proc/loadavg at the row's start and end\n\n", g.FDLimit)
	b.WriteString("| mode | idle connections | held | `status` ms | scrape ms | start → active ms | active → first connection ms | start → old exited ms | handoffd CPU per swap ms | generation RSS MB | handoffd RSS MB | host TCP sockets (in use / TIME_WAIT) | load |\n")
	b.WriteString("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, c := range g.Conns {
		if c.Error != "" && len(c.Held) == 0 {
			fmt.Fprintf(&b, "| %s | %d | failed: %s |\n", c.Mode, c.Conns, escape(c.Error))
			continue
		}
		held := fmt.Sprint(c.Held)
		if c.Error != "" {
			held += " (failed: " + escape(c.Error) + ")"
		}
		sockets := "–"
		if len(c.HostTCP) > 0 {
			sockets = fmt.Sprintf("%.0f / %.0f", median(ints(c.HostTCP)), median(ints(c.HostTimeWait)))
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %.1f | %.1f | %s | %s |\n", c.Mode, c.Conns, held,
			spread(c.StatusMS), spread(c.ScrapeMS), spread(c.ActiveMS), spread(c.FirstConnMS), spread(c.OldExitedMS), spread(c.CPUMS),
			c.GenRSSMB, c.HandoffdRSSMB, sockets, loads(c.LoadAvg))
	}
	b.WriteString("\n" + flatness(g))
	b.WriteString("\n" + extrapolation(g))
	if len(g.Fleet) > 0 {
		fmt.Fprintf(&b, "\n| mode | services × listeners | idle connections held | `status` ms (goal ≤ %d) | scrape ms (goal ≤ %d) | load |\n|---|---|--:|--:|--:|---|\n", goalReadMS, goalReadMS)
		for _, f := range g.Fleet {
			if f.Error != "" {
				fmt.Fprintf(&b, "| %s | %d × %d | %d | failed: %s |\n", f.Mode, f.Services, f.Listeners, f.Held, escape(f.Error))
				continue
			}
			fmt.Fprintf(&b, "| %s | %d × %d | %d | %s %s | %s %s | %s |\n", f.Mode, f.Services, f.Listeners, f.Held,
				spread(f.StatusMS), verdict(median(f.StatusMS) <= goalReadMS), spread(f.ScrapeMS), verdict(median(f.ScrapeMS) <= goalReadMS),
				loads(f.LoadAvg))
		}
	}
	fmt.Fprintf(&b, "\n| mode | services | listeners each | start s | RSS MB | CPU %% of one core (goal ≤ %.1f at 50) | fds | `status` ms | load |\n|---|--:|--:|--:|--:|--:|--:|--:|---|\n", goalRestCPUPct)
	for _, r := range g.Rest {
		if r.Error != "" {
			fmt.Fprintf(&b, "| %s | %d | %d | failed: %s |\n", r.Mode, r.Services, r.Listeners, escape(r.Error))
			continue
		}
		mark := ""
		if r.Services >= 50 {
			mark = " " + verdict(r.CPUPct <= goalRestCPUPct)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %.1f | %.1f | %.3f%s | %d | %s | %s |\n", r.Mode, r.Services, r.Listeners,
			r.StartS, r.RSSMB, r.CPUPct, mark, r.FDs, spread(r.StatusMS), loads(r.LoadAvg))
	}
	return b.String()
}

// flatness compares, per mode, the swap's figures at the most connections
// with those at none: the goal is within goalFlatPct.
func flatness(g *growth) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| mode | figure | at 0 held (median ms) | at the most held | change | goal: within ± %d %% |\n|---|---|--:|--:|--:|---|\n", goalFlatPct)
	byMode := map[string][]growthConns{}
	var modes []string
	for _, c := range g.Conns {
		if len(c.ActiveMS) == 0 {
			continue
		}
		if byMode[c.Mode] == nil {
			modes = append(modes, c.Mode)
		}
		byMode[c.Mode] = append(byMode[c.Mode], c)
	}
	for _, m := range modes {
		cs := byMode[m]
		lo, hi := cs[0], cs[len(cs)-1]
		for _, f := range []struct {
			name string
			get  func(growthConns) []float64
		}{
			{"start → active", func(c growthConns) []float64 { return c.ActiveMS }},
			{"active → first connection", func(c growthConns) []float64 { return c.FirstConnMS }},
			{"handoffd CPU per swap", func(c growthConns) []float64 { return c.CPUMS }},
		} {
			a, z := median(f.get(lo)), median(f.get(hi))
			change := 0.0
			if a > 0 {
				change = 100 * (z - a) / a
			}
			fmt.Fprintf(&b, "| %s | %s | %.3g (%d held) | %.3g (%d held) | %+.0f %% | %s |\n", m, f.name, a, lo.Conns, z, hi.Conns,
				change, verdict(change <= goalFlatPct && change >= -goalFlatPct))
		}
	}
	return b.String()
}

// extrapolatedConns is the host the extrapolation is for: a WebSocket-heavy
// one, far past what this machine's fd limit lets a run hold.
const extrapolatedConns = 1_000_000

// extrapolation fits, per mode, each figure's cost per held connection
// from its median at the fewest and at the most held connections, and
// extends it to extrapolatedConns: status and a scrape (the counter visits
// every open fd of the generations), the swap's start → active and
// handoffd's CPU per swap (nothing of them should depend on it). A figure
// that fell as connections grew is extended flat: no cost per connection
// was measured.
func extrapolation(g *growth) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Extrapolated to %d held connections (linear, from the medians at the fewest and the most held):\n\n", extrapolatedConns)
	b.WriteString("| mode | figure | at the fewest held (ms) | per held connection (µs) | extrapolated (ms) |\n|---|---|--:|--:|--:|\n")
	byMode := map[string][]growthConns{}
	var modes []string
	for _, c := range g.Conns {
		if len(c.StatusMS) == 0 {
			continue
		}
		if byMode[c.Mode] == nil {
			modes = append(modes, c.Mode)
		}
		byMode[c.Mode] = append(byMode[c.Mode], c)
	}
	for _, m := range modes {
		cs := byMode[m]
		lo, hi := cs[0], cs[len(cs)-1]
		if hi.Conns == lo.Conns {
			continue
		}
		for _, f := range []struct {
			name string
			get  func(growthConns) []float64
		}{
			{"`status`", func(c growthConns) []float64 { return c.StatusMS }},
			{"scrape", func(c growthConns) []float64 { return c.ScrapeMS }},
			{"start → active", func(c growthConns) []float64 { return c.ActiveMS }},
			{"active → first connection", func(c growthConns) []float64 { return c.FirstConnMS }},
			{"handoffd CPU per swap", func(c growthConns) []float64 { return c.CPUMS }},
		} {
			a, z := median(f.get(lo)), median(f.get(hi))
			slope := (z - a) / float64(hi.Conns-lo.Conns) // ms per connection
			if slope <= 0 {
				// Faster with more held: noise, not a cost that shrinks.
				fmt.Fprintf(&b, "| %s | %s | %.3g | none measured (%.4f) | %.3g |\n", m, f.name, a, slope*1000, a)
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %.3g | %.4f | %.4g |\n", m, f.name, a, slope*1000,
				a+slope*float64(extrapolatedConns-lo.Conns))
		}
	}
	return b.String()
}

func verdict(ok bool) string {
	if ok {
		return "(met)"
	}
	return "(missed)"
}

// loads shows the 1-minute load averages of /proc/loadavg lines, start → end.
func loads(lines []string) string {
	var out []string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	return strings.Join(out, " → ")
}

func escape(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

func ints(xs []int) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(x)
	}
	return out
}
