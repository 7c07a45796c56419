package loader

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoffd/kernel"
	"golang.org/x/sys/unix"
)

// requireTracking skips the test unless this process can steer and track
// (root, Linux >= 5.14, cgroup v2); in CI it fails instead. Tracking counts
// the listeners of its loader's cgroup: the test's own.
func requireTracking(t *testing.T) {
	t.Helper()
	requireEBPF(t)
	if err := ProbeTracking(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("eBPF tracking unavailable in CI: %v", err)
		}
		t.Skipf("eBPF tracking unavailable: %v", err)
	}
}

// loadTracking loads a Tracking pinned in a fresh directory and removes it
// when the test ends.
func loadTracking(t *testing.T) *Tracking {
	t.Helper()
	tr, err := LoadTracking(testPinDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tr.Remove(); err != nil {
			t.Error(err)
		}
	})
	return tr
}

// fds closes, when the test ends, the sockets it holds that the test did
// not close itself, so that a closed number reused later is left alone.
type fds map[int]bool

func newFDs(t *testing.T) fds {
	f := fds{}
	t.Cleanup(func() {
		for fd := range f {
			unix.Close(fd)
		}
	})
	return f
}

func (f fds) close(t *testing.T, fd int) {
	t.Helper()
	if !f[fd] {
		t.Fatalf("close of socket %d that is not open", fd)
	}
	delete(f, fd)
	if err := unix.Close(fd); err != nil {
		t.Fatal(err)
	}
}

// listen is like the package's listen with the given backlog.
func (f fds) listen(t *testing.T, port, backlog int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f[fd] = true
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: loopback, Port: port}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	return fd
}

// dial connects a blocking client socket to 127.0.0.1:port.
func (f fds) dial(t *testing.T, port int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f[fd] = true
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: loopback, Port: port}); err != nil {
		t.Fatalf("connect to port %d: %v", port, err)
	}
	return fd
}

// accept returns a connection from the non-blocking listener ln, or -1 if
// none waits.
func (f fds) accept(t *testing.T, ln int) int {
	t.Helper()
	fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
	if errors.Is(err, unix.EAGAIN) {
		return -1
	}
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	f[fd] = true
	return fd
}

// acceptN accepts n connections from ln, waiting at most 5s.
func (f fds) acceptN(t *testing.T, ln, n int) []int {
	t.Helper()
	var got []int
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < n && time.Now().Before(deadline) {
		if fd := f.accept(t, ln); fd >= 0 {
			got = append(got, fd)
		} else {
			time.Sleep(time.Millisecond)
		}
	}
	if len(got) != n {
		t.Fatalf("accepted %d connections in 5s, want %d", len(got), n)
	}
	return got
}

func peerPort(t *testing.T, fd int) int {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*unix.SockaddrInet4).Port
}

// trackedGroup returns two listening sockets of one reuseport group on a
// fresh port, steered by a Steering loaded with tr and base, in steering
// slots 1 and 2 and tagged with tracking slots base+1 and base+2.
func trackedGroup(t *testing.T, f fds, tr *Tracking, base uint32, backlog int) (*Steering, int, int) {
	t.Helper()
	s, err := LoadSteeringWith(testPinDir(t), tr, base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Remove(); err != nil {
			t.Error(err)
		}
	})
	ln1 := f.listen(t, 0, backlog)
	ln2 := f.listen(t, port(t, ln1), backlog)
	for i, ln := range []int{ln1, ln2} {
		slot := uint32(i + 1)
		if err := tr.Tag(ln, base+slot); err != nil {
			t.Fatal(err)
		}
		if err := s.Attach(ln); err != nil {
			t.Fatal(err)
		}
		if err := s.Insert(slot, ln); err != nil {
			t.Fatal(err)
		}
	}
	return s, ln1, ln2
}

