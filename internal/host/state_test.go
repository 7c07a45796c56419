package host

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
)

// wireChildEnv makes the test binary, started as a generation, run
// wireChild instead of the tests.
const wireChildEnv = "HOST_TEST_WIRE_CHILD"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ExecArg {
		err := ExecGeneration(os.Args[2:])
		fmt.Fprintf(os.Stderr, "start generation: %v\n", err)
		os.Exit(127)
	}
	if os.Getenv(wireChildEnv) == "final" {
		if err := finalChild(); err != nil {
			fmt.Fprintf(os.Stderr, "final child: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(wireChildEnv) == "channel" {
		if err := channelChild(); err != nil {
			fmt.Fprintf(os.Stderr, "channel child: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(wireChildEnv) == "1" {
		if err := wireChild(); err != nil {
			fmt.Fprintf(os.Stderr, "wire child: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// wireChild is a generation that speaks the fd store and the state
// handoff directly on the wire (no SDK): it reports on stdout what it
// finds, stores a memfd, sends one datagram over 4096 bytes, says
// READY=1 and then answers on its state channel.
func wireChild() error {
	gen := os.Getenv("HANDOFF_GENERATION")
	say := func(format string, args ...any) { fmt.Printf("gen "+gen+" "+format+"\n", args...) }
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	for i := 1; i < n; i++ { // fd 3 is the listener
		data, err := io.ReadAll(io.NewSectionReader(os.NewFile(uintptr(3+i), names[i]), 0, 4096))
		if err != nil {
			return err
		}
		say("stored %s=%s", names[i], data)
	}
	say("channel fd %s timeout %sms", os.Getenv(stateproto.EnvFD), os.Getenv(stateproto.EnvTimeout))
	notify, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	to := &unix.SockaddrUnix{Name: os.Getenv("NOTIFY_SOCKET")}
	send := func(payload string, f *os.File) error {
		var oob []byte
		if f != nil {
			oob = unix.UnixRights(int(f.Fd()))
		}
		return unix.Sendmsg(notify, []byte(payload), oob, to, 0)
	}
	memo, err := kernel.SealedMemfd("memo", func(w io.Writer) error { _, err := fmt.Fprintf(w, "memo of gen %s", gen); return err })
	if err != nil {
		return err
	}
	if err := send("FDSTORE=1\nFDNAME=memo", memo); err != nil {
		return err
	}
	if err := send("FDSTORE=1\nFDNAME=big\nX="+strings.Repeat("x", 5000), memo); err != nil {
		return err
	}
	if err := send("READY=1", nil); err != nil {
		return err
	}
	fd, _ := strconv.Atoi(os.Getenv(stateproto.EnvFD))
	conn, err := net.FileConn(os.NewFile(uintptr(fd), "channel"))
	if err != nil {
		return err
	}
	ch := conn.(*net.UnixConn)
	buf, oob := make([]byte, 4096), make([]byte, kernel.RightsSpace(1))
	for {
		n, oobn, flags, _, err := ch.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return err // 0: handoffd's end is closed
		}
		fds, err := kernel.ParseRights(oob[:oobn], flags)
		if err != nil {
			return err
		}
		m := stateproto.Parse(buf[:n])
		switch {
		case m[stateproto.Handover] == "1":
			snap, err := kernel.SealedMemfd("state", func(w io.Writer) error { _, err := fmt.Fprintf(w, "snapshot of gen %s", gen); return err })
			if err != nil {
				return err
			}
			if err := send("FDSTORE=1\nFDNAME=handoff.state\nHANDOFF_STATE=1", snap); err != nil {
				return err
			}
		case m[stateproto.State] == "1" && len(fds) == 1:
			data, err := io.ReadAll(os.NewFile(uintptr(fds[0]), "state"))
			if err != nil {
				return err
			}
			say("state %s", data)
			if _, err := ch.Write([]byte("LOADED=1")); err != nil {
				return err
			}
		default:
			say("got %q", buf[:n])
			kernel.CloseFDs(fds)
		}
	}
}

// finalChild sends a final delta and exits at once, as a generation does
// at the end of its drain; 30 removals queued before it make the final
// come late.
func finalChild() error {
	notify, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	to := &unix.SockaddrUnix{Name: os.Getenv("NOTIFY_SOCKET")}
	for i := range 30 {
		if err := unix.Sendmsg(notify, fmt.Appendf(nil, "FDSTOREREMOVE=1\nFDNAME=gone%d", i), nil, to, 0); err != nil {
			return err
		}
	}
	final, err := kernel.SealedMemfd("final", func(w io.Writer) error { _, err := io.WriteString(w, `{"delta":7}`); return err })
	if err != nil {
		return err
	}
	return unix.Sendmsg(notify, []byte("FDSTORE=1\nFDNAME=handoff.final\nHANDOFF_FINAL=1"),
		unix.UnixRights(int(final.Fd())), to, 0)
}

// strangerSends stores a memfd on a generation's notify socket from this
// process, which is not the generation: nothing reaches the lifecycle,
// and handoffd closes the fd (the test's open fds count it).
func strangerSends(t *testing.T, notify string, notices chan lifecycle.Notice) {
	t.Helper()
	before := openFDs(t)
	memo, err := kernel.SealedMemfd("stranger", func(io.Writer) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	// A connected socket: Go's WriteMsgUnix refuses it, the raw call does not.
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sendErr error
	raw.Write(func(fd uintptr) bool {
		sendErr = unix.Sendmsg(int(fd), []byte("FDSTORE=1\nFDNAME=stranger"), unix.UnixRights(int(memo.Fd())), nil, 0)
		return true
	})
	c.Close()
	memo.Close()
	if sendErr != nil {
		t.Fatal(sendErr)
	}
	const look = 200 * time.Millisecond
	select {
	case n := <-notices:
		t.Fatalf("a stranger's message reached the lifecycle: %+v", n)
	case <-time.After(look):
	}
	if n := openFDs(t); n != before {
		t.Fatalf("%d fds open %s after a stranger's memfd, %d before", n, look, before)
	}
}

// syncBuffer is a bytes.Buffer that a child's output goroutine and the
// test may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// await waits until the output holds every line of want: a child's
// stdout reaches it through a pipe, some time after the child wrote.
func (s *syncBuffer) await(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, w := range want {
		for !strings.Contains(s.String(), w) {
			if time.Now().After(deadline) {
				t.Fatalf("output lacks %q after 5s:\n%s", w, s.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestStateWire runs two generations that speak the wire themselves:
// the first stores a memfd, which the second finds after its listener;
// an oversize datagram is refused with its fd closed; the first hands its
// snapshot over on HANDOVER, and the second loads it.
func TestStateWire(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	var out syncBuffer
	notifyDir := t.TempDir()
	l := &ExecLauncher{Self: self, Stdout: &out, Stderr: os.Stderr, NotifyDir: notifyDir}
	cfg := &config.ServiceConfig{Name: "web", Command: []string{self}, Dir: ".", Env: []string{wireChildEnv + "=1"},
		Listeners: []config.ListenerConfig{{Name: "http"}}, StateTimeout: config.Duration(2 * time.Second)}
	start := func(gen int, stored []lifecycle.StoredFile) (lifecycle.Process, chan lifecycle.Notice) {
		t.Helper()
		r, w, err := os.Pipe() // stands in for the listener
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		notices := make(chan lifecycle.Notice, 8)
		p, err := l.Start(lifecycle.LaunchSpec{Service: "web", Generation: gen, Config: cfg, Files: []*os.File{r},
			Stored: stored, StateChannel: true, Notice: func(n lifecycle.Notice) { notices <- n }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Signal(syscall.SIGKILL); <-p.Done() })
		return p, notices
	}
	next := func(notices chan lifecycle.Notice) lifecycle.Notice {
		t.Helper()
		select {
		case n := <-notices:
			return n
		case <-time.After(5 * time.Second):
			t.Fatalf("no notice within 5s; output so far:\n%s", out.String())
			return lifecycle.Notice{}
		}
	}
	p1, notices1 := start(1, nil)
	memo := next(notices1)
	if memo.Msg[stateproto.FDStore] != "1" || memo.Msg[stateproto.FDName] != "memo" || len(memo.Files) != 1 {
		t.Fatalf("first notice %+v, want FDSTORE=1 FDNAME=memo with one fd", memo)
	}
	if big := next(notices1); !big.Oversize || big.Refused != 1 || len(big.Files) != 0 || big.Msg[stateproto.FDName] != "big" {
		t.Fatalf("second notice %+v, want an oversize one with 1 fd refused", big)
	}
	<-p1.Ready()
	strangerSends(t, filepath.Join(notifyDir, "web.1", "sock"), notices1)
	p2, notices2 := start(2, []lifecycle.StoredFile{{Name: "memo", File: memo.Files[0]}})
	memo.Files[0].Close()
	for _, f := range next(notices2).Files {
		f.Close()
	}
	next(notices2) // oversize
	<-p2.Ready()

	ch1, ch2 := p1.(lifecycle.Stateful).Channel(), p2.(lifecycle.Stateful).Channel()
	if err := ch1.Send(stateproto.Message{stateproto.Handover: "1"}, nil); err != nil {
		t.Fatal(err)
	}
	snap := next(notices1)
	if snap.Msg[stateproto.NotifyState] != "1" || len(snap.Files) != 1 || !snap.Sealed {
		t.Fatalf("answer to HANDOVER %+v, want HANDOFF_STATE=1 with one sealed memfd", snap)
	}
	err = ch2.Send(stateproto.Message{stateproto.State: "1"}, snap.Files[0])
	snap.Files[0].Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if m, err := ch2.Receive(ctx); err != nil || m[stateproto.Loaded] != "1" {
		t.Fatalf("answer to STATE: %v, %v; want LOADED=1", m, err)
	}
	out.await(t, "gen 1 channel fd 4 timeout 2000ms", "gen 2 stored memo=memo of gen 1",
		"gen 2 channel fd 5 timeout 2000ms", "gen 2 state snapshot of gen 1")
	// A Receive that nothing answers gives up when its context ends.
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := ch1.Receive(short); err == nil {
		t.Error("Receive with nothing to read returned no error")
	}
	p1.Signal(syscall.SIGKILL)
	p2.Signal(syscall.SIGKILL)
	<-p1.Done()
	<-p2.Done()
	if n := openFDs(t); n != before {
		t.Errorf("%d fds open after both exited, %d before", n, before)
	}
}

// What a generation sends just before it exits reaches the lifecycle
// before its exit does: a final delta is never lost with the process.
func TestLastNoticeBeforeExit(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	l := &ExecLauncher{Self: self, Stdout: os.Stdout, Stderr: os.Stderr, NotifyDir: t.TempDir()}
	cfg := &config.ServiceConfig{Name: "web", Command: []string{self}, Dir: ".", Env: []string{wireChildEnv + "=final"}}
	for i := range 5 {
		notices := make(chan lifecycle.Notice, 1)
		// The lifecycle takes its time with each notice (it takes a lock).
		notice := func(n lifecycle.Notice) {
			if n.Msg[stateproto.FDStoreRemove] == "1" {
				time.Sleep(5 * time.Millisecond)
				return
			}
			notices <- n
		}
		p, err := l.Start(lifecycle.LaunchSpec{Service: "web", Generation: i + 1, Config: cfg, Notice: notice})
		if err != nil {
			t.Fatal(err)
		}
		<-p.Done()
		if st := p.ExitStatus(); st != "exit status 0" {
			t.Fatalf("run %d: the generation ended with %s", i, st)
		}
		select {
		case n := <-notices:
			for _, f := range n.Files {
				f.Close()
			}
			if n.Msg[stateproto.NotifyFinal] != "1" || len(n.Files) != 1 || !n.Sealed {
				t.Fatalf("run %d: notice %+v, want HANDOFF_FINAL=1 with one sealed memfd", i, n)
			}
		default:
			t.Fatalf("run %d: the final sent just before the exit was lost", i)
		}
	}
}

// TestSupervisorStateWire runs a service with state_handoff in fdpass
// mode through the real lifecycle and launcher: generation 2 finds what
// generation 1 stored and loads its snapshot before it is activated.
func TestSupervisorStateWire(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	cfg, err := config.ParseConfig(fmt.Appendf(nil, `
control: %s/ctl.sock
state_dir: %s
mode: fdpass
services:
  - name: web
    command: [%q]
    env: [%s=1]
    state_handoff: true
    state_timeout: 2s
    listeners: [{name: http, address: "tcp://127.0.0.1:%d"}]
`, dir, dir, self, wireChildEnv, port))
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	sup, err := lifecycle.New(cfg, lifecycle.Options{Mode: api.ModeFDPass, NewRouter: NewRouter(api.ModeFDPass, 0, nil),
		Launcher: &ExecLauncher{Self: self, Stdout: &out, Stderr: os.Stderr, NotifyDir: t.TempDir()}, Counter: &Counter{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer sup.Stop(ctx)
	sup.Start(ctx)
	svc, err := sup.Service("web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Swap(ctx); err != nil {
		t.Fatal(err)
	}
	out.await(t, `gen 1 got "REASON=no previous generation runs\nSTATE=0\n"`,
		"gen 2 stored memo=memo of gen 1", "gen 2 state snapshot of gen 1")
	st := svc.Status()
	if st.FDStore["memo"] != 2 {
		t.Errorf("fd_store = %v, want memo:2 (one memfd from each generation)", st.FDStore)
	}
}

// TestStartKeepsStoredSocketsNonblocking passes a non-blocking socket as
// a stored fd: the generation that stored it shares its flags, and must
// not find it in blocking mode. os/exec passes files through File.Fd,
// which leaves a file made by os.NewFile as it is (as host makes the
// files it receives), but puts one from net.Conn.File in blocking mode.
func TestStartKeepsStoredSocketsNonblocking(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	stored := os.NewFile(uintptr(fds[0]), "stored socket")
	defer stored.Close()
	l := &ExecLauncher{Self: self, Stdout: io.Discard, Stderr: os.Stderr, NotifyDir: t.TempDir()}
	cfg := &config.ServiceConfig{Name: "web", Command: []string{"true"}, Dir: "."}
	p, err := l.Start(lifecycle.LaunchSpec{Service: "web", Generation: 1, Config: cfg,
		Stored: []lifecycle.StoredFile{{Name: "conn", File: stored}}})
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	rc, err := stored.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	rc.Control(func(fd uintptr) { flags, err = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if err != nil || flags&unix.O_NONBLOCK == 0 {
		t.Fatalf("the stored socket's flags %#x, %v: O_NONBLOCK was lost", flags, err)
	}
}
