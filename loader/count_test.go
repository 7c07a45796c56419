package loader

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireCounter skips the test unless this process can run the
// connection counter (root, Linux >= 6.1); in CI it fails instead.
func requireCounter(t *testing.T) *ConnCounter {
	t.Helper()
	c, err := LoadConnCounter()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("connection counter unavailable in CI: %v", err)
		}
		t.Skipf("connection counter unavailable: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// holder starts a process (sleep) that holds the sockets fds as its fds 3
// and up, and kills it when the test ends. It returns the pid.
func holder(t *testing.T, fds ...int) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	for _, fd := range fds {
		// A copy, so that closing the *os.File leaves fd alone.
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(dup), "socket")
		defer f.Close()
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

// checkCount counts the connections of pids on port p and compares them
// with want, retrying for a while: a close takes effect in the kernel a
// little after the call.
func checkCount(t *testing.T, c *ConnCounter, pids []int, p int, want PortHeld) {
	t.Helper()
	var got PortHeld
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		held, err := c.Count(pids, []uint16{uint16(p)})
		if err != nil {
			t.Fatal(err)
		}
		if got = held[uint16(p)]; got == want {
			return
		}
	}
	t.Errorf("Count(%v, port %d) = %+v, want %+v", pids, p, got, want)
}

func TestConnCounterOneProcess(t *testing.T) {
	requireEBPF(t)
	c := requireCounter(t)
	inNetns(t)
	ln, p := listen(t, 0)
	clients := make([]int, 10)
	for i := range clients {
		clients[i] = dial(t, p)
	}
	self := []int{os.Getpid()}
	// Queued: the listener's accept queue.
	checkCount(t, c, self, p, PortHeld{Queued: 10, Listeners: 1})
	acc := acceptAll(t, 10, ln)[0]
	checkCount(t, c, self, p, PortHeld{Connections: 10, Listeners: 1})
	if n := c.lastWritten(); n != 1 {
		t.Errorf("%d sockets written out, want 1 (the listener): a connection one fd holds is counted in the kernel", n)
	}
	// The server closes one (FIN_WAIT1 does not count), a client another
	// (CLOSE_WAIT does).
	unix.Shutdown(acc[0], unix.SHUT_RDWR)
	unix.Shutdown(clients[1], unix.SHUT_RDWR)
	checkCount(t, c, self, p, PortHeld{Connections: 9, Listeners: 1})
	// A port not asked for counts nothing.
	held, err := c.Count(self, []uint16{uint16(p + 1)})
	if err != nil || held[uint16(p+1)] != (PortHeld{}) {
		t.Errorf("Count of another port = %v, %v; want nothing", held, err)
	}
}

// written returns how many sockets the last Count had the program write
// out for user space.
func (c *ConnCounter) lastWritten() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.written
}

// TestConnCounterProcesses spreads the connections of one port over
// several processes the way a server with workers does: a parent that
// holds the listener, workers that share it and hold their own
// connections, one connection that two workers hold, one that a worker
// holds twice (a dup), IPv4 and IPv6. Each connection counts once, and a
// connection that only one fd holds is counted by the program itself.
func TestConnCounterProcesses(t *testing.T) {
	requireEBPF(t)
	c := requireCounter(t)
	inNetns(t)
	for _, family := range []string{"tcp4", "tcp6"} {
		t.Run(family, func(t *testing.T) {
			ln := listenFamily(t, family, 0)
			p := int(listenAddr(t, ln).Port())
			var conns []int
			for range 12 {
				dialFamily(t, family, p)
			}
			for range 12 {
				fd := acceptOne(t, ln)
				conns = append(conns, fd)
			}
			parent := holder(t, ln)
			w1 := holder(t, append([]int{ln}, conns[0:5]...)...)
			w2 := holder(t, append([]int{ln, conns[4]}, conns[5:9]...)...) // conns[4] in two workers
			w3 := holder(t, ln, conns[9], conns[9], conns[10])             // a dup
			// conns[11] stays in the test process alone; then the test
			// closes its own copies, so only the holders hold them.
			for _, fd := range conns[:11] {
				unix.Close(fd)
			}
			t.Cleanup(func() { unix.Close(conns[11]) })
			pids := []int{parent, w1, w2, w3}
			checkCount(t, c, pids, p, PortHeld{Connections: 11, Listeners: 1})
			// conns[0..3] and conns[5..8]: one fd each, counted in the
			// kernel; conns[4], conns[9] and the listener go out.
			if n := c.lastWritten(); n > 3+3+1+4 {
				t.Errorf("%d sockets written out for 12 fds that share 3 sockets, want at most 11", n)
			}
			checkCount(t, c, []int{w1}, p, PortHeld{Connections: 5, Listeners: 1})
			checkCount(t, c, []int{w2, w3}, p, PortHeld{Connections: 7, Listeners: 1})
			all := append(pids, os.Getpid())
			checkCount(t, c, all, p, PortHeld{Connections: 12, Listeners: 1})
			// The listener's queue counts once however many hold it.
			dialFamily(t, family, p)
			dialFamily(t, family, p)
			checkCount(t, c, pids, p, PortHeld{Connections: 11, Queued: 2, Listeners: 1})
			// A process that is gone counts nothing.
			if err := unix.Kill(w1, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			checkCount(t, c, pids, p, PortHeld{Connections: 7, Queued: 2, Listeners: 1}) // conns[4] lives on in w2
		})
	}
}

// dialFamily connects a blocking client socket to the loopback address of
// family on port, closed when the test ends.
func dialFamily(t *testing.T, family string, port int) int {
	t.Helper()
	domain, sa := unix.AF_INET, unix.Sockaddr(&unix.SockaddrInet4{Addr: loopback, Port: port})
	if family == "tcp6" {
		domain, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: [16]byte{15: 1}, Port: port}
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Connect(fd, sa); err != nil {
		t.Fatalf("connect to port %d: %v", port, err)
	}
	return fd
}

// acceptOne accepts one connection from the non-blocking listener ln,
// waiting at most 5s. The caller closes it.
func acceptOne(t *testing.T, ln int) int {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err == nil {
			return fd
		}
		if err != unix.EAGAIN {
			t.Fatalf("accept: %v", err)
		}
	}
	t.Fatal("no connection to accept in 5s")
	return -1
}

