package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/handoffd/handoffd/bpf"
)

// TrackingSlots is the number of counters a Tracking keeps. A Steering
// loaded with LoadSteeringWith(dir, t, base) counts its slot s in tracking
// slot base+s, so each counted listener takes its own range of Slots
// counters: one with base b counts generation g in tracking slot
// b + g%Slots. Kernel hands the ranges out and pins them.
const TrackingSlots = bpf.TrackingSlots

// Names of the pins in a Tracking's directory.
const (
	pinTrackLink = "track_link"
	// A link kept from a run in another cgroup, followed by its id.
	pinOtherCgroupLink = pinTrackLink + "_cgroup_"
	pinListenerSlot    = bpf.TrackMapListenerSlot
	pinConns           = bpf.TrackMapConns
	pinConnCounts      = bpf.TrackMapConnCounts
	pinTrackOverflow   = bpf.TrackMapOverflows
)

var trackMapNames = []string{pinListenerSlot, pinConns, pinConnCounts, pinTrackOverflow}

// Tracking counts, per tracking slot and from the kernel, the TCP
// connections a generation holds: server-side connections that came from a
// listening socket tagged with the slot (Tag) and are ESTABLISHED or
// CLOSE_WAIT, whether accepted or still in the accept queue. A connection
// that the kernel migrates from a closing listener to the active one is
// counted in the slot of the listener it moved to, when the Steering of
// that group was loaded with LoadSteeringWith.
//
// The counting program is a sock_ops program attached to the cgroup v2 of
// the process that called LoadTracking, and the kernel runs it for the TCP
// sockets of that cgroup and its descendants only. A connection is in the
// cgroup of its listener, and a listener in the cgroup of the process that
// created it: only listeners that handoffd (or a process in its cgroup)
// creates can be counted, whatever their network namespace. Unlike a
// tracing program, a cgroup program is never skipped by the kernel, so the
// counts are exact.
//
// One Tracking serves the whole daemon. Its methods may be called from
// several goroutines, but not after Close.
type Tracking struct {
	dir       string
	cgroup    string
	prog      *ebpf.Program
	link      link.Link
	listeners *ebpf.Map
	conns     *ebpf.Map
	counts    *ebpf.Map
	overflows *ebpf.Map
}

// LoadTracking loads the tracking program, attaches it to the cgroup v2 of
// the calling process (BPF_CGROUP_SOCK_OPS, as a bpf_link that leaves
// other programs of the cgroup in place) and pins its maps and link under
// dir, creating dir as LoadSteering does. It finds the cgroup in
// /proc/self/cgroup and its directory in the cgroup2 mount of
// /proc/self/mountinfo; if cgroup2 is mounted nowhere, it mounts it at
// /run/handoff/cgroup2 for the time of the attach.
//
// Maps that an earlier run pinned in dir are reused, so the counts and the
// tags of open sockets survive a restart of handoffd; the program is
// attached afresh and its link pin replaced in one rename, so a new build's
// program takes over from the old one without a gap. Both run for a moment
// and count nothing twice: a connection is counted in by whichever inserts
// it first and counted out by whichever deletes it. If the earlier run was
// in another cgroup, its link is kept (pinned as track_link_cgroup_<id>),
// since the connections of its listeners are counted out there. LoadTracking
// fails if a pinned map does not match this build; Remove the old pins to
// start over.
func LoadTracking(dir string) (*Tracking, error) {
	t, err := loadTrackingIn(dir)
	if err != nil {
		return nil, fmt.Errorf("load tracking in %s: %w", dir, err)
	}
	return t, nil
}

