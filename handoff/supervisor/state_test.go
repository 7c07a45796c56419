package supervisor

import "testing"

func TestStateTransitions(t *testing.T) {
	allowed := map[[2]State]bool{
		{StateStarting, StateReady}: true, {StateStarting, StateFailed}: true,
		{StateReady, StateActive}: true, {StateReady, StateFailed}: true,
		{StateActive, StateDraining}: true, {StateActive, StateExited}: true, {StateActive, StateStandby}: true,
		{StateStandby, StateActive}: true, {StateStandby, StateDraining}: true, {StateStandby, StateExited}: true,
		{StateDraining, StateExited}: true,
	}
	for from := StateStarting; from <= StateStandby; from++ {
		for to := StateStarting; to <= StateStandby; to++ {
			if got := from.CanMove(to); got != allowed[[2]State{from, to}] {
				t.Errorf("%s -> %s allowed = %v", from, to, got)
			}
		}
	}
}

func TestStateText(t *testing.T) {
	for s := StateStarting; s <= StateStandby; s++ {
		b, _ := s.MarshalText()
		var back State
		if err := back.UnmarshalText(b); err != nil || back != s {
			t.Errorf("%s round-trips to %s, %v", s, back, err)
		}
	}
}
