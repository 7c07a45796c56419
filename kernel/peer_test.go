package kernel

import (
	"net"
	"os"
	"syscall"
	"testing"
)

// TestReadPeerCred checks SO_PEERCRED and SO_PEERGROUPS on a socket pair.
func TestReadPeerCred(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f0, f1 := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	defer f1.Close()
	c, err := net.FileConn(f0)
	f0.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cred, err := ReadPeerCred(c.(*net.UnixConn))
	if err != nil {
		t.Fatal(err)
	}
	groups, _ := os.Getgroups()
	if int(cred.PID) != os.Getpid() || int(cred.UID) != os.Geteuid() || int(cred.GID) != os.Getegid() || len(cred.Groups) != len(groups) {
		t.Errorf("peer %+v, want pid %d uid %d gid %d groups %v", cred, os.Getpid(), os.Geteuid(), os.Getegid(), groups)
	}
}
