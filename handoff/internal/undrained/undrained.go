// Package undrained counts the servers of a process (handoff.Drainer,
// handoffgrpc.Server) that have served and not yet finished their drain,
// so that a generation's final state goes out after the last of them.
package undrained

import (
	"sync"
	"sync/atomic"
)

var count atomic.Int64

// A Server is one server's place in the count; its zero value is ready.
type Server struct {
	mu      sync.Mutex
	counted bool
}

// Serving counts s, once, until Drained.
func (s *Server) Serving() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.counted {
		s.counted = true
		count.Add(1)
	}
}

// Drained ends s's count and reports whether no server of the process is
// left serving or draining.
func (s *Server) Drained() (last bool) {
	s.mu.Lock()
	counted := s.counted
	s.counted = false
	s.mu.Unlock()
	if counted {
		return count.Add(-1) == 0
	}
	return count.Load() == 0
}
