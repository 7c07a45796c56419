package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

const designExample = `
control: /run/handoff/handoffd.sock
metrics: 127.0.0.1:9370
mode: auto
state_dir: /run/handoff
services:
  - name: demo
    command: ["./bin/demo", "--config", "demo/demo.yaml"]
    dir: .
    env: ["GIN_MODE=release"]
    user: ""
    listeners:
      - name: http
        address: tcp://127.0.0.1:8080
        backlog: 4096
    ready_timeout: 10s
    drain_timeout: 30s
    stop_signal: SIGTERM
    watch: []
`

func TestParseConfigDesignExample(t *testing.T) {
	cfg, err := ParseConfig([]byte(designExample))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services[0]
	if cfg.Mode != api.ModeAuto || s.Name != "demo" || s.ReadyTimeout.Std() != 10*time.Second ||
		s.DrainTimeout.Std() != 30*time.Second || s.StopSignal.Std() != syscall.SIGTERM ||
		s.Listeners[0].Backlog != 4096 || len(s.Command) != 3 {
		t.Fatalf("parsed %+v", cfg)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte("services: [{name: web, command: [web], listeners: [{name: http, address: 'tcp6://[::1]:80'}]}]"))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services[0]
	if cfg.Control != "/run/handoff/handoffd.sock" || cfg.Mode != api.ModeAuto || cfg.BPFDir != "/sys/fs/bpf/handoff" ||
		s.Dir != "." || s.ReadyTimeout.Std() != 10*time.Second || s.StopSignal.Std() != syscall.SIGTERM ||
		s.Listeners[0].Backlog != 4096 {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
}

func TestParseConfigHealth(t *testing.T) {
	cfg, err := ParseConfig([]byte(`services:
  - name: web
    command: [web]
    listeners: [{name: admin, address: 'tcp://127.0.0.1:81'}, {name: http, address: 'tcp://127.0.0.1:80'}]
    ready: health
    health: {http: /healthz, listener: http, timeout: 2s}
  - name: api
    command: [api]
    listeners: [{name: grpc, address: 'tcp://127.0.0.1:90'}]
    health: {tcp: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	web, apiSvc := cfg.Services[0], cfg.Services[1]
	want := HealthConfig{HTTP: "/healthz", Listener: "http", Interval: Duration(200 * time.Millisecond),
		Timeout: Duration(2 * time.Second), Healthy: 2, Unhealthy: 3}
	if web.Ready != ReadyHealth || *web.Health != want || web.HealthListener() != 1 {
		t.Errorf("web: ready %q, health %+v, listener %d", web.Ready, *web.Health, web.HealthListener())
	}
	if apiSvc.Ready != ReadyNotify || !apiSvc.Health.TCP || apiSvc.Health.Listener != "grpc" || apiSvc.HealthListener() != 0 {
		t.Errorf("api: ready %q, health %+v", apiSvc.Ready, *apiSvc.Health)
	}
}

func TestDemoConfigParses(t *testing.T) {
	if _, err := os.Stat("../../demo/handoff.yaml"); err != nil {
		t.Skip("demo config not present")
	}
	// The demo's paths are relative to the repository root and its binary
	// is built later than unit tests run: check the document only.
	data, err := os.ReadFile("../../demo/handoff.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseConfig(data); err != nil {
		t.Fatal(err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	svc := func(s string) string {
		return "services:\n  - name: web\n    command: [web]\n    listeners: [{name: http, address: 'tcp://127.0.0.1:80'}]\n" + s
	}
	for _, tc := range []struct{ doc, want string }{
		{"", "services: at least one service is needed"},
		{"mode: magic\n" + svc(""), `mode "magic": use auto, ebpf or fdpass`},
		{"control: rel.sock\n" + svc(""), "must be an absolute path"},
		{"contrl: /x\n" + svc(""), "field contrl not found"},
		{svc("    ready_timeout: soon\n"), `"soon" is not a duration`},
		{svc("    stop_signal: SIGFOO\n"), `unknown signal "SIGFOO"`},
		{svc("    stop_delay: 30s\n"), "stop_delay: must be at least 0 and less than drain_timeout (30s)"},
		{svc("    stop_delay: -1s\n"), "stop_delay: must be at least 0"},
		{svc("    env: [NOEQUALS]\n"), `env "NOEQUALS": write NAME=value`},
		{svc("  - name: web\n    command: [x]\n    listeners: [{name: a, address: 'tcp://:1'}]\n"), `name "web" is used twice`},
		{svc("  - name: api\n    command: [x]\n    listeners: [{name: a, address: 'tcp://127.0.0.1:80'}]\n"), `services[1] (api): listener a: address tcp://127.0.0.1:80 is also service web's`},
		{"services: [{name: Web, command: [x], listeners: [{name: a, address: 'tcp://:1'}]}]", `name "Web": use 1-63 characters`},
		{"services: [{name: web, listeners: [{name: a, address: 'tcp://:1'}]}]", "command: give the program"},
		{"services: [{name: web, command: [x]}]", "listeners: at least one listener"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: '127.0.0.1:80'}]}]", "write tcp://HOST:PORT"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://127.0.0.1'}]}]", "write tcp://HOST:PORT"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'udp://:1'}]}]", "a udp:// listener needs protocol: quic"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'sctp://:1'}]}]", `unknown scheme "sctp"`},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://:1', protocol: quic}]}]", "protocol: quic needs a udp:// address"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'udp://:1', protocol: dtls}]}]", `protocol "dtls": the one protocol is quic`},
		{"mode: fdpass\nservices: [{name: web, command: [x], listeners: [{name: a, address: 'udp://:1', protocol: quic}]}]", "listener a: a QUIC listener needs ebpf mode"},
		{"services: [{name: web, command: [x], health: {tcp: true, listener: h3}, listeners: [{name: a, address: 'tcp://:1'}, {name: h3, address: 'udp://:1', protocol: quic}]}]", `health.listener "h3": a QUIC listener cannot be checked`},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://:1', backlog: -1}]}]", "backlog -1: use 1..65535"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://:1'}, {name: a, address: 'tcp://:2'}]}]", `name "a" is used twice`},
		{"services: [", "did not find expected"},
		{svc("    ready: later\n"), `ready "later": use notify`},
		{svc("    ready: health\n"), "ready: health needs a health: check"},
		{"mode: fdpass\n" + svc("    ready: health\n    health: {tcp: true}\n"), "ready: health needs ebpf mode"},
		{"services: [{name: web, command: [x], ready: health, health: {tcp: true, listener: a}, listeners: [{name: a, address: 'tcp://:1'}, {name: u, address: 'unix:///run/u.sock'}]}]", "ready: health needs ebpf mode"},
		{svc("    health: {}\n"), "health: give http: PATH"},
		{svc("    health: {http: /h, tcp: true}\n"), "not both"},
		{svc("    health: {http: healthz}\n"), `health.http "healthz": give a path that starts with /`},
		{svc("    health: {tcp: true, listener: admin}\n"), `health.listener "admin": name one of the service's listeners`},
		{svc("    health: {tcp: true, healthy: -1}\n"), "healthy and unhealthy must be 1 or more"},
		{svc("    health: {tcp: true, interval: -1s}\n"), "interval and timeout must be positive"},
	} {
		_, err := ParseConfig([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error = %v, want it to say %q", tc.doc, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("error is not one line: %q", err)
		}
	}
}

