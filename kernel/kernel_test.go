package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestListenTCPReuseportGroup(t *testing.T) {
	a, err := ListenTCP("a", "tcp4", "127.0.0.1:0", true, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	addr, err := ListeningAddr(a)
	if err != nil {
		t.Fatal(err)
	}
	port := addr.(*net.TCPAddr).Port
	// A second member of the group binds the same port; without
	// SO_REUSEPORT it may not.
	b, err := ListenTCP("b", "tcp4", addr.String(), true, 16)
	if err != nil {
		t.Fatalf("second reuseport socket on port %d: %v", port, err)
	}
	b.Close()
	if c, err := ListenTCP("c", "tcp4", addr.String(), false, 16); err == nil {
		c.Close()
		t.Fatal("a socket without SO_REUSEPORT joined the group")
	}
	fam, err := CheckListening(int(a.Fd()))
	if err != nil || fam != FamilyInet {
		t.Errorf("CheckListening = %v, %v; want AF_INET", fam, err)
	}
}

func TestListenTCP6OnlyAndAllAddresses(t *testing.T) {
	for _, tc := range []struct{ network, hostport, want string }{
		{"tcp", ":0", "0.0.0.0"},
		{"tcp4", ":0", "0.0.0.0"},
		{"tcp6", "[::]:0", "::"},
		{"tcp6", "[::1]:0", "::1"},
	} {
		f, err := ListenTCP("l", tc.network, tc.hostport, true, 4)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.network, tc.hostport, err)
		}
		addr, err := ListeningAddr(f)
		f.Close()
		if err != nil || !addr.(*net.TCPAddr).IP.Equal(net.ParseIP(tc.want)) {
			t.Errorf("%s %s bound to %v, %v; want %s", tc.network, tc.hostport, addr, err, tc.want)
		}
	}
}

func TestCheckListeningRefusesOthers(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := CheckListening(int(r.Fd())); err == nil {
		t.Error("a pipe passed as a listening socket")
	}
	if _, err := ListeningAddr(r); err == nil {
		t.Error("a pipe has a listening address")
	}
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, _ := c.(*net.UDPConn).File()
	defer f.Close()
	if _, err := CheckListening(int(f.Fd())); err == nil {
		t.Error("a UDP socket passed as a listening stream socket")
	}
}

func TestDupOutlivesOriginal(t *testing.T) {
	f, err := ListenTCP("l", "tcp", "127.0.0.1:0", false, 4)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Dup(f)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	addr, _ := ListeningAddr(f)
	f.Close()
	c, err := net.DialTimeout("tcp", addr.String(), time.Second)
	if err != nil {
		t.Fatalf("the dup no longer listens: %v", err)
	}
	c.Close()
	if flags, err := unix.FcntlInt(d.Fd(), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("dup is not close-on-exec (flags %d, %v)", flags, err)
	}
}

