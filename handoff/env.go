package handoff

import (
	"os"
	"strconv"
	"sync/atomic"
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
