package kernel

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Conn is a server-side TCP connection as sock_diag lists it.
type Conn struct {
	// Inode is the socket's inode number, as /proc/PID/fd shows it
	// (socket:[Inode]); 0 for a connection still in an accept queue,
	// which no fd holds yet.
	Inode uint64
	// Family is the socket's address family: unix.AF_INET, or
	// unix.AF_INET6 for an IPv6 listener's connection, an IPv4 client's
	// on a dual-stack one included.
	Family int
	// Addr and Port are the local address and port; an IPv4-mapped
	// address is unmapped.
	Addr netip.Addr
	Port uint16
}

// TCP states, as the kernel numbers them.
const (
	tcpEstablished = 1
	tcpCloseWait   = 8
)

// Connections lists, from sock_diag, the TCP sockets of handoffd's network
// namespace whose local port is one of ports and that are ESTABLISHED or
// CLOSE_WAIT: accepted or queued connections of the listeners on those
// ports. It makes one dump per address family, and the kernel filters the
// ports (INET_DIAG_BC_S_EQ bytecode) and the states, so the rest of the
// host's sockets cost a hash walk and nothing more. It runs at status and
// scrape time only, never on a connection's path.
func Connections(ports []uint16) ([]Conn, error) {
	if len(ports) == 0 {
		return nil, nil
	}
	var conns []Conn
	for len(ports) > 0 {
		chunk := ports[:min(len(ports), filterPorts)]
		ports = ports[len(chunk):]
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			var err error
			if conns, err = diagSockets(family, chunk, conns); err != nil {
				return nil, fmt.Errorf("list connections: %w", err)
			}
		}
	}
	return conns, nil
}

// inet_diag bytecode (include/uapi/linux/inet_diag.h), which x/sys lacks.
const (
	inetDiagReqBytecode = 1  // INET_DIAG_REQ_BYTECODE
	inetDiagBCJmp       = 1  // INET_DIAG_BC_JMP
	inetDiagBCSEq       = 11 // INET_DIAG_BC_S_EQ
)

// filterPorts is how many ports one dump filters: an offset in the
// bytecode is 16 bits wide.
const filterPorts = 4096

// portFilter is inet_diag bytecode that accepts a socket whose local port
// is one of ports. Each port is an INET_DIAG_BC_S_EQ (an op, then one
// that holds the port) followed by an INET_DIAG_BC_JMP to the end, which
// accepts: a match goes on to the jump, a miss skips it to the next port,
// and the last miss jumps past the end, which rejects. The jump is there
// because the offset of a match is 8 bits wide and that of a miss 16;
// every op is reachable by the offsets of matches, as the kernel's audit
// of the bytecode wants.
func portFilter(ports []uint16) []byte {
	const perPort = 12
	bc := make([]byte, perPort*len(ports))
	op := func(at int, code, yes uint8, no uint16) {
		bc[at], bc[at+1] = code, yes
		binary.NativeEndian.PutUint16(bc[at+2:], no)
	}
	for i, p := range ports {
		at := i * perPort
		miss := uint16(perPort)
		if i == len(ports)-1 {
			miss = perPort + 4
		}
		op(at, inetDiagBCSEq, 8, miss)
		op(at+4, 0, 0, p)
		op(at+8, inetDiagBCJmp, 4, uint16(len(bc)-at-8))
	}
	return bc
}

// diagSockets appends to conns the sockets of family that Connections
// lists, from one SOCK_DIAG_BY_FAMILY dump (struct inet_diag_req_v2 with
// INET_DIAG_REQ_BYTECODE in, inet_diag_msg out).
func diagSockets(family uint8, ports []uint16, conns []Conn) ([]Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return conns, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	bc := portFilter(ports)
	const reqLen = 56 // struct inet_diag_req_v2
	attrLen := unix.NLA_HDRLEN + len(bc)
	req := make([]byte, unix.NLMSG_HDRLEN+reqLen+attrLen)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	body := req[unix.NLMSG_HDRLEN:]
	body[0], body[1] = family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(body[4:], 1<<tcpEstablished|1<<tcpCloseWait)
	attr := body[reqLen:]
	binary.NativeEndian.PutUint16(attr[0:], uint16(attrLen))
	binary.NativeEndian.PutUint16(attr[2:], inetDiagReqBytecode)
	copy(attr[unix.NLA_HDRLEN:], bc)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return conns, fmt.Errorf("sock_diag request: %w", err)
	}
	buf := make([]byte, 256<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return conns, fmt.Errorf("sock_diag answer: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return conns, fmt.Errorf("sock_diag answer: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return conns, nil
			case unix.NLMSG_ERROR:
				return conns, fmt.Errorf("sock_diag: %w", syscall.Errno(-int32(binary.NativeEndian.Uint32(m.Data))))
			}
			// inet_diag_msg: family at 0, the local port (big-endian)
			// at 4, the local address at 8 (16 bytes), the inode at 68.
			d := m.Data
			if len(d) < 72 {
				continue
			}
			c := Conn{Family: int(d[0]), Port: binary.BigEndian.Uint16(d[4:6]), Inode: uint64(binary.NativeEndian.Uint32(d[68:72]))}
			if d[0] == unix.AF_INET {
				c.Addr = netip.AddrFrom4([4]byte(d[8:12]))
			} else {
				c.Addr = netip.AddrFrom16([16]byte(d[8:24])).Unmap()
			}
			conns = append(conns, c)
		}
	}
}

// SocketInodes returns the inode numbers of the sockets among pid's fds:
// one readlink of /proc/PID/fd/N per fd.
func SocketInodes(pid int) ([]uint64, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil, err
	}
	var inodes []uint64
	buf := make([]byte, 64)
	for _, name := range names {
		n, err := unix.Readlink(dir+name, buf)
		if err != nil {
			continue
		}
		link := string(buf[:n])
		if !strings.HasPrefix(link, "socket:[") || !strings.HasSuffix(link, "]") {
			continue
		}
		if ino, err := strconv.ParseUint(link[len("socket:["):len(link)-1], 10, 64); err == nil {
			inodes = append(inodes, ino)
		}
	}
	return inodes, nil
}

// Descendants returns pid and every process that descends from it, from
// /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN): a server that forks
// workers holds its connections in them. A process that is gone has no
// descendants; pid is returned all the same.
func Descendants(pid int) []int {
	out := []int{pid}
	seen := map[int]bool{pid: true}
	for i := 0; i < len(out); i++ {
		dir := "/proc/" + strconv.Itoa(out[i]) + "/task/"
		f, err := os.Open(dir)
		if err != nil {
			continue
		}
		tids, _ := f.Readdirnames(-1)
		f.Close()
		for _, tid := range tids {
			data, err := os.ReadFile(dir + tid + "/children")
			if err != nil {
				continue
			}
			for _, field := range strings.Fields(string(data)) {
				if child, err := strconv.Atoi(field); err == nil && !seen[child] {
					seen[child] = true
					out = append(out, child)
				}
			}
		}
	}
	return out
}
