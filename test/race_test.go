package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// raceBuild says whether TestMain builds handoffd, handoffctl and the demo
// with the race detector: HANDOFF_RACE=1 (make e2e-race).
var raceBuild = os.Getenv("HANDOFF_RACE") == "1"

// raceDir is where every race-built process of the tests writes its race
// reports (GORACE log_path), one file per process; "" unless raceBuild.
var raceDir string

// raceEnv is the GORACE setting of every process the tests start, those
// that get no environment from the test's (generations, outsiders) too.
func raceEnv() []string {
	if raceDir == "" {
		return nil
	}
	return []string{"GORACE=log_path=" + filepath.Join(raceDir, "report")}
}

// setupRace makes raceDir, writable by the unprivileged users generations
// run as, and passes GORACE on to handoffd and handoffctl.
func setupRace() error {
	if !raceBuild {
		return nil
	}
	dir, err := os.MkdirTemp("", "handoffd-e2e-race-")
	if err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o1777); err != nil {
		return err
	}
	raceDir = dir
	return os.Setenv("GORACE", strings.TrimPrefix(raceEnv()[0], "GORACE="))
}

var (
	racesMu       sync.Mutex
	racesReported = map[string]bool{}
)

// newRaces returns the race reports written since the last call, by file.
func newRaces() map[string]string {
	if raceDir == "" {
		return nil
	}
	racesMu.Lock()
	defer racesMu.Unlock()
	ents, _ := os.ReadDir(raceDir)
	found := map[string]string{}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(raceDir, e.Name()))
		if err != nil || len(data) == 0 || racesReported[e.Name()] {
			continue
		}
		racesReported[e.Name()] = true
		found[e.Name()] = string(data)
	}
	return found
}

// checkRaces fails t for every race report written since the last check:
// any data race in handoffd, the demo or handoffctl is a bug.
func checkRaces(t *testing.T) {
	t.Helper()
	for name, report := range newRaces() {
		t.Errorf("race detector report %s (the suffix is the pid):\n%s", name, report)
	}
}

// finishRaces prints the reports that no test claimed (written after its
// daemon stopped) and removes raceDir. It says whether there were any.
func finishRaces() bool {
	left := newRaces()
	for name, report := range left {
		fmt.Fprintf(os.Stderr, "race detector report %s (the suffix is the pid):\n%s\n", name, report)
	}
	if raceDir != "" {
		os.RemoveAll(raceDir)
	}
	return len(left) > 0
}
