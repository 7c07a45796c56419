package supervisor

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
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
	if cfg.Mode != ModeAuto || s.Name != "demo" || s.ReadyTimeout.Std() != 10*time.Second ||
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
	if cfg.Control != "/run/handoff/handoffd.sock" || cfg.Mode != ModeAuto || cfg.BPFDir != "/sys/fs/bpf/handoff" ||
		s.Dir != "." || s.ReadyTimeout.Std() != 10*time.Second || s.StopSignal.Std() != syscall.SIGTERM ||
		s.Listeners[0].Backlog != 4096 {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
}

func TestDemoConfigParses(t *testing.T) {
	if _, err := os.Stat("../../demo/handoff.yaml"); err != nil {
		t.Skip("demo config not present")
	}
	if _, err := LoadConfig("../../demo/handoff.yaml"); err != nil {
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
		{svc("    env: [NOEQUALS]\n"), `env "NOEQUALS": write NAME=value`},
		{svc("  - name: web\n    command: [x]\n    listeners: [{name: a, address: 'tcp://:1'}]\n"), `name "web" is used twice`},
		{"services: [{name: Web, command: [x], listeners: [{name: a, address: 'tcp://:1'}]}]", `name "Web": use 1-63 characters`},
		{"services: [{name: web, listeners: [{name: a, address: 'tcp://:1'}]}]", "command: give the program"},
		{"services: [{name: web, command: [x]}]", "listeners: at least one listener"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: '127.0.0.1:80'}]}]", "write tcp://HOST:PORT"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://127.0.0.1'}]}]", "write tcp://HOST:PORT"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'udp://:1'}]}]", `unknown scheme "udp"`},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://:1', backlog: -1}]}]", "backlog -1: use 1..65535"},
		{"services: [{name: web, command: [x], listeners: [{name: a, address: 'tcp://:1'}, {name: a, address: 'tcp://:2'}]}]", `name "a" is used twice`},
		{"services: [", "did not find expected"},
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
