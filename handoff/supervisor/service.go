package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	// ErrSwapInProgress is returned when a swap of the service is already
	// under way; swaps of one service never overlap.
	ErrSwapInProgress = errors.New("a swap is already in progress")
	// ErrStopped is returned for a service that was stopped.
	ErrStopped = errors.New("service is stopped")
)

// keepExited is how many exited or failed generations status still shows.
const keepExited = 8

// Generation is one process of a service, numbered from 1.
type Generation struct {
	ID    int
	state State
	pid   int
	proc  Process
	// files are handoffd's copies of the generation's listening sockets.
	// They are held until the next generation is active, so that
	// connections that arrive while the process is gone wait in the queue.
	files []*os.File
	exit  string
	// killedConns is what the generation held when drain_timeout killed it.
	killedConns *int64
	// startTicks is the process's start time, saved with its pid.
	startTicks uint64
	// drain is closed when the generation is told to drain.
	drain chan struct{}

	started, ready, active, draining, exited time.Time
}

// Service runs the generations of one configured service.
type Service struct {
	name string // never changes, unlike cfg
	// cfg is replaced by a config reload (setConfig, holding swapMu and
	// mu): read it holding either, or through config().
	cfg *ServiceConfig
	// mode is handoffd's mode; a listener that cannot be steered (unix)
	// is shared even in ModeEBPF.
	mode     Mode
	control  string
	router   router
	launcher Launcher
	observer Observer
	log      *slog.Logger

	swapMu sync.Mutex // held for the whole of a swap
	// swapping is true while a swap holds swapMu; status reads it instead
	// of probing swapMu, which would refuse a swap that starts meanwhile.
	swapping atomic.Bool

	mu      sync.Mutex
	gens    []*Generation
	current *Generation // the generation that receives new connections
	// standby is the generation current replaced, kept during probation.
	standby *Generation
	lastID  int
	stopped bool
	stopCh  chan struct{}
	// watchers counts the goroutines that watch processes; Stop waits for them.
	watchers sync.WaitGroup
	// onChange, if set, is called (never blocking) when a generation
	// changes state, so that the state file follows.
	onChange func()
}

func newService(cfg *ServiceConfig, mode Mode, control string, r router, l Launcher, o Observer, log *slog.Logger) *Service {
	if o == nil {
		o = nopObserver{}
	}
	return &Service{name: cfg.Name, cfg: cfg, mode: mode, control: control, router: r, launcher: l, observer: o,
		log: log.With("service", cfg.Name), stopCh: make(chan struct{})}
}

// Observer is told about swaps as they happen; observe.Metrics implements
// it. Its methods must not block.
type Observer interface {
	// SwapDone is called once per swap with result "ok", "failed", or
	// "refused" when another swap of the service was under way.
	SwapDone(service, result string)
	// PhaseDone is called with the length of each phase of a swap:
	// PhaseStartToReady, PhaseReadyToActive, PhaseActiveToOldExited.
	PhaseDone(service, phase string, d time.Duration)
	// DrainKilled is called when drain_timeout ended a generation with
	// SIGKILL; held is what it still held (-1 when unknown).
	DrainKilled(service string, held int64)
}

// The phases of a swap, as PhaseDone names them.
const (
	PhaseStartToReady      = "start_to_ready"
	PhaseReadyToActive     = "ready_to_active"
	PhaseActiveToOldExited = "active_to_old_exited"
)

type nopObserver struct{}

func (nopObserver) SwapDone(string, string)                 {}
func (nopObserver) PhaseDone(string, string, time.Duration) {}
func (nopObserver) DrainKilled(string, int64)               {}

// Name returns the service's name.
func (s *Service) Name() string { return s.name }

// SwapResult tells what a successful swap did.
type SwapResult struct {
	Service    string `json:"service"`
	Generation int    `json:"generation"`
	PID        int    `json:"pid"`
	// Previous is the generation that now drains; 0 on the first start.
	Previous int `json:"previous"`
	// StartToReady and ReadyToActive are the phases of the swap, in seconds.
	StartToReady  float64 `json:"start_to_ready_seconds"`
	ReadyToActive float64 `json:"ready_to_active_seconds"`
}