// kernelHeld counts, as the kernel lists them in /proc/thread-self/net/tcp
// of the test's namespace, the server-side sockets of port that are
// ESTABLISHED or CLOSE_WAIT.
func kernelHeld(t *testing.T, port int) int {
	t.Helper()
	file, err := os.Open("/proc/thread-self/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	want := ":" + strings.ToUpper(strconv.FormatInt(int64(port)+0x10000, 16)[1:])
	n := 0
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		// sl local_address rem_address st ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasSuffix(fields[1], want) {
			continue
		}
		if fields[3] == "01" || fields[3] == "08" {
			n++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitHeld waits up to 5s for tracking slot to hold want connections and
// fails the test if it does not.
func waitHeld(t *testing.T, tr *Tracking, slot uint32, want int64) {
	t.Helper()
	var got int64
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if got, err = tr.Held(slot); err != nil {
			t.Fatal(err)
		}
		if got == want {
			return
		}
	}
	t.Fatalf("Held(%d) = %d, want %d", slot, got, want)
}

// waitKernelHeld waits up to 5s for the kernel to list want held
// server-side sockets of port.
func waitKernelHeld(t *testing.T, port, want int) {
	t.Helper()
	got := 0
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if got = kernelHeld(t, port); got == want {
			return
		}
	}
	t.Fatalf("kernel lists %d ESTABLISHED or CLOSE_WAIT server sockets on port %d, want %d", got, port, want)
}

func checkAccepted(t *testing.T, tr *Tracking, slot uint32, want uint64) {
	t.Helper()
	if got, err := tr.Accepted(slot); err != nil || got != want {
		t.Errorf("Accepted(%d) = %d, %v; want %d", slot, got, err, want)
	}
}

// checkExact fails the test if the tracking program was skipped or the
// table overflowed, either of which makes the counts inexact.
func checkExact(t *testing.T, tr *Tracking) {
	t.Helper()
	if n, err := tr.Missed(); err != nil || n != 0 {
		t.Errorf("Missed() = %d, %v; want 0", n, err)
	}
	if n, err := tr.Overflows(); err != nil || n != 0 {
		t.Errorf("Overflows() = %d, %v; want 0", n, err)
	}
}

func TestTrackingCounts(t *testing.T) {
	requireTracking(t)
	inNetns(t)
	tr := loadTracking(t)
	f := newFDs(t)
	s, ln1, _ := trackedGroup(t, f, tr, 0, 128)
	p := port(t, ln1)
	if err := s.Activate(1); err != nil {
		t.Fatal(err)
	}

	clients := make(map[int]int) // client's local port -> client fd
	for range 40 {
		c := f.dial(t, p)
		sa, err := unix.Getsockname(c)
		if err != nil {
			t.Fatal(err)
		}
		clients[sa.(*unix.SockaddrInet4).Port] = c
	}
	waitHeld(t, tr, 1, 40)
	waitKernelHeld(t, p, 40)
	waitHeld(t, tr, 2, 0)
	checkAccepted(t, tr, 1, 40)
	if n, max, err := kernel.AcceptQueue(ln1); err != nil || n != 40 || max != 128 {
		t.Errorf("AcceptQueue = %d, %d, %v; want 40, 128", n, max, err)
	}

	// The server closes 5 of 10 accepted connections: FIN_WAIT1 no
	// longer counts.
	accepted := f.acceptN(t, ln1, 10)
	serverClosed := make(map[int]bool)
	for _, fd := range accepted[:5] {
		serverClosed[peerPort(t, fd)] = true
		f.close(t, fd)
	}
	waitHeld(t, tr, 1, 35)
	waitKernelHeld(t, p, 35)

	// Clients close 5 others, accepted or queued: CLOSE_WAIT still
	// counts until the server closes them too.
	clientClosed := make(map[int]bool)
	for cport, c := range clients {
		if len(clientClosed) == 5 {
			break
		}
		if !serverClosed[cport] {
			clientClosed[cport] = true
			f.close(t, c)
		}
	}
	time.Sleep(50 * time.Millisecond) // let the FINs land; nothing may change
	waitHeld(t, tr, 1, 35)
	waitKernelHeld(t, p, 35)

	for _, fd := range append(accepted[5:], f.acceptN(t, ln1, 30)...) {
		if clientClosed[peerPort(t, fd)] {
			f.close(t, fd) // CLOSE_WAIT -> LAST_ACK
		}
	}
	waitHeld(t, tr, 1, 30)
	waitKernelHeld(t, p, 30)
	checkAccepted(t, tr, 1, 40)
	checkCounters(t, s, 1, SlotCounters{Selected: 40})
	checkExact(t, tr)
}

