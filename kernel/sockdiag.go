package kernel

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ConnCounter counts connections by ownership when the kernel probes are
// not there: the server-side TCP sockets on a service's ports that are
// ESTABLISHED or CLOSE_WAIT, matched with the socket fds a generation
// holds. It misses connections still in an accept queue (they belong to no
// process yet). It runs at status and scrape time only, never on a
// connection's path, and asks the kernel (sock_diag) for just those two
// states, so the thousands of TIME_WAIT sockets of a busy host cost
// nothing.
type ConnCounter struct {
	// inodes of the sockets that count, read once per status.
	inodes map[string]bool
}

// NewConnCounter lists the counted sockets on ports in handoffd's network
// namespace, once: a counter serves one status, and is not kept.
func NewConnCounter(ports map[int]bool) (*ConnCounter, error) {
	c := &ConnCounter{inodes: map[string]bool{}}
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

// Held counts the counted sockets among pid's fds.
func (c *ConnCounter) Held(pid int) (int64, error) {
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
