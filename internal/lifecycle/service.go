package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
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
	state api.State
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
	// reloads: the process said, to an earlier handoffd, that it reloads
	// on SIGHUP (see Process.Reloads).
	reloads bool
	// drain is closed when the generation is told to drain; signalled
	// is set once it got its stop signal.
	drain     chan struct{}
	signalled bool
	// handover, set while a swap waits for this generation's snapshot,
	// receives it (see takeSnapshot).
	handover chan snapshot

	started, ready, active, draining, exited time.Time
}

// Service runs the generations of one configured service.
type Service struct {
	name string // never changes, unlike cfg
	// cfg is replaced by a config reload (setConfig, holding swapMu and
	// mu): read it holding either, or through config().
	cfg *config.ServiceConfig
	// mode is handoffd's mode; a listener that cannot be steered (unix)
	// is shared even in api.ModeEBPF.
	mode     api.Mode
	control  string
	router   Router
	launcher Launcher
	counter  Counter
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
	// canary receives split.Share of new connections beside current.
	canary  *Generation
	split   Split
	lastID  int
	stopped bool
	stopCh  chan struct{}
	// goroutines counts what the service runs in the background: each
	// live generation's awaitExit, replacements and probation timers.
	// Stop waits for them.
	goroutines sync.WaitGroup
	// replacing is true while replace runs: one at a time.
	replacing bool
	// failure is set while the service is failed (see failure.go):
	// nothing serves it and starts failed; replace retries after retry's
	// backoff, or at once when retryNow receives.
	failure  *failure
	retry    retryBackoff
	retryNow chan struct{}
	// adoptErr is why the service, as adopt found it, cannot be
	// supervised as it runs (start makes it a failure).
	adoptErr error
	// begin, if set, holds replace back until start closes it: no
	// generation starts before handoffd has built every service, so
	// that each start is saved together with all of them.
	begin     chan struct{}
	beginOnce sync.Once
	// testHookReplaced, set by tests before a replace starts, runs as
	// replace returns.
	testHookReplaced func()
	// stored is the service's fd store, in the order stored.
	stored []storedFD
	// starting counts starts that pass the stored fds on now; closeLater
	// holds the fds removed from the store meanwhile (see lendStore).
	starting   int
	closeLater []*os.File
	// broken holds invariants found broken in the background (invariant).
	broken []error
	// onChange, if set, is called (never blocking) when a generation
	// changes state, so that the state file follows.
	onChange func()
	// save, if set, writes the state file at once (see LaunchSpec.Started).
	save func() error
	// activating is the generation a swap is about to make active: the
	// state file records it as active, and what it replaces as retired,
	// before steering moves to it (see saved).
	activating *Generation
}

func newService(cfg *config.ServiceConfig, mode api.Mode, control string, r Router, l Launcher, c Counter, o Observer, log *slog.Logger) *Service {
	if o == nil {
		o = nopObserver{}
	}
	s := &Service{name: cfg.Name, cfg: cfg, mode: mode, control: control, router: r, launcher: l, counter: c, observer: o,
		log: log.With("service", cfg.Name), stopCh: make(chan struct{}), retry: defaultBackoff, retryNow: make(chan struct{}, 1)}
	s.warnConfig(cfg)
	return s
}

// warnConfig logs what a valid config asks for that this service's mode
// cannot give.
func (s *Service) warnConfig(cfg *config.ServiceConfig) {
	if cfg.StopDelay > 0 && serviceMode(cfg, s.mode) != api.ModeEBPF {
		s.log.Warn("stop_delay does not help in fdpass mode: the old generation accepts from the shared socket until its stop signal",
			"stop_delay", cfg.StopDelay.Std())
	}
}

// Observer is told about swaps as they happen; observe.Metrics implements
// it. Its methods must not block.
type Observer interface {
	// SwapDone is called once per swap with result "ok", "failed", or
	// "refused" when another swap of the service was under way.
	SwapDone(service, result string)
	// PhaseDone is called with the length of each phase of a swap:
	// api.PhaseStartToReady, api.PhaseReadyToActive, api.PhaseActiveToOldExited.
	PhaseDone(service, phase string, d time.Duration)
	// DrainKilled is called when drain_timeout ended a generation with
	// SIGKILL; held is what it still held (-1 when unknown).
	DrainKilled(service string, held int64)
	// FDStoreRefused is called when fds sent to the fd store were
	// refused, with the reason (RefusedFull, ...).
	FDStoreRefused(service, reason string)
	// StateHandoff is called once per state handoff with its result
	// (HandoffLoaded, HandoffCold, HandoffFailed, HandoffTimeout).
	StateHandoff(service, result string)
	// StateFinal is called once per final delta: "relayed" or "dropped".
	StateFinal(service, result string)
	// GenerationCrashed is called when a generation exited that nobody
	// asked to stop: an active one (replaced, or rolled back from), a
	// canary (rolled back) or one in standby.
	GenerationCrashed(service string)
}

