package main

import (
	"math"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	took := make([]uint32, 100)
	for i := range took {
		took[i] = uint32(100-i) * 1000 // 100 ms down to 1 ms
	}
	got := summarize(took)
	want := latency{Requests: 100, P50: 50, P99: 99, Max: 100}
	if got != want {
		t.Errorf("summarize = %+v, want %+v", got, want)
	}
	if got := summarize(nil); got != (latency{}) {
		t.Errorf("summarize(nil) = %+v, want zero", got)
	}
}

func TestSplitLatency(t *testing.T) {
	at := func(s float64, tookMS uint32) timing { return timing{At: uint32(s * 1e6), Took: tookMS * 1000} }
	ts := []timing{
		at(0.2, 9),  // warm-up: neither window
		at(0.6, 1),  // steady
		at(2.4, 2),  // steady
		at(2.5, 30), // the first swap's second
		at(3.4, 40), // still within 1 s of the first swap
		at(3.6, 3),  // more than 1 s after it, before the second
		at(5.0, 50), // the second swap's second
	}
	got := splitLatency(ts, 500*time.Millisecond, 2500*time.Millisecond, []float64{2.5, 4.5})
	if got.Steady.Requests != 2 || got.Steady.Max != 2 {
		t.Errorf("steady = %+v, want the 2 requests of [0.5 s, 2.5 s)", got.Steady)
	}
	if got.AfterSwap.Requests != 3 || got.AfterSwap.P50 != 40 || got.AfterSwap.Max != 50 {
		t.Errorf("after swap = %+v, want the 3 requests within 1 s of a swap", got.AfterSwap)
	}
}

func TestMeanCI(t *testing.T) {
	mean, half := meanCI([]float64{0.97, 0.98, 0.99})
	// sd 0.01, n 3: t(2) = 4.303, so ± 4.303 × 0.01 / √3 = 2.48 points.
	if math.Abs(mean-0.98) > 1e-9 || math.Abs(half-2.484) > 0.001 {
		t.Errorf("meanCI = %v ± %v, want 0.98 ± 2.484", mean, half)
	}
	if _, half := meanCI([]float64{1}); !math.IsInf(half, 1) {
		t.Errorf("meanCI of one round = ± %v, want +Inf", half)
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}
