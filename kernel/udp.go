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

// UDPBuffer is the receive and send buffer size ListenUDP asks for: what
// quic-go wants (it warns when it cannot raise a socket's buffers to it).
// A QUIC server bursts far more than the host's default 208 KiB.
const UDPBuffer = 7 << 20

// ListenUDP creates a UDP socket bound to hostport (resolved for network
// udp, udp4 or udp6), named name, with SO_REUSEPORT: every socket made so
// for the address joins one reuseport group. Its buffers are set to
// UDPBuffer with SO_RCVBUFFORCE and SO_SNDBUFFORCE, which a root process
// may do past net.core.rmem_max and wmem_max without changing those
// host-wide settings; a process without CAP_NET_ADMIN gets what
// SO_RCVBUF and SO_SNDBUF allow. The socket is close-on-exec.
func ListenUDP(name, network, hostport string) (*os.File, error) {
	addr, err := net.ResolveUDPAddr(network, hostport)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", hostport, err)
	}
	domain, sa := unix.AF_INET, unix.Sockaddr(nil)
	if ip4 := addr.IP.To4(); ip4 != nil || (addr.IP == nil && network != "udp6") {
		s := &unix.SockaddrInet4{Port: addr.Port}
		copy(s.Addr[:], ip4)
		sa = s
	} else {
		domain = unix.AF_INET6
		s := &unix.SockaddrInet6{Port: addr.Port}
		copy(s.Addr[:], addr.IP.To16())
		sa = s
	}
	fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("socket for %s: %w", hostport, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := setupUDP(fd, domain == unix.AF_INET6 && network == "udp6", sa); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func setupUDP(fd int, v6only bool, sa unix.Sockaddr) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fmt.Errorf("set SO_REUSEPORT: %w", err)
	}
	if v6only {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fmt.Errorf("set IPV6_V6ONLY: %w", err)
		}
	}
	for _, o := range []struct{ force, plain int }{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.force, UDPBuffer) != nil {
			// Best effort: the socket works with smaller buffers.
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.plain, UDPBuffer)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	return nil
}

// SocketCookie returns the SO_COOKIE of the socket f: a number the kernel
// gives each socket once per boot.
func SocketCookie(f *os.File) (uint64, error) {
	defer runtime.KeepAlive(f)
	return socketCookie(int(f.Fd()))
}

func socketCookie(fd int) (uint64, error) {
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("read SO_COOKIE: %w", err)
	}
	return c, nil
}

// BoundUDPAddr returns the address that the UDP socket f is bound to; it
// fails for any other kind of file.
func BoundUDPAddr(f *os.File) (*net.UDPAddr, error) {
	defer runtime.KeepAlive(f)
	fd := int(f.Fd())
	if _, err := CheckUDP(fd); err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("getsockname of %s: %w", f.Name(), err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.UDPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}, nil
	case *unix.SockaddrInet6:
		return &net.UDPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}, nil
	}
	return nil, fmt.Errorf("%s: not an IP socket", f.Name())
}

// CheckUDP checks that fd is a UDP socket bound to a port, and returns its
// family.
func CheckUDP(fd int) (Family, error) {
	typ, err := socketType(fd)
	if err != nil {
		return 0, err
	}
	if typ != unix.SOCK_DGRAM {
		return 0, fmt.Errorf("not a datagram socket (SO_TYPE %d)", typ)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return 0, fmt.Errorf("read SO_PROTOCOL: %w", err)
	}
	if proto != unix.IPPROTO_UDP {
		return 0, fmt.Errorf("not a UDP socket (SO_PROTOCOL %d)", proto)
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, fmt.Errorf("read SO_DOMAIN: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, fmt.Errorf("getsockname: %w", err)
	}
	port := 0
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		port = sa.Port
	case *unix.SockaddrInet6:
		port = sa.Port
	}
	if port == 0 {
		return 0, errors.New("UDP socket is not bound to a port")
	}
	return Family(domain), nil
}

// ConnCookie returns the SO_COOKIE of the socket under c, such as a
// *net.UDPConn.
func ConnCookie(c syscall.Conn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("read SO_COOKIE: %w", err)
	}
	var cookie uint64
	var cerr error
	if err := rc.Control(func(fd uintptr) { cookie, cerr = socketCookie(int(fd)) }); err != nil {
		return 0, fmt.Errorf("read SO_COOKIE: %w", err)
	}
	return cookie, cerr
}
