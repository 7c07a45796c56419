package loader

import (
	"bufio"
	"bytes"
	_ "embed"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The objects of a handoffd that counted connections with a sock_ops
// program (track) and moved counts on migration (steer, with track_base),
// as that handoffd pinned them: LoadKernel must clean up after it. They
// are embedded: make test-vm runs the test binary away from testdata/.
var (
	//go:embed testdata/track_v1_bpfel.o
	oldTrackObject []byte
	//go:embed testdata/steer_v1_bpfel.o
	oldSteerObject []byte
)

// ownCgroupDir returns the directory of the test's cgroup v2.
func ownCgroupDir(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var cg string
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			cg = p
		}
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields := strings.Fields(pre)
		if ok && len(fields) >= 5 && fields[3] == "/" && strings.HasPrefix(post, "cgroup2 ") && cg != "" {
			return filepath.Join(fields[4], cg)
		}
	}
	if cg == "" {
		t.Fatal("no cgroup v2 line (0::) in /proc/self/cgroup")
	}
	// No cgroup2 mount (a guest booted with a shell as init): one of our
	// own for the test.
	dir := t.TempDir()
	if err := unix.Mount("cgroup2", dir, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mount cgroup2: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return filepath.Join(dir, cg)
}

// pinOldCounting loads and pins, under dir, what the former handoffd
// pinned: the sock_ops counter attached to the test's cgroup by a link
// pinned in dir/tracking, and the counted steering of service/http with
// its tracking base. It returns the counter link's id.
func pinOldCounting(t *testing.T, dir string) link.ID {
	t.Helper()
	trackSpec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(oldTrackObject))
	if err != nil {
		t.Fatal(err)
	}
	track, err := ebpf.NewCollection(trackSpec)
	if err != nil {
		t.Fatal(err)
	}
	defer track.Close()
	tdir := filepath.Join(dir, trackingDir)
	if err := makePinDir(tdir); err != nil {
		t.Fatal(err)
	}
	for name, m := range track.Maps {
		if err := m.Pin(filepath.Join(tdir, name)); err != nil {
			t.Fatal(err)
		}
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: ownCgroupDir(t), Attach: ebpf.AttachCGroupSockOps, Program: track.Programs["track"]})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Pin(filepath.Join(tdir, "track_link")); err != nil {
		t.Fatal(err)
	}
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}

	steerSpec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(oldSteerObject))
	if err != nil {
		t.Fatal(err)
	}
	if err := steerSpec.Variables["track_base"].Set(uint32(2 * Slots)); err != nil {
		t.Fatal(err)
	}
	steer, err := ebpf.NewCollectionWithOptions(steerSpec, ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"conns": track.Maps["conns"], "conn_counts": track.Maps["conn_counts"],
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer steer.Close()
	sdir := filepath.Join(dir, "service", "http")
	if err := makePinDir(sdir); err != nil {
		t.Fatal(err)
	}
	if err := steer.Programs["steer"].Pin(filepath.Join(sdir, pinProgram)); err != nil {
		t.Fatal(err)
	}
	for _, name := range pinNames[1:] {
		if err := steer.Maps[name].Pin(filepath.Join(sdir, name)); err != nil {
			t.Fatal(err)
		}
	}
	base, err := ebpf.NewMap(&ebpf.MapSpec{Name: "tracking_base", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	if err := base.Update(uint32(0), uint32(2*Slots), ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if err := base.Pin(filepath.Join(sdir, pinBase)); err != nil {
		t.Fatal(err)
	}
	return info.ID
}

// TestKernelRemovesOldCounter starts over the pins of a handoffd that
// counted with a sock_ops program: LoadKernel detaches that program and
// removes its pins, and the listener it steered is re-adopted and still
// steers.
func TestKernelRemovesOldCounter(t *testing.T) {
	requireEBPF(t)
	inNetns(t)
	dir := testPinDir(t)
	t.Cleanup(func() { os.RemoveAll(dir) })
	id := pinOldCounting(t, dir)

	// The old steering serves a listener in slot 1, active.
	old, err := OpenPinned(filepath.Join(dir, "service", "http"))
	if err != nil {
		t.Fatal(err)
	}
	ln1, ln2 := group(t, old)
	if err := old.Activate(1); err != nil {
		t.Fatal(err)
	}
	old.Close()

	k := LoadKernel(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer k.Close()
	if _, err := os.Stat(filepath.Join(dir, trackingDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tracking pins still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "service", "http", pinBase)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tracking base still pinned: %v", err)
	}
	// bpffs drops a pin's reference after an RCU grace period.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		l, err := link.NewFromID(id)
		if err != nil {
			break
		}
		l.Close()
		if time.Now().After(deadline) {
			t.Fatalf("the old counter's link %d still exists after 5s: its program still runs for every connection", id)
		}
	}

	s, err := k.Steering("service", "http", true)
	if err != nil {
		t.Fatalf("re-adopt the old steering: %v", err)
	}
	defer s.Remove()
	if slot, err := s.Active(); err != nil || slot != 1 {
		t.Errorf("Active() = %d, %v; want 1", slot, err)
	}
	p := port(t, ln1)
	for range 3 {
		dial(t, p)
	}
	acceptAll(t, 3, ln1)
	// A swap on the re-adopted steering: the new socket's connections go
	// to it, and they are counted on demand.
	if err := s.Activate(2); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		dial(t, p)
	}
	acceptAll(t, 4, ln2)
	checkCounters(t, s, 2, SlotCounters{Selected: 4})
	if c := k.Counter(); c != nil {
		checkCount(t, c, []int{os.Getpid()}, p, PortHeld{Connections: 7, Listeners: 2})
	} else if os.Getenv("CI") == "true" {
		t.Error("no connection counter in CI")
	}
}
