package host

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
)

// TestStateChannel speaks both ends of a channel: a message with a memfd
// one way, answers the other, one over 4096 bytes refused, fds sent to
// handoffd closed, and the end of the generation's side seen.
func TestStateChannel(t *testing.T) {
	before := openFDs(t)
	ch, end, err := newStateChannel()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.FileConn(end)
	end.Close()
	if err != nil {
		t.Fatal(err)
	}
	gen := conn.(*net.UnixConn)
	memo, err := kernel.SealedMemfd("memo", func(w io.Writer) error { _, err := io.WriteString(w, "memo"); return err })
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Send(stateproto.Message{stateproto.State: "1"}, memo); err != nil {
		t.Fatal(err)
	}
	memo.Close()
	buf, oob := make([]byte, 4096), make([]byte, kernel.RightsSpace(2))
	n, oobn, flags, _, err := gen.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	fds, err := kernel.ParseRights(oob[:oobn], flags)
	if err != nil || len(fds) != 1 || string(buf[:n]) != "STATE=1\n" {
		t.Fatalf("the generation read %q with %d fds, %v", buf[:n], len(fds), err)
	}
	received := os.NewFile(uintptr(fds[0]), "memo")
	got, _ := io.ReadAll(received)
	received.Close()
	if string(got) != "memo" {
		t.Fatalf("the memfd holds %q", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := kernel.SendFiles(gen, []byte("LOADED=1"), []*os.File{os.Stdin}); err != nil {
		t.Fatal(err)
	}
	if m, err := ch.Receive(ctx); err != nil || m[stateproto.Loaded] != "1" {
		t.Fatalf("Receive = %v, %v; want LOADED=1", m, err)
	}
	if _, err := gen.Write([]byte("X=" + strings.Repeat("x", 5000))); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Receive(ctx); err == nil || !strings.Contains(err.Error(), "over 4096") {
		t.Fatalf("Receive of 5002 bytes: %v, want a refusal", err)
	}
	gen.Close()
	if _, err := ch.Receive(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("Receive after the generation's end closed: %v, want EOF", err)
	}
	if err := ch.Send(stateproto.Message{stateproto.Handover: "1"}, nil); err == nil {
		t.Fatal("Send to a closed end succeeded")
	}
	ch.close()
	if n := openFDs(t); n != before {
		t.Fatalf("%d fds open, %d before", n, before)
	}
}