type nopObserver struct{}

func (nopObserver) SwapDone(string, string)                 {}
func (nopObserver) PhaseDone(string, string, time.Duration) {}
func (nopObserver) DrainKilled(string, int64)               {}
func (nopObserver) FDStoreRefused(string, string)           {}
func (nopObserver) StateHandoff(string, string)             {}
func (nopObserver) StateFinal(string, string)               {}
func (nopObserver) GenerationCrashed(string)                {}

// Name returns the service's name.
func (s *Service) Name() string { return s.name }

// generationOf returns the live generation whose process pid is.
func (s *Service) generationOf(pid int) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.gens {
		if g.pid == pid && g.state.Live() {
			return g.ID, true
		}
	}
	return 0, false
}

// Swap starts the next generation, waits until it is ready, makes it
// active and tells the previous one to drain. It returns once the new
// generation is active, or with an error when it could not be made ready;
// the previous generation then stays active, untouched. Swap gives up when
// ctx ends or the service's ready_timeout passes. It does not wait for the
// old generation to exit: that is for status to follow.
func (s *Service) Swap(ctx context.Context) (api.SwapResult, error) {
	return s.SwapTo(ctx, s.launcher.Start)
}

// StartFunc starts the process of a new generation on the sockets in spec.
type StartFunc func(spec LaunchSpec) (Process, error)

// SwapTo is Swap with the new generation's process started by start
// instead of the service's Launcher: a process started by someone else
// that joins over the control socket becomes the next generation this way.
func (s *Service) SwapTo(ctx context.Context, start StartFunc) (api.SwapResult, error) {
	return s.swapWith(ctx, start, nil)
}

// swapWith is a swap, or with canary the start of a canary.
func (s *Service) swapWith(ctx context.Context, start StartFunc, canary *Split) (api.SwapResult, error) {
	if !s.swapMu.TryLock() {
		s.observer.SwapDone(s.name, "refused")
		s.mu.Lock()
		var reason error
		if s.failure != nil {
			reason = s.failure.reason
		}
		s.mu.Unlock()
		if reason != nil {
			return api.SwapResult{}, fmt.Errorf("%w (service %s is failed, and handoffd retries it: %v)", ErrSwapInProgress, s.name, reason)
		}
		return api.SwapResult{}, ErrSwapInProgress
	}
	defer s.swapMu.Unlock()
	s.mu.Lock()
	running := s.canary
	s.mu.Unlock()
	if running != nil {
		s.observer.SwapDone(s.name, "refused")
		return api.SwapResult{}, fmt.Errorf("%w (generation %d)", ErrCanaryRunning, running.ID)
	}
	if canary != nil {
		if err := s.checkCanary(); err != nil {
			s.observer.SwapDone(s.name, "refused")
			return api.SwapResult{}, err
		}
	}
	s.swapping.Store(true)
	defer s.swapping.Store(false)
	res, err := s.swap(ctx, start, canary)
	if err != nil && canary == nil && !errors.Is(err, ErrStopped) {
		s.mu.Lock()
		if !s.stopped && (!s.serving() || s.failure != nil) {
			s.failedLocked(err)
		}
		s.mu.Unlock()
	}
	result := "ok"
	switch {
	case err != nil:
		result = "failed"
	case canary != nil:
		result = "canary" // "ok" comes with the promotion
	}
	s.observer.SwapDone(s.name, result)
	return res, err
}

