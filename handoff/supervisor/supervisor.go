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
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		r, err := newRouter(sc, opts.Mode, opts.NewSteering)
		if err != nil {
			s.closeRouters()
			return nil, fmt.Errorf("service %s: %w", sc.Name, err)
		}
		s.services = append(s.services, newService(sc, opts.Mode, cfg.Control, r, opts.Launcher, opts.Observer, s.log))
	}
	return s, nil
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
	return errors.Join(errs...)
}
