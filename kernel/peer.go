package kernel

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PeerCred is who is at the other end of a UNIX socket connection, as the
// kernel recorded it when the peer connected (SO_PEERCRED, SO_PEERGROUPS).
type PeerCred struct {
	PID    int32
	UID    uint32
	GID    uint32
	Groups []uint32
}

// InGroup reports whether gid is the peer's group or one of its
// supplementary groups.
func (c *PeerCred) InGroup(gid uint32) bool {
	return c.GID == gid || slices.Contains(c.Groups, gid)
}

// ReadPeerCred returns the credentials of c's peer.
func ReadPeerCred(c *net.UnixConn) (*PeerCred, error) {
	var cred *PeerCred
	var opErr error
	err := control(c, func(fd int) {
		var uc *unix.Ucred
		uc, opErr = unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		if opErr != nil {
			opErr = fmt.Errorf("SO_PEERCRED: %w", opErr)
			return
		}
		cred = &PeerCred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}
		cred.Groups, opErr = peerGroups(fd)
	})
	if err = errors.Join(err, opErr); err != nil {
		return nil, err
	}
	return cred, nil
}

// peerGroups returns the supplementary groups of the peer of fd
// (SO_PEERGROUPS, Linux 4.13). x/sys has no wrapper for it.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for range 4 {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case errno == unix.ERANGE && int(n/4) > len(buf):
			buf = make([]uint32, n/4)
		case errno != 0:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", errno)
		default:
			return buf[:n/4], nil
		}
	}
	return nil, errors.New("SO_PEERGROUPS: the peer's groups keep growing")
}

// control runs f on the fd of c.
func control(c syscall.Conn, f func(fd int)) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return raw.Control(func(fd uintptr) { f(int(fd)) })
}
