package main

import (
	"fmt"
	"image/color"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

var modeColors = map[string]color.Color{
	"ebpf":   color.RGBA{R: 31, G: 119, B: 180, A: 255},
	"fdpass": color.RGBA{R: 214, G: 39, B: 40, A: 255},
}

// plotGrowth draws the growth part: against idle connections, the swap's
// phases, handoffd's CPU per swap, and status and scrape times; against
// services, handoffd's RSS and CPU at rest. Points are medians.
func plotGrowth(g *growth, png string) error {
	swap, cpu, reads := plot.New(), plot.New(), plot.New()
	rss, restCPU, fds := plot.New(), plot.New(), plot.New()
	swap.Title.Text = "swap phases (legend); log scale"
	cpu.Title.Text = "handoffd CPU per swap"
	reads.Title.Text = "status (solid), /metrics scrape (dashed); fleet rows as points; goal (gray)"
	rss.Title.Text = "handoffd RSS at rest"
	restCPU.Title.Text = "handoffd CPU at rest; goal at 50 services (gray)"
	fds.Title.Text = "handoffd open fds at rest"
	for _, p := range []*plot.Plot{swap, cpu, reads} {
		p.X.Label.Text = "idle keep-alive connections"
		p.Y.Label.Text = "ms"
		p.Legend.Top, p.Legend.Left = true, true
	}
	for _, p := range []*plot.Plot{rss, restCPU, fds} {
		p.X.Label.Text = "services"
		p.Legend.Top, p.Legend.Left = true, true
	}
	rss.Y.Label.Text, restCPU.Y.Label.Text, fds.Y.Label.Text = "MB", "% of one core", "fds"
	byMode := map[string][]growthConns{}
	var modes []string
	for _, c := range g.Conns {
		if len(c.CPUMS) == 0 && len(c.StatusMS) == 0 {
			continue
		}
		if byMode[c.Mode] == nil {
			modes = append(modes, c.Mode)
		}
		byMode[c.Mode] = append(byMode[c.Mode], c)
	}
	for _, m := range modes {
		cs := byMode[m]
		col := modeColors[m]
		xy := func(f func(growthConns) []float64) plotter.XYs {
			var out plotter.XYs
			for _, c := range cs {
				if v := f(c); len(v) > 0 {
					out = append(out, plotter.XY{X: float64(c.Conns), Y: median(v)})
				}
			}
			return out
		}
		steps := []struct {
			p      *plot.Plot
			f      func(growthConns) []float64
			name   string
			dashed bool
		}{
			{swap, func(c growthConns) []float64 { return c.ActiveMS }, m + " active", true},
			{swap, func(c growthConns) []float64 { return c.FirstConnMS }, m + " first connection", true},
			{swap, func(c growthConns) []float64 { return c.OldExitedMS }, m + " old exited", false},
			{cpu, func(c growthConns) []float64 { return c.CPUMS }, m, false},
			{reads, func(c growthConns) []float64 { return c.StatusMS }, m + " status", false},
			{reads, func(c growthConns) []float64 { return c.ScrapeMS }, m + " scrape", true},
		}
		for _, s := range steps {
			if err := addPoints(s.p, xy(s.f), col, s.name, s.dashed); err != nil {
				return err
			}
		}
	}
	maxX := 0.0
	for _, c := range g.Conns {
		maxX = max(maxX, float64(c.Conns))
	}
	for _, f := range g.Fleet {
		maxX = max(maxX, float64(f.Held))
		if f.Error != "" {
			continue
		}
		name := fmt.Sprintf("%s %d×%d", f.Mode, f.Services, f.Listeners)
		for _, s := range []struct {
			v      []float64
			what   string
			dashed bool
		}{{f.StatusMS, " status", false}, {f.ScrapeMS, " scrape", true}} {
			if len(s.v) == 0 {
				continue
			}
			xy := plotter.XYs{{X: float64(f.Held), Y: median(s.v)}}
			if err := addPoints(reads, xy, modeColors[f.Mode], name+s.what, s.dashed); err != nil {
				return err
			}
		}
	}
	if err := addGoal(reads, goalReadMS, maxX); err != nil {
		return err
	}
	type restKey struct {
		mode      string
		listeners int
	}
	var perService []restKey
	for _, r := range g.Rest {
		k := restKey{r.Mode, r.Listeners}
		if r.Error == "" && !slices.Contains(perService, k) {
			perService = append(perService, k)
		}
	}
	maxServices := 0.0
	for _, r := range g.Rest {
		maxServices = max(maxServices, float64(r.Services))
	}
	if err := addGoal(restCPU, goalRestCPUPct, maxServices); err != nil {
		return err
	}
	shades := []color.Color{color.RGBA{R: 44, G: 160, B: 44, A: 255}, color.RGBA{R: 148, G: 103, B: 189, A: 255},
		color.RGBA{R: 255, G: 127, B: 14, A: 255}, color.Gray{Y: 80}}
	for i, k := range perService {
		var a, b, c plotter.XYs
		for _, r := range g.Rest {
			if r.Error == "" && r.Listeners == k.listeners && r.Mode == k.mode {
				a = append(a, plotter.XY{X: float64(r.Services), Y: r.RSSMB})
				b = append(b, plotter.XY{X: float64(r.Services), Y: r.CPUPct})
				c = append(c, plotter.XY{X: float64(r.Services), Y: float64(r.FDs)})
			}
		}
		name := fmt.Sprintf("%s, %d listener(s) per service", k.mode, k.listeners)
		col := shades[i%len(shades)]
		for _, s := range []struct {
			p  *plot.Plot
			xy plotter.XYs
		}{{rss, a}, {restCPU, b}, {fds, c}} {
			if err := addPoints(s.p, s.xy, col, name, k.mode == "fdpass"); err != nil {
				return err
			}
		}
	}
	for _, p := range []*plot.Plot{cpu, reads, rss, restCPU, fds} {
		p.Y.Min = 0
	}
	// Activation takes ms, the old generation's exit about a second.
	swap.Y.Scale, swap.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	swap.Y.Label.Text = "ms (log)"
	grid := [][]*plot.Plot{{swap, cpu, reads}, {rss, restCPU, fds}}
	return writeGrid(grid, 18*vg.Inch, 9*vg.Inch, vg.Inch/3, png)
}

// addGoal draws a goal as a gray horizontal line from 0 to maxX.
func addGoal(p *plot.Plot, y, maxX float64) error {
	if maxX <= 0 {
		maxX = 1
	}
	l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: y}, {X: maxX, Y: y}})
	if err != nil {
		return err
	}
	l.Color = color.Gray{Y: 150}
	l.Width = vg.Points(2)
	p.Add(l)
	p.Legend.Add(fmt.Sprintf("goal %g", y), l)
	return nil
}

// addPoints draws xy as a line with its points marked.
func addPoints(p *plot.Plot, xy plotter.XYs, c color.Color, name string, dashed bool) error {
	if len(xy) == 0 {
		return nil
	}
	l, s, err := plotter.NewLinePoints(xy)
	if err != nil {
		return err
	}
	l.Color, s.Color = c, c
	if dashed {
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	}
	p.Add(l, s)
	p.Legend.Add(name, l, s)
	return nil
}