func TestTrackingMigration(t *testing.T) {
	requireTracking(t)
	inNetns(t)
	tr := loadTracking(t)
	f := newFDs(t)
	// A base other than 0 checks that steer and track agree on it.
	const base = 2 * Slots
	s, ln1, ln2 := trackedGroup(t, f, tr, base, 128)
	p := port(t, ln1)
	if err := s.Activate(1); err != nil {
		t.Fatal(err)
	}

	const n = 20
	var clients []int
	for range n {
		clients = append(clients, f.dial(t, p))
	}
	// Some children wait in CLOSE_WAIT: they count, and move, too.
	for _, c := range clients[:5] {
		if err := unix.Shutdown(c, unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for q, _, _ := kernel.AcceptQueue(ln1); q < n && time.Now().Before(deadline); q, _, _ = kernel.AcceptQueue(ln1) {
		time.Sleep(time.Millisecond)
	}
	waitHeld(t, tr, base+1, n)
	waitKernelHeld(t, p, n)

	if err := s.Activate(2); err != nil {
		t.Fatal(err)
	}
	f.close(t, ln1)
	waitHeld(t, tr, base+1, 0)
	waitHeld(t, tr, base+2, n)
	waitKernelHeld(t, p, n)
	checkCounters(t, s, 2, SlotCounters{Migrated: n})
	checkAccepted(t, tr, base+1, n)
	checkAccepted(t, tr, base+2, 0)

	// The moved count leaves with the connections, from the new slot.
	for _, fd := range f.acceptN(t, ln2, n) {
		f.close(t, fd)
	}
	waitHeld(t, tr, base+2, 0)
	waitHeld(t, tr, base+1, 0)
	waitKernelHeld(t, p, 0)
	checkExact(t, tr)
}

func TestTrackingTenThousand(t *testing.T) {
	requireTracking(t)
	// The connections wait in the accept queues, idle, so the test needs
	// a descriptor for the client end only.
	const n, first = 10000, 6000
	raiseNoFile(t, n+100)
	inNetns(t)
	setNetnsSysctl(t, "net.core.somaxconn", "8192")
	tr := loadTracking(t)
	f := newFDs(t)
	s, ln1, ln2 := trackedGroup(t, f, tr, 0, 8192)
	p := port(t, ln1)

	start := time.Now()
	for i := range n {
		if i == 0 || i == first {
			if err := s.Activate(uint32(1 + i/first)); err != nil {
				t.Fatal(err)
			}
		}
		f.dial(t, p)
	}
	t.Logf("%d connections opened in %v", n, time.Since(start))
	for i, want := range []uint32{first, n - first} {
		if q, _, err := kernel.AcceptQueue([]int{ln1, ln2}[i]); err != nil || q != want {
			t.Fatalf("accept queue of socket %d = %d, %v; want %d", i+1, q, err, want)
		}
	}
	waitHeld(t, tr, 1, first)
	waitHeld(t, tr, 2, n-first)
	waitKernelHeld(t, p, n)
	checkCounters(t, s, 1, SlotCounters{Selected: first})
	checkCounters(t, s, 2, SlotCounters{Selected: n - first})
	checkExact(t, tr)

	const reads = 1000
	start = time.Now()
	for range reads {
		if _, err := tr.Held(1); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("Held: %v per read", time.Since(start)/reads)
}

// raiseNoFile raises this process's soft RLIMIT_NOFILE to at least n for
// the test, within the hard limit: raising that needs CAP_SYS_RESOURCE.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if old.Cur >= n {
		return
	}
	if old.Max < n {
		t.Fatalf("RLIMIT_NOFILE hard limit is %d, the test needs %d", old.Max, n)
	}
	lim := unix.Rlimit{Cur: n, Max: old.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raise RLIMIT_NOFILE to %d: %v", n, err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
}

// setNetnsSysctl writes a sysctl of the test's network namespace, which
// the test's thread is in; the host's value is untouched.
func setNetnsSysctl(t *testing.T, name, value string) {
	t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		t.Fatalf("set %s in the test's namespace: %v", name, err)
	}
}

func TestTrackingStats(t *testing.T) {
	requireTracking(t)
	inNetns(t)
	tr := loadTracking(t)
	stats, err := EnableStats()
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	f := newFDs(t)
	s, ln1, _ := trackedGroup(t, f, tr, 0, 128)
	p := port(t, ln1)
	if err := s.Activate(1); err != nil {
		t.Fatal(err)
	}

	runs0, time0, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	for range n {
		c := f.dial(t, p)
		fd := f.acceptN(t, ln1, 1)[0]
		f.close(t, c)
		f.close(t, fd)
	}
	waitHeld(t, tr, 1, 0)
	checkAccepted(t, tr, 1, n)
	runs, runtime, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	runs, runtime = runs-runs0, runtime-time0
	if runs < 2*n {
		t.Fatalf("tracking program ran %d times for %d connections, want at least %d", runs, n, 2*n)
	}
	t.Logf("tracking program: %d runs for %d connections (both ends), %.0f ns per run, %.0f ns per connection",
		runs, n, float64(runtime.Nanoseconds())/float64(runs), float64(runtime.Nanoseconds())/n)
	checkExact(t, tr)
}

// TestTrackingReload checks that a restarted daemon finds the counts and
// that the new program counts out what the old one counted in.
func TestTrackingReload(t *testing.T) {
	requireTracking(t)
	inNetns(t)
	dir := testPinDir(t)
	first, err := LoadTracking(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := newFDs(t)
	s, ln1, _ := trackedGroup(t, f, first, 0, 128)
	p := port(t, ln1)
	if err := s.Activate(1); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		f.dial(t, p)
	}
	waitHeld(t, first, 1, 5)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.dial(t, p) // counted by the pinned link alone
	}

	second, err := LoadTracking(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := second.Remove(); err != nil {
			t.Error(err)
		}
	}()
	waitHeld(t, second, 1, 8)
	for _, fd := range f.acceptN(t, ln1, 8) {
		f.close(t, fd)
	}
	waitHeld(t, second, 1, 0)
	checkAccepted(t, second, 1, 8)

	f.dial(t, p)
	waitHeld(t, second, 1, 1)
	if n, err := second.ResetSlot(1); err != nil || n != 1 {
		t.Fatalf("ResetSlot(1) = %d, %v; want 1 connection forgotten", n, err)
	}
	waitHeld(t, second, 1, 0)
	checkAccepted(t, second, 1, 0)
	// The forgotten connection ends without touching the slot.
	f.close(t, f.acceptN(t, ln1, 1)[0])
	time.Sleep(10 * time.Millisecond)
	waitHeld(t, second, 1, 0)
	checkExact(t, second)
}

