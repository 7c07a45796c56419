package supervisor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"syscall"
)

// ErrNoActive is returned by Service.Reload when no generation of the
// service is active.
var ErrNoActive = errors.New("no active generation")

// ReloadResult says which generation Service.Reload signalled.
type ReloadResult struct {
	Service    string `json:"service"`
	Generation int    `json:"generation"`
	PID        int    `json:"pid"`
}

// Reload sends SIGHUP to the active generation, which re-reads its own
// configuration (see handoff.OnReload) and goes on serving: no swap, no
// new process. Generations that drain are left alone. Reload does not
// wait for the app to act on the signal; the app logs what it did.
func (s *Service) Reload() (ReloadResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ReloadResult{}, ErrStopped
	}
	g := s.current
	if g == nil || g.state != StateActive {
		return ReloadResult{}, ErrNoActive
	}
	if err := g.proc.Signal(syscall.SIGHUP); err != nil {
		return ReloadResult{}, fmt.Errorf("signal generation %d (pid %d): %w", g.ID, g.pid, err)
	}
	s.log.Info("generation told to reload its config", "generation", g.ID, "pid", g.pid, "signal", "SIGHUP")
	return ReloadResult{Service: s.cfg.Name, Generation: g.ID, PID: g.pid}, nil
}

// config returns the service's config. s.cfg is replaced only by
// setConfig, which holds both swapMu and mu: code holding either may read
// s.cfg directly; code holding neither reads it through config.
func (s *Service) config() *ServiceConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// setConfig makes cfg the service's config from its next generation on.
// It waits until a swap under way has ended, so that one swap never sees
// two configs. cfg must keep the service's name and listeners: the
// router's sockets were made from them.
func (s *Service) setConfig(cfg *ServiceConfig) {
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg = cfg
}

// ConfigChanges says what a config reload did, by service name.
type ConfigChanges struct {
	// Changed services run their next generation with the new config.
	Changed []string `json:"changed"`
	// Added services were started (generation 1).
	Added []string `json:"added"`
	// Removed services are being stopped: their generations drain.
	Removed []string `json:"removed"`
}

// Empty says whether the reload changed nothing.
func (c ConfigChanges) Empty() bool {
	return len(c.Changed) == 0 && len(c.Added) == 0 && len(c.Removed) == 0
}

// diffConfig compares the running config cur with next and returns what
// a reload to next would change, or every reason why next cannot be
// applied while handoffd runs, on one line. stopping holds the removed
// services that have not finished stopping. next must be valid.
func diffConfig(cur, next *Config, stopping map[string]*ServiceConfig) (ConfigChanges, error) {
	var errs []error
	fixed := func(field, was, now string) {
		if was != now {
			errs = append(errs, fmt.Errorf("%s: cannot change while handoffd runs (%q, now %q): restart handoffd to apply it", field, was, now))
		}
	}
	fixed("control", cur.Control, next.Control)
	fixed("metrics", cur.Metrics, next.Metrics)
	fixed("mode", string(cur.Mode), string(next.Mode))
	fixed("state_dir", cur.StateDir, next.StateDir)
	fixed("bpf_dir", cur.BPFDir, next.BPFDir)
	fixed("group", cur.Group, next.Group)
	fixed("read_group", cur.ReadGroup, next.ReadGroup)

	var ch ConfigChanges
	running := map[string]*ServiceConfig{}
	for i := range cur.Services {
		running[cur.Services[i].Name] = &cur.Services[i]
	}
	// Addresses held by running and stopping services: an added service
	// may take only an address whose service was removed and has stopped.
	held := map[string]string{}
	hold := func(sc *ServiceConfig) {
		for _, l := range sc.Listeners {
			held[l.Address] = sc.Name
		}
	}
	for i := range cur.Services {
		hold(&cur.Services[i])
	}
	for _, sc := range stopping {
		hold(sc)
	}
	for i := range next.Services {
		sc := &next.Services[i]
		old, ok := running[sc.Name]
		switch {
		case !ok && stopping[sc.Name] != nil:
			errs = append(errs, fmt.Errorf("services[%d] (%s): the service of that name is still stopping: reload again once it has stopped", i, sc.Name))
		case !ok:
			for _, l := range sc.Listeners {
				if other, taken := held[l.Address]; taken {
					errs = append(errs, fmt.Errorf("services[%d] (%s): listener %s: address %s is still held by service %s (a removed service releases it once stopped: reload again then)", i, sc.Name, l.Name, l.Address, other))
				}
			}
			ch.Added = append(ch.Added, sc.Name)
		case !reflect.DeepEqual(old.Listeners, sc.Listeners):
			errs = append(errs, fmt.Errorf("services[%d] (%s): listeners cannot change while the service runs: remove the service, reload, then add it back", i, sc.Name))
		case !reflect.DeepEqual(*old, *sc):
			ch.Changed = append(ch.Changed, sc.Name)
		}
	}
	for _, sc := range cur.Services {
		if !slices.ContainsFunc(next.Services, func(n ServiceConfig) bool { return n.Name == sc.Name }) {
			ch.Removed = append(ch.Removed, sc.Name)
		}
	}
	if err := joinErrors(errs...); err != nil {
		return ConfigChanges{}, err
	}
	return ch, nil
}