func (s *Service) swap(ctx context.Context, start StartFunc, canary *Split) (api.SwapResult, error) {
	cfg := s.cfg
	g, err := s.startGeneration(start)
	if err != nil {
		return api.SwapResult{}, err
	}
	if err := s.awaitReady(ctx, g); err != nil {
		err = fmt.Errorf("generation %d: %w", g.ID, err)
		return api.SwapResult{}, errors.Join(err, s.fail(g, err))
	}
	if canary != nil {
		res, err := s.startCanary(g, *canary)
		if err != nil {
			s.restoreSteering()
			return api.SwapResult{}, errors.Join(err, s.fail(g, err))
		}
		s.persist()
		s.watchHealth(cfg, g)
		return res, nil
	}
	// Recorded first: a handoffd killed once steering has moved must
	// find g as the generation that serves, not stop it as one that was
	// never active (see adopt).
	s.mu.Lock()
	s.activating = g
	s.mu.Unlock()
	if err := s.saveNow(); err != nil {
		err = fmt.Errorf("activate generation %d: %w", g.ID, err)
		s.endActivating()
		return api.SwapResult{}, errors.Join(err, s.fail(g, err))
	}
	if chanClosed(g.proc.Done()) {
		// It died while it was recorded: steering stays.
		s.endActivating()
		err := fmt.Errorf("generation %d: %w: %s", g.ID, errExitedWhenReady, g.proc.ExitStatus())
		return api.SwapResult{}, errors.Join(err, s.fail(g, err))
	}
	if err := s.router.Activate(g.ID); err != nil {
		err = fmt.Errorf("activate generation %d: %w", g.ID, err)
		s.endActivating()
		s.restoreSteering()
		return api.SwapResult{}, errors.Join(err, s.fail(g, err))
	}
	res, err := s.promote(g)
	if errors.Is(err, errExitedWhenReady) {
		// It died between READY=1 and its activation: steering goes
		// back to the generation that serves, which was never retired.
		s.endActivating()
		s.restoreSteering()
		err = fmt.Errorf("generation %d: %w", g.ID, err)
		return api.SwapResult{}, errors.Join(err, s.fail(g, err))
	}
	s.watchHealth(cfg, g)
	return res, err
}

// errExitedWhenReady is why a swap fails whose new generation said
// READY=1 and exited before it was made active.
var errExitedWhenReady = errors.New("exited right after it said it was ready")

func (s *Service) startGeneration(start StartFunc) (*Generation, error) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil, ErrStopped
	}
	id := s.lastID + 1
	if n := s.router.Slots(); n > 0 {
		for _, g := range s.gens {
			if g.state.Live() && g.ID%n == id%n {
				s.mu.Unlock()
				return nil, fmt.Errorf("generation %d still runs in slot %d; wait until it exits", g.ID, id%n)
			}
		}
	}
	s.lastID = id
	g := &Generation{ID: id, state: api.StateStarting, started: time.Now(), drain: make(chan struct{})}
	s.gens = append(s.gens, g)
	s.mu.Unlock()

	files, err := s.router.Prepare(id)
	if err == nil {
		s.mu.Lock() // status copies g.files under it
		g.files = files
		stored := s.lendStore()
		s.mu.Unlock()
		recorded := false
		record := func(pid int) error {
			s.mu.Lock()
			g.pid, g.startTicks = pid, s.launcher.StartTicks(pid)
			s.mu.Unlock()
			recorded = true
			return s.saveNow()
		}
		var p Process
		p, err = start(LaunchSpec{Service: s.name, Generation: id, Config: s.cfg, Files: files, Control: s.control,
			Stored: stored, StateChannel: s.cfg.StateHandoff, Notice: func(n Notice) { s.notice(g, n) }, Started: record})
		s.mu.Lock()
		s.giveBackStore()
		s.mu.Unlock()
		if err == nil && !recorded {
			// It ran before it could be recorded (it joined): at once, then.
			if serr := record(p.Pid()); serr != nil {
				s.log.Error("save state", "generation", id, "err", serr)
			}
		}
		if err == nil {
			s.mu.Lock()
			g.proc = p
			s.mu.Unlock()
			s.goroutines.Add(1)
			go s.awaitExit(g)
			s.log.Info("generation started", "generation", id, "pid", g.pid)
			return g, nil
		}
	}
	err = fmt.Errorf("start generation %d: %w", id, err)
	return nil, errors.Join(err, s.fail(g, err))
}

