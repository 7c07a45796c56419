package lifecycle

import (
	"fmt"

	"github.com/handoffd/handoffd/api"
)

// transitions lists, for each state, the states a generation may move to
// (see api.State for the picture).
var transitions = map[api.State][]api.State{
	api.StateStarting: {api.StateReady, api.StateFailed},
	api.StateReady:    {api.StateActive, api.StateCanary, api.StateFailed},
	// A canary is promoted, drains after a rollback, or dies.
	api.StateCanary: {api.StateActive, api.StateDraining, api.StateExited},
	// An active generation that dies goes straight to exited.
	api.StateActive:   {api.StateDraining, api.StateExited, api.StateStandby},
	api.StateStandby:  {api.StateActive, api.StateDraining, api.StateExited},
	api.StateDraining: {api.StateExited},
}

// canMove reports whether a generation in state from may move to to.
func canMove(from, to api.State) bool {
	for _, t := range transitions[from] {
		if t == to {
			return true
		}
	}
	return false
}

// TransitionError is an invalid move of a generation's state: a bug of
// the lifecycle, returned so that tests see it.
type TransitionError struct {
	Generation int
	From, To   api.State
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("generation %d cannot move from %s to %s", e.Generation, e.From, e.To)
}
