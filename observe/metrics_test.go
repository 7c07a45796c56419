package observe

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/handoffd/handoffd/api"
)

type fakeSource api.Status

func (f fakeSource) Status(string) (api.Status, error) { return api.Status(f), nil }

func ptr[T any](v T) *T { return &v }

func testStatus() fakeSource {
	return fakeSource{Services: []api.ServiceStatus{{
		Name: "web", Mode: api.ModeEBPF, State: api.ServiceFailed,
		Failure:     &api.ServiceFailure{Reason: "generation 2: exited before it was ready: exit status 3", Attempts: 2},
		Generations: []api.GenerationStatus{{ID: 2, PID: 201, State: api.StateFailed}},
	}, {
		Name: "demo", Mode: api.ModeEBPF, State: api.ServiceRunning, MigratedRequests: 5, FDStore: map[string]int{"cache": 2, "stored": 1},
		Listeners: []api.ListenerStatus{{Name: "http", Address: "tcp://127.0.0.1:8080", Mode: api.ModeEBPF},
			{Name: "h3", Address: "udp://127.0.0.1:8080", Mode: api.ModeEBPF}, {Name: "admin", Address: "unix:///run/demo.sock", Mode: api.ModeFDPass}},
		Generations: []api.GenerationStatus{
			{ID: 1, PID: 100, State: api.StateExited},
			{ID: 2, PID: 200, State: api.StateDraining, Connections: ptr(int64(40)), ConnectionsSource: "ebpf", Weight: ptr(0.0),
				Listeners: []api.GenerationListenerStatus{{Name: "http", Connections: ptr(int64(40)), Accepted: ptr(uint64(90)), Steered: ptr(uint64(95))}}},
			{ID: 3, PID: 300, State: api.StateActive, Connections: ptr(int64(0)), ConnectionsSource: "proc", Weight: ptr(0.75),
				Listeners: []api.GenerationListenerStatus{{Name: "http", Connections: ptr(int64(0)), Accepted: ptr(uint64(0)), Steered: ptr(uint64(2)), AcceptQueue: ptr(uint32(2))},
					{Name: "h3", Protocol: "quic", Connections: ptr(int64(7))}}},
			{ID: 4, PID: 400, State: api.StateCanary, Weight: ptr(0.25)},
		},
	}}}
}

