package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
)

func TestServiceReload(t *testing.T) {
	l := &fakeLauncher{ready: true}
	s := testService(t, l, &fakeRouter{})
	if _, err := s.Reload(); !errors.Is(err, ErrNoActive) {
		t.Fatalf("reload before any generation: %v, want ErrNoActive", err)
	}
	s.Swap(context.Background())
	s.Swap(context.Background())
	res, err := s.Reload()
	if err != nil || res.Generation != 2 || res.PID != 1002 {
		t.Fatalf("reload = %+v, %v; want generation 2, pid 1002", res, err)
	}
	if got := l.proc(1).got(); !slices.Equal(got, []syscall.Signal{syscall.SIGHUP}) {
		t.Errorf("active generation got %v, want [SIGHUP]", got)
	}
	if got := l.proc(0).got(); slices.Contains(got, syscall.SIGHUP) {
		t.Errorf("draining generation got %v: a reload is for the active one only", got)
	}
	if n := l.count(); n != 2 {
		t.Errorf("%d generations started, want 2: a reload starts none", n)
	}
}

// TestReloadRefusedWithoutDeclaration: SIGHUP ends a process that does
// not handle it, so a reload goes only to a generation that said it
// reloads (HANDOFF_RELOAD=1); others are refused and keep serving.
func TestReloadRefusedWithoutDeclaration(t *testing.T) {
	l := &fakeLauncher{ready: true, noReload: true}
	s := testService(t, l, &fakeRouter{})
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := s.Reload()
	if err == nil || !strings.Contains(err.Error(), "HANDOFF_RELOAD=1") {
		t.Errorf("reload of a generation that handles no SIGHUP: %v, want a refusal that says how to declare it", err)
	}
	if got := l.proc(0).got(); slices.Contains(got, syscall.SIGHUP) {
		t.Errorf("generation got %v: SIGHUP would have ended it", got)
	}
}

// specLauncher is a fakeLauncher that records what each generation was
// started with.
type specLauncher struct {
	fakeLauncher
	specs []LaunchSpec
	// broken names a service whose starts fail.
	broken string
}

func (l *specLauncher) Start(spec LaunchSpec) (Process, error) {
	l.mu.Lock()
	broken := spec.Service == l.broken
	l.mu.Unlock()
	if broken {
		return nil, errNoCommand
	}
	p, err := l.fakeLauncher.Start(spec)
	l.mu.Lock()
	l.specs = append(l.specs, spec)
	l.mu.Unlock()
	return p, err
}

func (l *specLauncher) started(service string) []LaunchSpec {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []LaunchSpec
	for _, s := range l.specs {
		if s.Service == service {
			out = append(out, s)
		}
	}
	return out
}

