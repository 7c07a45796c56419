package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// started holds a pidfd of every process this benchmark started (or that
// one of those started and reported), so that a failure or an interrupt
// kills exactly those and nothing else: a pidfd names one process, where
// a pid may by then name another one (or a thread of this one) that took
// the number over.
var started = struct {
	sync.Mutex
	fds map[int]int // pid → pidfd
}{fds: map[int]int{}}

// own opens a pidfd of pid, which must run now (a process just started,
// or reported by its parent or by handoffd).
func own(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone already
	}
	started.Lock()
	defer started.Unlock()
	if old, ok := started.fds[pid]; ok {
		if !exited(old) {
			unix.Close(fd) // the same process, owned before
			return
		}
		unix.Close(old) // the number was reused by a process we started
	}
	started.fds[pid] = fd
}

// signalOwn sends sig to pid if it is a process this benchmark owns;
// anything else is left alone.
func signalOwn(pid int, sig syscall.Signal) error {
	started.Lock()
	fd, ok := started.fds[pid]
	started.Unlock()
	if !ok {
		return fmt.Errorf("pid %d is not a process this benchmark started", pid)
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// exited reports whether the process of pidfd fd has exited.
func exited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, _ := unix.Poll(fds, 0)
	return n > 0
}

// pruneOwn closes the pidfds of the processes that have exited, so that
// a long run does not pile them up.
func pruneOwn() {
	started.Lock()
	defer started.Unlock()
	for pid, fd := range started.fds {
		if exited(fd) {
			unix.Close(fd)
			delete(started.fds, pid)
		}
	}
}

// killOwn kills every process this benchmark started that still runs.
func killOwn() {
	started.Lock()
	defer started.Unlock()
	for pid, fd := range started.fds {
		unix.PidfdSendSignal(fd, syscall.SIGKILL, nil, 0)
		unix.Close(fd)
		delete(started.fds, pid)
	}
}

// watchExit returns a channel that receives the time pid exits, found
// with a pidfd so that it works for processes that are not our children
// (tableflip's). The process is then reaped if it is our child, which it
// becomes as an orphan since main makes us a child subreaper. The watch
// gives up after limit.
func watchExit(pid int, limit time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		ch <- time.Now() // already gone
		return ch
	}
	go func() {
		defer unix.Close(fd)
		deadline := time.Now().Add(limit)
		for time.Now().Before(deadline) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 100)
			if err != nil && !errors.Is(err, unix.EINTR) {
				break
			}
			if n > 0 {
				ch <- time.Now()
				var ws unix.WaitStatus
				unix.Wait4(pid, &ws, unix.WNOHANG, nil)
				return
			}
		}
		close(ch)
	}()
	return ch
}

// procUsage is what /proc says about a process.
type procUsage struct {
	RSSKB   int64
	CPUTick int64 // utime + stime, in clock ticks
}

// clockTick is USER_HZ, which is 100 on every Linux architecture Go supports.
const clockTick = 100

func readUsage(pid int) (procUsage, error) {
	var u procUsage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			u.RSSKB, _ = strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// Fields after "(comm)": state is 0, utime 11, stime 12.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(f) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	u.CPUTick = ut + st
	return u, nil
}

// usageSampler follows a process's RSS (max) and CPU during a run.
type usageSampler struct {
	pid      int
	stop     chan struct{}
	done     chan struct{}
	first    procUsage
	last     procUsage
	maxRSSKB int64
}

func sampleUsage(pid int) *usageSampler {
	s := &usageSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	s.first, _ = readUsage(pid)
	s.last, s.maxRSSKB = s.first, s.first.RSSKB
	go func() {
		defer close(s.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			if u, err := readUsage(pid); err == nil {
				s.last = u
				s.maxRSSKB = max(s.maxRSSKB, u.RSSKB)
			}
		}
	}()
	return s
}

// end stops sampling and returns max RSS in MB and CPU seconds used.
func (s *usageSampler) end() (maxRSSMB, cpuSec float64) {
	close(s.stop)
	<-s.done
	return float64(s.maxRSSKB) / 1024, float64(s.last.CPUTick-s.first.CPUTick) / clockTick
}

// sysctl reads and writes /proc/sys.
func sysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")))
	return strings.TrimSpace(string(b)), err
}

func setSysctl(name, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")), []byte(value), 0o644)
}

// enableBPFStats makes the kernel count run time of every eBPF program
// (BPF_ENABLE_STATS) until the returned fd is closed.
func enableBPFStats() (int, error) {
	attr := struct{ typ uint32 }{unix.BPF_STATS_RUN_TIME}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_ENABLE_STATS, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return -1, fmt.Errorf("BPF_ENABLE_STATS: %w", errno)
	}
	return int(fd), nil
}
