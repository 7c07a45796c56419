package supervisor

import "time"

// Status is what `handoffctl status --json` prints.
type Status struct {
	Services []ServiceStatus `json:"services"`
}

// ServiceStatus is the state of one service.
type ServiceStatus struct {
	Name        string             `json:"name"`
	Mode        Mode               `json:"mode"`
	Swapping    bool               `json:"swapping"`
	Listeners   []ListenerStatus   `json:"listeners"`
	Generations []GenerationStatus `json:"generations"`
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
	// Connections is the number of connections the generation holds,
	// when a counter is configured.
	Connections *int64     `json:"connections,omitempty"`
	StartedAt   time.Time  `json:"started_at"`
	ReadyAt     *time.Time `json:"ready_at,omitempty"`
	ActiveAt    *time.Time `json:"active_at,omitempty"`
	DrainingAt  *time.Time `json:"draining_at,omitempty"`
	ExitedAt    *time.Time `json:"exited_at,omitempty"`
	AgeSeconds  float64    `json:"age_seconds"`
	// Exit says how the process ended, or why the generation failed.
	Exit string `json:"exit,omitempty"`
}

// ConnectionCounter counts the connections a generation holds.
type ConnectionCounter interface {
	Connections(service string, generation int) (int64, bool)
}

// Status returns the service's generations, oldest first.
func (s *Service) Status(counter ConnectionCounter) ServiceStatus {
	swapping := !s.swapMu.TryLock()
	if !swapping {
		s.swapMu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := ServiceStatus{Name: s.cfg.Name, Mode: serviceMode(s.cfg, s.mode), Swapping: swapping, Generations: []GenerationStatus{}}
	for _, l := range s.cfg.Listeners {
		st.Listeners = append(st.Listeners, ListenerStatus{Name: l.Name, Address: l.Address, Mode: laneMode(l, s.mode)})
	}
	now := time.Now()
	for _, g := range s.gens {
		gs := GenerationStatus{ID: g.ID, PID: g.pid, State: g.state, StartedAt: g.started,
			ReadyAt: stamp(g.ready), ActiveAt: stamp(g.active), DrainingAt: stamp(g.draining),
			ExitedAt: stamp(g.exited), Exit: g.exit}
		end := now
		if !g.exited.IsZero() {
			end = g.exited
		}
		gs.AgeSeconds = end.Sub(g.started).Seconds()
		if counter != nil && g.state.Live() {
			if n, ok := counter.Connections(s.cfg.Name, g.ID); ok {
				gs.Connections = &n
			}
		}
		st.Generations = append(st.Generations, gs)
	}
	return st
}

func stamp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
