package supervisor

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// SlotStats is what the kernel counted for one slot of a steered listener.
type SlotStats struct {
	// Held is the number of connections the slot's socket holds now:
	// ESTABLISHED or CLOSE_WAIT, accepted or still in the accept queue.
	Held int64
	// Accepted counts connections that reached ESTABLISHED on the slot.
	Accepted uint64
	// Selected counts new connections the steering program sent to it.
	Selected uint64
	// Migrated counts requests moved to it from a closing listener.
	Migrated uint64
}

// CountingSteering is a Steering that also counts, per slot, what the
// kernel did. cmd/handoffd passes one when the tracking probes load.
type CountingSteering interface {
	Steering
	Stats(slot uint32) (SlotStats, error)
}

// Where a generation's connection count comes from.
const (
	SourceEBPF = "ebpf" // the kernel probes (loader's tracking)
	SourceProc = "proc" // the generation's fds matched with /proc/net/tcp
)

// slotBaselines remembers, per generation, the cumulative slot counters at
// the time the generation got its slot, since a slot is reused every
// Slots generations.
type slotBaselines struct {
	mu   sync.Mutex
	base map[int]SlotStats
}

func (b *slotBaselines) set(gen int, s SlotStats) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.base == nil {
		b.base = map[int]SlotStats{}
	}
	b.base[gen] = s
}

func (b *slotBaselines) since(gen int, now SlotStats) SlotStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	base := b.base[gen]
	now.Accepted -= min(now.Accepted, base.Accepted)
	now.Selected -= min(now.Selected, base.Selected)
	now.Migrated -= min(now.Migrated, base.Migrated)
	return now
}

func (b *slotBaselines) forget(gen int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.base, gen)
}

// acceptQueue returns the length of a listening TCP socket's accept queue:
// for a listener, TCP_INFO's unacked field holds it.
func acceptQueue(f *os.File) (uint32, bool) {
	info, err := unix.GetsockoptTCPInfo(int(f.Fd()), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, false
	}
	return info.Unacked, true
}

// procCounter counts connections by ownership when the kernel probes are
// not there: the server-side TCP sockets on a service's ports that are
// ESTABLISHED or CLOSE_WAIT, matched with the socket fds a generation
// holds. It misses connections still in an accept queue (they belong to no
// process yet). It reads /proc, so it is used at status and scrape time
// only, never on a connection's path.
type procCounter struct {
	// inodes of the sockets that count, read once per status.
	inodes map[string]bool
}

// newProcCounter reads the TCP tables of handoffd's network namespace.
func newProcCounter(ports map[int]bool) (*procCounter, error) {
	c := &procCounter{inodes: map[string]bool{}}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if err := c.read(table, ports); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *procCounter) read(table string, ports map[int]bool) error {
	f, err := os.Open(table)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("count connections: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st ... uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || (fields[3] != "01" && fields[3] != "08") {
			continue
		}
		_, portHex, _ := strings.Cut(fields[1], ":")
		port, err := strconv.ParseUint(portHex, 16, 16)
		if err == nil && ports[int(port)] {
			c.inodes[fields[9]] = true
		}
	}
	return sc.Err()
}

// held counts the counted sockets among pid's fds.
func (c *procCounter) held(pid int) (int64, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(link, "socket:[") {
			continue
		}
		if c.inodes[link[len("socket:["):len(link)-1]] {
			n++
		}
	}
	return n, nil
}

// tcpPorts returns the TCP ports of a service's listeners.
func tcpPorts(svc *ServiceConfig) map[int]bool {
	ports := map[int]bool{}
	for _, l := range svc.Listeners {
		network, hostport, err := ParseAddress(l.Address)
		if err != nil || network == "unix" {
			continue
		}
		if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
			if p, err := strconv.Atoi(hostport[i+1:]); err == nil {
				ports[p] = true
			}
		}
	}
	return ports
}