// Swap starts the next generation, waits until it is ready, makes it
// active and tells the previous one to drain. It returns once the new
// generation is active, or with an error when it could not be made ready;
// the previous generation then stays active, untouched. Swap gives up when
// ctx ends or the service's ready_timeout passes. It does not wait for the
// old generation to exit: that is for status to follow.
func (s *Service) Swap(ctx context.Context) (SwapResult, error) {
	return s.SwapTo(ctx, s.launcher.Start)
}

// StartFunc starts the process of a new generation on the sockets in spec.
type StartFunc func(spec LaunchSpec) (Process, error)

// SwapTo is Swap with the new generation's process started by start
// instead of the service's Launcher: a process started by someone else
// that joins over the control socket becomes the next generation this way.
func (s *Service) SwapTo(ctx context.Context, start StartFunc) (SwapResult, error) {
	if !s.swapMu.TryLock() {
		s.observer.SwapDone(s.name, "refused")
		return SwapResult{}, ErrSwapInProgress
	}
	defer s.swapMu.Unlock()
	s.swapping.Store(true)
	defer s.swapping.Store(false)
	res, err := s.swap(ctx, start)
	result := "ok"
	if err != nil {
		result = "failed"
	}
	s.observer.SwapDone(s.name, result)
	return res, err
}

func (s *Service) swap(ctx context.Context, start StartFunc) (SwapResult, error) {
	g, err := s.startGeneration(start)
	if err != nil {
		return SwapResult{}, err
	}
	if err := s.awaitReady(ctx, g); err != nil {
		s.fail(g, err)
		return SwapResult{}, fmt.Errorf("generation %d: %w", g.ID, err)
	}
	if err := s.router.activate(g.ID); err != nil {
		err = fmt.Errorf("activate generation %d: %w", g.ID, err)
		s.restoreSteering()
		s.fail(g, err)
		return SwapResult{}, err
	}
	return s.promote(g), nil
}

func (s *Service) startGeneration(start StartFunc) (*Generation, error) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil, ErrStopped
	}
	id := s.lastID + 1
	for _, g := range s.gens {
		if g.state.Live() && slot(g.ID) == slot(id) {
			s.mu.Unlock()
			return nil, fmt.Errorf("generation %d still runs in slot %d; wait until it exits", g.ID, slot(id))
		}
	}
	s.lastID = id
	g := &Generation{ID: id, state: StateStarting, started: time.Now(), drain: make(chan struct{})}
	s.gens = append(s.gens, g)
	s.mu.Unlock()

	files, err := s.router.prepare(id)
	if err == nil {
		s.mu.Lock() // status copies g.files under it
		g.files = files
		s.mu.Unlock()
		var p Process
		p, err = start(LaunchSpec{Service: s.name, Generation: id, Config: s.cfg, Files: files, Control: s.control})
		if err == nil {
			s.mu.Lock()
			g.proc, g.pid = p, p.Pid()
			g.startTicks = procStartTicks(g.pid)
			s.mu.Unlock()
			s.watchers.Add(1)
			go s.watch(g)
			s.log.Info("generation started", "generation", id, "pid", g.pid)
			return g, nil
		}
	}
	err = fmt.Errorf("start generation %d: %w", id, err)
	s.fail(g, err)
	return nil, err
}