// awaitReady waits until g says READY=1 (unless the service has ready:
// health), receives the state of the previous generation (with
// state_handoff, bounded by state_timeout) and then passes its health
// check (if it has one), all within ready_timeout, which the state
// handoff does not count in.
func (s *Service) awaitReady(ctx context.Context, g *Generation) error {
	deadline := time.Now().Add(s.cfg.ReadyTimeout.Std())
	if s.cfg.Ready == config.ReadyHealth && serviceMode(s.cfg, s.mode) != api.ModeEBPF {
		// The config refuses it for mode: fdpass; this is the fallback
		// of mode: auto on a host that refused eBPF.
		return fmt.Errorf("%w (handoffd runs in fdpass mode)", config.ErrReadyHealthFDPass)
	}
	if s.cfg.Ready != config.ReadyHealth {
		if err := s.awaitNotify(ctx, g); err != nil {
			return err
		}
		start := time.Now()
		s.handOver(ctx, s.cfg, g)
		deadline = deadline.Add(time.Since(start))
	}
	if err := s.awaitHealthy(ctx, s.cfg, g, deadline); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.move(g, api.StateReady)
}

// awaitNotify waits until g says READY=1.
func (s *Service) awaitNotify(ctx context.Context, g *Generation) error {
	timer := time.NewTimer(s.cfg.ReadyTimeout.Std())
	defer timer.Stop()
	select {
	case <-g.proc.Ready():
		// Both may be closed already: Go's select picks either.
		if chanClosed(g.proc.Done()) {
			return fmt.Errorf("%w: %s%s", errExitedWhenReady, g.proc.ExitStatus(), stderrTail(g.proc))
		}
	case <-g.proc.Done():
		return fmt.Errorf("exited before it was ready: %s%s", g.proc.ExitStatus(), stderrTail(g.proc))
	case <-timer.C:
		return fmt.Errorf("not ready within ready_timeout %s%s", s.cfg.ReadyTimeout.Std(), stderrTail(g.proc))
	case <-ctx.Done():
		return fmt.Errorf("swap abandoned before it was ready: %w", ctx.Err())
	case <-s.stopCh:
		return ErrStopped
	}
	return nil
}

// promote records g as active and sends the previous generation to drain.
func (s *Service) promote(g *Generation) (api.SwapResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.activating = nil
	// Checked under s.mu: an exit after this point finds g active, and
	// exited then starts a replacement.
	if chanClosed(g.proc.Done()) {
		return api.SwapResult{}, fmt.Errorf("%w: %s", errExitedWhenReady, g.proc.ExitStatus())
	}
	return s.promoteLocked(g)
}

// promoteLocked is promote for callers that hold s.mu.
func (s *Service) promoteLocked(g *Generation) (api.SwapResult, error) {
	if err := s.move(g, api.StateActive); err != nil {
		return api.SwapResult{}, err
	}
	old := s.current
	s.current = g
	s.recoveredLocked(g)
	res := api.SwapResult{Service: s.name, Generation: g.ID, PID: g.pid,
		StartToReady:  g.ready.Sub(g.started).Seconds(),
		ReadyToActive: g.active.Sub(g.ready).Seconds()}
	s.observer.PhaseDone(s.name, api.PhaseStartToReady, g.ready.Sub(g.started))
	s.observer.PhaseDone(s.name, api.PhaseReadyToActive, g.active.Sub(g.ready))
	s.log.Info("generation active", "generation", g.ID, "pid", g.pid,
		"start_to_ready", g.ready.Sub(g.started), "ready_to_active", g.active.Sub(g.ready))
	var errs []error
	if s.standby != nil {
		// A swap during probation: the standby is two generations old now.
		errs = append(errs, s.retire(s.standby))
		s.standby = nil
	}
	if old != nil {
		res.Previous = old.ID
		if p := s.cfg.Probation.Std(); p > 0 && old.state == api.StateActive {
			errs = append(errs, s.holdInStandby(old, g, p))
		} else {
			errs = append(errs, s.retire(old))
		}
	}
	return res, errors.Join(errs...)
}

