package main

import (
	"fmt"
	"strings"
)

// growthMarkdown renders the growth part's tables.
func growthMarkdown(g *growth) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nGrowth part, RLIMIT_NOFILE %d; median / max in ms\n\n", g.FDLimit)
	b.WriteString("| mode | idle connections | held | `status` ms | scrape ms | start → active ms | start → old exited ms | handoffd CPU per swap ms | generation RSS MB | handoffd RSS MB | host TCP sockets (in use / TIME_WAIT) |\n")
	b.WriteString("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range g.Conns {
		if c.Error != "" && len(c.Held) == 0 {
			fmt.Fprintf(&b, "| %s | %d | failed: %s |\n", c.Mode, c.Conns, strings.ReplaceAll(c.Error, "|", "\\|"))
			continue
		}
		held := fmt.Sprint(c.Held)
		if c.Error != "" {
			held += " (" + strings.ReplaceAll(c.Error, "|", "\\|") + ")"
		}
		sockets := "–"
		if len(c.HostTCP) > 0 {
			sockets = fmt.Sprintf("%.0f / %.0f", median(ints(c.HostTCP)), median(ints(c.HostTimeWait)))
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %.1f | %.1f | %s |\n", c.Mode, c.Conns, held,
			spread(c.StatusMS), spread(c.ScrapeMS), spread(c.ActiveMS), spread(c.OldExitedMS), spread(c.CPUMS),
			c.GenRSSMB, c.HandoffdRSSMB, sockets)
	}
	b.WriteString("\n| mode | services | listeners each | listeners counted from /proc | start s | RSS MB | CPU % of one core | fds | `status` ms |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range g.Rest {
		if r.Error != "" {
			fmt.Fprintf(&b, "| %s | %d | %d | failed: %s |\n", r.Mode, r.Services, r.Listeners, strings.ReplaceAll(r.Error, "|", "\\|"))
			continue
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %.1f | %.1f | %.2f | %d | %s |\n", r.Mode, r.Services, r.Listeners, r.Uncounted,
			r.StartS, r.RSSMB, r.CPUPct, r.FDs, spread(r.StatusMS))
	}
	return b.String()
}

func ints(xs []int) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(x)
	}
	return out
}
