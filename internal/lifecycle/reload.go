package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
)

var (
	// ErrNoActive is returned by Service.Reload when no generation of the
	// service is active.
	ErrNoActive = errors.New("no active generation")
	// ErrNoReload is returned by Service.Reload for a generation that did
	// not say it reloads on SIGHUP, whose default action would end it.
	ErrNoReload = errors.New("it did not say that it reloads on SIGHUP, which would end it (an app says so with HANDOFF_RELOAD=1 on NOTIFY_SOCKET, as handoff.OnReload does): swap the service instead")
)

// Reload sends SIGHUP to the active generation, which re-reads its own
// configuration (see handoff.OnReload) and goes on serving: no swap, no
// new process. Generations that drain are left alone. Reload does not
// wait for the app to act on the signal; the app logs what it did. A
// generation that did not say it handles SIGHUP (Process.Reloads) is not
// sent it: ErrNoReload.
func (s *Service) Reload() (api.ReloadResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return api.ReloadResult{}, ErrStopped
	}
	g := s.current
	if g == nil || g.state != api.StateActive {
		return api.ReloadResult{}, ErrNoActive
	}
	if !g.reloads && !g.proc.Reloads() {
		return api.ReloadResult{}, fmt.Errorf("generation %d (pid %d): %w", g.ID, g.pid, ErrNoReload)
	}
	if err := g.proc.Signal(syscall.SIGHUP); err != nil {
		return api.ReloadResult{}, fmt.Errorf("signal generation %d (pid %d): %w", g.ID, g.pid, err)
	}
	s.log.Info("generation told to reload its config", "generation", g.ID, "pid", g.pid, "signal", "SIGHUP")
	return api.ReloadResult{Service: s.cfg.Name, Generation: g.ID, PID: g.pid}, nil
}

// Config returns the service's config. s.cfg is replaced only by
// setConfig, which holds both swapMu and mu: code holding either may read
// s.cfg directly; code holding neither reads it through Config.
func (s *Service) Config() *config.ServiceConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// setConfig makes cfg the service's config from its next generation on.
// It waits until a swap under way has ended, so that one swap never sees
// two configs. cfg must keep the service's name and listeners: the
// router's sockets were made from them. A failed service is retried at
// once with it.
func (s *Service) setConfig(cfg *config.ServiceConfig) {
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg = cfg
	s.warnConfig(cfg)
	s.retryAtOnce()
}

// ErrConfigRefused wraps the reason why a reload left the running config
// as it was.
var ErrConfigRefused = errors.New("config refused")

// ReloadConfig reads the config again through Options.LoadConfig and
// applies it; see Reload.
func (s *Supervisor) ReloadConfig(ctx context.Context) (api.ConfigChanges, error) {
	cfg, err := s.LoadConfig()
	if err != nil {
		return api.ConfigChanges{}, err
	}
	return s.Reload(ctx, cfg)
}

// LoadConfig reads the config again through Options.LoadConfig, for a
// reload; ErrConfigRefused wraps why it cannot be used.
func (s *Supervisor) LoadConfig() (*config.Config, error) {
	if s.opts.LoadConfig == nil {
		return nil, fmt.Errorf("%w: handoffd has no config file to read again", ErrConfigRefused)
	}
	cfg, err := s.opts.LoadConfig()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfigRefused, err)
	}
	return cfg, nil
}

// Reload applies cfg to the running services without forcing a swap:
// a changed service runs its next generation (the next swap, a watched
// file's change, a crash's replacement, the retry of a failed service,
// which comes at once) with its new config; an added service is started
// and Reload waits until its generation 1 is active or failed
// (ready_timeout, or ctx ending); a removed service is stopped in the
// background, its generations draining as on Stop.
//
// A config that cannot be applied whole is refused, with every reason on
// one line (ErrConfigRefused), and nothing changes: invalid configs, and
// changes that need a restart of handoffd (control, metrics, mode,
// state_dir, bpf_dir, group, read_group) or of the service (listeners).
// An added service that does not start stays, failed and retried with
// backoff, as one whose first start failed when handoffd started; Reload
// then returns what it applied together with the error.
func (s *Supervisor) Reload(ctx context.Context, cfg *config.Config) (api.ConfigChanges, error) {
	if err := cfg.Validate(); err != nil {
		return api.ConfigChanges{}, fmt.Errorf("%w: %w", ErrConfigRefused, err)
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.mu.Lock()
	cur, closed := s.cfg, s.closed
	stopping := maps.Clone(s.stopping)
	s.mu.Unlock()
	if closed {
		return api.ConfigChanges{}, ErrStopped
	}
	ch, err := config.Diff(cur, cfg, stopping)
	if err != nil {
		return api.ConfigChanges{}, fmt.Errorf("%w: %w", ErrConfigRefused, err)
	}

	for _, name := range ch.Removed {
		s.remove(name)
	}
	for _, name := range ch.Changed {
		sc := serviceConfig(cfg, name)
		svc, err := s.Service(name)
		if err != nil {
			continue // cannot happen: reloads do not overlap
		}
		if config.StateHandoffTurnedOn(svc.Config(), sc) {
			s.log.Warn("state_handoff turned on: the next swap starts cold, since the running generation has no state channel", "service", name)
		}
		svc.setConfig(sc)
		s.watchFiles(svc, sc)
	}
	var errs []error
	for _, name := range ch.Added {
		if err := s.add(ctx, serviceConfig(cfg, name), cur.Control); err != nil {
			errs = append(errs, fmt.Errorf("service %s did not start: %w", name, err))
		}
	}
	s.mu.Lock()
	s.cfg = cfg
	s.mu.Unlock()
	s.log.Info("config reloaded", "changed", ch.Changed, "added", ch.Added, "removed", ch.Removed)
	if len(errs) > 0 {
		return ch, fmt.Errorf("config applied, but %w; handoffd retries it with backoff", errors.Join(errs...))
	}
	return ch, nil
}

func serviceConfig(cfg *config.Config, name string) *config.ServiceConfig {
	for i := range cfg.Services {
		if cfg.Services[i].Name == name {
			return &cfg.Services[i]
		}
	}
	return nil
}

// add starts a service that the running config does not have. The
// service is one of the supervisor's before its generation 1 starts, so
// that the state file records that generation with the others; if it
// does not start, the service is failed and retried.
func (s *Supervisor) add(ctx context.Context, sc *config.ServiceConfig, control string) error {
	svc := s.newService(sc, control, savedState{})
	s.mu.Lock()
	s.services = append(s.services, svc)
	s.mu.Unlock()
	s.watchFiles(svc, sc)
	return svc.start(ctx)
}

// remove takes the named service out of the supervisor and stops it in
// the background; Supervisor.Stop waits for that stop to end.
func (s *Supervisor) remove(name string) {
	s.mu.Lock()
	i := slices.IndexFunc(s.services, func(svc *Service) bool { return svc.Name() == name })
	if i < 0 {
		s.mu.Unlock()
		return
	}
	svc := s.services[i]
	s.services = slices.Delete(s.services, i, i+1)
	if s.stopping == nil {
		s.stopping = map[string]*config.ServiceConfig{}
	}
	s.stopping[name] = svc.Config()
	s.mu.Unlock()
	s.unwatchFiles(name)
	s.removals.Go(func() {
		// Stop is bounded by the service's drain_timeout, then SIGKILL.
		if err := svc.Stop(context.Background()); err != nil {
			s.log.Error("stop removed service", "service", name, "err", err)
		}
		s.mu.Lock()
		delete(s.stopping, name)
		s.mu.Unlock()
	})
}
