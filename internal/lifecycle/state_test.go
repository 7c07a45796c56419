package lifecycle

import (
	"errors"
	"testing"

	"github.com/handoffd/handoffd/api"
)

func TestStateTransitions(t *testing.T) {
	allowed := map[[2]api.State]bool{
		{api.StateStarting, api.StateReady}: true, {api.StateStarting, api.StateFailed}: true,
		{api.StateReady, api.StateActive}: true, {api.StateReady, api.StateFailed}: true,
		{api.StateActive, api.StateDraining}: true, {api.StateActive, api.StateExited}: true, {api.StateActive, api.StateStandby}: true,
		{api.StateStandby, api.StateActive}: true, {api.StateStandby, api.StateDraining}: true, {api.StateStandby, api.StateExited}: true,
		{api.StateDraining, api.StateExited}: true,
		{api.StateReady, api.StateCanary}:    true,
		{api.StateCanary, api.StateActive}:   true, {api.StateCanary, api.StateDraining}: true, {api.StateCanary, api.StateExited}: true,
	}
	for from := api.StateStarting; from <= api.StateCanary; from++ {
		for to := api.StateStarting; to <= api.StateCanary; to++ {
			if got := canMove(from, to); got != allowed[[2]api.State{from, to}] {
				t.Errorf("%s -> %s allowed = %v", from, to, got)
			}
		}
	}
}

// TestInvalidMoveIsAnError checks that the state machine refuses, with a
// TransitionError, a move it does not allow, and changes nothing.
func TestInvalidMoveIsAnError(t *testing.T) {
	s := testService(t, &fakeLauncher{ready: true}, &fakeRouter{})
	g := &Generation{ID: 7, state: api.StateExited}
	s.mu.Lock()
	err := s.move(g, api.StateActive)
	s.mu.Unlock()
	var te *TransitionError
	if !errors.As(err, &te) || te.From != api.StateExited || te.To != api.StateActive || g.state != api.StateExited {
		t.Errorf("exited -> active: %v, state %s; want a TransitionError and no change", err, g.state)
	}
}
