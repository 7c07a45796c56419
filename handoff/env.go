package handoff

import (
	"os"
	"strconv"
)

// Read at init, before Listen or anything else can change the environment.
var (
	generation = parseGeneration(os.Getenv("HANDOFF_GENERATION"))
	service    = os.Getenv("HANDOFF_SERVICE")
)

// Generation returns the number of the generation this process runs as
// (HANDOFF_GENERATION), or 0 when the process runs without handoffd.
func Generation() int { return generation }

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
