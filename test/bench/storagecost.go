package main

import (
	"fmt"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// storageCost is what a listener's BPF_F_CLONE socket storage (handoffd's
// tracking tag) costs each connection the listener creates: the kernel
// copies it into the child (bpf_sk_storage_clone in sk_clone_lock) and
// frees it with the child. It is measured on one locked thread that
// connects, accepts and closes on loopback, alternating a listener that
// carries such storage with one that does not; on loopback the handshake,
// the clone included, runs in the connecting thread's own context, so the
// thread's CPU time holds all of it and none of the other work on the host.
type storageCost struct {
	Rounds   int     `json:"rounds"`
	PerRound int     `json:"connections_per_round"`
	PlainNS  float64 `json:"plain_ns_per_connection"`  // median over rounds
	TaggedNS float64 `json:"tagged_ns_per_connection"` // median over rounds
	DiffNS   float64 `json:"difference_ns"`            // mean of the rounds' differences
	DiffCI95 float64 `json:"difference_ci95_ns"`
	Error    string  `json:"error,omitempty"`
	diffs    []float64
	plainNS  []float64
	taggedNS []float64
}

func measureStorageCost(rounds, perRound int) *storageCost {
	res := &storageCost{Rounds: rounds, PerRound: perRound}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "bench_tag", Type: ebpf.SkStorage, KeySize: 4, ValueSize: 4,
		Flags: unix.BPF_F_NO_PREALLOC | unix.BPF_F_CLONE,
		Key:   &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed},
		Value: &btf.Int{Name: "__u32", Size: 4},
	})
	if err != nil {
		res.Error = fmt.Sprintf("create socket storage map: %v", err)
		return res
	}
	defer m.Close()
	plain, plainSA, err := loopbackListener()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer unix.Close(plain)
	tagged, taggedSA, err := loopbackListener()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer unix.Close(tagged)
	if err := m.Update(uint32(tagged), uint32(1), ebpf.UpdateAny); err != nil {
		res.Error = fmt.Sprintf("tag the listener: %v", err)
		return res
	}
	cycle := func(l int, sa unix.Sockaddr) (float64, error) {
		t0 := threadTime()
		for range perRound {
			if err := connectAccept(l, sa); err != nil {
				return 0, err
			}
		}
		return float64(threadTime()-t0) / float64(perRound), nil
	}
	for i := range rounds {
		var p, t float64
		var err1, err2 error
		if i%2 == 0 {
			p, err1 = cycle(plain, plainSA)
			t, err2 = cycle(tagged, taggedSA)
		} else {
			t, err2 = cycle(tagged, taggedSA)
			p, err1 = cycle(plain, plainSA)
		}
		if err1 != nil || err2 != nil {
			res.Error = fmt.Sprint(err1, err2)
			return res
		}
		res.plainNS, res.taggedNS = append(res.plainNS, p), append(res.taggedNS, t)
		res.diffs = append(res.diffs, t-p)
	}
	res.PlainNS, res.TaggedNS = median(res.plainNS), median(res.taggedNS)
	mean, half := meanCI(res.diffs)
	res.DiffNS, res.DiffCI95 = mean, half/100
	return res
}

func threadTime() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

func loopbackListener() (int, unix.Sockaddr, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("listen: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, nil, err
	}
	return fd, sa, nil
}

// connectAccept makes one connection to listener l and closes both ends;
// the client's linger of 0 closes with a reset, leaving no TIME_WAIT.
func connectAccept(l int, sa unix.Sockaddr) error {
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(c)
	unix.SetsockoptLinger(c, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	if err := unix.Connect(c, sa); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	unix.Close(c)
	return unix.Close(a)
}