// retire drops handoffd's copies of g's sockets and, if g still runs,
// sends it the stop signal. Once g closes its listeners too, the kernel
// migrates what still waits in their queues to the active generation.
// Callers hold s.mu.
func (s *Service) retire(g *Generation) error {
	closeFiles(g.files)
	g.files = nil
	if g.state != api.StateActive && g.state != api.StateStandby && g.state != api.StateCanary {
		return nil
	}
	if err := s.move(g, api.StateDraining); err != nil {
		return err
	}
	close(g.drain)
	sig, delay := s.cfg.StopSignal.Std(), s.cfg.StopDelay.Std()
	s.log.Info("generation draining", "generation", g.ID, "pid", g.pid, "signal", sig.String(), "stop_delay", delay)
	if delay <= 0 {
		g.signalled = true
		s.stopSignal(g, sig)
		return nil
	}
	// drain_timeout runs meanwhile (awaitExit): a process that exits
	// or is killed first gets no signal.
	time.AfterFunc(delay, func() {
		select {
		case <-g.proc.Done():
		default:
			s.mu.Lock()
			g.signalled = true
			s.mu.Unlock()
			s.stopSignal(g, sig)
		}
	})
	return nil
}

// endActivating records that a swap's generation will not be active
// after all, in the state file too: the one it was to replace serves on.
func (s *Service) endActivating() {
	s.mu.Lock()
	s.activating = nil
	s.mu.Unlock()
	s.persist()
}

func (s *Service) stopSignal(g *Generation, sig syscall.Signal) {
	if err := g.proc.Signal(sig); err != nil {
		s.log.Error("signal generation to drain", "generation", g.ID, "err", err)
	}
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
	if err := s.router.Activate(cur.ID); err != nil {
		s.log.Error("restore steering", "generation", cur.ID, "err", err)
	}
}

// fail stops a generation that never became active.
func (s *Service) fail(g *Generation, reason error) error {
	s.mu.Lock()
	closeFiles(g.files)
	g.files = nil
	err := s.move(g, api.StateFailed)
	g.exit = reason.Error()
	p := g.proc
	s.prune()
	s.mu.Unlock()
	if p != nil {
		p.Signal(syscall.SIGKILL)
	}
	s.log.Error("generation failed", "generation", g.ID, "err", reason)
	return err
}

// awaitExit waits for g's process to exit and enforces drain_timeout.
func (s *Service) awaitExit(g *Generation) {
	defer s.goroutines.Done()
	select {
	case <-g.proc.Done():
		s.exited(g)
		return
	case <-g.drain:
	}
	cfg := s.Config()
	timer := time.NewTimer(cfg.DrainTimeout.Std())
	defer timer.Stop()
	select {
	case <-g.proc.Done():
	case <-timer.C:
		held := s.countOne(cfg, g)
		s.mu.Lock()
		g.killedConns = held
		s.mu.Unlock()
		n := int64(-1)
		if held != nil {
			n = *held
		}
		s.observer.DrainKilled(s.name, n)
		s.log.Warn("drain_timeout passed: killing generation", "generation", g.ID, "pid", g.pid,
			"drain_timeout", cfg.DrainTimeout.Std(), "connections", deref(held))
		g.proc.Signal(syscall.SIGKILL)
		<-g.proc.Done()
	}
	s.exited(g)
}

func (s *Service) exited(g *Generation) {
	status := g.proc.ExitStatus()
	s.mu.Lock()
	defer s.mu.Unlock()
	wasActive := g.state == api.StateActive
	if !s.stopped && (wasActive || g == s.canary || g == s.standby) {
		s.observer.GenerationCrashed(s.name)
	}
	if canMove(g.state, api.StateExited) {
		s.invariant(s.move(g, api.StateExited))
		g.exit = status
	}
	if g != s.current || s.failure != nil {
		// Nothing accepts from its sockets any more: out of the
		// reuseport group with them, so that no fallback of steering
		// hashes a new connection there. The current generation's
		// stay while its replacement starts: they queue for it; not
		// once a start failed, when nothing may serve them for long
		// (see failedLocked).
		closeFiles(g.files)
		g.files = nil
	}
	defer s.checkLocked()
	if g == s.standby {
		s.standby = nil
		s.log.Error("generation in standby exited: no rollback is left", "generation", g.ID, "pid", g.pid, "status", status)
	}
	switch {
	case s.canary == g && !s.stopped:
		if _, err := s.rollbackCanaryLocked("exited: " + status); err != nil {
			s.log.Error("automatic rollback of a crashed canary", "generation", g.ID, "err", err)
		}
	case wasActive && !s.stopped && s.canary != nil:
		c := s.canary
		s.log.Error("active generation exited during a canary; promoting the canary", "generation", g.ID, "pid", g.pid, "status", status, "canary", c.ID)
		// The canary is all that runs: it becomes the active
		// generation even if steering will not follow, for a dead
		// active beside a canary would block every swap and never be
		// replaced.
		s.steerToCanary(c)
		s.canary = nil
		_, err := s.promoteLocked(c)
		s.invariant(err)
	case wasActive && !s.stopped && s.standby != nil:
		s.log.Error("active generation exited during probation; rolling back", "generation", g.ID, "pid", g.pid, "status", status)
		if err := s.rollbackLocked(); err != nil {
			s.log.Error("automatic rollback failed; starting a replacement", "err", err)
			s.startReplacing()
		}
	case wasActive && !s.stopped:
		s.log.Error("active generation exited; starting a replacement", "generation", g.ID, "pid", g.pid, "status", status)
		s.startReplacing()
	case g.state == api.StateExited && !g.draining.IsZero():
		s.observer.PhaseDone(s.name, api.PhaseActiveToOldExited, g.exited.Sub(g.draining))
		s.log.Info("generation exited", "generation", g.ID, "pid", g.pid, "status", status,
			"drain", g.exited.Sub(g.draining))
	}
	s.router.Forget(g.ID)
	s.prune()
}

