package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
}

// Supervisor runs all configured services.
type Supervisor struct {
	cfg      *Config
	opts     Options
	log      *slog.Logger
	services []*Service
}

// New prepares the services of cfg without starting any process.
func New(cfg *Config, opts Options) (*Supervisor, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Supervisor{cfg: cfg, opts: opts, log: opts.Logger}
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

// Start starts the first generation of every service. It stops at the
// first service that cannot be started and returns why.
func (s *Supervisor) Start(ctx context.Context) error {
	for _, svc := range s.services {
		if _, err := svc.Swap(ctx); err != nil {
			return fmt.Errorf("start service %s: %w", svc.Name(), err)
		}
	}
	return nil
}

// ErrUnknownService is returned for a service name that is not configured.
var ErrUnknownService = errors.New("no such service")

// Service returns the named service.
func (s *Supervisor) Service(name string) (*Service, error) {
	for _, svc := range s.services {
		if svc.Name() == name {
			return svc, nil
		}
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownService, name)
}

// Status returns the state of every service, or of the named one.
func (s *Supervisor) Status(name string) (Status, error) {
	st := Status{Services: []ServiceStatus{}}
	for _, svc := range s.services {
		if name == "" || svc.Name() == name {
			st.Services = append(st.Services, svc.Status())
		}
	}
	if name != "" && len(st.Services) == 0 {
		return st, fmt.Errorf("%w %q", ErrUnknownService, name)
	}
	return st, nil
}

// Stop stops all services at once and waits until they have stopped or
// ctx ends.
func (s *Supervisor) Stop(ctx context.Context) error {
	errs := make([]error, len(s.services))
	var wg sync.WaitGroup
	for i, svc := range s.services {
		wg.Go(func() { errs[i] = svc.Stop(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
