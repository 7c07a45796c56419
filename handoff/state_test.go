package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
	"golang.org/x/sys/unix"
)

// fakeChannel is handoffd's end of a generation's state channel.
type fakeChannel struct {
	t *testing.T
	c *net.UnixConn
}

// newFakeChannel gives this process a state channel, as handoffd does to
// a generation of a service with state_handoff, and a fresh state
// handoff (no handler, channel not yet opened).
func newFakeChannel(t *testing.T, timeoutMS int) *fakeChannel {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "handoffd-end")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	resetState(t)
	t.Setenv(stateproto.EnvFD, strconv.Itoa(fds[1]))
	t.Setenv(stateproto.EnvTimeout, strconv.Itoa(timeoutMS))
	stateChan() // takes fds[1] (closing it) before anything else can
	t.Cleanup(func() { nc.Close() })
	return &fakeChannel{t: t, c: nc.(*net.UnixConn)}
}

// resetState forgets the state handoff of an earlier test, once its
// reader ended.
func resetState(t *testing.T) {
	t.Helper()
	reset := func() {
		if c := state.ch; c != nil {
			c.stop()
			<-c.done
		}
		state.once, state.ch, state.handler = sync.Once{}, nil, StateHandler{}
	}
	reset()
	t.Cleanup(reset)
}

func (f *fakeChannel) send(m stateproto.Message, files ...*os.File) {
	f.t.Helper()
	var err error
	if len(files) == 0 {
		_, err = f.c.Write(m.Encode())
	} else {
		err = kernel.SendFiles(f.c, m.Encode(), files)
	}
	if err != nil {
		f.t.Fatalf("send %v: %v", m, err)
	}
}

// read returns the generation's next message.
func (f *fakeChannel) read() stateproto.Message {
	f.t.Helper()
	buf := make([]byte, stateproto.MaxMessage)
	f.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := f.c.Read(buf)
	if err != nil {
		f.t.Fatalf("read the state channel: %v", err)
	}
	return stateproto.Parse(buf[:n])
}

// quiet checks that the generation sends nothing on the channel for a
// while.
func (f *fakeChannel) quiet(d time.Duration) {
	f.t.Helper()
	buf := make([]byte, stateproto.MaxMessage)
	f.c.SetReadDeadline(time.Now().Add(d))
	if n, err := f.c.Read(buf); err == nil {
		f.t.Errorf("the generation sent %q; want nothing for %s", buf[:n], d)
	}
}

// quiet checks that nothing reaches NOTIFY_SOCKET for a while.
func (n *fakeNotify) quiet(d time.Duration) {
	n.t.Helper()
	buf := make([]byte, stateproto.MaxMessage)
	n.c.SetReadDeadline(time.Now().Add(d))
	if k, err := n.c.Read(buf); err == nil {
		n.t.Errorf("NOTIFY_SOCKET got %q; want nothing for %s", buf[:k], d)
	}
}

// resetGate closes the accept gate again for one test, and opens it at
// its end for the tests that count on an open one.
func resetGate(t *testing.T) {
	t.Helper()
	gate.once, gate.open = sync.Once{}, make(chan struct{})
	t.Cleanup(openGate)
}

func writeString(s string) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := io.WriteString(w, s)
		return err
	}
}

func TestHandoverSendsSealedSnapshot(t *testing.T) {
	n := newFakeNotify(t)
	ch := newFakeChannel(t, 5000)
	HandleState(StateHandler{Snapshot: writeString(`{"counter":7}`)})
	ch.send(stateproto.Message{stateproto.Handover: "1"})
	m, files := n.read()
	want := stateproto.Message{stateproto.FDStore: "1", stateproto.FDName: stateproto.StateName, stateproto.NotifyState: "1"}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Errorf("answer to HANDOVER: %v, want %v", m, want)
	}
	if len(files) != 1 {
		t.Fatalf("%d fds attached, want 1", len(files))
	}
	if err := kernel.CheckSealed(int(files[0].Fd())); err != nil {
		t.Error(err)
	}
	if got := readAll(t, files[0]); got != `{"counter":7}` {
		t.Errorf("snapshot %q", got)
	}
}