// TestConnCounterMigration queues connections on the listener of one
// generation, makes another active and closes the first listener: the
// kernel migrates the queue, and the count follows it to the process that
// holds the active listener.
func TestConnCounterMigration(t *testing.T) {
	requireEBPF(t)
	c := requireCounter(t)
	inNetns(t)
	s := loadSteering(t)
	ln1, ln2 := group(t, s)
	p := port(t, ln1)
	if err := s.Activate(1); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for range n {
		dial(t, p)
	}
	waitQueued(t, n, ln1)
	gen1, gen2 := holder(t, ln1), holder(t, ln2)
	checkCount(t, c, []int{gen1}, p, PortHeld{Queued: n, Listeners: 1})
	checkCount(t, c, []int{gen2}, p, PortHeld{Listeners: 1})
	if err := s.Activate(2); err != nil {
		t.Fatal(err)
	}
	// The old generation exits, and the test shuts its copy of the
	// listener down: its queue moves to the active one.
	if err := unix.Kill(gen1, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := unix.Shutdown(ln1, unix.SHUT_RDWR); err != nil {
		t.Fatal(err)
	}
	checkCount(t, c, []int{gen2}, p, PortHeld{Queued: n, Listeners: 1})
	checkCounters(t, s, 2, SlotCounters{Migrated: n})
	// One batch reads what the slots' lookups read.
	batch, err := s.Migrated()
	bySlot, err2 := s.migratedBySlot()
	if batch != n || bySlot != n || err != nil || err2 != nil {
		t.Errorf("Migrated() = %d, %v; by slot %d, %v; want %d", batch, err, bySlot, err2, n)
	}
	accepted := acceptAll(t, n, ln2)[0]
	checkCount(t, c, []int{gen2, os.Getpid()}, p, PortHeld{Connections: n, Listeners: 1})
	for _, fd := range accepted[:5] {
		unix.Shutdown(fd, unix.SHUT_RDWR) // closed when the test ends
	}
	checkCount(t, c, []int{gen2, os.Getpid()}, p, PortHeld{Connections: n - 5, Listeners: 1})
}

// TestConnCounterParents lists the host's processes with their parents:
// a shell's two children, and this process.
func TestConnCounterParents(t *testing.T) {
	requireEBPF(t)
	c := requireCounter(t)
	cmd := exec.Command("sh", "-c", "sleep 30 & sleep 30 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var children []int
	defer func() {
		for _, pid := range children {
			unix.Kill(pid, unix.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
	}()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && len(children) < 2; time.Sleep(10 * time.Millisecond) {
		parents, err := c.Parents()
		if err != nil {
			t.Fatal(err)
		}
		if parents[os.Getpid()] != os.Getppid() || parents[cmd.Process.Pid] != os.Getpid() {
			t.Fatalf("Parents: this process %d → %d, the shell %d → %d; want %d and %d",
				os.Getpid(), parents[os.Getpid()], cmd.Process.Pid, parents[cmd.Process.Pid], os.Getppid(), os.Getpid())
		}
		children = children[:0]
		for pid, ppid := range parents {
			if ppid == cmd.Process.Pid {
				children = append(children, pid)
			}
		}
	}
	if len(children) != 2 {
		t.Errorf("the shell has children %v, want two sleeps", children)
	}
}

// The test binary plays a process for a test when one of these is set:
// leaderExitEnv, one whose first thread exits while its other threads,
// which share its fd table, run on; manyFDsEnv, one with more open files
// than one read of an iterator visits.
const (
	leaderExitEnv = "HANDOFF_TEST_LEADER_EXIT"
	manyFDsEnv    = "HANDOFF_TEST_MANY_FDS"
)

func init() {
	if os.Getenv(leaderExitEnv) != "" {
		// main then runs on the process's first thread.
		runtime.LockOSThread()
	}
}

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(leaderExitEnv) != "":
		exitLeader()
	case os.Getenv(manyFDsEnv) != "":
		holdManyFDs()
	}
	os.Exit(m.Run())
}

// exitLeader starts threads that block reading stdin, then ends the first
// thread alone (exit, not exit_group): the process lives on, its leader a
// zombie without files, until the test kills it.
func exitLeader() {
	for range 4 {
		go func() {
			runtime.LockOSThread() // a thread of its own for each reader
			var b [1]byte
			for {
				unix.Read(0, b[:])
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	unix.Syscall(unix.SYS_EXIT, 0, 0, 0)
}

// holdManyFDs makes the process hold more files than one read of an
// iterator visits, without a socket among them: its fd limit's worth of
// /dev/null, in as many threads with fd tables of their own (unshare
// CLONE_FILES) as that takes, each of which closes the fds it inherited
// (3 to 2 + manyFDsEnv's number), so that those stay in the first
// table alone. It says "ready" on stdout and waits for the test to kill
// it.
func holdManyFDs() {
	inherited, err := strconv.Atoi(os.Getenv(manyFDsEnv))
	var lim unix.Rlimit
	if err == nil {
		err = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	if err == nil {
		lim.Cur = min(lim.Max, 20000)
		err = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	var null int
	if err == nil {
		null, err = unix.Open("/dev/null", unix.O_RDONLY, 0)
	}
	for err == nil {
		if _, err = unix.FcntlInt(uintptr(null), unix.F_DUPFD, 0); err == unix.EMFILE {
			err = nil
			break
		}
	}
	const objects = 1_100_000
	tables := objects/int(lim.Cur) + 1
	if err != nil || tables > 2000 {
		fmt.Println("cannot hold", objects, "files:", err, "fd limit", lim.Cur)
		os.Exit(1)
	}
	errs := make(chan error)
	for range tables {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread keeps its table
			err := unix.Unshare(unix.CLONE_FILES)
			for fd := 3; fd < 3+inherited && err == nil; fd++ {
				err = unix.Close(fd)
			}
			errs <- err
			var b [1]byte
			unix.Read(0, b[:])
		}()
	}
	for range tables {
		if err := <-errs; err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	var b [1]byte
	unix.Read(0, b[:])
	os.Exit(0)
}

// helper starts the test binary with env set, holding copies of fds as
// its fds 3 and up, and waits until it prints a line (holdManyFDs) when
// ready is set; it is killed when the test ends.
func helper(t *testing.T, env string, ready bool, fds ...int) int {
	t.Helper()
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), env)
	stdin, err := cmd.StdinPipe() // never written: it waits on it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close() })
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(dup), "socket"))
	}
	err = cmd.Start()
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if ready {
		line := make(chan string, 1)
		go func() {
			s, _ := bufio.NewReader(stdout).ReadString('\n')
			line <- s
		}()
		select {
		case s := <-line:
			if s != "ready\n" {
				t.Fatalf("%s: %q", env, s)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: not ready in 60s", env)
		}
	}
	return cmd.Process.Pid
}

// TestConnCounterLeaderExited counts a process whose first thread has
// exited while the others share one fd table: the kernel visits each of
// those threads with the whole table, and each connection counts once.
func TestConnCounterLeaderExited(t *testing.T) {
	requireEBPF(t)
	c := requireCounter(t)
	inNetns(t)
	ln, p := listen(t, 0)
	const n = 5
	for range n {
		dial(t, p)
	}
	conns := acceptAll(t, n, ln)[0]
	pid := helper(t, leaderExitEnv+"=1", false, append([]int{ln}, conns...)...)
	leader := fmt.Sprintf("/proc/%d/task/%d/stat", pid, pid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile(leader)
		if err == nil && strings.Contains(string(stat), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first thread of process %d did not exit in 10s: %q, %v", pid, stat, err)
		}
	}
	threads, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(threads) < 3 {
		t.Fatalf("process %d has threads %v (%v), want the leader and at least two more", pid, threads, err)
	}
	// Only the process holds the connections now: one fd each.
	for _, fd := range conns {
		unix.Close(fd)
	}
	checkCount(t, c, []int{pid}, p, PortHeld{Connections: n, Listeners: 1})
}

// TestConnCounterManyFiles counts a process with more open files than the
// kernel visits in one read of an iterator (1,000,000) before a read that
// found nothing to write out gives up with EAGAIN: the count reads on.
// The files are in fd tables of the process's threads, so that the fd
// limit of a test need not be raised.
func TestConnCounterManyFiles(t *testing.T) {
	requireEBPF(t)
	c := requireCounter(t)
	inNetns(t)
	ln, p := listen(t, 0)
	const n = 3
	for range n {
		dial(t, p)
	}
	conns := acceptAll(t, n, ln)[0]
	pid := helper(t, fmt.Sprintf("%s=%d", manyFDsEnv, n), true, conns...)
	for _, fd := range conns {
		unix.Close(fd)
	}
	checkCount(t, c, []int{pid}, p, PortHeld{Connections: n})
}
