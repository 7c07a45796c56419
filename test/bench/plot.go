package main

import (
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	newConnColor   = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	keepAliveColor = color.RGBA{R: 44, G: 160, B: 44, A: 255}
	failNewColor   = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	failKeepColor  = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	swapColor      = color.Gray{Y: 110}
)

// plotResults draws one line of panels per strategy: requests/s over time
// on the left, failed requests per second on the right, both client modes
// in each, swaps marked as triangles on the time axis.
func plotResults(res *results, pngPath string) error {
	var names []string
	byName := map[string][]row{}
	for _, r := range res.Rows {
		if r.Unavailable != "" {
			continue
		}
		if byName[r.Strategy] == nil {
			names = append(names, r.Strategy)
		}
		byName[r.Strategy] = append(byName[r.Strategy], r)
	}
	if len(names) == 0 {
		return nil
	}
	grid := make([][]*plot.Plot, len(names))
	for i, name := range names {
		rps, fails := plot.New(), plot.New()
		rps.Title.Text = name + ": requests/s"
		fails.Title.Text = name + ": failed requests/s"
		for _, p := range []*plot.Plot{rps, fails} {
			p.X.Label.Text = "s"
			p.Y.Min = 0
			p.Legend.Top = true
		}
		var maxRPS, maxFail float64
		for _, r := range byName[name] {
			okC, failC := newConnColor, failNewColor
			if r.Mode == "keep-alive" {
				okC, failC = keepAliveColor, failKeepColor
			}
			okXY, m := series(r.OKBins, r.BinMS)
			maxRPS = max(maxRPS, m)
			failXY, mf := series(r.FailBins, r.BinMS)
			maxFail = max(maxFail, mf)
			if err := addLine(rps, okXY, okC, r.Mode); err != nil {
				return err
			}
			if err := addLine(fails, failXY, failC, r.Mode); err != nil {
				return err
			}
		}
		rps.Y.Max = maxRPS * 1.1
		fails.Y.Max = max(maxFail*1.1, 10)
		if err := markSwaps(rps, byName[name][0].SwapAt); err != nil {
			return err
		}
		if err := markSwaps(fails, byName[name][0].SwapAt); err != nil {
			return err
		}
		grid[i] = []*plot.Plot{rps, fails}
	}
	return writeGrid(grid, 16*vg.Inch, vg.Length(len(names))*2.6*vg.Inch, vg.Inch/4, pngPath)
}

// writeGrid draws grid, rows of plots aligned on a width x height image
// with pad between them, into the PNG file path.
func writeGrid(grid [][]*plot.Plot, width, height, pad vg.Length, path string) error {
	img := vgimg.New(width, height)
	tiles := draw.Tiles{Rows: len(grid), Cols: len(grid[0]), PadX: pad, PadY: pad,
		PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align(grid, tiles, draw.New(img))
	for i := range grid {
		for j := range grid[i] {
			grid[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// series turns counts per bin into a per-second rate over time.
func series(bins []int, binMS int) (plotter.XYs, float64) {
	xy := make(plotter.XYs, len(bins))
	var m float64
	for i, n := range bins {
		xy[i].X = float64(i*binMS) / 1000
		xy[i].Y = float64(n) * 1000 / float64(binMS)
		m = max(m, xy[i].Y)
	}
	return xy, m
}

func addLine(p *plot.Plot, xy plotter.XYs, c color.Color, name string) error {
	l, err := plotter.NewLine(xy)
	if err != nil {
		return err
	}
	l.Color = c
	l.Width = vg.Points(1)
	p.Add(l)
	p.Legend.Add(name, l)
	return nil
}

func markSwaps(p *plot.Plot, at []float64) error {
	if len(at) == 0 {
		return nil
	}
	xy := make(plotter.XYs, len(at))
	for i, t := range at {
		xy[i].X, xy[i].Y = t, 0
	}
	s, err := plotter.NewScatter(xy)
	if err != nil {
		return err
	}
	s.GlyphStyle.Shape = draw.TriangleGlyph{}
	s.GlyphStyle.Color = swapColor
	s.GlyphStyle.Radius = vg.Points(3)
	p.Add(s)
	p.Legend.Add("swap", s)
	return nil
}
