package main

import (
	"slices"
	"strings"
	"testing"
)

func TestResolveSizes(t *testing.T) {
	sizes, err := intList("0,1000,max")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		limit uint64
		cap   int
		want  []int
	}{
		{20000, 50000, []int{0, 1000, 19000}},
		{1 << 20, 50000, []int{0, 1000, 50000}},
		{1500, 50000, []int{0, 1000, 500}},
		{1000, 50000, []int{0, 1000}}, // no room left: max drops out
	} {
		if got := resolveSizes(sizes, tc.limit, tc.cap); !slices.Equal(got, tc.want) {
			t.Errorf("resolveSizes(%v, %d, %d) = %v, want %v", sizes, tc.limit, tc.cap, got, tc.want)
		}
	}
}

// TestGrowthMarkdownGoals renders each figure beside its goal.
func TestGrowthMarkdownGoals(t *testing.T) {
	g := &growth{FDLimit: 20000,
		Conns: []growthConns{
			{Mode: "ebpf", Conns: 0, Held: []int{0}, ActiveMS: []float64{20}, FirstConnMS: []float64{1}, CPUMS: []float64{5}},
			{Mode: "ebpf", Conns: 19000, Held: []int{19000}, ActiveMS: []float64{21}, FirstConnMS: []float64{1.05}, CPUMS: []float64{9}},
		},
		Fleet: []growthFleet{{Mode: "fdpass", Services: 50, Listeners: 4, Conns: 10000, Held: 10000, StatusMS: []float64{30}, ScrapeMS: []float64{12}}},
		Rest:  []growthRest{{Mode: "ebpf", Services: 50, Listeners: 4, CPUPct: 0.05}},
	}
	md := growthMarkdown(g)
	for _, want := range []string{
		"| ebpf | start → active | 20 (0 held) | 21 (19000 held) | +5 % | (met) |",
		"| ebpf | handoffd CPU per swap | 5 (0 held) | 9 (19000 held) | +80 % | (missed) |",
		"| fdpass | 50 × 4 | 10000 | 30 / 30 (missed) | 12 / 12 (met) |",
		"| 0.050 (met) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("growth tables lack %q:\n%s", want, md)
		}
	}
}
