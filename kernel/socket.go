package kernel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenTCP creates a listening TCP socket bound to hostport (resolved
// for network tcp, tcp4 or tcp6), named name. With reuseport it sets
// SO_REUSEPORT, so that every socket made so for the address joins one
// reuseport group; the kernel admits a socket to a group only when it has
// the same owner as the others. The socket is plain TCP, never MPTCP (an
// MPTCP socket cannot go into a REUSEPORT_SOCKARRAY), and close-on-exec.
func ListenTCP(name, network, hostport string, reuseport bool, backlog int) (*os.File, error) {
	addr, err := net.ResolveTCPAddr(network, hostport)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", hostport, err)
	}
	domain, sa := unix.AF_INET, unix.Sockaddr(nil)
	if ip4 := addr.IP.To4(); ip4 != nil || (addr.IP == nil && network != "tcp6") {
		s := &unix.SockaddrInet4{Port: addr.Port}
		copy(s.Addr[:], ip4)
		sa = s
	} else {
		domain = unix.AF_INET6
		s := &unix.SockaddrInet6{Port: addr.Port}
		copy(s.Addr[:], addr.IP.To16())
		sa = s
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, fmt.Errorf("socket for %s: %w", hostport, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := setupListener(fd, reuseport, domain == unix.AF_INET6 && network == "tcp6", sa, backlog); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func setupListener(fd int, reuseport, v6only bool, sa unix.Sockaddr, backlog int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("set SO_REUSEADDR: %w", err)
	}
	if reuseport {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("set SO_REUSEPORT: %w", err)
		}
	}
	if v6only {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fmt.Errorf("set IPV6_V6ONLY: %w", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return nil
}

// Dup returns a close-on-exec duplicate of f: closing either never closes
// the socket while the other is open.
func Dup(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// ListeningAddr returns the address a listening socket is bound to: a
// *net.TCPAddr or a *net.UnixAddr. It fails for anything that is not a
// listening socket.
func ListeningAddr(f *os.File) (net.Addr, error) {
	fd := int(f.Fd())
	defer runtime.KeepAlive(f)
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		return nil, fmt.Errorf("%s is not a listening socket", f.Name())
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("getsockname of %s: %w", f.Name(), err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: sa.Name, Net: "unix"}, nil
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}, nil
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}, nil
	}
	return nil, fmt.Errorf("%s: unknown address family", f.Name())
}

// Family is a socket's address family.
type Family int

// The families of sockets handoffd hands over.
const (
	FamilyUnix  = Family(unix.AF_UNIX)
	FamilyInet  = Family(unix.AF_INET)
	FamilyInet6 = Family(unix.AF_INET6)
)

func (f Family) String() string {
	switch f {
	case FamilyInet:
		return "AF_INET"
	case FamilyInet6:
		return "AF_INET6"
	case FamilyUnix:
		return "AF_UNIX"
	}
	return fmt.Sprintf("%d", int(f))
}

// socketType returns the SO_TYPE of the socket fd; an error says whether
// fd is no socket at all.
func socketType(fd int) (int, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if errors.Is(err, unix.ENOTSOCK) || errors.Is(err, unix.EBADF) {
		return 0, fmt.Errorf("not a socket: %w", err)
	}
	if err != nil {
		return 0, fmt.Errorf("read SO_TYPE: %w", err)
	}
	return typ, nil
}

// CheckListening checks that fd is a listening stream socket, and returns
// its family.
func CheckListening(fd int) (Family, error) {
	typ, err := socketType(fd)
	if err != nil {
		return 0, err
	}
	if typ != unix.SOCK_STREAM {
		return 0, fmt.Errorf("not a stream socket (SO_TYPE %d)", typ)
	}
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return 0, fmt.Errorf("read SO_ACCEPTCONN: %w", err)
	}
	if acc != 1 {
		return 0, errors.New("socket is not listening (SO_ACCEPTCONN is 0)")
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, fmt.Errorf("read SO_DOMAIN: %w", err)
	}
	return Family(domain), nil
}

// CheckSeqpacket checks that fd is a SOCK_SEQPACKET socket.
func CheckSeqpacket(fd int) error {
	typ, err := socketType(fd)
	if err != nil {
		return fmt.Errorf("want a SOCK_SEQPACKET socket: %w", err)
	}
	if typ != unix.SOCK_SEQPACKET {
		return fmt.Errorf("socket of type %d, want SOCK_SEQPACKET", typ)
	}
	return nil
}

// SeqpacketConn returns a connection over a close-on-exec duplicate of
// f, which must be a SOCK_SEQPACKET UNIX socket; f stays the caller's.
func SeqpacketConn(f *os.File) (*net.UnixConn, error) {
	if err := CheckSeqpacket(int(f.Fd())); err != nil {
		return nil, err
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("a connection over a SOCK_SEQPACKET socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("a SOCK_SEQPACKET socket that is not a UNIX one")
	}
	return uc, nil
}

// SeqpacketPair returns the two ends of a new pair of connected
// SOCK_SEQPACKET UNIX sockets, both close-on-exec: one as a connection
// for this process, the other as a file, named name, to pass on. A
// seqpacket socket keeps each message whole and reads end of file once
// the other end is closed.
func SeqpacketPair(name string) (*net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair(AF_UNIX, SOCK_SEQPACKET): %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), name)
	mine := os.NewFile(uintptr(fds[0]), name+" (other end)")
	c, err := SeqpacketConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, err
	}
	return c, theirs, nil
}

// Unread returns how many bytes wait in the receive queue of the
// connection c (SIOCINQ), unread by the process: a request on its way.
// A TLS connection is asked through its underlying connection. false when
// c has no socket to ask.
func Unread(c net.Conn) (int, bool) {
	if t, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = t.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false
	}
	n, opErr := 0, error(nil)
	if err := control(sc, func(fd int) { n, opErr = unix.IoctlGetInt(fd, unix.SIOCINQ) }); err != nil || opErr != nil {
		return 0, false
	}
	return n, true
}
