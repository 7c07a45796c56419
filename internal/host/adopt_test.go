package host

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/kernel"
)

// TestListenerFilesMatchesWhatTheListenerBinds re-adopts, as a restarted
// handoffd does, the listening socket of another process: each socket is
// bound the way handoffd binds the listener on the left, and must be found
// for exactly the addresses that bind it.
func TestListenerFilesMatchesWhatTheListenerBinds(t *testing.T) {
	for _, c := range []struct {
		network, host string // what the socket is bound to, port 0
		address       string // the configured listener; %d is the socket's port
		match         bool
		otherPort     bool // the listener's port is the socket's port minus one
	}{
		{"tcp", "", "tcp://:%d", true, false},
		{"tcp4", "", "tcp4://:%d", true, false},
		{"tcp", "", "tcp4://0.0.0.0:%d", true, false},
		{"tcp6", "", "tcp6://:%d", true, false},
		{"tcp6", "::", "tcp6://[::]:%d", true, false},
		{"tcp", "::", "tcp://[::]:%d", true, false},
		{"tcp", "localhost", "tcp://localhost:%d", true, false},
		{"tcp", "127.0.0.1", "tcp://127.0.0.1:%d", true, false},
		{"tcp6", "::1", "tcp6://[::1]:%d", true, false},

		{"tcp", "", "tcp://127.0.0.1:%d", false, false},
		{"tcp", "127.0.0.1", "tcp://:%d", false, false},
		{"tcp", "", "tcp6://:%d", false, false},
		{"tcp", "", "tcp6://[::]:%d", false, false},
		{"tcp6", "::", "tcp://:%d", false, false},
		{"tcp6", "::", "tcp6://[::1]:%d", false, false},
		{"tcp", "", "tcp://:%d", false, true},
	} {
		name := fmt.Sprintf("%s on %s %s", strings.Replace(c.address, "%d", "P", 1), c.network, net.JoinHostPort(c.host, "P"))
		if c.otherPort {
			name = strings.Replace(name, "P", "P-1", 1)
		}
		t.Run(name, func(t *testing.T) {
			sock, err := kernel.ListenTCP("http", c.network, net.JoinHostPort(c.host, "0"), false, 16)
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close()
			bound, err := kernel.ListeningAddr(sock)
			if err != nil {
				t.Fatal(err)
			}
			port := bound.(*net.TCPAddr).Port
			if c.otherPort {
				port--
			}
			address := fmt.Sprintf(c.address, port)
			checkAdopted(t, sock, address, c.match)
		})
	}
	t.Run("unix", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "http.sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		sock, err := ln.File()
		if err != nil {
			t.Fatal(err)
		}
		defer sock.Close()
		checkAdopted(t, sock, "unix://"+path, true)
		checkAdopted(t, sock, "unix://"+path+".other", false)
	})
}

// TestListenerFilesFindsQUICSockets re-adopts the UDP socket of a QUIC
// listener, and tells it apart from a TCP socket on the same port.
func TestListenerFilesFindsQUICSockets(t *testing.T) {
	udp, err := kernel.ListenUDP("h3", "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	bound, err := kernel.BoundUDPAddr(udp)
	if err != nil {
		t.Fatal(err)
	}
	checkAdopted(t, udp, fmt.Sprintf("udp://127.0.0.1:%d", bound.Port), true)
	checkAdopted(t, udp, fmt.Sprintf("udp://:%d", bound.Port), false)
	checkAdopted(t, udp, fmt.Sprintf("tcp://127.0.0.1:%d", bound.Port), false)
	tcp, err := kernel.ListenTCP("http", "tcp", bound.String(), false, 16)
	if err != nil {
		t.Fatalf("TCP port %d: %v", bound.Port, err)
	}
	defer tcp.Close()
	checkAdopted(t, tcp, fmt.Sprintf("udp://127.0.0.1:%d", bound.Port), false)
	checkAdopted(t, tcp, fmt.Sprintf("tcp://127.0.0.1:%d", bound.Port), true)
}

// checkAdopted hands sock to a child process, then copies it back with
// listenerFiles as a listener at address: the copy must be the same socket
// when match, and nothing may be found otherwise.
func checkAdopted(t *testing.T, sock *os.File, address string, match bool) {
	t.Helper()
	p := holder(t, sock)
	listeners := []config.ListenerConfig{{Name: "http", Address: address}}
	if _, _, err := config.ParseAddress(address); err != nil {
		t.Fatalf("test address: %v", err)
	}
	files, err := listenerFiles(p, listeners)
	if !match {
		if err == nil {
			closeFiles(files)
			t.Fatalf("%s: a socket bound to %v was adopted", address, boundAddr(t, sock))
		}
		return
	}
	if err != nil {
		t.Fatalf("%s: %v (the socket is bound to %v)", address, err, boundAddr(t, sock))
	}
	defer closeFiles(files)
	want, err := sock.Stat()
	if err != nil {
		t.Fatal(err)
	}
	got, err := files[0].Stat()
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(got, want) {
		t.Errorf("%s: adopted another socket (%v)", address, boundAddr(t, files[0]))
	}
}

func boundAddr(t *testing.T, f *os.File) net.Addr {
	a, err := kernel.ListeningAddr(f)
	if err != nil {
		if u, uerr := kernel.BoundUDPAddr(f); uerr == nil {
			return u
		}
		t.Fatal(err)
	}
	return a
}

// holder starts a process that holds sock as its fd 3, as a generation
// holds its listener, and watches it through a pidfd. The process is
// killed and reaped when the test ends.
func holder(t *testing.T, sock *os.File) *PidfdProcess {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.ExtraFiles = []*os.File{sock}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pidfd, err := kernel.OpenPidfd(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	p := NewPidfdProcess(pidfd)
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-p.Done()
	})
	return p
}
