package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
)

// Options are what New needs beyond the config.
type Options struct {
	// Mode is the resolved mode: ModeEBPF or ModeFDPass.
	Mode Mode
	// NewSteering loads the steering of a listener (ModeEBPF).
	NewSteering NewSteering
	Launcher    Launcher
	// Observer, if set, is told about swaps as they happen.
	Observer Observer
	Logger   *slog.Logger
	// LoadConfig reads the config again for ReloadConfig (SIGHUP, POST
	// /v1/reload-config): the file, with the command line's overrides.
	// Nil refuses such reloads.
	LoadConfig func() (*Config, error)
}

// Supervisor runs all configured services.
type Supervisor struct {
	opts Options
	log  *slog.Logger

	reloadMu sync.Mutex // held for the whole of a reload, and by Stop

	mu       sync.Mutex
	cfg      *Config // the config that runs: replaced by Reload
	services []*Service
	// saver writes StateFile as generations change.
	saver *stateSaver
	// watches are the file watchers of services with watch paths.
	watches map[string]*watcher
	// stopping holds the services removed by a reload until they stopped.
	stopping map[string]*ServiceConfig
	closed   bool // Stop was called
	removals sync.WaitGroup
}

// New prepares the services of cfg without starting any process.
func New(cfg *Config, opts Options) (*Supervisor, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Supervisor{cfg: cfg, opts: opts, log: opts.Logger, watches: map[string]*watcher{}}
	saved, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("%w (remove it to start afresh)", err)
	}
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		svc, err := s.newService(sc, cfg.Control, saved)
		if err != nil {
			s.closeRouters()
			return nil, fmt.Errorf("service %s: %w", sc.Name, err)
		}
		s.services = append(s.services, svc)
	}
	s.saver = newStateSaver(cfg.StateDir, s.savedState, s.log)
	for _, svc := range s.services {
		svc.onChange = s.saver.changed
	}
	go s.saver.run()
	s.saver.changed()
	return s, nil
}

// newService builds a service and its router. When saved holds
// generations of it that still run, in the same mode, it re-adopts them.
func (s *Supervisor) newService(sc *ServiceConfig, control string, saved savedState) (*Service, error) {
	ss, _ := saved.service(sc.Name)
	adopting := false
	for _, g := range ss.Generations {
		if procStartTicks(g.PID) == g.StartTicks {
			adopting = true
		}
	}
	if adopting && saved.Mode != s.opts.Mode {
		return nil, fmt.Errorf("generations started in mode %s still run, and handoffd now runs in mode %s: stop them, or run in mode %s", saved.Mode, s.opts.Mode, saved.Mode)
	}
	r, err := newRouter(sc, s.opts.Mode, s.opts.NewSteering, adopting)
	if err != nil {
		return nil, err
	}
	svc := newService(sc, s.opts.Mode, control, r, s.opts.Launcher, s.opts.Observer, s.log)
	if s.saver != nil {
		svc.onChange = s.saver.changed
	}
	if adopting {
		if err := svc.adopt(ss); err != nil {
			r.close()
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
		s.unwatch(svc.Name())
	}
	s.saver.close()
}

// serviceMode is ModeEBPF when every listener of sc is steered, else
// ModeFDPass; status shows each listener's own mode too.
func serviceMode(sc *ServiceConfig, mode Mode) Mode {
	for _, l := range sc.Listeners {
		if laneMode(l, mode) != ModeEBPF {
			return ModeFDPass
		}
	}
	return mode
}

func (s *Supervisor) closeRouters() {
	for _, svc := range s.services {
		svc.router.close()
	}
}

// Start starts the first generation of every service, then watches the
// files of those that have watch paths. It stops at the first service that
// cannot be started and returns why.
func (s *Supervisor) Start(ctx context.Context) error {
	for _, svc := range s.list() {
		if svc.hasCurrent() {
			continue // re-adopted
		}
		if _, err := svc.Swap(ctx); err != nil {
			return fmt.Errorf("start service %s: %w", svc.Name(), err)
		}
	}
	for _, svc := range s.list() {
		s.watch(svc, svc.config())
	}
	return nil
}

// list returns the services that run now.
func (s *Supervisor) list() []*Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.services)
}

// config returns the config that runs now.
func (s *Supervisor) config() *Config {
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

// Status returns the state of every service, or of the named one.
func (s *Supervisor) Status(name string) (Status, error) {
	st := Status{Services: []ServiceStatus{}}
	for _, svc := range s.list() {
		if name == "" || svc.Name() == name {
			st.Services = append(st.Services, svc.Status())
		}
	}
	if name != "" && len(st.Services) == 0 {
		return st, fmt.Errorf("%w %q", ErrUnknownService, name)
	}
	return st, nil
}

// Stop stops all services at once, and the file watchers, and waits until
// they have stopped, services removed by a reload included, or ctx ends.
// A reload under way is let finish first; later ones are refused.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.reloadMu.Lock()
	s.mu.Lock()
	s.closed = true
	services := slices.Clone(s.services)
	s.mu.Unlock()
	s.reloadMu.Unlock()
	for _, svc := range services {
		s.unwatch(svc.Name())
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
