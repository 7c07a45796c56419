package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
)

// Options are what New needs beyond the config.
type Options struct {
	// Mode is the resolved mode: api.ModeEBPF or api.ModeFDPass.
	Mode api.Mode
	// NewRouter builds the router of a service's listeners for Mode.
	NewRouter NewRouter
	Launcher  Launcher
	// Counter counts accept queues and the connections generations
	// hold.
	Counter Counter
	// Observer, if set, is told about swaps as they happen.
	Observer Observer
	Logger   *slog.Logger
	// LoadConfig reads the config again for ReloadConfig (SIGHUP, POST
	// /v1/reload-config): the file, with the command line's overrides.
	// Nil refuses such reloads.
	LoadConfig func() (*config.Config, error)
}

// Supervisor runs all configured services.
type Supervisor struct {
	opts Options
	log  *slog.Logger

	reloadMu sync.Mutex // held for the whole of a reload, and by Stop

	mu       sync.Mutex
	cfg      *config.Config // the config that runs: replaced by Reload
	services []*Service
	// saver writes StateFile as generations change.
	saver *stateSaver
	// fileWatchers are the file watchers of services with watch paths.
	fileWatchers map[string]*fileWatcher
	// stopping holds the services removed by a reload until they stopped.
	stopping map[string]*config.ServiceConfig
	closed   bool // Stop was called
	removals sync.WaitGroup
}

// New prepares the services of cfg without starting any process, and
// re-adopts the generations that an earlier handoffd left running. Only
// an unreadable state file makes it fail: a service that cannot be
// re-adopted or set up is built all the same, to be shown failed and
// retried once Start runs.
func New(cfg *config.Config, opts Options) (*Supervisor, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Supervisor{cfg: cfg, opts: opts, log: opts.Logger, fileWatchers: map[string]*fileWatcher{}}
	saved, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("%w (remove it to start afresh)", err)
	}
	s.saver = newStateSaver(cfg.StateDir, s.savedState, s.log)
	for i := range cfg.Services {
		svc := s.newService(&cfg.Services[i], cfg.Control, saved)
		s.services = append(s.services, svc)
	}
	go s.saver.run()
	s.saver.changed()
	return s, nil
}

// newService builds a service and its router. When saved holds
// generations of it that still run, in the same mode, it re-adopts them.
// What goes wrong is kept for start (adoptErr): the service is failed and
// retried then, and every other one is left alone.
func (s *Supervisor) newService(sc *config.ServiceConfig, control string, saved savedState) *Service {
	ss, _ := saved.service(sc.Name)
	adopting := false
	for _, g := range ss.Generations {
		if t := s.opts.Launcher.StartTicks(g.PID); t != 0 && t == g.StartTicks {
			adopting = true
		}
	}
	var broken error
	if adopting && saved.Mode != s.opts.Mode {
		broken = fmt.Errorf("generations started in mode %s still run, and handoffd now runs in mode %s: stop them, or run in mode %s", saved.Mode, s.opts.Mode, saved.Mode)
		adopting = false
	}
	r, err := s.opts.NewRouter(sc, adopting)
	if err != nil {
		broken = errors.Join(broken, fmt.Errorf("listeners: %w", err))
		r = &lazyRouter{build: func() (Router, error) { return s.opts.NewRouter(sc, false) }}
		adopting = false
	}
	svc := newService(sc, s.opts.Mode, control, r, s.opts.Launcher, s.opts.Counter, s.opts.Observer, s.log)
	svc.onChange, svc.save = s.saver.changed, s.saver.saveNow
	svc.begin = make(chan struct{})
	svc.lastID = ss.LastID // numbering goes on, whatever became of them
	switch {
	case adopting:
		svc.adopt(ss)
	case broken == nil:
		svc.noteGone(ss)
	}
	if broken != nil {
		svc.adoptErr = broken
		svc.log.Error("service cannot be set up; it is retried once handoffd runs", "err", broken)
	}
	return svc
}

// savedState collects what every service records of itself.
func (s *Supervisor) savedState() savedState {
	st := savedState{Mode: s.opts.Mode, Services: []savedService{}}
	for _, svc := range s.list() {
		st.Services = append(st.Services, svc.saved())
	}
	return st
}

