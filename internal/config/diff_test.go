package config

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

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
		want     api.ConfigChanges
		wantErr  string
	}{
		{name: "same", edit: func(c *Config) {}},
		{name: "env changed", edit: func(c *Config) { c.Services[0].Env = []string{"A=2"} },
			want: api.ConfigChanges{Changed: []string{"demo"}}},
		{name: "watch and drain_timeout changed", edit: func(c *Config) {
			c.Services[1].Watch = []string{"bin/api"}
			c.Services[1].DrainTimeout = Duration(time.Minute)
		}, want: api.ConfigChanges{Changed: []string{"api"}}},
		{name: "fd store and state handoff changed", edit: func(c *Config) {
			n := 4
			c.Services[0].FDStoreMax = &n
			c.Services[1].StateHandoff = true
			c.Services[1].StateTimeout = Duration(time.Second)
		}, want: api.ConfigChanges{Changed: []string{"demo", "api"}}},
		{name: "added", edit: func(c *Config) { c.Services = append(c.Services, web) },
			want: api.ConfigChanges{Added: []string{"web"}}},
		{name: "removed", edit: func(c *Config) { c.Services = c.Services[:1] },
			want: api.ConfigChanges{Removed: []string{"api"}}},
		{name: "all three", edit: func(c *Config) {
			c.Services = []ServiceConfig{c.Services[1], web}
			c.Services[0].Command = []string{"api", "-v"}
		}, want: api.ConfigChanges{Changed: []string{"api"}, Added: []string{"web"}, Removed: []string{"demo"}}},
		{name: "control", edit: func(c *Config) { c.Control = "/tmp/other.sock" },
			wantErr: `control: cannot change while handoffd runs ("/run/handoff/handoffd.sock", now "/tmp/other.sock"): restart handoffd`},
		{name: "mode and metrics", edit: func(c *Config) { c.Mode = api.ModeFDPass; c.Metrics = "127.0.0.1:9" },
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
			got, err := Diff(cur, next, tc.stopping)
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

func TestStateHandoffTurnedOn(t *testing.T) {
	off, on := &ServiceConfig{}, &ServiceConfig{StateHandoff: true}
	if !StateHandoffTurnedOn(off, on) || StateHandoffTurnedOn(on, on) || StateHandoffTurnedOn(on, off) || StateHandoffTurnedOn(off, off) {
		t.Fatal("StateHandoffTurnedOn is true only from off to on")
	}
}
