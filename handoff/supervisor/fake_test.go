package supervisor

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// fakeProcess is a generation whose readiness and exit the test drives.
type fakeProcess struct {
	pid     int
	ready   chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	signals []syscall.Signal
	// exitOn makes the process exit when it receives one of these.
	exitOn map[syscall.Signal]bool
	status string
}

func (p *fakeProcess) Pid() int               { return p.pid }
func (p *fakeProcess) Ready() <-chan struct{} { return p.ready }
func (p *fakeProcess) Done() <-chan struct{}  { return p.done }
func (p *fakeProcess) ExitStatus() string     { <-p.done; return p.status }

func (p *fakeProcess) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	p.signals = append(p.signals, sig)
	exit := p.exitOn[sig] || sig == syscall.SIGKILL
	p.mu.Unlock()
	if exit {
		p.exit("signal: " + sig.String())
	}
	return nil
}

func (p *fakeProcess) exit(status string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
	default:
		p.status = status
		close(p.done)
	}
}

func (p *fakeProcess) got() []syscall.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]syscall.Signal(nil), p.signals...)
}

// fakeLauncher hands out fakeProcesses; ready says whether they become
// ready at once.
type fakeLauncher struct {
	mu    sync.Mutex
	procs []*fakeProcess
	ready bool
	// ignoreStop makes processes ignore the stop signal.
	ignoreStop bool
}

func (l *fakeLauncher) Start(spec LaunchSpec) (Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := &fakeProcess{pid: 1000 + spec.Generation, ready: make(chan struct{}), done: make(chan struct{}),
		exitOn: map[syscall.Signal]bool{syscall.SIGTERM: !l.ignoreStop}}
	if l.ready {
		close(p.ready)
	}
	l.procs = append(l.procs, p)
	return p, nil
}

func (l *fakeLauncher) proc(i int) *fakeProcess {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.procs[i]
}

func (l *fakeLauncher) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.procs)
}

// fakeRouter records the active generation.
type fakeRouter struct {
	mu       sync.Mutex
	active   int
	prepared []int
	failAt   int // activate fails for this generation
}

func (r *fakeRouter) prepare(gen int) ([]*os.File, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prepared = append(r.prepared, gen)
	return nil, nil
}

func (r *fakeRouter) activate(gen int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen == r.failAt {
		return fmt.Errorf("map update refused")
	}
	r.active = gen
	return nil
}

func (r *fakeRouter) activeGen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.active
}

func (r *fakeRouter) close() error                     { return nil }
func (r *fakeRouter) stats(int, int) (SlotStats, bool) { return SlotStats{Held: 7}, true }
func (r *fakeRouter) migrated() uint64                 { return 3 }
func (r *fakeRouter) forget(int)                       {}
func (r *fakeRouter) adopt(int, []*os.File) error      { return nil }

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeObserver records swap results and phase names in order.
type fakeObserver struct {
	mu     sync.Mutex
	events []string
}

func (o *fakeObserver) SwapDone(_, result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, result)
}

func (o *fakeObserver) PhaseDone(_, phase string, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, phase)
}

func (o *fakeObserver) DrainKilled(_ string, held int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, fmt.Sprintf("killed %d", held))
}

func (o *fakeObserver) got() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.events...)
}
