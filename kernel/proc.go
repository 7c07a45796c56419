package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// StartTicks returns the start time of process pid, in clock ticks since
// boot (field 22 of /proc/PID/stat); 0 if it is gone. With the pid it
// names one process for good: a reused pid starts later. A process that
// has exited and waits to be reaped (a zombie, state Z, or X while it is
// reaped) is gone: its /proc entry stays, its fds and memory do not.
func StartTicks(pid int) uint64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces and parentheses: fields start after the last ')'.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 20 || fields[0] == "Z" || fields[0] == "X" {
		return 0
	}
	ticks, _ := strconv.ParseUint(fields[19], 10, 64)
	return ticks
}

// ParentPID returns the pid of the parent of process pid, 0 when it has
// none (pid 1) or is gone.
func ParentPID(pid int) int {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// NoNewPrivs makes sure that no exec from here on gains privileges
// (setuid bits, file capabilities): PR_SET_NO_NEW_PRIVS. The kernel sets
// it for the calling thread (and the threads it creates later): a caller
// that execs must have locked its goroutine to its thread
// (runtime.LockOSThread) before, so that the exec runs on that thread.
func NoNewPrivs() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return nil
}

// CloseOnExecFrom marks close-on-exec every fd from first on.
func CloseOnExecFrom(first int) error {
	err := unix.CloseRange(uint(first), ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	// Kernels before 5.11: one fd at a time.
	ents, rerr := os.ReadDir("/proc/self/fd")
	if rerr != nil {
		return fmt.Errorf("close inherited fds: %w", errors.Join(err, rerr))
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= first {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}

// CloseOnExec marks fd close-on-exec.
func CloseOnExec(fd int) { unix.CloseOnExec(fd) }

// Exec replaces this process with the program at path, run with argv and
// env (execve). It returns only when the exec failed.
func Exec(path string, argv, env []string) error {
	if err := unix.Exec(path, argv, env); err != nil {
		return fmt.Errorf("exec %s: %w", filepath.Clean(path), err)
	}
	return nil
}
