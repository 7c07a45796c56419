package handoffgrpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// serveHealth serves the gRPC health service, whose Watch stream never
// ends by itself, and returns a client of it.
func serveHealth(t *testing.T) (*Server, healthpb.HealthClient) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	s := New(gs)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return s, healthpb.NewHealthClient(conn)
}

// A stream left open past DrainTimeout is stopped, and Drain says so.
func TestDrainStopsAtDeadline(t *testing.T) {
	s, client := serveHealth(t)
	s.DrainTimeout = 300 * time.Millisecond
	watch, err := client.Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Drain(); err == nil {
		t.Error("Drain with a stream open past the deadline: want an error")
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("Drain took %s, want about its 300ms deadline", took)
	}
	if _, err := watch.Recv(); err == nil {
		t.Error("the stream is still open after Drain")
	}
}

// Draining channels close within Spread after the drain began, and a
// clean drain returns nil.
func TestDrainingWithinSpread(t *testing.T) {
	s, client := serveHealth(t)
	s.Spread = 200 * time.Millisecond
	if _, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	ch := s.Draining(context.Background())
	select {
	case <-ch:
		t.Fatal("Draining closed before the drain")
	case <-time.After(50 * time.Millisecond):
	}
	start := time.Now()
	if err := s.Drain(); err != nil {
		t.Errorf("Drain: %v", err)
	}
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("Draining did not close within a second of the drain")
	}
	if took := time.Since(start); took > 400*time.Millisecond {
		t.Errorf("Draining closed %s after the drain, want within the 200ms Spread", took)
	}
}

// A server whose Serve fails before it accepts never says READY=1, so
// handoffd never makes it the active generation.
func TestServeNotReadyWhenServeFailed(t *testing.T) {
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: fmt.Sprintf("@handoffgrpc-test/%d/servefail", os.Getpid()), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	t.Setenv("NOTIFY_SOCKET", notify.LocalAddr().String())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	gs.Stop() // Serve now fails at once, before any Accept
	s := New(gs)
	s.DrainTimeout = time.Second
	if err := s.Serve(context.Background(), ln); !errors.Is(err, grpc.ErrServerStopped) {
		t.Fatalf("Serve = %v, want the error of the gRPC server's Serve", err)
	}
	notify.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 64)
	for {
		n, err := notify.Read(buf)
		if err != nil {
			break // nothing more within 200ms
		}
		if string(buf[:n]) == "READY=1" {
			t.Fatal("READY=1 sent although Serve had failed")
		}
	}
}

// With no DrainTimeout, a Server keeps within what handoffd allows, less a
// margin for Stop and the exit.
func TestDrainTimeoutFollowsHandoffd(t *testing.T) {
	for _, tc := range []struct {
		env  string
		set  time.Duration
		want time.Duration
	}{
		{"", 0, DefaultDrainTimeout},
		{"30000", 0, 29 * time.Second},
		{"5000", 0, 4500 * time.Millisecond},
		{"5000", 2 * time.Second, 2 * time.Second},
		{"nonsense", 0, DefaultDrainTimeout},
	} {
		t.Setenv("HANDOFF_DRAIN_TIMEOUT_MS", tc.env)
		s := New(grpc.NewServer())
		s.DrainTimeout = tc.set
		if got := s.drainTimeout(); got != tc.want {
			t.Errorf("HANDOFF_DRAIN_TIMEOUT_MS=%q, DrainTimeout %v: drains for %v, want %v", tc.env, tc.set, got, tc.want)
		}
	}
}
