package loader

import (
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/bpf"
)

// ProbeTracking checks that this process can load the tracking program,
// attach it to its own cgroup v2 as a sock_ops bpf_link and tag a socket,
// by doing all three with throwaway maps and a throwaway socket. It returns
// nil, or an error that says what is missing and wraps ErrNotSupported or
// ErrPermission when that is the cause. It pins nothing and leaves nothing
// attached.
func ProbeTracking() error {
	var objs bpf.TrackObjects
	if err := bpf.LoadTrackObjects(&objs, nil); err != nil {
		return fmt.Errorf("probe tracking: %w", explainTrackingLoad(err))
	}
	defer objs.Close()
	l, _, _, err := attachToOwnCgroup(objs.Track)
	if err != nil {
		return fmt.Errorf("probe tracking: %w", err)
	}
	defer l.Close()
	// A legacy attachment (no bpf_link) could not be pinned: counting
	// would stop with the process.
	if _, err := l.Info(); err != nil {
		return fmt.Errorf("probe tracking: %w", explainTrackingAttach(err))
	}

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("probe tracking: create socket: %w", err)
	}
	defer unix.Close(fd)
	t := &Tracking{listeners: objs.ListenerSlot}
	if err := t.Tag(fd, 0); err != nil {
		return fmt.Errorf("probe tracking: %w", err)
	}
	return nil
}

// explainTrackingLoad turns a failed load of the tracking objects into an
// error that names what is missing, keeping the kernel's answer.
func explainTrackingLoad(err error) error {
	var verr *ebpf.VerifierError
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("load tracking program: %w: sock_ops programs need CAP_BPF and CAP_NET_ADMIN (or root): %w",
			ErrPermission, err)
	case features.HaveProgramType(ebpf.SockOps) != nil:
		return fmt.Errorf("load tracking program: %w: kernel lacks sock_ops programs (CONFIG_CGROUP_BPF, Linux >= 4.16): %w",
			ErrNotSupported, err)
	case features.HaveMapType(ebpf.SkStorage) != nil:
		return fmt.Errorf("load tracking program: %w: kernel lacks socket storage maps (needs Linux >= 5.2): %w",
			ErrNotSupported, err)
	case errors.As(err, &verr), errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL):
		// sock_ops and sk storage exist, so what is refused is the
		// socket of the context with bpf_sk_storage_get (5.3) or
		// BPF_F_CLONE (5.4).
		return fmt.Errorf("load tracking program: %w: kernel refuses bpf_sk_storage_get in sock_ops or cloned socket storage (needs Linux >= 5.4): %w",
			ErrNotSupported, err)
	}
	return fmt.Errorf("load tracking program: %w", err)
}

func explainTrackingAttach(err error) error {
	const what = "attach tracking program to cgroup (BPF_CGROUP_SOCK_OPS link)"
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: %w: %w", what, ErrPermission, err)
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%s: %w: cgroup bpf_link needs Linux >= 5.7: %w", what, ErrNotSupported, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// EnableStats makes the kernel count the runs and run time of every eBPF
// program on the host (Tracking.Stats) until the returned Closer is
// closed. It uses BPF_ENABLE_STATS (Linux >= 5.8) rather than the
// kernel.bpf_stats_enabled sysctl, so statistics stop when the process
// dies, whatever state it dies in. Counting costs a little on every run of
// every program: enable it for measurements, not for good.
func EnableStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable eBPF run time statistics: %w", err)
	}
	return c, nil
}