// steerToCanary sends every new connection to canary c, whose active
// generation died: by Promote, or else by Activate and an empty split.
// If both fail, steering still splits; closing the dead generation's
// sockets empties its slot, so the program sends its share, and
// migrates its queue, to c. Callers hold s.mu.
func (s *Service) steerToCanary(c *Generation) {
	err := s.router.Promote(c.ID)
	if err == nil {
		return
	}
	if aerr := s.router.Activate(c.ID); aerr != nil {
		s.log.Error("promote the canary", "generation", c.ID, "err", errors.Join(err, aerr))
		return
	}
	if serr := s.router.SetSplit(c.ID, 0, false); serr != nil {
		s.log.Error("promote the canary: clear the split", "generation", c.ID, "err", errors.Join(err, serr))
		return
	}
	s.log.Warn("promote the canary: steered to it by activation instead", "generation", c.ID, "promote_err", err)
}

// chanClosed reports whether c is closed, without blocking.
func chanClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// serving reports whether the current generation's process runs.
// Callers hold s.mu.
func (s *Service) serving() bool {
	return s.current != nil && !chanClosed(s.current.proc.Done())
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

// move changes g's state and stamps the time, or returns a
// *TransitionError when the state machine does not allow the move.
// Callers hold s.mu.
func (s *Service) move(g *Generation, to api.State) error {
	if !canMove(g.state, to) {
		return &TransitionError{Generation: g.ID, From: g.state, To: to}
	}
	now := time.Now()
	switch to {
	case api.StateReady:
		g.ready = now
	case api.StateActive, api.StateCanary:
		g.active = now
	case api.StateDraining:
		g.draining = now
	case api.StateExited, api.StateFailed:
		g.exited = now
	}
	g.state = to
	s.changed()
	return nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// invariant records err, a broken invariant of the lifecycle found where
// nobody waits for an answer (a process's exit, a timer): it is logged
// and kept for Invariants, which the tests check. Callers hold s.mu.
func (s *Service) invariant(err error) {
	if err == nil {
		return
	}
	s.log.Error("lifecycle invariant broken", "err", err)
	if len(s.broken) < 16 {
		s.broken = append(s.broken, err)
	}
}

// Invariants returns the broken invariants recorded so far (none in a
// correct lifecycle).
func (s *Service) Invariants() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.broken)
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

// abort marks the service stopped: a swap under way gives up, and no new
// one starts.
func (s *Service) abort() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		s.stopped = true
		close(s.stopCh)
	}
}

// Stop stops every generation of the service: each gets the stop signal
// and drain_timeout to finish, then SIGKILL. Stop returns when all have
// exited, or when ctx ends.
func (s *Service) Stop(ctx context.Context) error {
	s.abort()
	// A swap under way gives up at stopCh; wait for it to let go.
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	s.mu.Lock()
	var errs []error
	for _, g := range s.gens {
		errs = append(errs, s.retire(g))
	}
	s.current, s.standby, s.canary = nil, nil, nil
	s.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop %s: %w", s.name, err)
	}

	done := make(chan struct{})
	go func() { s.goroutines.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", s.name, ctx.Err())
	}
	s.closeStore()
	if err := s.router.Close(); err != nil {
		return fmt.Errorf("stop %s: %w", s.name, err)
	}
	s.log.Info("service stopped")
	return nil
}