func TestCollector(t *testing.T) {
	c := NewCollector(testStatus(), api.ModeEBPF, slog.New(slog.NewTextHandler(io.Discard, nil)))
	want := `
# HELP handoff_connections_active TCP connections a generation holds (ESTABLISHED or CLOSE_WAIT, accepted or queued), counted at scrape time; source=ebpf when the kernel counted its processes' sockets (a task_file iterator), proc when sock_diag and the processes' fds did.
# TYPE handoff_connections_active gauge
handoff_connections_active{generation="2",service="demo",source="ebpf"} 40
handoff_connections_active{generation="3",service="demo",source="proc"} 0
# HELP handoff_generation_info A live generation of a service: its pid and lifecycle state (starting, ready, active, canary, standby, draining). Always 1.
# TYPE handoff_generation_info gauge
handoff_generation_info{generation="2",pid="200",service="demo",state="draining"} 1
handoff_generation_info{generation="3",pid="300",service="demo",state="active"} 1
handoff_generation_info{generation="4",pid="400",service="demo",state="canary"} 1
# HELP handoff_generation_weight Share of new connections, from 0 to 1, that steering sends to a live generation: 1 for the active one, P and 1-P for a canary and the active one, 0 for the others.
# TYPE handoff_generation_weight gauge
handoff_generation_weight{generation="2",service="demo"} 0
handoff_generation_weight{generation="3",service="demo"} 0.75
handoff_generation_weight{generation="4",service="demo"} 0.25
# HELP handoff_accept_queue_length Connections waiting in a listener's accept queue (TCP_INFO of the listening socket).
# TYPE handoff_accept_queue_length gauge
handoff_accept_queue_length{generation="3",listener="http",service="demo"} 2
# HELP handoff_steered_connections_total New connections the SK_REUSEPORT program sent to a generation's listeners.
# TYPE handoff_steered_connections_total counter
handoff_steered_connections_total{generation="2",service="demo"} 95
handoff_steered_connections_total{generation="3",service="demo"} 2
# HELP handoff_quic_connections QUIC connections a generation holds on a QUIC listener, as the generation reports them (handoff/handoffquic, on NOTIFY_SOCKET).
# TYPE handoff_quic_connections gauge
handoff_quic_connections{generation="3",listener="h3",service="demo"} 7
# HELP handoff_listener_counting_info How the connections a live generation holds on a TCP listener are counted (the generation's connections_source): source=ebpf in the kernel, proc by matching the generation's fds with the kernel's socket table, none when they could not be counted; mode is the listener's own (ebpf: steered, fdpass: a shared socket). Always 1.
# TYPE handoff_listener_counting_info gauge
handoff_listener_counting_info{generation="2",listener="http",mode="ebpf",service="demo",source="ebpf"} 1
handoff_listener_counting_info{generation="3",listener="http",mode="ebpf",service="demo",source="proc"} 1
handoff_listener_counting_info{generation="4",listener="http",mode="ebpf",service="demo",source="none"} 1
# HELP handoff_migrated_requests_total Requests the kernel moved from a closing listener's SYN or accept queue to the active generation.
# TYPE handoff_migrated_requests_total counter
handoff_migrated_requests_total{service="demo"} 5
handoff_migrated_requests_total{service="web"} 0
`
	want += `
# HELP handoff_service_failed 1 while a service is failed: no generation of it serves, starting one failed (or it could not be re-adopted), and handoffd retries with backoff; the reason is in status and in handoffd's log. 0 otherwise.
# TYPE handoff_service_failed gauge
handoff_service_failed{service="demo"} 0
handoff_service_failed{service="web"} 1
`
	names := []string{"handoff_service_failed", "handoff_connections_active", "handoff_generation_info", "handoff_generation_weight", "handoff_accept_queue_length",
		"handoff_steered_connections_total", "handoff_migrated_requests_total", "handoff_quic_connections", "handoff_listener_counting_info"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "handoff_connections_accepted_total"); n != 2 {
		t.Fatalf("%d accepted series, want 2 (live generations only)", n)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

func TestSwapsAndHandler(t *testing.T) {
	s := NewSwaps()
	s.Known("demo")
	s.Known("other")
	s.SwapDone("demo", "ok")
	s.PhaseDone("demo", api.PhaseReadyToActive, 20*time.Microsecond)
	s.FDStoreRefused("demo", "full")
	s.StateHandoff("demo", "loaded")
	s.StateHandoff("demo", "loaded")
	s.StateFinal("demo", "dropped")
	s.GenerationCrashed("demo")
	h, err := Handler(slog.Default(), s, NewCollector(testStatus(), api.ModeEBPF, slog.Default()))
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`handoff_swaps_total{result="ok",service="demo"} 1`,
		`handoff_swaps_total{result="failed",service="demo"} 0`,
		`handoff_swap_phase_seconds_count{phase="ready_to_active",service="demo"} 1`,
		`handoff_mode{mode="ebpf"} 1`,
		`handoff_fd_store_refused_total{reason="full",service="demo"} 1`,
		`handoff_fd_store_refused_total{reason="off",service="demo"} 0`,
		`handoff_state_handoffs_total{result="loaded",service="demo"} 2`,
		`handoff_state_handoffs_total{result="timeout",service="demo"} 0`,
		`handoff_state_finals_total{result="dropped",service="demo"} 1`,
		`handoff_state_finals_total{result="relayed",service="demo"} 0`,
		`handoff_fd_store_fds{service="demo"} 3`,
		`handoff_generation_crashes_total{service="demo"} 1`,
		`handoff_generation_crashes_total{service="other"} 0`,
		"go_goroutines ",
		"process_open_fds ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}
