package main

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestKillOwnSparesAReusedPid checks that killOwn kills only processes
// the benchmark started, not whatever took over one of their pids: on a
// busy host with pid_max 32768, pids come round again within minutes, and
// a benchmark that killed by pid at its exit killed other benchmarks'
// handoffd and generations. The test runs itself again as pid 1 of a new
// pid namespace, where ns_last_pid hands the next process a chosen pid.
func TestKillOwnSparesAReusedPid(t *testing.T) {
	if os.Getenv("BENCH_PIDNS_CHILD") == "" {
		if os.Geteuid() != 0 {
			if os.Getenv("CI") == "true" {
				t.Fatal("needs root for a pid namespace")
			}
			t.Skip("needs root for a pid namespace")
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillOwnSparesAReusedPid$", "-test.v")
		cmd.Env = append(os.Environ(), "BENCH_PIDNS_CHILD=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("in a pid namespace: %v\n%s", err, out)
		}
		return
	}
	// This namespace's /proc, so that pids and ns_last_pid are its own.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		t.Fatal(err)
	}
	first := exec.Command("sleep", "60")
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	pid := first.Process.Pid
	own(pid)
	first.Process.Kill()
	first.Wait()
	if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
		t.Fatal(err)
	}
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	if other.Process.Pid != pid {
		t.Fatalf("the second process got pid %d, want the reused pid %d", other.Process.Pid, pid)
	}
	exited := make(chan struct{})
	go func() { other.Process.Wait(); close(exited) }()
	killOwn()
	select {
	case <-exited:
		t.Fatalf("killOwn killed pid %d, which a process the benchmark never started had taken over", pid)
	case <-time.After(300 * time.Millisecond):
	}
}