func TestAcceptQueue(t *testing.T) {
	f, err := ListenTCP("l", "tcp", "127.0.0.1:0", false, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	addr, _ := ListeningAddr(f)
	for range 3 {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	deadline := time.Now().Add(2 * time.Second)
	n, max, err := AcceptQueue(int(f.Fd()))
	for err == nil && n < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		n, max, err = AcceptQueue(int(f.Fd()))
	}
	if err != nil || n != 3 || max != 8 {
		t.Errorf("AcceptQueue = %d/%d, %v; want 3/8", n, max, err)
	}
}

func TestPidfd(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	p, err := OpenPidfd(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		t.Fatal(err)
	}
	defer p.Close()
	// fd 0 of sleep is /dev/null or this test's stdin: any fd will do.
	if f, err := p.GetFD(0); err != nil {
		t.Errorf("GetFD: %v", err)
	} else {
		f.Close()
	}
	if _, err := p.GetFD(999); !IsBadFD(err) {
		t.Errorf("GetFD of a closed fd: %v, want EBADF", err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- p.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return after the process exited")
	}
	<-done
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("signal to an exited process: %v, want nil", err)
	}
}

func TestStartTicks(t *testing.T) {
	if StartTicks(os.Getpid()) == 0 {
		t.Error("no start time for this process")
	}
	cmd := exec.Command("true")
	cmd.Run()
	if got := StartTicks(cmd.Process.Pid); got != 0 {
		t.Errorf("start time %d for a reaped process, want 0", got)
	}
}

// TestZombieIsGone: a process that exited and that its parent has not
// reaped yet keeps its /proc entry, but it is gone for StartTicks and
// Exited says so through its pidfd, opened before or after its exit.
func TestZombieIsGone(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	reaped := false
	defer func() {
		if !reaped {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	if StartTicks(pid) == 0 {
		t.Fatal("no start time for a running process")
	}
	before, err := OpenPidfd(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	if exited, err := before.Exited(); err != nil || exited {
		t.Fatalf("Exited of a running process: %v, %v", exited, err)
	}
	// SIGKILL without wait(2): a zombie until Wait below.
	if err := before.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := before.Wait(); err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil || !strings.Contains(string(stat), ") Z ") {
		t.Fatalf("/proc/%d/stat = %q, %v; want a zombie", pid, stat, err)
	}
	if got := StartTicks(pid); got != 0 {
		t.Errorf("start time %d for a zombie, want 0", got)
	}
	after, err := OpenPidfd(pid)
	if err != nil {
		t.Fatalf("pidfd_open of a zombie: %v", err)
	}
	defer after.Close()
	for _, p := range []*Pidfd{before, after} {
		if exited, err := p.Exited(); err != nil || !exited {
			t.Errorf("Exited of a zombie: %v, %v; want true", exited, err)
		}
	}
	cmd.Wait()
	reaped = true
	if exited, err := after.Exited(); err != nil || !exited {
		t.Errorf("Exited of a reaped process: %v, %v; want true", exited, err)
	}
}

func TestAllowGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sock")
	if err := os.WriteFile(path, nil, 0o660); err != nil {
		t.Fatal(err)
	}
	err := AllowGroup(path, 4242)
	if errors.Is(err, ErrNoACLs) && os.Getenv("CI") != "true" {
		t.Skipf("%s: %v", path, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, "system.posix_acl_access", buf)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel keeps the entries it was given: find ACL_GROUP 4242 rw.
	want := binary.LittleEndian.AppendUint16(binary.LittleEndian.AppendUint16(nil, 0x08), 6)
	want = binary.LittleEndian.AppendUint32(want, 4242)
	if !bytes.Contains(buf[:n], want) {
		t.Errorf("ACL %x has no rw entry for group 4242", buf[:n])
	}
}

// TestAllowUser gives one user search rights on a directory, and no one
// else but its owner any.
func TestAllowUser(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gen")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	err := AllowUser(dir, 4243, 1)
	if errors.Is(err, ErrNoACLs) && os.Getenv("CI") != "true" {
		t.Skipf("%s: %v", dir, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, err := unix.Getxattr(dir, "system.posix_acl_access", buf)
	if err != nil {
		t.Fatal(err)
	}
	want := binary.LittleEndian.AppendUint16(binary.LittleEndian.AppendUint16(nil, 0x02), 1)
	want = binary.LittleEndian.AppendUint32(want, 4243)
	if !bytes.Contains(buf[:n], want) {
		t.Errorf("ACL %x has no search entry for user 4243", buf[:n])
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o710 {
		t.Errorf("mode after AllowUser: %v, %v; want 0710 (the mask in the group bits, nothing for others)", fi, err)
	}
}

func TestSendFilesAndParseRights(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c.(*net.UnixConn)
	}
	l, err := ListenTCP("l", "tcp", "127.0.0.1:0", false, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := SendFiles(conns[0], []byte("x"), []*os.File{l}); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 1), make([]byte, RightsSpace(4))
	_, oobn, flags, _, err := conns[1].ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseRights(oob[:oobn], flags)
	defer CloseFDs(got)
	if err != nil || len(got) != 1 {
		t.Fatalf("ParseRights = %v, %v; want one fd", got, err)
	}
	if fam, err := CheckListening(got[0]); err != nil || fam != FamilyInet {
		t.Errorf("the received fd: %v, %v; want a listening AF_INET socket", fam, err)
	}
}

func TestSenderPID(t *testing.T) {
	dir := t.TempDir()
	srv, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "n"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := PassCred(srv); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUnix("unixgram", nil, srv.LocalAddr().(*net.UnixAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("READY=1"))
	buf, oob := make([]byte, 64), make([]byte, CredSpace())
	_, oobn, _, _, err := srv.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	if pid := SenderPID(oob[:oobn]); pid != os.Getpid() {
		t.Errorf("sender pid %d, want %d", pid, os.Getpid())
	}
}

func TestPeerPidfd(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f0 := os.NewFile(uintptr(fds[0]), "a")
	defer syscall.Close(fds[1])
	c, err := net.FileConn(f0)
	f0.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, err := PeerPidfd(c.(*net.UnixConn), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// The peer is this process: signal 0 reaches it.
	if err := p.Signal(0); err != nil || p.Pid() != os.Getpid() {
		t.Errorf("pidfd of the peer: pid %d, signal 0: %v; want pid %d", p.Pid(), err, os.Getpid())
	}
}

// TestProcessSettings runs NoNewPrivs and CloseOnExecFrom in a child (they
// change the process for good) and reads what the kernel says of them.
func TestProcessSettings(t *testing.T) {
	if os.Getenv("KERNEL_TEST_CHILD") == "1" {
		runtime.LockOSThread()
		if err := NoNewPrivs(); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		if err := CloseOnExecFrom(3); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		status, _ := os.ReadFile("/proc/thread-self/status")
		// fd 3 is the pipe the parent passed: close-on-exec now.
		flags, _ := unix.FcntlInt(3, unix.F_GETFD, 0)
		fmt.Printf("%s\ncloexec=%v\n", status, flags&unix.FD_CLOEXEC != 0)
		os.Exit(0)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestProcessSettings$")
	cmd.Env = append(os.Environ(), "KERNEL_TEST_CHILD=1")
	cmd.ExtraFiles = []*os.File{w}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	if !bytes.Contains(out, []byte("NoNewPrivs:\t1")) || !bytes.Contains(out, []byte("cloexec=true")) {
		t.Errorf("child says:\n%s\nwant NoNewPrivs 1 and fd 3 close-on-exec", out)
	}
}

func TestUnread(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, ok := Unread(s); !ok || n != 0 {
		t.Errorf("Unread of a quiet connection = %d, %v; want 0", n, ok)
	}
	c.Write([]byte("GET / HTTP/1.1\r\n"))
	deadline := time.Now().Add(2 * time.Second)
	n, ok := Unread(s)
	for ok && n < 16 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		n, ok = Unread(s)
	}
	if !ok || n != 16 {
		t.Errorf("Unread = %d, %v; want the 16 bytes sent", n, ok)
	}
	if _, ok := Unread(fakeConn{}); ok {
		t.Error("Unread answered for a connection without a socket")
	}
}

type fakeConn struct{ net.Conn }

func TestSealedMemfd(t *testing.T) {
	f, err := SealedMemfd("test", func(w io.Writer) error {
		_, err := io.WriteString(w, "state")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := CheckSealed(int(f.Fd())); err != nil {
		t.Errorf("sealed memfd: %v", err)
	}
	if b, err := io.ReadAll(f); err != nil || string(b) != "state" {
		t.Errorf("read back %q, %v", b, err)
	}
	if _, err := f.Write([]byte("x")); err == nil {
		t.Error("a write to a sealed memfd succeeded")
	}
	plain, err := os.CreateTemp(t.TempDir(), "plain")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := CheckSealed(int(plain.Fd())); err != ErrNotSealed {
		t.Errorf("plain file: %v, want ErrNotSealed", err)
	}
}

func TestSeqpacketPair(t *testing.T) {
	mine, theirs, err := SeqpacketPair("channel")
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	defer theirs.Close()
	if err := CheckSeqpacket(int(theirs.Fd())); err != nil {
		t.Errorf("CheckSeqpacket of the pair's end: %v", err)
	}
	if flags, err := unix.FcntlInt(theirs.Fd(), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("the end to pass on is not close-on-exec (flags %d, %v)", flags, err)
	}
	fd := int(theirs.Fd())
	buf, oob := make([]byte, 64), make([]byte, RightsSpace(2))
	if _, _, _, queued, err := ReadMsgNow(fd, buf, oob); queued || err != nil {
		t.Fatalf("ReadMsgNow of an empty socket: queued %v, %v; want nothing, at once", queued, err)
	}
	l, err := ListenTCP("l", "tcp", "127.0.0.1:0", false, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Two messages stay two, and the second keeps its fd.
	if _, err := mine.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := SendFiles(mine, []byte("second"), []*os.File{l}); err != nil {
		t.Fatal(err)
	}
	n, _, _, queued, err := ReadMsgNow(fd, buf, oob)
	if err != nil || !queued || string(buf[:n]) != "first" {
		t.Fatalf("first message: %q, queued %v, %v", buf[:n], queued, err)
	}
	n, oobn, flags, queued, err := ReadMsgNow(fd, buf, oob)
	if err != nil || !queued || string(buf[:n]) != "second" {
		t.Fatalf("second message: %q, queued %v, %v", buf[:n], queued, err)
	}
	got, err := ParseRights(oob[:oobn], flags)
	defer CloseFDs(got)
	if err != nil || len(got) != 1 {
		t.Fatalf("fds of the second message: %v, %v; want one", got, err)
	}
	if fl, err := unix.FcntlInt(uintptr(got[0]), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Errorf("a received fd is not close-on-exec (flags %d, %v)", fl, err)
	}
	// The other end closed: a message of 0 bytes, end of file.
	mine.Close()
	if n, oobn, _, queued, err := ReadMsgNow(fd, buf, oob); err != nil || !queued || n != 0 || oobn != 0 {
		t.Errorf("after close: %d bytes, %d of control, queued %v, %v; want end of file", n, oobn, queued, err)
	}
	if _, _, _, _, err := ReadMsgNow(-1, buf, oob); err == nil || !strings.Contains(err.Error(), "recvmsg on socket -1") {
		t.Errorf("ReadMsgNow of fd -1: %v, want an error that names recvmsg", err)
	}
}

func TestCheckSeqpacketRefusesOthers(t *testing.T) {
	l, err := ListenTCP("l", "tcp", "127.0.0.1:0", false, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := CheckSeqpacket(int(l.Fd())); err == nil || !strings.Contains(err.Error(), "want SOCK_SEQPACKET") {
		t.Errorf("a TCP socket: %v, want an error that asks for SOCK_SEQPACKET", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := CheckSeqpacket(int(r.Fd())); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("a pipe: %v, want an error that says it is not a socket", err)
	}
}

func TestSendDatagram(t *testing.T) {
	for _, addr := range []string{filepath.Join(t.TempDir(), "notify"), fmt.Sprintf("@handoffd-kernel-test/%d", os.Getpid())} {
		ua := &net.UnixAddr{Name: addr, Net: "unixgram"}
		if addr[0] == '@' {
			ua.Name = "\x00" + addr[1:]
		}
		srv, err := net.ListenUnixgram("unixgram", ua)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		l, err := ListenTCP("l", "tcp", "127.0.0.1:0", false, 4)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := SendDatagram(addr, []byte("FDSTORE=1"), []*os.File{l}, 0); err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		buf, oob := make([]byte, 64), make([]byte, RightsSpace(2))
		n, oobn, flags, _, err := srv.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseRights(oob[:oobn], flags)
		CloseFDs(got)
		if string(buf[:n]) != "FDSTORE=1" || err != nil || len(got) != 1 {
			t.Errorf("%s: got %q with fds %v, %v; want FDSTORE=1 and one fd", addr, buf[:n], got, err)
		}
	}
	missing := filepath.Join(t.TempDir(), "none")
	if err := SendDatagram(missing, []byte("READY=1"), nil, 0); err == nil || !strings.Contains(err.Error(), "sendmsg to "+missing) {
		t.Errorf("send to a missing socket: %v, want an error that names sendmsg and the address", err)
	}
}

// TestSendDatagramUntilRead checks that SendDatagram with untilRead
// returns once the receiver has read the datagram, and at untilRead when
// nobody reads it.
func TestSendDatagramUntilRead(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	srv, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const readAfter = 200 * time.Millisecond
	read := make(chan error, 1)
	go func() {
		time.Sleep(readAfter)
		_, err := srv.Read(make([]byte, 64))
		read <- err
	}()
	start := time.Now()
	if err := SendDatagram(addr, []byte("read me"), nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < readAfter || took > 5*time.Second {
		t.Errorf("returned after %s; want once read, %s after the send", took, readAfter)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	const untilRead = 300 * time.Millisecond
	start = time.Now()
	if err := SendDatagram(addr, []byte("never read"), nil, untilRead); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < untilRead || took > 5*time.Second {
		t.Errorf("unread datagram: returned after %s, want %s", took, untilRead)
	}
}

// TestExec runs Exec in a child, which becomes a shell that prints what
// Exec gave it; a failed exec comes back as an error here.
func TestExec(t *testing.T) {
	if os.Getenv("KERNEL_TEST_EXEC") == "1" {
		err := Exec("/bin/sh", []string{"sh", "-c", `echo "$0 $GREETING"`}, []string{"GREETING=hello"})
		fmt.Println("error:", err)
		os.Exit(1)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestExec$")
	cmd.Env = append(os.Environ(), "KERNEL_TEST_EXEC=1")
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "sh hello\n" {
		t.Errorf("child: %v: %q; want %q", err, out, "sh hello\n")
	}
	if err := Exec("/nonexistent/../nonexistent/cmd", []string{"cmd"}, nil); err == nil || !strings.Contains(err.Error(), "exec /nonexistent/cmd") {
		t.Errorf("Exec of a missing program: %v, want an error that names exec and the path", err)
	}
}

func TestIsTerminal(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	if !IsTerminal(ptmx) {
		t.Error("a pseudo-terminal is no terminal")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	plain, err := os.CreateTemp(t.TempDir(), "plain")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, f := range []*os.File{w, plain} {
		if IsTerminal(f) {
			t.Errorf("%s is a terminal", f.Name())
		}
	}
}

// TestSeqpacketConn: a connection over a SOCK_SEQPACKET socket outlives
// the file it was made from; any other socket is refused.
func TestSeqpacketConn(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "peer")
	defer peer.Close()
	f := os.NewFile(uintptr(fds[0]), "mine")
	c, err := SeqpacketConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Errorf("read through the connection after the file closed: %q, %v", buf[:n], err)
	}
	l, err := ListenTCP("l", "tcp", "127.0.0.1:0", false, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := SeqpacketConn(l); err == nil || !strings.Contains(err.Error(), "want SOCK_SEQPACKET") {
		t.Errorf("a TCP socket: %v, want an error that asks for SOCK_SEQPACKET", err)
	}
}
