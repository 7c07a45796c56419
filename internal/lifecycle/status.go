package lifecycle

import (
	"os"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
)

// genSnapshot is a generation as read under the service's lock.
type genSnapshot struct {
	g Generation
	// queues are the accept queues of the generation's listeners (nil:
	// unknown), read under the lock: retire closes the files, and a
	// number read from a closed fd could be another socket's.
	queues []*uint32
	weight *float64
	// primary: the generation receives new connections.
	primary bool
}

// weightLocked is g's share of new connections, for live generations.
// Callers hold s.mu.
func (s *Service) weightLocked(g *Generation) *float64 {
	if !g.state.Live() {
		return nil
	}
	w := 0.0
	switch {
	case g == s.canary:
		w = s.split.Share
	case g == s.current && s.canary != nil:
		w = 1 - s.split.Share
	case g == s.current:
		w = 1
	}
	return &w
}

// Status returns the service's generations, oldest first, counted on
// their own. Supervisor.Status counts every service's in one pass.
func (s *Service) Status() api.ServiceStatus {
	st, counted := s.status()
	s.counter.Count(counted)
	fillCounts(&st, counted)
	return st
}

// status returns the service's status without the connections, and what
// to count for it: one Counted per live generation. Apart from the accept
// queues (one socket option per listener), nothing is counted under the
// service's lock, so a status never holds up a swap.
func (s *Service) status() (api.ServiceStatus, []*Counted) {
	swapping := s.swapping.Load()
	s.mu.Lock()
	cfg := s.cfg
	snaps := make([]genSnapshot, len(s.gens))
	for i, g := range s.gens {
		snaps[i] = genSnapshot{g: *g, queues: s.acceptQueues(g.files), weight: s.weightLocked(g),
			primary: g == s.current}
	}
	sticky := s.canary != nil && s.split.Sticky
	stored := s.storeStatus()
	state, failure := s.state(), s.failureStatus()
	s.mu.Unlock()

	st := api.ServiceStatus{Name: cfg.Name, Mode: serviceMode(cfg, s.mode), State: state, Failure: failure, Swapping: swapping,
		MigratedRequests: s.router.Migrated(), Generations: []api.GenerationStatus{}, FDStore: stored}
	for _, l := range cfg.Listeners {
		st.Listeners = append(st.Listeners, api.ListenerStatus{Name: l.Name, Address: l.Address, Mode: config.ListenerMode(l, s.mode)})
	}
	var counted []*Counted
	now := time.Now()
	for _, sn := range snaps {
		g := &sn.g
		gs := api.GenerationStatus{ID: g.ID, PID: g.pid, State: g.state, StartedAt: g.started,
			ReadyAt: stamp(g.ready), ActiveAt: stamp(g.active), DrainingAt: stamp(g.draining),
			ExitedAt: stamp(g.exited), Exit: g.exit, KilledConnections: g.killedConns, Weight: sn.weight}
		if g.state == api.StateCanary {
			gs.Sticky = sticky
		}
		if g.state == api.StateDraining {
			gs.DrainDeadline = stamp(g.draining.Add(cfg.DrainTimeout.Std()))
		}
		end := now
		if !g.exited.IsZero() {
			end = g.exited
		}
		gs.AgeSeconds = end.Sub(g.started).Seconds()
		if g.state.Live() && g.pid != 0 {
			s.steered(cfg, &gs, sn.queues, g.proc)
			counted = append(counted, &Counted{Service: cfg, Mode: s.mode, ID: g.ID, PID: g.pid,
				Primary: sn.primary, index: len(st.Generations)})
		}
		st.Generations = append(st.Generations, gs)
	}
	return st, counted
}

// steered fills in, per listener of a live generation, its accept queue
// and what the steering program counted; on a QUIC listener, whose
// connections have no socket to count, the connections the process
// reports (ConnectionReporter). Callers do not hold s.mu; cfg is the
// service's config as they read it.
func (s *Service) steered(cfg *config.ServiceConfig, gs *api.GenerationStatus, queues []*uint32, proc Process) {
	for i, l := range cfg.Listeners {
		ls := api.GenerationListenerStatus{Name: l.Name}
		if l.QUIC() {
			// No socket per connection: what the generation reports.
			ls.Protocol = config.ProtocolQUIC
			if r, ok := proc.(ConnectionReporter); ok {
				if n, ok := r.ReportedConnections(l.Name); ok {
					ls.Connections = &n
				}
			}
			gs.Listeners = append(gs.Listeners, ls)
			continue
		}
		if st, ok := s.router.Stats(gs.ID, i); ok {
			accepted := st.Selected + st.Migrated
			ls.Accepted, ls.Steered = &accepted, &st.Selected
		}
		if i < len(queues) {
			ls.AcceptQueue = queues[i]
		}
		gs.Listeners = append(gs.Listeners, ls)
	}
}

// fillCounts copies what Count found into the generations of st.
func fillCounts(st *api.ServiceStatus, counted []*Counted) {
	for _, c := range counted {
		gs := &st.Generations[c.index]
		if c.Total == nil {
			continue
		}
		gs.Connections, gs.ConnectionsSource = c.Total, c.Source
		for i, n := range c.Listeners {
			// nil: a listener the count does not cover (a QUIC one
			// keeps what its process reported).
			if i < len(gs.Listeners) && n != nil {
				gs.Listeners[i].Connections = n
			}
		}
	}
}

// countOne counts the connections of one live generation, alone: the
// connections of a socket it shares with others (fdpass) are those it
// holds itself.
func (s *Service) countOne(cfg *config.ServiceConfig, g *Generation) *int64 {
	c := &Counted{Service: cfg, Mode: s.mode, ID: g.ID, PID: g.pid}
	s.counter.Count([]*Counted{c})
	return c.Total
}

// acceptQueues reads the accept queue of each file. Callers hold s.mu.
func (s *Service) acceptQueues(files []*os.File) []*uint32 {
	var queues []*uint32
	for _, f := range files {
		var q *uint32
		if n, ok := s.counter.AcceptQueue(f); ok {
			q = &n
		}
		queues = append(queues, q)
	}
	return queues
}

func stamp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