// testSupervisor runs cfg in fdpass mode (real loopback sockets on free
// ports, fake processes): nothing here needs root.
func testSupervisor(t *testing.T, cfg *config.Config) (*Supervisor, *specLauncher) {
	t.Helper()
	l := &specLauncher{fakeLauncher: fakeLauncher{ready: true}}
	sup, err := New(cfg, Options{Mode: api.ModeFDPass, NewRouter: fakeRouters, Launcher: l, Counter: fakeCounter{}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	sup.Start(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := sup.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return sup, l
}

// configHead is the start of a config whose state_dir is the test's own,
// up to its services.
func configHead(t *testing.T) string {
	return "control: /run/handoff/handoffd.sock\nstate_dir: " + t.TempDir() + "\nservices:"
}

func freeAddress(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "tcp://" + ln.Addr().String()
}

func serviceDoc(name, env, addr string) string {
	return fmt.Sprintf(`
  - name: %s
    command: [%s]
    env: [%s]
    listeners: [{name: http, address: %q}]
    ready_timeout: 1s
    drain_timeout: 1s`, name, name, env, addr)
}

func parse(t *testing.T, doc string) *config.Config {
	t.Helper()
	cfg, err := config.ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func liveGens(sup *Supervisor, name string) []string {
	st, err := sup.Status(name)
	if err != nil {
		return nil
	}
	var out []string
	for _, g := range st.Services[0].Generations {
		if g.State.Live() {
			out = append(out, fmt.Sprintf("%d:%s", g.ID, g.State))
		}
	}
	return out
}

func TestSupervisorReload(t *testing.T) {
	demoAddr, webAddr := freeAddress(t), freeAddress(t)
	head := configHead(t)
	sup, l := testSupervisor(t, parse(t, head+serviceDoc("demo", "V=1", demoAddr)))

	// Changed: applies from the next generation on, no swap forced.
	ch, err := sup.Reload(context.Background(), parse(t, head+serviceDoc("demo", "V=2", demoAddr)))
	if err != nil || !slices.Equal(ch.Changed, []string{"demo"}) || len(ch.Added)+len(ch.Removed) != 0 {
		t.Fatalf("reload with a changed env = %+v, %v", ch, err)
	}
	if got := liveGens(sup, "demo"); !slices.Equal(got, []string{"1:active"}) {
		t.Fatalf("after reload demo runs %v, want generation 1 only: no swap", got)
	}
	svc, _ := sup.Service("demo")
	if _, err := svc.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	specs := l.started("demo")
	if len(specs) != 2 || !slices.Equal(specs[0].Config.Env, []string{"V=1"}) || !slices.Equal(specs[1].Config.Env, []string{"V=2"}) {
		t.Fatalf("generations started with %+v, want env V=1 then V=2", specs)
	}

	// Invalid, or needing a restart: refused, nothing changes.
	for _, doc := range []string{
		head + serviceDoc("demo", "V=3", demoAddr) + "\n    ready_timeout: -1s",
		head + serviceDoc("demo", "V=3", demoAddr) + serviceDoc("demo", "V=3", webAddr),
		"control: /tmp/elsewhere.sock\nservices:" + serviceDoc("demo", "V=3", demoAddr),
	} {
		cfg, err := config.ParseConfig([]byte(doc))
		if err == nil {
			_, err = sup.Reload(context.Background(), cfg)
		} else {
			// What handoffd does with a file that does not parse.
			err = fmt.Errorf("%w: %w", ErrConfigRefused, err)
		}
		if !errors.Is(err, ErrConfigRefused) || strings.Contains(err.Error(), "\n") {
			t.Errorf("reload of a bad config: %v, want ErrConfigRefused on one line", err)
		}
	}
	if got := svc.Config().Env; !slices.Equal(got, []string{"V=2"}) {
		t.Errorf("a refused reload changed the config: env %v", got)
	}

	// Added and removed.
	ch, err = sup.Reload(context.Background(), parse(t, head+serviceDoc("web", "W=1", webAddr)))
	if err != nil || !slices.Equal(ch.Added, []string{"web"}) || !slices.Equal(ch.Removed, []string{"demo"}) {
		t.Fatalf("reload adding web, removing demo = %+v, %v", ch, err)
	}
	if got := liveGens(sup, "web"); !slices.Equal(got, []string{"1:active"}) {
		t.Fatalf("added service runs %v, want generation 1 active", got)
	}
	if _, err := sup.Service("demo"); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("removed service still known: %v", err)
	}
	eventually(t, "demo's generations stopped", func() bool {
		return slices.Contains(l.proc(1).got(), syscall.SIGTERM) && len(sup.Config().Services) == 1
	})
}

// TestSupervisorReloadAddFails: an added service that does not start
// stays, failed, and is retried with backoff until it does; the reload
// says so.
func TestSupervisorReloadAddFails(t *testing.T) {
	head := configHead(t)
	demo := serviceDoc("demo", "V=1", freeAddress(t))
	sup, l := testSupervisor(t, parse(t, head+demo))
	l.mu.Lock()
	l.failStarts = 1 // web's generation 1 cannot start
	l.mu.Unlock()
	ch, err := sup.Reload(context.Background(), parse(t, head+demo+serviceDoc("web", "W=1", freeAddress(t))))
	if err == nil || !strings.Contains(err.Error(), "service web did not start") || !strings.Contains(err.Error(), "retries it with backoff") {
		t.Fatalf("reload with a service that does not start: %v", err)
	}
	if !slices.Equal(ch.Added, []string{"web"}) || len(sup.Config().Services) != 2 {
		t.Fatalf("added %v, running config has %d services; want web added and kept", ch.Added, len(sup.Config().Services))
	}
	web, err := sup.Service("web")
	if err != nil {
		t.Fatal(err)
	}
	web.mu.Lock()
	web.retry = retryBackoff{first: 10 * time.Millisecond, max: 10 * time.Millisecond}
	web.mu.Unlock()
	if st := web.Status(); st.State != api.ServiceFailed || st.Failure == nil || !strings.Contains(st.Failure.Reason, "no such file") {
		t.Fatalf("web right after the reload: state %s, failure %+v; want failed with the start's error", st.State, st.Failure)
	}
	eventually(t, "web retried and serving", func() bool { return web.Status().State == api.ServiceRunning })
}