func (s *Service) awaitReady(ctx context.Context, g *Generation) error {
	timer := time.NewTimer(s.cfg.ReadyTimeout.Std())
	defer timer.Stop()
	select {
	case <-g.proc.Ready():
	case <-g.proc.Done():
		return fmt.Errorf("exited before it was ready: %s%s", g.proc.ExitStatus(), stderrTail(g.proc))
	case <-timer.C:
		return fmt.Errorf("not ready within ready_timeout %s%s", s.cfg.ReadyTimeout.Std(), stderrTail(g.proc))
	case <-ctx.Done():
		return fmt.Errorf("swap abandoned before it was ready: %w", ctx.Err())
	case <-s.stopCh:
		return ErrStopped
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.move(g, StateReady)
	return nil
}

// promote records g as active and sends the previous generation to drain.
func (s *Service) promote(g *Generation) SwapResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.move(g, StateActive)
	old := s.current
	s.current = g
	res := SwapResult{Service: s.name, Generation: g.ID, PID: g.pid,
		StartToReady:  g.ready.Sub(g.started).Seconds(),
		ReadyToActive: g.active.Sub(g.ready).Seconds()}
	s.observer.PhaseDone(s.name, PhaseStartToReady, g.ready.Sub(g.started))
	s.observer.PhaseDone(s.name, PhaseReadyToActive, g.active.Sub(g.ready))
	s.log.Info("generation active", "generation", g.ID, "pid", g.pid,
		"start_to_ready", g.ready.Sub(g.started), "ready_to_active", g.active.Sub(g.ready))
	if s.standby != nil {
		// A swap during probation: the standby is two generations old now.
		s.retire(s.standby)
		s.standby = nil
	}
	if old != nil {
		res.Previous = old.ID
		if p := s.cfg.Probation.Std(); p > 0 && old.state == StateActive {
			s.holdInStandby(old, g, p)
		} else {
			s.retire(old)
		}
	}
	return res
}

// retire drops handoffd's copies of g's sockets and, if g still runs,
// sends it the stop signal. Once g closes its listeners too, the kernel
// migrates what still waits in their queues to the active generation.
// Callers hold s.mu.
func (s *Service) retire(g *Generation) {
	closeAll(g.files)
	g.files = nil
	if g.state != StateActive && g.state != StateStandby {
		return
	}
	s.move(g, StateDraining)
	close(g.drain)
	if err := g.proc.Signal(s.cfg.StopSignal.Std()); err != nil {
		s.log.Error("signal generation to drain", "generation", g.ID, "err", err)
	}
	s.log.Info("generation draining", "generation", g.ID, "pid", g.pid, "signal", s.cfg.StopSignal.Std().String())
}

// restoreSteering points steering back at the current generation after a
// failed activation, which may have moved some listeners already.
func (s *Service) restoreSteering() {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	if cur == nil {
		return
	}
	if err := s.router.activate(cur.ID); err != nil {
		s.log.Error("restore steering", "generation", cur.ID, "err", err)
	}
}

// fail stops a generation that never became active.
func (s *Service) fail(g *Generation, reason error) {
	s.mu.Lock()
	closeAll(g.files)
	g.files = nil
	g.state = StateFailed
	g.exit = reason.Error()
	s.changed()
	g.exited = time.Now()
	p := g.proc
	s.prune()
	s.mu.Unlock()
	if p != nil {
		p.Signal(syscall.SIGKILL)
	}
	s.log.Error("generation failed", "generation", g.ID, "err", reason)
}

// watch waits for g's process to exit and enforces drain_timeout.
func (s *Service) watch(g *Generation) {
	defer s.watchers.Done()
	select {
	case <-g.proc.Done():
		s.exited(g)
		return
	case <-g.drain:
	}
	cfg := s.config()
	timer := time.NewTimer(cfg.DrainTimeout.Std())
	defer timer.Stop()
	select {
	case <-g.proc.Done():
	case <-timer.C:
		held := GenerationStatus{ID: g.ID, PID: g.pid}
		var proc *procCounter
		s.count(cfg, &held, nil, &proc)
		s.mu.Lock()
		g.killedConns = held.Connections
		s.mu.Unlock()
		n := int64(-1)
		if held.Connections != nil {
			n = *held.Connections
		}
		s.observer.DrainKilled(s.name, n)
		s.log.Warn("drain_timeout passed: killing generation", "generation", g.ID, "pid", g.pid,
			"drain_timeout", cfg.DrainTimeout.Std(), "connections", deref(held.Connections))
		g.proc.Signal(syscall.SIGKILL)
		<-g.proc.Done()
	}
	s.exited(g)
}