func TestHandoverWithoutSnapshot(t *testing.T) {
	for name, h := range map[string]StateHandler{
		"no StateHandler.Snapshot": {},
		"snapshot failed: disk on fire": {Snapshot: func(io.Writer) error {
			return errors.New("disk\non fire")
		}},
	} {
		t.Run(name, func(t *testing.T) {
			n := newFakeNotify(t)
			ch := newFakeChannel(t, 5000)
			HandleState(h)
			ch.send(stateproto.Message{stateproto.Handover: "1"})
			m, files := n.read()
			if m[stateproto.NotifyState] != "0" || !strings.Contains(m[stateproto.Status], name) || len(files) != 0 {
				t.Errorf("answer: %v with %d fds, want HANDOFF_STATE=0 and STATUS with %q", m, len(files), name)
			}
		})
	}
}

// readyInBackground runs Ready and returns its result channel, once the
// fake NOTIFY_SOCKET got READY=1.
func readyInBackground(t *testing.T, n *fakeNotify) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- Ready() }()
	if m, _ := n.read(); m["READY"] != "1" {
		t.Fatalf("Ready sent %v, want READY=1", m)
	}
	return done
}

func TestReadyRestoresBeforeAccepting(t *testing.T) {
	resetGate(t)
	n := newFakeNotify(t)
	ch := newFakeChannel(t, 5000)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := gated(inner)
	defer ln.Close()

	var restored string
	HandleState(StateHandler{Restore: func(r io.Reader) error {
		b, err := io.ReadAll(r)
		restored = string(b)
		return err
	}})
	ready := readyInBackground(t, n)
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-ready:
		t.Fatalf("Ready returned before STATE: %v", err)
	case err := <-accepted:
		t.Fatalf("accepted before STATE: %v", err)
	case <-time.After(200 * time.Millisecond):
	}

	snap := memfdHolding(t, "snap")
	defer snap.Close()
	snap.Seek(2, io.SeekStart) // a shared offset must not matter
	ch.send(stateproto.Message{stateproto.State: "1"}, snap)
	if m := ch.read(); m[stateproto.Loaded] != "1" {
		t.Errorf("answer to STATE=1: %v, want LOADED=1", m)
	}
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	if restored != "snap" {
		t.Errorf("Restore read %q, want snap", restored)
	}
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no accept after Ready returned")
	}
}

func TestReadyStartsCold(t *testing.T) {
	n := newFakeNotify(t)
	ch := newFakeChannel(t, 5000)
	called := false
	HandleState(StateHandler{Restore: func(io.Reader) error { called = true; return nil }})
	ready := readyInBackground(t, n)
	ch.send(stateproto.Message{stateproto.State: "0", stateproto.Reason: "no previous generation"})
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	if called {
		t.Error("Restore ran on STATE=0")
	}
	ch.quiet(200 * time.Millisecond) // no LOADED after STATE=0
}

func TestReadyAnswersLoadedZero(t *testing.T) {
	plain, err := os.CreateTemp(t.TempDir(), "plain")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, tc := range []struct {
		name    string
		h       StateHandler
		file    *os.File
		wantErr string
	}{
		{"restore fails", StateHandler{Restore: func(io.Reader) error { return errors.New("bad json") }}, nil, "restore: bad json"},
		{"no Restore", StateHandler{}, nil, "no StateHandler.Restore"},
		{"unsealed", StateHandler{Restore: func(io.Reader) error { return nil }}, plain, "not a sealed memfd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNotify(t)
			ch := newFakeChannel(t, 5000)
			HandleState(tc.h)
			ready := readyInBackground(t, n)
			f := tc.file
			if f == nil {
				f = memfdHolding(t, "snap")
				defer f.Close()
			}
			ch.send(stateproto.Message{stateproto.State: "1"}, f)
			m := ch.read()
			if m[stateproto.Loaded] != "0" || !strings.Contains(m[stateproto.Error], tc.wantErr) {
				t.Errorf("answer: %v, want LOADED=0 and ERROR with %q", m, tc.wantErr)
			}
			if err := <-ready; err != nil {
				t.Errorf("Ready: %v, want nil: a generation that failed to load starts cold", err)
			}
		})
	}
}

