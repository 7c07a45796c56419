package supervisor

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

// reloadBase is a valid running config with services demo and api.
func reloadBase(t *testing.T) *Config {
	t.Helper()
	cfg, err := ParseConfig([]byte(`
control: /run/handoff/handoffd.sock
services:
  - name: demo
    command: [demo]
    env: [A=1]
    listeners: [{name: http, address: "tcp://127.0.0.1:8080"}]
  - name: api
    command: [api]
    listeners: [{name: http, address: "tcp://127.0.0.1:8081"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestDiffConfig(t *testing.T) {
	web := ServiceConfig{Name: "web", Command: []string{"web"}, Dir: ".", ReadyTimeout: Duration(time.Second),
		DrainTimeout: Duration(time.Second), StopSignal: Signal(syscall.SIGTERM),
		Listeners: []ListenerConfig{{Name: "http", Address: "tcp://127.0.0.1:9000", Backlog: 4096}}}
	for _, tc := range []struct {
		name     string
		edit     func(c *Config)
		stopping map[string]*ServiceConfig
		want     ConfigChanges
		wantErr  string
	}{
		{name: "same", edit: func(c *Config) {}},
		{name: "env changed", edit: func(c *Config) { c.Services[0].Env = []string{"A=2"} },
			want: ConfigChanges{Changed: []string{"demo"}}},
		{name: "watch and drain_timeout changed", edit: func(c *Config) {
			c.Services[1].Watch = []string{"bin/api"}
			c.Services[1].DrainTimeout = Duration(time.Minute)
		}, want: ConfigChanges{Changed: []string{"api"}}},
		{name: "added", edit: func(c *Config) { c.Services = append(c.Services, web) },
			want: ConfigChanges{Added: []string{"web"}}},
		{name: "removed", edit: func(c *Config) { c.Services = c.Services[:1] },
			want: ConfigChanges{Removed: []string{"api"}}},
		{name: "all three", edit: func(c *Config) {
			c.Services = []ServiceConfig{c.Services[1], web}
			c.Services[0].Command = []string{"api", "-v"}
		}, want: ConfigChanges{Changed: []string{"api"}, Added: []string{"web"}, Removed: []string{"demo"}}},
		{name: "control", edit: func(c *Config) { c.Control = "/tmp/other.sock" },
			wantErr: `control: cannot change while handoffd runs ("/run/handoff/handoffd.sock", now "/tmp/other.sock"): restart handoffd`},
		{name: "mode and metrics", edit: func(c *Config) { c.Mode = ModeFDPass; c.Metrics = "127.0.0.1:9" },
			wantErr: `metrics: cannot change while handoffd runs ("", now "127.0.0.1:9"): restart handoffd to apply it; mode: cannot change`},
		{name: "listener", edit: func(c *Config) { c.Services[0].Listeners[0].Address = "tcp://127.0.0.1:8082" },
			wantErr: "services[0] (demo): listeners cannot change while the service runs"},
		{name: "added on a running service's address", edit: func(c *Config) {
			w := web
			w.Listeners = []ListenerConfig{{Name: "http", Address: "tcp://127.0.0.1:8081", Backlog: 1}}
			c.Services = []ServiceConfig{c.Services[0], w}
		}, wantErr: "services[1] (web): listener http: address tcp://127.0.0.1:8081 is still held by service api"},
		{name: "added while one of that name stops", edit: func(c *Config) { c.Services = append(c.Services, web) },
			stopping: map[string]*ServiceConfig{"web": &web},
			wantErr:  "services[2] (web): the service of that name is still stopping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := reloadBase(t)
			next := reloadBase(t)
			tc.edit(next)
			got, err := diffConfig(cur, next, tc.stopping)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("err = %v, want one line with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Changed, tc.want.Changed) || !slices.Equal(got.Added, tc.want.Added) || !slices.Equal(got.Removed, tc.want.Removed) {
				t.Fatalf("diff = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// specLauncher is a fakeLauncher that records what each generation was
// started with.
type specLauncher struct {
	fakeLauncher
	specs []LaunchSpec
}

func (l *specLauncher) Start(spec LaunchSpec) (Process, error) {
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
func testSupervisor(t *testing.T, cfg *Config) (*Supervisor, *specLauncher) {
	t.Helper()
	l := &specLauncher{fakeLauncher: fakeLauncher{ready: true}}
	sup, err := New(cfg, Options{Mode: ModeFDPass, Launcher: l, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := sup.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := sup.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return sup, l
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

func parse(t *testing.T, doc string) *Config {
	t.Helper()
	cfg, err := ParseConfig([]byte(doc))
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
	head := "control: /run/handoff/handoffd.sock\nservices:"
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
		cfg, err := ParseConfig([]byte(doc))
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
	if got := svc.config().Env; !slices.Equal(got, []string{"V=2"}) {
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
		return slices.Contains(l.proc(1).got(), syscall.SIGTERM) && len(sup.config().Services) == 1
	})
}

func TestSupervisorReloadAddFails(t *testing.T) {
	head := "control: /run/handoff/handoffd.sock\nservices:"
	demo := serviceDoc("demo", "V=1", freeAddress(t))
	sup, l := testSupervisor(t, parse(t, head+demo))
	l.mu.Lock()
	l.ready = false // web's generation 1 never becomes ready
	l.mu.Unlock()
	_, err := sup.Reload(context.Background(), parse(t, head+demo+serviceDoc("web", "W=1", freeAddress(t))))
	if err == nil || !strings.Contains(err.Error(), "service web not started") {
		t.Fatalf("reload with a service that does not start: %v", err)
	}
	if _, err := sup.Service("web"); err == nil {
		t.Fatal("a service that did not start is kept")
	}
	if n := len(sup.config().Services); n != 1 {
		t.Fatalf("running config has %d services, want 1: a later reload must try web again", n)
	}
}
