package handoffgrpc

import (
	"context"
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/handoffd/handoffd/handoff"
	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// In a service with state_handoff, Serve restores before it returns from
// Ready and hands the final over after its drain. handoffd's ends are a
// unixgram NOTIFY_SOCKET and a seqpacket state channel made here.
func TestServeHandsOverFinal(t *testing.T) {
	dir, err := os.MkdirTemp("", "hg") // short: socket paths hold 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: dir + "/notify", Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	channel := os.NewFile(uintptr(fds[0]), "handoffd's end")
	defer channel.Close()
	t.Setenv("NOTIFY_SOCKET", dir+"/notify")
	t.Setenv(stateproto.EnvFD, strconv.Itoa(fds[1]))
	t.Setenv(stateproto.EnvTimeout, "5000")
	handoff.HandleState(handoff.StateHandler{Final: func(w io.Writer) error {
		_, err := io.WriteString(w, `{"delta":3}`)
		return err
	}})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(grpc.NewServer())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()

	read := func() (stateproto.Message, []*os.File) {
		t.Helper()
		buf, oob := make([]byte, stateproto.MaxMessage), make([]byte, kernel.RightsSpace(1))
		notify.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, oobn, flags, _, err := notify.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		fds, err := kernel.ParseRights(oob[:oobn], flags)
		if err != nil {
			t.Fatal(err)
		}
		var files []*os.File
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "received"))
		}
		return stateproto.Parse(buf[:n]), files
	}
	if m, _ := read(); m["READY"] != "1" {
		t.Fatalf("got %v, want READY=1", m)
	}
	if _, err := unix.Write(int(channel.Fd()), stateproto.Message{stateproto.State: "0", stateproto.Reason: "first"}.Encode()); err != nil {
		t.Fatal(err)
	}
	cancel() // the stop signal: Serve drains
	m, files := read()
	for m[stateproto.NotifyFinal] == "" && m["STOPPING"] == "1" {
		m, files = read()
	}
	if m[stateproto.NotifyFinal] != "1" || len(files) != 1 {
		t.Fatalf("after the drain: %v with %d fds, want HANDOFF_FINAL=1 and a memfd", m, len(files))
	}
	defer files[0].Close()
	b, _ := io.ReadAll(io.NewSectionReader(files[0], 0, 1<<10))
	if string(b) != `{"delta":3}` {
		t.Errorf("final %q", b)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}
