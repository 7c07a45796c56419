package supervisor

import (
	"os"
	"time"
)

// Status is what `handoffctl status --json` prints.
type Status struct {
	Services []ServiceStatus `json:"services"`
}

// ServiceStatus is the state of one service.
type ServiceStatus struct {
	Name      string           `json:"name"`
	Mode      Mode             `json:"mode"`
	Swapping  bool             `json:"swapping"`
	Listeners []ListenerStatus `json:"listeners"`
	// MigratedRequests counts requests the kernel moved from a closing
	// listener's queue to the active one (ebpf mode).
	MigratedRequests uint64             `json:"migrated_requests"`
	Generations      []GenerationStatus `json:"generations"`
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
}

// GenerationListenerStatus is what one listener of a generation did.
// Fields the kernel probes do not count in this mode are absent.
type GenerationListenerStatus struct {
	Name        string  `json:"name"`
	Connections *int64  `json:"connections,omitempty"`
	Accepted    *uint64 `json:"accepted,omitempty"`
	Steered     *uint64 `json:"steered,omitempty"`
	AcceptQueue *uint32 `json:"accept_queue,omitempty"`
}

// genSnapshot is a generation as read under the service's lock.
type genSnapshot struct {
	g     Generation
	files []*os.File
}

// Status returns the service's generations, oldest first. The counting
// (kernel maps, socket options, /proc) happens outside the service's lock,
// so a status never holds up a swap.
func (s *Service) Status() ServiceStatus {
	swapping := s.swapping.Load()
	s.mu.Lock()
	cfg := s.cfg
	snaps := make([]genSnapshot, len(s.gens))
	for i, g := range s.gens {
		snaps[i] = genSnapshot{g: *g, files: append([]*os.File(nil), g.files...)}
	}
	s.mu.Unlock()

	st := ServiceStatus{Name: cfg.Name, Mode: serviceMode(cfg, s.mode), Swapping: swapping,
		MigratedRequests: s.router.migrated(), Generations: []GenerationStatus{}}
	for _, l := range cfg.Listeners {
		st.Listeners = append(st.Listeners, ListenerStatus{Name: l.Name, Address: l.Address, Mode: laneMode(l, s.mode)})
	}
	var proc *procCounter
	now := time.Now()
	for _, sn := range snaps {
		g := &sn.g
		gs := GenerationStatus{ID: g.ID, PID: g.pid, State: g.state, StartedAt: g.started,
			ReadyAt: stamp(g.ready), ActiveAt: stamp(g.active), DrainingAt: stamp(g.draining),
			ExitedAt: stamp(g.exited), Exit: g.exit, KilledConnections: g.killedConns}
		if g.state == StateDraining {
			gs.DrainDeadline = stamp(g.draining.Add(cfg.DrainTimeout.Std()))
		}
		end := now
		if !g.exited.IsZero() {
			end = g.exited
		}
		gs.AgeSeconds = end.Sub(g.started).Seconds()
		if g.state.Live() && g.pid != 0 {
			s.count(cfg, &gs, sn.files, &proc)
		}
		st.Generations = append(st.Generations, gs)
	}
	return st
}

// count fills in the connections of a live generation: from the kernel
// probes when every listener is counted there, else from /proc. Callers
// do not hold s.mu; cfg is the service's config as they read it.
func (s *Service) count(cfg *ServiceConfig, gs *GenerationStatus, files []*os.File, proc **procCounter) {
	var total int64
	kernel := true
	for i, l := range cfg.Listeners {
		ls := GenerationListenerStatus{Name: l.Name}
		if st, ok := s.router.stats(gs.ID, i); ok {
			ls.Connections, ls.Accepted, ls.Steered = &st.Held, &st.Accepted, &st.Selected
			total += st.Held
		} else {
			kernel = false
		}
		if i < len(files) {
			if q, ok := acceptQueue(files[i]); ok {
				ls.AcceptQueue = &q
			}
		}
		gs.Listeners = append(gs.Listeners, ls)
	}
	if kernel {
		gs.Connections, gs.ConnectionsSource = &total, SourceEBPF
		return
	}
	if *proc == nil {
		pc, err := newProcCounter(tcpPorts(cfg))
		if err != nil {
			s.log.Warn("count connections", "err", err)
			return
		}
		*proc = pc
	}
	if n, err := (*proc).held(gs.PID); err == nil {
		gs.Connections, gs.ConnectionsSource = &n, SourceProc
	}
}

func stamp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
