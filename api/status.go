package api

import "time"

// Mode says how a service's listeners move from one generation to the next.
type Mode string

const (
	// ModeAuto picks ModeEBPF when the kernel allows it, else ModeFDPass.
	ModeAuto Mode = "auto"
	// ModeEBPF gives each generation its own SO_REUSEPORT socket and steers
	// new connections with an SK_REUSEPORT program.
	ModeEBPF Mode = "ebpf"
	// ModeFDPass shares one listening socket per listener between generations.
	ModeFDPass Mode = "fdpass"
)

// Where a generation's connection count comes from
// (GenerationStatus.ConnectionsSource).
const (
	SourceEBPF = "ebpf" // the kernel, by a task_file iterator over the generation's processes
	SourceProc = "proc" // the generation's fds matched with the kernel's socket table
)

// Status is what GET /v1/status answers and `handoffctl status --json`
// prints.
type Status struct {
	Services []ServiceStatus `json:"services"`
}

// ServiceState is where a service is, as a whole:
//
//	starting ──a generation active──► running ──its active generation exits──► starting
//	    └──a start fails──► failed ──a start (retry, swap, reload) succeeds──► running
//
// and stopped once `handoffctl stop SERVICE` stopped it. In JSON it is
// its name ("running").
type ServiceState string

// The states of a service.
const (
	// ServiceStarting: no generation serves yet, and none failed to
	// start since: the first start, or the replacement of an active
	// generation that exited, is under way.
	ServiceStarting ServiceState = "starting"
	// ServiceRunning: the active generation runs and receives the new
	// connections.
	ServiceRunning ServiceState = "running"
	// ServiceFailed: no generation serves, and starting one failed (or
	// the service could not be re-adopted); handoffd retries with
	// backoff, and ServiceStatus.Failure says why and when.
	ServiceFailed ServiceState = "failed"
	// ServiceStopped: the service was stopped.
	ServiceStopped ServiceState = "stopped"
)

// ServiceFailure says why a service is failed.
type ServiceFailure struct {
	// Reason is the error of the last start that failed.
	Reason string `json:"reason"`
	// Since is when the service became failed.
	Since time.Time `json:"since"`
	// Attempts counts the starts that failed since it last served.
	Attempts int `json:"attempts"`
	// NextRetry is when handoffd starts a generation again (a swap by
	// hand, or a reload that changes the service, tries at once).
	NextRetry *time.Time `json:"next_retry,omitempty"`
}

// ServiceStatus is the state of one service.
type ServiceStatus struct {
	Name string `json:"name"`
	Mode Mode   `json:"mode"`
	// State is the service's own state; Failure is set while it is
	// ServiceFailed.
	State     ServiceState     `json:"state"`
	Failure   *ServiceFailure  `json:"failure,omitempty"`
	Swapping  bool             `json:"swapping"`
	Listeners []ListenerStatus `json:"listeners"`
	// MigratedRequests counts requests the kernel moved from a closing
	// listener's queue to the active one (ebpf mode).
	MigratedRequests uint64             `json:"migrated_requests"`
	Generations      []GenerationStatus `json:"generations"`
	// FDStore counts the fds in the service's fd store by FDNAME
	// (empty when nothing is stored).
	FDStore map[string]int `json:"fd_store"`
}

// ListenerStatus is one listener of a service and how it is handed over.
type ListenerStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Mode    Mode   `json:"mode"`
}

// GenerationStatus is the state of one generation.
type GenerationStatus struct {
	ID    int   `json:"id"`
	PID   int   `json:"pid"`
	State State `json:"state"`
	// Connections is the number of connections the generation holds
	// (live generations only), counted as ConnectionsSource says.
	Connections       *int64 `json:"connections,omitempty"`
	ConnectionsSource string `json:"connections_source,omitempty"`
	// Listeners details the generation's listeners (live generations).
	Listeners  []GenerationListenerStatus `json:"listeners,omitempty"`
	StartedAt  time.Time                  `json:"started_at"`
	ReadyAt    *time.Time                 `json:"ready_at,omitempty"`
	ActiveAt   *time.Time                 `json:"active_at,omitempty"`
	DrainingAt *time.Time                 `json:"draining_at,omitempty"`
	ExitedAt   *time.Time                 `json:"exited_at,omitempty"`
	// DrainDeadline is when drain_timeout ends a draining generation.
	DrainDeadline *time.Time `json:"drain_deadline,omitempty"`
	AgeSeconds    float64    `json:"age_seconds"`
	// KilledConnections is how many connections the generation still held
	// when drain_timeout ended it with SIGKILL.
	KilledConnections *int64 `json:"killed_connections,omitempty"`
	// Exit says how the process ended, or why the generation failed.
	Exit string `json:"exit,omitempty"`
	// Weight is the share of new connections, from 0 to 1, that steering
	// sends to the generation (live generations only): 1 for the active
	// one without a canary, P and 1-P for a canary and the active one.
	Weight *float64 `json:"weight,omitempty"`
	// Sticky says that the canary split goes by client address.
	Sticky bool `json:"sticky,omitempty"`
}

// GenerationListenerStatus is what one listener of a generation did.
// Fields not counted in this mode are absent.
type GenerationListenerStatus struct {
	Name string `json:"name"`
	// Protocol is "quic" on a QUIC listener, whose Connections are what
	// the generation reports (handoff/handoffquic); empty on a TCP one.
	Protocol string `json:"protocol,omitempty"`
	// Connections is what the generation holds on the listener,
	// accepted or queued (the generation's Connections, split).
	Connections *int64 `json:"connections,omitempty"`
	// Accepted counts the connection requests steering handed to the
	// listener: Steered, and those migrated to it from a closing
	// listener (ebpf mode).
	Accepted *uint64 `json:"accepted,omitempty"`
	// Steered counts the new connections steering sent to the listener
	// (ebpf mode).
	Steered     *uint64 `json:"steered,omitempty"`
	AcceptQueue *uint32 `json:"accept_queue,omitempty"`
}
