package loader

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestRefusedMigratingSk: 5.10's verifier refusing the read of
// migrating_sk is a kernel without the migrate attach type; other
// refusals are not.
func TestRefusedMigratingSk(t *testing.T) {
	wrap := func(log string, cause error) error {
		return fmt.Errorf("field Steer: program steer: load program: %w",
			&ebpf.VerifierError{Cause: cause, Log: []string{"0: (bf) r6 = r1", log}})
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{wrap("11: (79) r1 = *(u64 *)(r6 +48): invalid bpf_context access off=48 size=8", unix.EACCES), true},
		{wrap("R1 invalid mem access 'scalar'", unix.EACCES), false},
		{wrap("invalid bpf_context access off=48 size=8", unix.EINVAL), false},
		{errors.New("invalid bpf_context access"), false},
	} {
		if got := refusedMigratingSk(tc.err); got != tc.want {
			t.Errorf("refusedMigratingSk(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
