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

// New prepares the services of cfg without starting any process.
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
		sc := &cfg.Services[i]
		svc, err := s.newService(sc, cfg.Control, saved)
		if err != nil {
			s.closeRouters()
			return nil, fmt.Errorf("service %s: %w", sc.Name, err)
		}
		s.services = append(s.services, svc)
	}
	go s.saver.run()
	s.saver.changed()
	return s, nil
}

// newService builds a service and its router. When saved holds
// generations of it that still run, in the same mode, it re-adopts them.
func (s *Supervisor) newService(sc *config.ServiceConfig, control string, saved savedState) (*Service, error) {
	ss, _ := saved.service(sc.Name)
	adopting := false
	for _, g := range ss.Generations {
		if s.opts.Launcher.StartTicks(g.PID) == g.StartTicks {
			adopting = true
		}
	}
	if adopting && saved.Mode != s.opts.Mode {
		return nil, fmt.Errorf("generations started in mode %s still run, and handoffd now runs in mode %s: stop them, or run in mode %s", saved.Mode, s.opts.Mode, saved.Mode)
	}
	r, err := s.opts.NewRouter(sc, adopting)
	if err != nil {
		return nil, err
	}
	svc := newService(sc, s.opts.Mode, control, r, s.opts.Launcher, s.opts.Counter, s.opts.Observer, s.log)
	svc.onChange, svc.save = s.saver.changed, s.saver.saveNow
	svc.begin = make(chan struct{})
	if adopting {
		if err := svc.adopt(ss); err != nil {
			r.Close()
			return nil, fmt.Errorf("%w; its generations still serve: stop them or fix the config, then start handoffd again", err)
		}
	}
	return svc, nil
}

// savedState collects what every service records of itself.
func (s *Supervisor) savedState() savedState {
	st := savedState{Mode: s.opts.Mode, Services: []savedService{}}
	for _, svc := range s.list() {
		st.Services = append(st.Services, svc.saved())
	}
	return st
}

// Detach stops handoffd's own work, the state saver (after a last save)
// and the file watches, and leaves every generation running and steered:
// for a handoffd that exits to be restarted, which re-adopts them.
func (s *Supervisor) Detach() {
	for _, svc := range s.list() {
		s.unwatchFiles(svc.Name())
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

func (s *Supervisor) closeRouters() {
	for _, svc := range s.services {
		svc.router.Close()
	}
}

// Start starts the first generation of every service, then watches the
// files of those that have watch paths. It stops at the first service that
// cannot be started and returns why.
func (s *Supervisor) Start(ctx context.Context) error {
	for _, svc := range s.list() {
		svc.beginOnce.Do(func() { close(svc.begin) })
	}
	for _, svc := range s.list() {
		if svc.hasCurrent() {
			continue // re-adopted
		}
		if _, err := svc.Swap(ctx); err != nil {
			return fmt.Errorf("start service %s: %w", svc.Name(), err)
		}
	}
	for _, svc := range s.list() {
		s.watchFiles(svc, svc.Config())
	}
	return nil
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