func TestReadyGivesUpAfterTimeout(t *testing.T) {
	n := newFakeNotify(t)
	ch := newFakeChannel(t, 50)
	called := false
	HandleState(StateHandler{Restore: func(io.Reader) error { called = true; return nil }})
	start := time.Now()
	ready := readyInBackground(t, n)
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if want := 50*time.Millisecond + stateMargin; took < want || took > want+5*time.Second {
		t.Errorf("Ready waited %s for STATE, want about %s", took, want)
	}
	snap := memfdHolding(t, "late")
	defer snap.Close()
	ch.send(stateproto.Message{stateproto.State: "1"}, snap)
	if m := ch.read(); m[stateproto.Loaded] != "0" || !strings.Contains(m[stateproto.Error], "after Ready stopped waiting") {
		t.Errorf("answer to a late STATE: %v, want LOADED=0", m)
	}
	if called {
		t.Error("Restore ran after Ready returned")
	}
}

func TestReadyWithoutChannelDoesNotWait(t *testing.T) {
	resetState(t)
	os.Unsetenv(stateproto.EnvFD)
	n := newFakeNotify(t)
	HandleState(StateHandler{Restore: func(io.Reader) error { return nil }})
	done := make(chan error, 1)
	go func() { done <- Ready() }()
	n.read()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Second):
		t.Fatal("Ready waited for STATE without HANDOFF_STATE_FD")
	}
}

// counterHandler is a counter whose StateHandler snapshots, restores,
// sends finals and merges them, as the demo does.
type counterHandler struct {
	mu            sync.Mutex
	n, sinceSnap  int
	merged        []string
	finalsWritten int
}

func (c *counterHandler) handler() StateHandler {
	return StateHandler{
		Final: func(w io.Writer) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.finalsWritten++
			_, err := fmt.Fprint(w, c.sinceSnap)
			return err
		},
		Merge: func(from int, r io.Reader) error {
			b, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			d, err := strconv.Atoi(string(b))
			if err != nil {
				return err
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			c.n += d
			c.sinceSnap += d
			c.merged = append(c.merged, fmt.Sprintf("%d:%d", from, d))
			return nil
		},
	}
}

