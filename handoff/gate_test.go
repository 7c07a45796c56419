package handoff

import (
	"errors"
	"net"
	"testing"
	"time"
)

func TestGateHoldsAcceptUntilReady(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A gate of its own: the package's gate may have been opened by an
	// earlier test's Ready.
	open := make(chan struct{})
	ln := &gatedListener{Listener: inner, open: open, closed: make(chan struct{})}
	defer ln.Close()
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	accepted := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			conn.Close()
		}
		accepted <- err
	}()
	select {
	case err := <-accepted:
		t.Fatalf("Accept returned before Ready: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(open)
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Accept still waits after the gate opened")
	}
}

func TestGateCloseEndsWaitingAccept(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A gate of its own that never opens, so the Accept surely waits.
	ln := &gatedListener{Listener: inner, open: make(chan struct{}), closed: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	ln.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end an Accept waiting for Ready")
	}
}

func TestReadyOpensTheGate(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gate.open:
	default:
		t.Fatal("Ready did not open the gate of handoffd's listeners")
	}
}