func (s *Service) exited(g *Generation) {
	status := g.proc.ExitStatus()
	s.mu.Lock()
	defer s.mu.Unlock()
	wasActive := g.state == StateActive
	if g.state.CanMove(StateExited) {
		s.move(g, StateExited)
		g.exit = status
	}
	switch {
	case wasActive && !s.stopped && s.standby != nil:
		s.log.Error("active generation exited during probation; rolling back", "generation", g.ID, "pid", g.pid, "status", status)
		s.rollbackLocked()
	case wasActive && !s.stopped:
		s.log.Error("active generation exited; starting a replacement", "generation", g.ID, "pid", g.pid, "status", status)
		s.watchers.Add(1)
		go s.replace()
	case g.state == StateExited && !g.draining.IsZero():
		s.observer.PhaseDone(s.name, PhaseActiveToOldExited, g.exited.Sub(g.draining))
		s.log.Info("generation exited", "generation", g.ID, "pid", g.pid, "status", status,
			"drain", g.exited.Sub(g.draining))
	}
	s.router.forget(g.ID)
	s.prune()
}

// replace starts a new generation after the active one died, with
// backoff. handoffd still holds the dead generation's sockets, so new
// connections wait in their queues and move to the replacement.
func (s *Service) replace() {
	defer s.watchers.Done()
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-s.stopCh:
			case <-ctx.Done():
			}
			cancel()
		}()
		_, err := s.Swap(ctx)
		cancel()
		if err == nil || errors.Is(err, ErrStopped) || errors.Is(err, ErrSwapInProgress) {
			return
		}
		s.log.Error("replace crashed generation", "err", err, "retry_in", backoff)
		select {
		case <-s.stopCh:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// stderrTail returns ", stderr: <last lines>" for a process that keeps
// them, else "".
func stderrTail(p Process) string {
	if t, ok := p.(interface{ StderrTail() string }); ok {
		if tail := t.StderrTail(); tail != "" {
			return ", stderr: " + tail
		}
	}
	return ""
}

func deref(n *int64) any {
	if n == nil {
		return "unknown"
	}
	return *n
}

// move changes g's state and stamps the time. Callers hold s.mu.
func (s *Service) move(g *Generation, to State) {
	if !g.state.CanMove(to) {
		s.log.Error("invalid generation transition", "generation", g.ID, "from", g.state, "to", to)
		return
	}
	now := time.Now()
	switch to {
	case StateReady:
		g.ready = now
	case StateActive:
		g.active = now
	case StateDraining:
		g.draining = now
	case StateExited:
		g.exited = now
	}
	g.state = to
	s.changed()
}

// prune forgets old exited generations. Callers hold s.mu.
func (s *Service) prune() {
	var dead int
	for _, g := range s.gens {
		if !g.state.Live() {
			dead++
		}
	}
	kept := s.gens[:0]
	for _, g := range s.gens {
		if !g.state.Live() && dead > keepExited {
			dead--
			continue
		}
		kept = append(kept, g)
	}
	clear(s.gens[len(kept):])
	s.gens = kept
}

// Stop stops every generation of the service: each gets the stop signal
// and drain_timeout to finish, then SIGKILL. Stop returns when all have
// exited, or when ctx ends.
func (s *Service) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.stopCh)
	}
	s.mu.Unlock()
	// A swap under way gives up at stopCh; wait for it to let go.
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	s.mu.Lock()
	for _, g := range s.gens {
		s.retire(g)
	}
	s.current, s.standby = nil, nil
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.watchers.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", s.name, ctx.Err())
	}
	if err := s.router.close(); err != nil {
		return fmt.Errorf("stop %s: %w", s.name, err)
	}
	s.log.Info("service stopped")
	return nil
}