func TestAcceptQueueNotListening(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, _, err := kernel.AcceptQueue(fd); err == nil {
		t.Error("AcceptQueue of a socket that does not listen succeeded")
	}
}

// TestTrackingConcurrent opens and closes connections from several threads
// at once, half closed first by the client and half by the server, and
// checks that the count returns to what the kernel lists.
func TestTrackingConcurrent(t *testing.T) {
	requireTracking(t)
	inNetns(t)
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	tr := loadTracking(t)
	f := newFDs(t)
	s, ln1, ln2 := trackedGroup(t, f, tr, 0, 4096)
	p := port(t, ln1)
	if err := s.Activate(1); err != nil {
		t.Fatal(err)
	}

	const workers, perWorker, kept = 8, 500, 10
	errs := make(chan error, workers)
	for w := range workers {
		go func() { errs <- churn(int(ns.Fd()), p, perWorker, kept, w%2 == 0) }()
	}
	// The listeners' queues are drained here while the workers run.
	accepted := 0
	for done := 0; done < workers; {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
			done++
		default:
			for _, ln := range []int{ln1, ln2} {
				for fd := f.accept(t, ln); fd >= 0; fd = f.accept(t, ln) {
					accepted++
					if accepted%4 == 0 {
						f.close(t, fd) // the server closes a quarter first
					}
				}
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	want := kernelHeld(t, p)
	missed, err := tr.Missed()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections, %d held at the end, tracking program missed %d runs", workers*perWorker, want, missed)
	var held int64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if held, err = tr.Held(1); err != nil {
			t.Fatal(err)
		}
		if want = kernelHeld(t, p); held == int64(want) {
			break
		}
	}
	if held != int64(want) {
		t.Errorf("Held(1) = %d, kernel lists %d", held, want)
	}
	checkAccepted(t, tr, 1, workers*perWorker)
	checkExact(t, tr)
}

// churn runs on its own thread in the network namespace ns: it opens n
// connections to port, closes all but kept of them, and keeps those open
// until it returns, with half-closes when shut is set.
func churn(ns, port, n, kept int, shut bool) error {
	runtime.LockOSThread() // never unlocked: the thread is discarded
	if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
		return err
	}
	var open []int
	defer func() {
		for _, fd := range open {
			unix.Close(fd)
		}
	}()
	for i := range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: loopback, Port: port}); err != nil {
			unix.Close(fd)
			return err
		}
		switch {
		case i < kept:
			open = append(open, fd)
		case shut:
			unix.Shutdown(fd, unix.SHUT_WR)
			open = append(open, fd)
		default:
			unix.Close(fd)
		}
	}
	return nil
}

