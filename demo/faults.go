package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// health is what GET /healthz says; the unhealthy fault turns it to 503.
type health struct {
	failing atomic.Bool
}

// ok reports whether the health check passes.
func (h *health) ok() bool { return !h.failing.Load() }

// fault is a failure the demo plays on purpose, so that handoffd's
// handling of bad generations can be tried (and is, by the end-to-end
// tests): --fault KIND@GEN[:DELAY][,KIND@GEN...], where GEN is a
// generation number or *; the first entry naming this generation applies.
//
//	exit@3         generation 3 exits with status 3 before it is ready
//	hang@3         generation 3 never says it is ready
//	crash@3:500ms  generation 3 dies (status 2) 500 ms after it is ready
//	ignore-term@*  every generation ignores SIGTERM (drain_timeout ends it)
//	unhealthy@3:2s generation 3's GET /healthz answers 503 from 2 s after
//	               it is ready on (at once without a delay)
//	oom@3:1s       generation 3 allocates memory from 1 s after it is ready
//	               until the kernel's OOM killer ends it: run it under a
//	               memory limit (systemd's MemoryMax=); at oomCap it gives
//	               up and exits with status 3
type fault struct {
	kind  string
	delay time.Duration
}

// parseFault returns the fault for generation gen, if spec names it.
func parseFault(spec string, gen int) (fault, error) {
	if spec == "" {
		return fault{}, nil
	}
	var found fault
	for _, one := range strings.Split(spec, ",") {
		f, err := parseOneFault(one, gen)
		if err != nil {
			return fault{}, err
		}
		if found.kind == "" {
			found = f
		}
	}
	return found, nil
}

func parseOneFault(spec string, gen int) (fault, error) {
	kind, rest, ok := strings.Cut(spec, "@")
	target, delay, _ := strings.Cut(rest, ":")
	f := fault{kind: kind}
	switch kind {
	case "exit", "hang", "crash", "ignore-term", "unhealthy", "oom":
	default:
		ok = false
	}
	if delay != "" {
		d, err := time.ParseDuration(delay)
		if err != nil {
			ok = false
		}
		f.delay = d
	}
	if !ok {
		return fault{}, fmt.Errorf("--fault %q: write KIND@GEN[:DELAY], KIND one of exit, hang, crash, ignore-term, unhealthy, oom", spec)
	}
	if target != "*" && target != strconv.Itoa(gen) {
		return fault{}, nil
	}
	return f, nil
}

// beforeReady plays the faults that keep a generation from being ready.
func (f fault) beforeReady() {
	switch f.kind {
	case "exit":
		fmt.Fprintln(os.Stderr, "demo: failing before ready on purpose (--fault exit)")
		os.Exit(3)
	case "hang":
		fmt.Fprintln(os.Stderr, "demo: never saying ready, on purpose (--fault hang)")
		select {}
	}
}

// afterReady plays the faults of a generation that is serving.
func (f fault) afterReady(h *health) {
	switch f.kind {
	case "unhealthy":
		time.AfterFunc(f.delay, func() {
			fmt.Fprintln(os.Stderr, "demo: failing health checks on purpose (--fault unhealthy)")
			h.failing.Store(true)
		})
	case "crash":
		time.AfterFunc(f.delay, func() {
			fmt.Fprintln(os.Stderr, "demo: crashing on purpose (--fault crash)")
			os.Exit(2)
		})
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
	case "oom":
		time.AfterFunc(f.delay, func() {
			fmt.Fprintln(os.Stderr, "demo: allocating memory until the OOM killer ends this process, on purpose (--fault oom)")
			allocateUntilKilled()
		})
	}
}

// oomCap bounds what the oom fault allocates, for a run without a memory
// limit.
const oomCap = 4 << 30

// oomHeld keeps the oom fault's memory reachable, so that the collector
// frees none of it.
var oomHeld [][]byte

// allocateUntilKilled allocates and touches memory 1 MiB at a time, up to
// oomCap.
func allocateUntilKilled() {
	const chunk = 1 << 20
	for len(oomHeld)*chunk < oomCap {
		b := make([]byte, chunk)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		oomHeld = append(oomHeld, b)
	}
	fmt.Fprintf(os.Stderr, "demo: allocated %d MiB and was not killed (--fault oom): exiting\n", oomCap>>20)
	os.Exit(3)
}
