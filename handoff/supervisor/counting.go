package supervisor

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

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
	// Migrated returns the requests migrated into any slot since load:
	// the sum of Stats(s).Migrated over the slots, read without the
	// per-slot connection counts.
	Migrated() (uint64, error)
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
// process yet). It runs at status and scrape time only, never on a
// connection's path, and asks the kernel (sock_diag) for just those two
// states, so the thousands of TIME_WAIT sockets of a busy host cost
// nothing.
type procCounter struct {
	// inodes of the sockets that count, read once per status.
	inodes map[string]bool
}

// newProcCounter lists the counted sockets of handoffd's network namespace.
func newProcCounter(ports map[int]bool) (*procCounter, error) {
	c := &procCounter{inodes: map[string]bool{}}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := diagSockets(family, ports, c.inodes); err != nil {
			return nil, fmt.Errorf("count connections: %w", err)
		}
	}
	return c, nil
}

// TCP states, as the kernel numbers them.
const (
	tcpEstablished = 1
	tcpCloseWait   = 8
)

// diagSockets adds to inodes the TCP sockets of family whose local port is
// in ports and whose state is ESTABLISHED or CLOSE_WAIT, from one
// SOCK_DIAG_BY_FAMILY dump (struct inet_diag_req_v2 in, inet_diag_msg out).
func diagSockets(family uint8, ports map[int]bool, inodes map[string]bool) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	req := make([]byte, unix.NLMSG_HDRLEN+56)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	body := req[unix.NLMSG_HDRLEN:]
	body[0], body[1] = family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(body[4:], 1<<tcpEstablished|1<<tcpCloseWait)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag request: %w", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("sock_diag answer: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag answer: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				return fmt.Errorf("sock_diag: %w", syscall.Errno(-int32(binary.NativeEndian.Uint32(m.Data))))
			}
			// inet_diag_msg: the local port (big-endian) at 4, the inode at 68.
			if len(m.Data) < 72 || !ports[int(binary.BigEndian.Uint16(m.Data[4:6]))] {
				continue
			}
			inodes[strconv.FormatUint(uint64(binary.NativeEndian.Uint32(m.Data[68:72])), 10)] = true
		}
	}
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