// TestTrackingReloadInOtherCgroup checks that a daemon restarted in another
// cgroup keeps the link that counts out the connections of the listeners
// it created before, and that two links count nothing twice.
func TestTrackingReloadInOtherCgroup(t *testing.T) {
	requireTracking(t)
	inNetns(t)
	dir := testPinDir(t)
	first, err := LoadTracking(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := newFDs(t)
	s, ln1, _ := trackedGroup(t, f, first, 0, 128)
	p := port(t, ln1)
	if err := s.Activate(1); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		f.dial(t, p)
	}
	waitHeld(t, first, 1, 5)
	oldCgroup := first.Cgroup()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	enterChildCgroup(t)
	second, err := LoadTracking(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := second.Remove(); err != nil {
			t.Error(err)
		}
	}()
	if second.Cgroup() == oldCgroup {
		t.Fatalf("reloaded in cgroup %s, want a child of it", oldCgroup)
	}
	kept, err := filepath.Glob(filepath.Join(dir, pinOtherCgroupLink+"*"))
	if err != nil || len(kept) != 1 {
		t.Fatalf("kept links of other cgroups: %v, %v; want 1", kept, err)
	}
	// The connections of the old cgroup's listener end: only the kept
	// link sees that.
	for _, fd := range f.acceptN(t, ln1, 5) {
		f.close(t, fd)
	}
	waitHeld(t, second, 1, 0)

	// A listener of the new cgroup, a child of the old one, is seen by
	// both links, and counted once.
	s2, ln3, _ := trackedGroup(t, f, second, Slots, 128)
	if err := s2.Activate(1); err != nil {
		t.Fatal(err)
	}
	for range 7 {
		f.dial(t, port(t, ln3))
	}
	waitHeld(t, second, Slots+1, 7)
	for _, fd := range f.acceptN(t, ln3, 7) {
		f.close(t, fd)
	}
	waitHeld(t, second, Slots+1, 0)
	checkAccepted(t, second, Slots+1, 7)
	checkExact(t, second)
}

// enterChildCgroup moves this process into a new child of its cgroup v2
// until the test ends.
func enterChildCgroup(t *testing.T) {
	t.Helper()
	own, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	parent, err := cgroupDir(own)
	if err != nil || parent == "" {
		t.Fatalf("no cgroup2 mount shows cgroup %s: %v", own, err)
	}
	child := filepath.Join(parent, filepath.Base(testPinDir(t)))
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(child, "cgroup.procs"), pid, 0o644); err != nil {
		os.Remove(child)
		t.Fatalf("move into cgroup %s: %v", child, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(parent, "cgroup.procs"), pid, 0o644); err != nil {
			t.Errorf("move back into cgroup %s: %v", parent, err)
		}
		if err := os.Remove(child); err != nil {
			t.Error(err)
		}
	})
}
