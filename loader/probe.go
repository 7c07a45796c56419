package loader

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/bpf"
)

var (
	// ErrNotSupported is wrapped by errors that come from a kernel that
	// lacks a feature steering needs.
	ErrNotSupported = errors.New("not supported by this kernel")
	// ErrPermission is wrapped by errors that come from missing
	// privileges.
	ErrPermission = errors.New("permission denied")
)

// Probe checks that this process can load the steering program and attach
// it to a reuseport socket with the migrate attach type, by doing both on a
// throwaway 127.0.0.1:0 socket. It returns nil, or an error that says what
// is missing and wraps ErrNotSupported or ErrPermission when that is the
// cause. Probe pins nothing and leaves nothing behind.
func Probe() error {
	liftMemlock()
	var objs bpf.SteerObjects
	if err := bpf.LoadSteerObjects(&objs, nil); err != nil {
		return explainLoad(err)
	}
	defer objs.Close()

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("probe: create socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fmt.Errorf("probe: set SO_REUSEPORT: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return fmt.Errorf("probe: bind 127.0.0.1:0: %w", err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fmt.Errorf("probe: listen: %w", err)
	}
	s := &Steering{prog: objs.Steer, sockets: objs.Sockets}
	if err := s.Attach(fd); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	if err := s.Insert(0, fd); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	return nil
}

// explainLoad turns a failed load of the steering objects into an error
// that names what is missing, keeping the kernel's answer.
func explainLoad(err error) error {
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("load steering program: %w: loading eBPF needs CAP_BPF and CAP_NET_ADMIN (or root): %w",
			ErrPermission, err)
	case features.HaveProgramType(ebpf.SkReuseport) != nil:
		return fmt.Errorf("load steering program: %w: kernel lacks SK_REUSEPORT programs (needs Linux >= 4.19): %w",
			ErrNotSupported, err)
	case refusedMigratingSk(err):
		// Before 5.14 the kernel takes the program without the attach
		// type's check, and its verifier refuses the read of
		// sk_reuseport_md.migrating_sk that the migrate attach type brings.
		return fmt.Errorf("load steering program: %w: kernel lacks BPF_SK_REUSEPORT_SELECT_OR_MIGRATE (needs Linux >= 5.14): %w",
			ErrNotSupported, err)
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL):
		// The program type exists, so what the kernel refuses is the
		// expected attach type (or, less likely, a map type).
		return fmt.Errorf("load steering program: %w: kernel lacks BPF_SK_REUSEPORT_SELECT_OR_MIGRATE (needs Linux >= 5.14): %w",
			ErrNotSupported, err)
	}
	return fmt.Errorf("load steering program: %w", err)
}

// refusedMigratingSk reports whether err is the verifier refusing the
// program's access to its context (sk_reuseport_md): the steering program
// reads only fields that 4.19 has, and migrating_sk, which came with 5.14.
func refusedMigratingSk(err error) bool {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) || !errors.Is(err, unix.EACCES) {
		return false
	}
	for _, line := range ve.Log {
		if strings.Contains(line, "invalid bpf_context access") {
			return true
		}
	}
	return false
}
