package handoff

import (
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// Read at init, before Listen or anything else can change the environment.
var service = os.Getenv("HANDOFF_SERVICE")

// generation is HANDOFF_GENERATION, or the generation a join was given.
var generation atomic.Int64

func init() { generation.Store(int64(parseGeneration(os.Getenv("HANDOFF_GENERATION")))) }

// Generation returns the number of the generation this process runs as
// (HANDOFF_GENERATION, or the one handoffd gave it when it joined from
// outside: see Listen), or 0 when the process runs without handoffd.
func Generation() int { return int(generation.Load()) }

// Service returns the name of the service this process belongs to
// (HANDOFF_SERVICE), or "" when the process runs without handoffd.
func Service() string { return service }

func parseGeneration(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// DrainTimeout returns how long handoffd lets this generation drain after
// its stop signal before it kills it (the service's drain_timeout less
// its stop_delay, as they were when the generation started:
// HANDOFF_DRAIN_TIMEOUT_MS), and false when handoffd did not say (the
// process runs without handoffd, or joined from outside). A drain that
// keeps within it ends by itself, not by SIGKILL.
func DrainTimeout() (time.Duration, bool) {
	d := parseMillis(os.Getenv("HANDOFF_DRAIN_TIMEOUT_MS"))
	return d, d > 0
}

func parseMillis(s string) time.Duration {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0
	}
	return time.Duration(n) * time.Millisecond
}
