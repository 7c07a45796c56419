package api

import "fmt"

// State is where a generation is in its lifecycle:
//
//	starting ──ready──► ready ──activate──► active ──next swap──► draining ──exit──► exited
//	   └──► failed (exit or ready_timeout before it was active; the old generation stays active)
//
// With probation, a replaced generation waits in standby until its
// successor has lived that long: a rollback makes it active again.
//
//	active ──next swap──► standby ──probation passed──► draining
//	                         └──rollback──► active
//
// A canary (ebpf mode) receives a share of new connections beside the
// active generation until it is promoted or rolled back:
//
//	ready ──swap --canary──► canary ──promote──► active
//	                            └──rollback, crash, unhealthy──► draining
//
// In JSON a state is its name ("active").
type State int

// The states of a generation.
const (
	StateStarting State = iota
	StateReady
	StateActive
	StateDraining
	StateExited
	StateFailed
	StateStandby
	StateCanary
)

var stateNames = [...]string{"starting", "ready", "active", "draining", "exited", "failed", "standby", "canary"}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// MarshalText writes the state's name, so JSON shows "active", not 2.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a state's name.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if n == string(b) {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("unknown generation state %q", b)
}

// Live reports whether a generation in state s still has a process.
func (s State) Live() bool { return s != StateExited && s != StateFailed }