func loadTrackingIn(dir string) (*Tracking, error) {
	if err := makePinDir(dir); err != nil {
		return nil, err
	}
	spec, err := bpf.LoadTrack()
	if err != nil {
		return nil, err
	}
	pinned, err := openPinnedMaps(spec, dir, trackMapNames)
	if err != nil {
		return nil, err
	}
	defer closeMaps(pinned)

	var objs bpf.TrackObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: pinned}); err != nil {
		return nil, explainTrackingLoad(err)
	}
	t := &Tracking{
		dir:       dir,
		prog:      objs.Track,
		listeners: objs.ListenerSlot,
		conns:     objs.Conns,
		counts:    objs.ConnCounts,
		overflows: objs.Overflows,
	}
	if err := t.pinMaps(pinned); err != nil {
		t.Close()
		return nil, err
	}
	if err := t.attach(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// openPinnedMaps opens those of names that are pinned in dir and checks
// them against spec. A missing pin is not an error: the map is created.
func openPinnedMaps(spec *ebpf.CollectionSpec, dir string, names []string) (map[string]*ebpf.Map, error) {
	maps := make(map[string]*ebpf.Map)
	for _, name := range names {
		m, err := openPinnedMap(spec, dir, name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			closeMaps(maps)
			return nil, err
		}
		maps[name] = m
	}
	return maps, nil
}

func closeMaps(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}

// pinMaps pins the maps that were created rather than taken from pins.
func (t *Tracking) pinMaps(pinned map[string]*ebpf.Map) error {
	maps := map[string]*ebpf.Map{
		pinListenerSlot:  t.listeners,
		pinConns:         t.conns,
		pinConnCounts:    t.counts,
		pinTrackOverflow: t.overflows,
	}
	for _, name := range trackMapNames {
		if pinned[name] != nil {
			continue
		}
		if err := maps[name].Pin(filepath.Join(t.dir, name)); err != nil {
			return fmt.Errorf("pin %s: %w", name, err)
		}
	}
	return nil
}

// attach attaches the program to the calling process's cgroup and pins its
// link over any earlier one.
func (t *Tracking) attach() error {
	l, cgroup, id, err := attachToOwnCgroup(t.prog)
	if err != nil {
		return err
	}
	t.link, t.cgroup = l, cgroup
	if err := t.keepOtherCgroupLink(id); err != nil {
		return err
	}
	tmp := filepath.Join(t.dir, pinTrackLink+"_new") // bpffs refuses names with a dot
	os.Remove(tmp)
	if err := l.Pin(tmp); err != nil {
		return fmt.Errorf("pin tracking link: %w", explainTrackingAttach(err))
	}
	// rename(2) replaces the old pin atomically: the old link detaches
	// when its last reference goes, after the new one is attached.
	if err := os.Rename(tmp, filepath.Join(t.dir, pinTrackLink)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace tracking link pin: %w", err)
	}
	// A link kept from a run in another cgroup, which is ours again, now
	// only doubles the work.
	os.Remove(filepath.Join(t.dir, otherCgroupLinkPin(id)))
	return nil
}

// attachToOwnCgroup attaches prog to the cgroup v2 of the calling process
// and returns the link, the cgroup's path and its id.
func attachToOwnCgroup(prog *ebpf.Program) (l link.Link, cgroup string, id uint64, err error) {
	cgroup, err = ownCgroup()
	if err != nil {
		return nil, "", 0, err
	}
	err = inCgroupDir(cgroup, func(dir string) error {
		if id, err = cgroupID(dir); err != nil {
			return err
		}
		l, err = link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: ebpf.AttachCGroupSockOps, Program: prog})
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", cgroup, explainTrackingAttach(err))
		}
		return nil
	})
	return l, cgroup, id, err
}

