package kernel

import (
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestListenUDP(t *testing.T) {
	a, err := ListenUDP("a", "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	addr, err := BoundUDPAddr(a)
	if err != nil {
		t.Fatal(err)
	}
	if !addr.IP.Equal(net.IPv4(127, 0, 0, 1)) || addr.Port == 0 {
		t.Fatalf("bound to %v", addr)
	}
	// A second member of the group binds the same port.
	b, err := ListenUDP("b", "udp4", addr.String())
	if err != nil {
		t.Fatalf("second reuseport UDP socket on %v: %v", addr, err)
	}
	defer b.Close()
	ca, err := SocketCookie(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := SocketCookie(b)
	if err != nil {
		t.Fatal(err)
	}
	if ca == 0 || ca == cb {
		t.Errorf("socket cookies %d and %d: want two distinct ones", ca, cb)
	}
	if fam, err := CheckUDP(int(a.Fd())); err != nil || fam != FamilyInet {
		t.Errorf("CheckUDP: %v, %v", fam, err)
	}
	if os.Geteuid() == 0 {
		// Root gets the buffers past rmem_max; the kernel reports double.
		n, err := unix.GetsockoptInt(int(a.Fd()), unix.SOL_SOCKET, unix.SO_RCVBUF)
		if err != nil || n < UDPBuffer {
			t.Errorf("SO_RCVBUF %d (%v), want at least %d", n, err, UDPBuffer)
		}
	}
	six, err := ListenUDP("six", "udp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer six.Close()
	if fam, err := CheckUDP(int(six.Fd())); err != nil || fam != FamilyInet6 {
		t.Errorf("CheckUDP of udp6: %v, %v", fam, err)
	}
}

func TestCheckUDPRefusesOthers(t *testing.T) {
	tcp, err := ListenTCP("t", "tcp4", "127.0.0.1:0", false, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if _, err := CheckUDP(int(tcp.Fd())); err == nil {
		t.Error("CheckUDP took a TCP socket")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := CheckUDP(fd); err == nil {
		t.Error("CheckUDP took an unbound UDP socket")
	}
	if _, err := BoundUDPAddr(tcp); err == nil {
		t.Error("BoundUDPAddr took a TCP socket")
	}
}
