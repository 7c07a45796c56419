package main

import (
	"slices"
	"sort"
	"time"
)

// steadyFor is how long the clients run after the warm-up and before the
// first swap: the window whose latency is the row's steady state (-steady).
var steadyFor = 2 * time.Second

// afterSwap is the window after the start of each swap whose requests make
// the "after a swap" latency.
const afterSwap = time.Second

// latency sums up the timings of the successful requests of one window,
// in ms, as the clients measured them.
type latency struct {
	Requests int     `json:"requests"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
	Max      float64 `json:"max_ms"`
}

// latencies are a row's latency in steady state and after its swaps.
type latencies struct {
	// Steady: requests begun between the end of the warm-up and the first
	// swap (the whole row after the warm-up when it has no swaps).
	SteadyS float64 `json:"steady_window_s"`
	Steady  latency `json:"steady"`
	// AfterSwap: requests begun within afterSwap of the start of a swap.
	AfterSwap latency `json:"after_swap"`
}

// splitLatency sorts timings into the steady window [from, to) and the
// windows after each swap (swapAt in seconds from the row's start).
func splitLatency(ts []timing, from, to time.Duration, swapAt []float64) latencies {
	var steady, swapping []uint32
	swaps := make([]uint32, len(swapAt))
	for i, s := range swapAt {
		swaps[i] = uint32(s * 1e6)
	}
	lo, hi := uint32(from/time.Microsecond), uint32(to/time.Microsecond)
	win := uint32(afterSwap / time.Microsecond)
	for _, t := range ts {
		if t.At >= lo && t.At < hi {
			steady = append(steady, t.Took)
		}
		// The last swap that began at or before the request.
		i := sort.Search(len(swaps), func(i int) bool { return swaps[i] > t.At }) - 1
		if i >= 0 && t.At-swaps[i] < win {
			swapping = append(swapping, t.Took)
		}
	}
	return latencies{Steady: summarize(steady), AfterSwap: summarize(swapping)}
}

// summarize gives the nearest-rank p50 and p99 and the max of took (µs) in ms.
func summarize(took []uint32) latency {
	n := len(took)
	if n == 0 {
		return latency{}
	}
	slices.Sort(took)
	rank := func(p float64) float64 {
		i := int(p*float64(n)+0.999999) - 1
		return float64(took[min(max(i, 0), n-1)]) / 1000
	}
	return latency{Requests: n, P50: rank(0.50), P99: rank(0.99), Max: float64(took[n-1]) / 1000}
}