// keepOtherCgroupLink moves the pin of the earlier run's link aside when
// that link is attached to a cgroup other than id: the sockets of that
// cgroup are counted out by it alone. A link of the same cgroup, or the
// tp_btf link of an earlier build, is left to be replaced.
func (t *Tracking) keepOtherCgroupLink(id uint64) error {
	pin := filepath.Join(t.dir, pinTrackLink)
	old, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned tracking link: %w", err)
	}
	defer old.Close()
	info, err := old.Info()
	if err != nil {
		return fmt.Errorf("read pinned tracking link: %w", err)
	}
	cg := info.Cgroup()
	if cg == nil || cg.CgroupId == id {
		return nil
	}
	if err := os.Rename(pin, filepath.Join(t.dir, otherCgroupLinkPin(cg.CgroupId))); err != nil {
		return fmt.Errorf("keep tracking link of cgroup %d: %w", cg.CgroupId, err)
	}
	return nil
}

func otherCgroupLinkPin(id uint64) string {
	return pinOtherCgroupLink + strconv.FormatUint(id, 10)
}

// Dir returns the directory the Tracking is pinned in.
func (t *Tracking) Dir() string { return t.dir }

// Cgroup returns the cgroup v2 the tracking program is attached to, as a
// path in the hierarchy: the cgroup of the process that loaded it.
// Listeners created outside it are not counted.
func (t *Tracking) Cgroup() string { return t.cgroup }

// Tag marks the listening socket fd as one of tracking slot's: every
// connection it creates from now on is counted in slot. Tag it before it
// can receive connections (between socket(2) and Steering.Insert or
// Activate): children that exist already are not counted. The tag lives on
// the socket, not on fd: it holds in every process that shares the socket
// and goes away when the socket closes. The socket must have been created
// in the Tracking's cgroup (Cgroup), or its connections are not seen.
func (t *Tracking) Tag(fd int, slot uint32) error {
	if err := checkTrackingSlot(slot); err != nil {
		return fmt.Errorf("tag socket %d with tracking slot %d: %w", fd, slot, err)
	}
	if err := t.listeners.Update(uint32(fd), bpf.TrackListenerTag{Slot: slot}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("tag socket %d with tracking slot %d: %w", fd, slot, err)
	}
	return nil
}

// Held returns the number of connections that tracking slot holds now:
// ESTABLISHED or CLOSE_WAIT, accepted or still queued.
func (t *Tracking) Held(slot uint32) (int64, error) {
	c, err := t.slotCount(slot)
	if err != nil {
		return 0, fmt.Errorf("read held connections of tracking slot %d: %w", slot, err)
	}
	return c.Held, nil
}

// Accepted returns the number of connections that reached ESTABLISHED on a
// listener of tracking slot since the slot was last reset. A connection
// migrated to another listener stays accepted where it was established.
func (t *Tracking) Accepted(slot uint32) (uint64, error) {
	c, err := t.slotCount(slot)
	if err != nil {
		return 0, fmt.Errorf("read accepted connections of tracking slot %d: %w", slot, err)
	}
	return c.Accepted, nil
}

func (t *Tracking) slotCount(slot uint32) (bpf.TrackSlotCount, error) {
	if err := checkTrackingSlot(slot); err != nil {
		return bpf.TrackSlotCount{}, err
	}
	var perCPU []bpf.TrackSlotCount
	if err := t.counts.Lookup(slot, &perCPU); err != nil {
		return bpf.TrackSlotCount{}, err
	}
	var sum bpf.TrackSlotCount
	for _, c := range perCPU {
		sum.Held += c.Held
		sum.Accepted += c.Accepted
	}
	return sum, nil
}

// Overflows returns how many connections were not counted in, or not
// counted out, because the kernel refused an update: the table of held
// connections was full or out of memory, or the socket refused state
// callbacks. It is 0 when the counts are exact.
func (t *Tracking) Overflows() (uint64, error) {
	var perCPU []uint64
	if err := t.overflows.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read tracking overflows: %w", err)
	}
	var sum uint64
	for _, n := range perCPU {
		sum += n
	}
	return sum, nil
}

