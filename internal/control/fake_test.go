package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
)

// The control server runs here over a real lifecycle.Supervisor whose
// processes, sockets and counting are fakes.

// fakeProcess is ready at once and exits on any signal.
type fakeProcess struct {
	pid   int
	ready chan struct{}
	done  chan struct{}
	once  sync.Once
}

func (p *fakeProcess) Pid() int               { return p.pid }
func (p *fakeProcess) Ready() <-chan struct{} { return p.ready }
func (p *fakeProcess) Done() <-chan struct{}  { return p.done }
func (p *fakeProcess) ExitStatus() string     { <-p.done; return "exited" }
func (p *fakeProcess) Reloads() bool          { return true }
func (p *fakeProcess) Signal(syscall.Signal) error {
	p.once.Do(func() { close(p.done) })
	return nil
}

// fakeLauncher starts fakeProcesses; while gate is open (not nil and not
// closed), Start waits on it, which keeps a swap under way. With fail
// set, Start fails with it, as a command that cannot be run does.
type fakeLauncher struct {
	mu   sync.Mutex
	gate chan struct{}
	fail error
}

func (l *fakeLauncher) set(gate chan struct{}, fail error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gate, l.fail = gate, fail
}

func (l *fakeLauncher) Start(spec lifecycle.LaunchSpec) (lifecycle.Process, error) {
	l.mu.Lock()
	gate, fail := l.gate, l.fail
	l.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if fail != nil {
		return nil, fail
	}
	ready := make(chan struct{})
	close(ready)
	// Pids differ between services, as real ones do.
	pid := 1000 + 100*len(spec.Service) + spec.Generation
	return &fakeProcess{pid: pid, ready: ready, done: make(chan struct{})}, nil
}

func (l *fakeLauncher) Adopt(string, int, int, uint64) (lifecycle.Process, error) {
	return nil, lifecycle.ErrGone
}

func (l *fakeLauncher) StartTicks(int) uint64 { return 1 }

// fakeRouter hands out one end of a socket pair per generation.
type fakeRouter struct{}

func (fakeRouter) Prepare(gen int) ([]*os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	syscall.Close(fds[1])
	return []*os.File{os.NewFile(uintptr(fds[0]), "socket")}, nil
}
func (fakeRouter) Activate(int) error                         { return nil }
func (fakeRouter) Stats(int, int) (lifecycle.SlotStats, bool) { return lifecycle.SlotStats{}, false }
func (fakeRouter) Migrated() uint64                           { return 0 }
func (fakeRouter) Forget(int)                                 {}
func (fakeRouter) Adopt(int, []*os.File) error                { return nil }
func (fakeRouter) Close() error                               { return nil }
func (fakeRouter) Release() error                             { return nil }
func (fakeRouter) Slots() int                                 { return 0 }
func (fakeRouter) SetSplit(int, float64, bool) error          { return errors.New("fdpass: no split") }
func (fakeRouter) Promote(int) error                          { return errors.New("fdpass: no split") }
func (fakeRouter) DialProbe(context.Context, int, int) (net.Conn, error) {
	return nil, errors.New("refused")
}
func (fakeRouter) AcceptQueue(*os.File) (uint32, bool) { return 0, false }
func (fakeRouter) Count(gens []*lifecycle.Counted) {
	for _, g := range gens {
		var n int64
		g.Total, g.Source = &n, api.SourceProc
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testSupervisor runs cfg, with service "demo" added when it has none,
// and generation 1 of each service active.
func testSupervisor(t *testing.T, cfg *config.Config, l *fakeLauncher) *lifecycle.Supervisor {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if len(cfg.Services) == 0 {
		cfg.Services = []config.ServiceConfig{{Name: "demo", Command: []string{"demo"},
			Listeners:    []config.ListenerConfig{{Name: "http", Address: "tcp://127.0.0.1:1"}},
			ReadyTimeout: config.Duration(time.Second), DrainTimeout: config.Duration(time.Second),
			StopSignal: config.Signal(syscall.SIGTERM)}}
	}
	sup, err := lifecycle.New(cfg, lifecycle.Options{Mode: api.ModeFDPass, Launcher: l, Counter: fakeRouter{}, Logger: quietLogger(),
		NewRouter: func(*config.ServiceConfig, bool) (lifecycle.Router, error) { return fakeRouter{}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	sup.Start(context.Background())
	t.Cleanup(func() { sup.Stop(context.Background()) })
	return sup
}
