package supervisor

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
type State int

const (
	StateStarting State = iota
	StateReady
	StateActive
	StateDraining
	StateExited
	StateFailed
	StateStandby
)

var stateNames = [...]string{"starting", "ready", "active", "draining", "exited", "failed", "standby"}

func (s State) String() string {
	if int(s) < len(stateNames) {
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

// transitions lists, for each state, the states it may move to.
var transitions = map[State][]State{
	StateStarting: {StateReady, StateFailed},
	StateReady:    {StateActive, StateFailed},
	// An active generation that dies goes straight to exited.
	StateActive:   {StateDraining, StateExited, StateStandby},
	StateStandby:  {StateActive, StateDraining, StateExited},
	StateDraining: {StateExited},
}

// CanMove reports whether a generation in state s may move to next.
func (s State) CanMove(next State) bool {
	for _, t := range transitions[s] {
		if t == next {
			return true
		}
	}
	return false
}

// Live reports whether a generation in state s still has a process.
func (s State) Live() bool { return s != StateExited && s != StateFailed }