// ResetSlot forgets the connections counted in tracking slot and zeroes
// its counters, so that a new generation can take the slot. It returns how
// many connections were still counted there; they are counted nowhere
// after, and their end does not touch the new generation's count.
//
// Call it before tagging the new generation's listener, and only when no
// listener tagged with slot is open any more (its accept queue migrated or
// dropped): a connection established during the reset could be counted
// and then zeroed.
func (t *Tracking) ResetSlot(slot uint32) (forgotten int, err error) {
	if err := checkTrackingSlot(slot); err != nil {
		return 0, fmt.Errorf("reset tracking slot %d: %w", slot, err)
	}
	var (
		cookie uint64
		c      bpf.TrackConn
		stale  []uint64
	)
	iter := t.conns.Iterate()
	for iter.Next(&cookie, &c) {
		if c.Slot == slot {
			stale = append(stale, cookie)
		}
	}
	if err := iter.Err(); err != nil {
		return 0, fmt.Errorf("reset tracking slot %d: list connections: %w", slot, err)
	}
	for _, cookie := range stale {
		// The program may delete it first, when the connection ends.
		if err := t.conns.Delete(cookie); err == nil {
			forgotten++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return forgotten, fmt.Errorf("reset tracking slot %d: %w", slot, err)
		}
	}
	zero := make([]bpf.TrackSlotCount, ebpf.MustPossibleCPU())
	if err := t.counts.Update(slot, zero, ebpf.UpdateAny); err != nil {
		return forgotten, fmt.Errorf("reset tracking slot %d: %w", slot, err)
	}
	return forgotten, nil
}

// Stats returns how many times the tracking program ran and for how long
// in total, as the kernel counts while statistics are enabled (EnableStats
// or sysctl kernel.bpf_stats_enabled); otherwise the numbers stand still.
// The program runs for every sock_ops event of every TCP socket in the
// Tracking's cgroup (connect, RTO and window queries, established), client
// sockets included, and for each state change of the connections it counts.
func (t *Tracking) Stats() (runs uint64, runtime time.Duration, err error) {
	s, err := t.prog.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("read tracking program stats: %w", err)
	}
	return s.RunCount, s.Runtime, nil
}

// Missed returns how many times the kernel skipped the tracking program
// because it was already running on the same CPU (Linux >= 5.12 counts
// it). A skipped run could leave a connection uncounted or counted after
// it ended. The kernel applies that recursion check to tracing programs
// only, not to the cgroup program Tracking uses, so Missed stays 0; it is
// kept as a check that this still holds.
func (t *Tracking) Missed() (uint64, error) {
	s, err := t.prog.Stats()
	if err != nil {
		return 0, fmt.Errorf("read tracking program stats: %w", err)
	}
	return s.RecursionMisses, nil
}

// Close releases the Tracking's handles and keeps the pins: the program
// stays attached and goes on counting, and LoadTracking finds the counts
// again.
func (t *Tracking) Close() error {
	var errs []error
	if t.link != nil {
		errs = append(errs, t.link.Close())
	}
	errs = append(errs, t.prog.Close(), t.listeners.Close(), t.conns.Close(),
		t.counts.Close(), t.overflows.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close tracking: %w", err)
	}
	return nil
}

// Remove closes the Tracking, detaches its program (and any kept from a
// run in another cgroup) and removes its pins and their directory. Steerings loaded with it keep their references to
// its maps but nothing counts in them any more.
func (t *Tracking) Remove() error {
	errs := []error{t.Close()}
	kept, _ := filepath.Glob(filepath.Join(t.dir, pinOtherCgroupLink+"*"))
	for _, name := range append([]string{pinTrackLink}, trackMapNames...) {
		kept = append(kept, filepath.Join(t.dir, name))
	}
	for _, path := range kept {
		err := os.Remove(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(t.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove tracking in %s: %w", t.dir, err)
	}
	return nil
}

func checkTrackingSlot(slot uint32) error {
	if slot >= TrackingSlots {
		return fmt.Errorf("tracking slot out of range [0, %d)", TrackingSlots)
	}
	return nil
}