// Detach stops handoffd's own work, the state saver (after a last save),
// the file watches and the retries of failed services, and leaves every
// generation running and steered: for a handoffd that exits to be
// restarted, which re-adopts them. A swap under way gives up.
func (s *Supervisor) Detach() {
	for _, svc := range s.list() {
		s.unwatchFiles(svc.Name())
		svc.abort()
	}
	s.saver.close()
}

// serviceMode is api.ModeEBPF when every listener of sc is steered, else
// api.ModeFDPass; status shows each listener's own mode too.
func serviceMode(sc *config.ServiceConfig, mode api.Mode) api.Mode {
	for _, l := range sc.Listeners {
		if config.ListenerMode(l, mode) != api.ModeEBPF {
			return api.ModeFDPass
		}
	}
	return mode
}

// Start makes every service serve, all at once: it starts the first
// generation of each service that nothing serves (or retries one that
// could not be re-adopted) and waits until each of those first starts
// has succeeded or failed; then it watches the files of the services
// that have watch paths. A service whose start fails is failed (status,
// metrics, log) and retried with backoff in the background; it never
// stops handoffd or another service.
func (s *Supervisor) Start(ctx context.Context) {
	var wg sync.WaitGroup
	for _, svc := range s.list() {
		wg.Go(func() { svc.start(ctx) }) // a failure is logged where it is recorded
	}
	wg.Wait()
	for _, svc := range s.list() {
		s.watchFiles(svc, svc.Config())
	}
}

// list returns the services that run now.
func (s *Supervisor) list() []*Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.services)
}

// Logger returns the logger of the supervisor.
func (s *Supervisor) Logger() *slog.Logger { return s.log }

// Config returns the config that runs now.
func (s *Supervisor) Config() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// ErrUnknownService is returned for a service name that is not configured.
var ErrUnknownService = errors.New("no such service")

// Service returns the named service.
func (s *Supervisor) Service(name string) (*Service, error) {
	for _, svc := range s.list() {
		if svc.Name() == name {
			return svc, nil
		}
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownService, name)
}

// GenerationOf returns the service and the generation whose process pid
// is, among the live generations of every service.
func (s *Supervisor) GenerationOf(pid int) (service string, gen int, ok bool) {
	for _, svc := range s.list() {
		if id, ok := svc.generationOf(pid); ok {
			return svc.Name(), id, true
		}
	}
	return "", 0, false
}

// Status returns the state of every service, or of the named one.
func (s *Supervisor) Status(name string) (api.Status, error) {
	st := api.Status{Services: []api.ServiceStatus{}}
	var counted [][]*Counted
	for _, svc := range s.list() {
		if name == "" || svc.Name() == name {
			ss, c := svc.status()
			st.Services = append(st.Services, ss)
			counted = append(counted, c)
		}
	}
	if name != "" && len(st.Services) == 0 {
		return st, fmt.Errorf("%w %q", ErrUnknownService, name)
	}
	// One counting pass for every service: what the counter asks the
	// kernel (a sock_diag dump, the ports to look for) it asks once.
	s.opts.Counter.Count(slices.Concat(counted...))
	for i := range st.Services {
		fillCounts(&st.Services[i], counted[i])
	}
	return st, nil
}

// Stop stops all services at once, and the file watchers, and waits until
// they have stopped, services removed by a reload included, or ctx ends.
// A reload under way is let finish first (its swaps, and those it waits
// for, give up at once); later ones are refused.
func (s *Supervisor) Stop(ctx context.Context) error {
	for _, svc := range s.list() {
		svc.abort()
	}
	s.reloadMu.Lock()
	s.mu.Lock()
	s.closed = true
	services := slices.Clone(s.services)
	s.mu.Unlock()
	s.reloadMu.Unlock()
	for _, svc := range services {
		s.unwatchFiles(svc.Name())
	}
	errs := make([]error, len(services)+1)
	var wg sync.WaitGroup
	for i, svc := range services {
		wg.Go(func() { errs[i] = svc.Stop(ctx) })
	}
	wg.Go(func() {
		done := make(chan struct{})
		go func() { s.removals.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			errs[len(services)] = fmt.Errorf("stop removed services: %w", ctx.Err())
		}
	})
	wg.Wait()
	s.saver.close()
	return errors.Join(errs...)
}