// loadDoc writes doc to a file and loads it as handoffd would, host
// checks included.
func loadDoc(t *testing.T, doc string) (*Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "handoff.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return LoadConfig(path)
}

func TestLoadConfigHostErrors(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "prog")
	notExec := filepath.Join(dir, "data")
	for path, mode := range map[string]os.FileMode{prog: 0o755, notExec: 0o644} {
		if err := os.WriteFile(path, []byte("#!/bin/true\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	svc := func(extra string) string {
		return fmt.Sprintf("services:\n  - name: web\n    command: [%q]\n    dir: %q\n    listeners: [{name: http, address: 'tcp://127.0.0.1:80'}]\n%s", prog, dir, extra)
	}
	for _, tc := range []struct{ doc, want string }{
		{svc(""), ""},
		{svc("    user: nobody\n    group: nogroup\n"), ""},
		{svc("    user: no-such-user-here\n"), `services[0] (web): user: unknown user "no-such-user-here"`},
		{svc("    group: no-such-group-here\n"), `services[0] (web): group: unknown group "no-such-group-here"`},
		{"group: no-such-group-here\n" + svc(""), `group: unknown group "no-such-group-here"`},
		{"read_group: no-such-group-here\n" + svc(""), `read_group: unknown group "no-such-group-here"`},
		{strings.Replace(svc(""), "dir: \""+dir, "dir: \""+dir+"/missing", 1), `services[0] (web): dir "` + dir + `/missing": no such file or directory`},
		{strings.Replace(svc(""), "dir: \""+dir, "dir: \""+prog, 1), `dir "` + prog + `": not a directory`},
		{strings.Replace(svc(""), prog, "./missing", 1), `command[0] "./missing": no such file or directory`},
		{strings.Replace(svc(""), prog, "./data", 1), `command[0] "./data": not an executable file`},
		{svc("    watch: [/no/such/dir/file]\n"), `watch[0] "/no/such/dir/file": directory /no/such/dir does not exist`},
	} {
		_, err := loadDoc(t, tc.doc)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("config %q: %v", tc.doc, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("config %q: error = %v, want it to say %q", tc.doc, err, tc.want)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("error is not one line: %q", err)
		}
	}
}

// TestLoadConfigListsEveryError checks that one bad file reports all of
// its problems at once, on one line.
func TestLoadConfigListsEveryError(t *testing.T) {
	_, err := loadDoc(t, `mode: magic
services:
  - name: web
    command: [./nowhere]
    dir: /no/such/dir
    user: no-such-user-here
    group: no-such-group-here
    listeners: [{name: http, address: 'tcp://127.0.0.1:70000'}]
`)
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{`mode "magic"`, `port 70000: use 1..65535`, `dir "/no/such/dir"`,
		`command[0] "./nowhere"`, `user: unknown user`, `group: unknown group`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "\n") || strings.Count(err.Error(), "; ") < 5 {
		t.Errorf("want every problem on one line, separated by \"; \": %q", err)
	}
}

func TestParseConfigFieldErrors(t *testing.T) {
	svc := func(s string) string {
		return "services:\n  - name: web\n    command: [web]\n    listeners: [{name: http, address: 'tcp://127.0.0.1:80'}]\n" + s
	}
	for _, tc := range []struct{ doc, want string }{
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://127.0.0.1:65536'}]}]", "port 65536: use 1..65535"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://127.0.0.1:0'}]}]", "port 0: use 1..65535"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://127.0.0.1:http'}]}]", "listeners[0] (a)"},
		{"metrics: nowhere\n" + svc(""), `metrics "nowhere"`},
		{"state_dir: run\n" + svc(""), `state_dir "run": must be an absolute path`},
		{"bpf_dir: bpf\n" + svc(""), `bpf_dir "bpf": must be an absolute path`},
		{svc("    env: [LISTEN_FDS=9]\n"), `env "LISTEN_FDS=9": LISTEN_FDS is set by handoffd`},
		{svc("    env: ['=x']\n"), `env "=x": the name must be`},
		{svc("    watch: ['']\n"), `watch[0] "": give a path`},
	} {
		_, err := ParseConfig([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error = %v, want it to say %q", tc.doc, err, tc.want)
		}
	}
}

func TestParseConfigState(t *testing.T) {
	base := "services: [{name: web, command: [web], listeners: [{name: http, address: 'tcp://127.0.0.1:80'}]"
	cfg, err := ParseConfig([]byte(base + "}]"))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Services[0]; s.FDStoreLimit() != DefaultFDStoreMax || s.StateHandoff || s.StateTimeout.Std() != 5*time.Second {
		t.Fatalf("defaults: fd_store_max %d, state_handoff %v, state_timeout %s", s.FDStoreLimit(), s.StateHandoff, s.StateTimeout.Std())
	}
	cfg, err = ParseConfig([]byte(base + ", fd_store_max: 0, state_handoff: true, state_timeout: 2s}]"))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Services[0]; s.FDStoreLimit() != 0 || !s.StateHandoff || s.StateTimeout.Std() != 2*time.Second {
		t.Fatalf("parsed fd_store_max %d, state_handoff %v, state_timeout %s", s.FDStoreLimit(), s.StateHandoff, s.StateTimeout.Std())
	}
	for _, tc := range []struct{ keys, want string }{
		{"fd_store_max: -1", "services[0] (web): fd_store_max -1: use 0 (no fd store) to 1024"},
		{"fd_store_max: 5000", "fd_store_max 5000: use 0 (no fd store) to 1024"},
		{"state_timeout: -1s", "state_timeout: must be positive"},
		{"state_timeout: soon", `"soon" is not a duration`},
		{"state_handoff: true, ready: health, health: {tcp: true}", "state_handoff: needs ready: notify"},
		{"state_handoff: yes please", "into bool"},
	} {
		_, err := ParseConfig([]byte(base + ", " + tc.keys + "}]"))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err = %v, want one line with %q", tc.keys, err, tc.want)
		}
	}
}

func TestParseQUICListener(t *testing.T) {
	cfg, err := ParseConfig([]byte(`services:
  - name: web
    command: [web]
    listeners:
      - {name: http, address: 'tcp://127.0.0.1:8443'}
      - {name: h3, address: 'udp://127.0.0.1:8443', protocol: quic}
`))
	if err != nil {
		t.Fatal(err)
	}
	ls := cfg.Services[0].Listeners
	if ls[0].QUIC() || !ls[1].QUIC() {
		t.Errorf("QUIC(): %v, %v", ls[0].QUIC(), ls[1].QUIC())
	}
	if network, hostport, err := ParseAddress(ls[1].Address); network != "udp" || hostport != "127.0.0.1:8443" || err != nil {
		t.Errorf("ParseAddress: %q %q %v", network, hostport, err)
	}
	if got := cfg.QUICListeners(); len(got) != 1 || got[0] != "web/h3" {
		t.Errorf("QUICListeners() = %v", got)
	}
	if ListenerMode(ls[1], api.ModeEBPF) != api.ModeEBPF {
		t.Error("a QUIC listener is not steered in ebpf mode")
	}
}

func TestHealthListenerDefaultsToTCP(t *testing.T) {
	cfg, err := ParseConfig([]byte(`services:
  - name: web
    command: [web]
    listeners:
      - {name: h3, address: 'udp://127.0.0.1:8443', protocol: quic}
      - {name: http, address: 'tcp://127.0.0.1:8443'}
    health: {http: /healthz}
`))
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Services[0].Health.Listener; l != "http" {
		t.Errorf("health.listener defaults to %q, want the TCP listener http", l)
	}
}
