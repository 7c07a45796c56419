package test

import (
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// TestHealthOnAllAddresses runs a service with a health check on each
// form of listener address that names no single address: every IPv4
// address (tcp://:P, tcp4://:P), every IPv6 address (tcp6://[::]:P,
// tcp6://:P) and a host name (tcp://localhost:P). Under 32 clients that
// never retry, generation 1 starts and generation 2 replaces it, both
// checked before activation in ebpf mode; generation 3 turns unhealthy a
// second after it is active, and the checks that go on while it serves
// roll it back to generation 2 (probation); in ebpf mode a canary then
// starts, checked through its own socket, and is promoted. Not one
// request fails.
func TestHealthOnAllAddresses(t *testing.T) {
	for _, mode := range modes {
		for _, tc := range []struct{ name, listen string }{
			{"tcp-any", "tcp://:%d"},
			{"tcp4-any", "tcp4://:%d"},
			{"tcp6-brackets", "tcp6://[::]:%d"},
			{"tcp6-any", "tcp6://:%d"},
			{"host-name", "tcp://localhost:%d"},
		} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) { healthOnAllAddresses(t, mode, tc.listen) })
		}
	}
}

func healthOnAllAddresses(t *testing.T, mode, listen string) {
	d := startDaemon(t, daemonOptions{mode: mode, listen: listen, serviceYAML: healthYAML, probation: "30s",
		demoArgs: []string{"--fault", "unhealthy@3:1s"}})
	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)
	d.ctlOK("generation 2 active", "swap", "demo")
	time.Sleep(300 * time.Millisecond)
	d.ctlOK("generation 3 active", "swap", "demo")
	d.waitFor("generation 3 unhealthy, rolled back to 2", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		return stateOf(st, 2) == api.StateActive && stateOf(st, 3) == api.StateExited
	})
	if !strings.Contains(d.logText(), "active generation unhealthy during probation; rolling back") {
		t.Errorf("no log of the rollback of the unhealthy generation 3")
	}
	if mode == "ebpf" {
		d.ctlOK("generation 4 is a canary", "swap", "--canary", "50%", "demo")
		time.Sleep(500 * time.Millisecond)
		d.ctlOK("generation 4 active", "promote", "demo")
	}
	time.Sleep(300 * time.Millisecond)
	res := l.stop()
	t.Logf("%s on %s: %d ok, %d failed; per generation %v", mode, d.addr, res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d requests failed: %q", res.Failed, res.Failures)
	}
	last := 2
	if mode == "ebpf" {
		last = 4
	}
	for gen := 1; gen <= last; gen++ {
		if gen != 3 && res.ByGen[gen] == 0 {
			t.Errorf("generation %d answered nothing: %v", gen, res.ByGen)
		}
	}
	if st := d.status(); stateOf(st, last) != api.StateActive {
		t.Errorf("generation %d is not active at the end: %+v", last, st.Generations)
	}
}