func TestFinalMerged(t *testing.T) {
	newFakeNotify(t)
	ch := newFakeChannel(t, 5000)
	c := &counterHandler{}
	HandleState(c.handler())
	f := memfdHolding(t, "5")
	defer f.Close()
	ch.send(stateproto.Message{stateproto.Final: "3"}, f)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		merged := strings.Join(c.merged, ",")
		c.mu.Unlock()
		if merged == "3:5" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("merged %q after 5s, want 3:5", merged)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A final relayed to this generation just before its own final must be
// in it.
func TestHandOverFinalMergesQueuedFinals(t *testing.T) {
	n := newFakeNotify(t)
	ch := newFakeChannel(t, 5000)
	c := &counterHandler{sinceSnap: 2}
	HandleState(c.handler())
	for i, delta := range []string{"5", "7"} {
		f := memfdHolding(t, delta)
		defer f.Close()
		ch.send(stateproto.Message{stateproto.Final: strconv.Itoa(i + 1)}, f)
	}
	if err := HandOverFinal(); err != nil {
		t.Fatal(err)
	}
	m, files := n.read()
	want := stateproto.Message{stateproto.FDStore: "1", stateproto.FDName: stateproto.FinalName, stateproto.NotifyFinal: "1"}
	if fmt.Sprint(m) != fmt.Sprint(want) || len(files) != 1 {
		t.Fatalf("final: %v with %d fds, want %v and a memfd", m, len(files), want)
	}
	if err := kernel.CheckSealed(int(files[0].Fd())); err != nil {
		t.Error(err)
	}
	if got := readAll(t, files[0]); got != "14" {
		t.Errorf("final %q, want 14: its own 2 and the 5 and 7 it merged", got)
	}

	// Once only; a final that comes later is dropped, not merged.
	if err := HandOverFinal(); err != nil {
		t.Fatal(err)
	}
	n.quiet(200 * time.Millisecond)
	f := memfdHolding(t, "100")
	defer f.Close()
	ch.send(stateproto.Message{stateproto.Final: "9"}, f)
	time.Sleep(100 * time.Millisecond)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n != 12 || c.finalsWritten != 1 {
		t.Errorf("counter %d after %d finals written, want 12 after 1", c.n, c.finalsWritten)
	}
}

func TestHandOverFinalWithoutChannel(t *testing.T) {
	resetState(t)
	os.Unsetenv(stateproto.EnvFD)
	n := newFakeNotify(t)
	c := &counterHandler{sinceSnap: 1}
	HandleState(c.handler())
	if err := HandOverFinal(); err != nil {
		t.Fatal(err)
	}
	n.quiet(100 * time.Millisecond)
}

// The last of two Drainers to end its drain sends the final.
func TestDrainHandsOverFinal(t *testing.T) {
	n := newFakeNotify(t)
	newFakeChannel(t, 5000)
	c := &counterHandler{sinceSnap: 4}
	HandleState(c.handler())
	var ds []*Drainer
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		d := NewDrainer(&http.Server{Handler: http.NotFoundHandler()})
		go d.Serve(ln)
		ds = append(ds, d)
	}
	// Serve counts a Drainer; wait until both did.
	for _, d := range ds {
		waitServing(t, d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ds[0].Drain(ctx); err != nil {
		t.Fatal(err)
	}
	n.quiet(200 * time.Millisecond)
	if err := ds[1].Drain(ctx); err != nil {
		t.Fatal(err)
	}
	m, files := n.read()
	if m[stateproto.NotifyFinal] != "1" || len(files) != 1 || readAll(t, files[0]) != "4" {
		t.Errorf("after the last drain: %v, want the final 4", m)
	}
}

func waitServing(t *testing.T, d *Drainer) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d.mu.Lock()
		serving := d.serving
		d.mu.Unlock()
		if serving > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Serve did not start within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// HandOverFinal returns once handoffd took the final: the process exits
// next, and handoffd stops reading its NOTIFY_SOCKET when it has exited.
func TestHandOverFinalWaitsUntilRead(t *testing.T) {
	n := newFakeNotify(t)
	newFakeChannel(t, 5000)
	c := &counterHandler{sinceSnap: 3}
	HandleState(c.handler())
	done := make(chan error, 1)
	go func() { done <- HandOverFinal() }()
	select {
	case err := <-done:
		t.Fatalf("HandOverFinal returned before handoffd read the final: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if m, _ := n.read(); m[stateproto.NotifyFinal] != "1" {
		t.Fatalf("read %v, want the final", m)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(finalReadWait / 2):
		t.Fatal("HandOverFinal still waits after handoffd read the final")
	}
}

// channel reads the next datagram, a channel the generation sent
// (HANDOFF_STATE_CHANNEL=1), and returns it as handoffd's end.
func (n *fakeNotify) channel() *fakeChannel {
	t := n.t
	t.Helper()
	m, files := n.read()
	if m[stateproto.NotifyChannel] != "1" || len(files) != 1 {
		t.Fatalf("got %v with %d fds, want %s=1 with one socket", m, len(files), stateproto.NotifyChannel)
	}
	if typ, err := unix.GetsockoptInt(int(files[0].Fd()), unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_SEQPACKET {
		t.Fatalf("the channel sent: type %d, %v; want SOCK_SEQPACKET", typ, err)
	}
	nc, err := net.FileConn(files[0])
	files[0].Close() // nc is the one copy: closing it closes the channel
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &fakeChannel{t: t, c: nc.(*net.UnixConn)}
}

// A handoffd that restarts closes the channel: the generation sends a
// new one on NOTIFY_SOCKET, retrying until the socket is bound again,
// and speaks on it once handoffd attached it. Channels closed without
// ATTACHED=1 are refusals: after reattachRefusals the generation gives
// up.
func TestStateChannelReattached(t *testing.T) {
	dir, err := os.MkdirTemp("", "hs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := dir + "/notify"
	t.Setenv("NOTIFY_SOCKET", addr)
	ch := newFakeChannel(t, 5000)
	HandleState(StateHandler{Snapshot: writeString(`{"counter":9}`)})
	ch.c.Close() // handoffd is gone, and its NOTIFY_SOCKET with it
	time.Sleep(3 * reattachFast / 2)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	n := &fakeNotify{t: t, c: c}

	start := time.Now()
	again := n.channel()
	if took := time.Since(start); took > 2*reattachFast {
		t.Errorf("the new channel came %s after NOTIFY_SOCKET was bound, want within %s", took, 2*reattachFast)
	}
	again.send(stateproto.Message{stateproto.Attached: "1"})
	again.send(stateproto.Message{stateproto.Handover: "1"})
	m, files := n.read()
	if m[stateproto.NotifyState] != "1" || len(files) != 1 || readAll(t, files[0]) != `{"counter":9}` {
		t.Fatalf("answer to HANDOVER on the new channel: %v with %d fds", m, len(files))
	}

	again.c.Close() // a handoffd that refuses: no ATTACHED=1
	for range reattachRefusals {
		n.channel().c.Close()
	}
	n.quiet(3 * reattachFast)
}