// ErrConfigRefused wraps the reason why a reload left the running config
// as it was.
var ErrConfigRefused = errors.New("config refused")

// ReloadConfig reads the config again through Options.LoadConfig and
// applies it; see Reload.
func (s *Supervisor) ReloadConfig(ctx context.Context) (ConfigChanges, error) {
	cfg, err := s.loadConfig()
	if err != nil {
		return ConfigChanges{}, err
	}
	return s.Reload(ctx, cfg)
}

func (s *Supervisor) loadConfig() (*Config, error) {
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
// file's change, a crash's replacement) with its new config; an added
// service is started and Reload waits until its generation 1 is active
// or failed (ready_timeout, or ctx ending); a removed service is stopped
// in the background, its generations draining as on Stop.
//
// A config that cannot be applied whole is refused, with every reason on
// one line (ErrConfigRefused), and nothing changes: invalid configs, and
// changes that need a restart of handoffd (control, metrics, mode,
// state_dir, bpf_dir, group, read_group) or of the service (listeners).
// An added service that does not start is stopped and left out of the
// running config, so that a later reload of the same file tries again;
// Reload then returns what it did apply together with the error.
func (s *Supervisor) Reload(ctx context.Context, cfg *Config) (ConfigChanges, error) {
	if err := cfg.Validate(); err != nil {
		return ConfigChanges{}, fmt.Errorf("%w: %w", ErrConfigRefused, err)
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.mu.Lock()
	cur, closed := s.cfg, s.closed
	stopping := maps.Clone(s.stopping)
	s.mu.Unlock()
	if closed {
		return ConfigChanges{}, ErrStopped
	}
	ch, err := diffConfig(cur, cfg, stopping)
	if err != nil {
		return ConfigChanges{}, fmt.Errorf("%w: %w", ErrConfigRefused, err)
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
		svc.setConfig(sc)
		s.watch(svc, sc)
	}
	applied := *cfg
	applied.Services = slices.Clone(cfg.Services)
	var errs []error
	var added []string
	for _, name := range ch.Added {
		if err := s.add(ctx, serviceConfig(cfg, name), cur.Control); err != nil {
			errs = append(errs, fmt.Errorf("service %s not started: %w", name, err))
			applied.Services = slices.DeleteFunc(applied.Services, func(sc ServiceConfig) bool { return sc.Name == name })
			continue
		}
		added = append(added, name)
	}
	ch.Added = added
	s.mu.Lock()
	s.cfg = &applied
	s.mu.Unlock()
	s.log.Info("config reloaded", "changed", ch.Changed, "added", ch.Added, "removed", ch.Removed)
	if len(errs) > 0 {
		return ch, fmt.Errorf("config applied, but %w; reload again to retry", errors.Join(errs...))
	}
	return ch, nil
}

func serviceConfig(cfg *Config, name string) *ServiceConfig {
	for i := range cfg.Services {
		if cfg.Services[i].Name == name {
			return &cfg.Services[i]
		}
	}
	return nil
}

// add starts a service that the running config does not have.
func (s *Supervisor) add(ctx context.Context, sc *ServiceConfig, control string) error {
	svc, err := s.newService(sc, control, savedState{})
	if err != nil {
		return err
	}
	if _, err := svc.Swap(ctx); err != nil {
		// Nothing of it runs: Stop only releases the router.
		if serr := svc.Stop(context.WithoutCancel(ctx)); serr != nil {
			s.log.Error("release service that did not start", "service", sc.Name, "err", serr)
		}
		return err
	}
	s.mu.Lock()
	s.services = append(s.services, svc)
	s.mu.Unlock()
	s.watch(svc, sc)
	return nil
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
		s.stopping = map[string]*ServiceConfig{}
	}
	s.stopping[name] = svc.config()
	s.mu.Unlock()
	s.unwatch(name)
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
