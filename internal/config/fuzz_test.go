package config

import (
	"strings"
	"testing"
)

// FuzzParseConfig checks that the config parser never panics and returns
// either a config that validates or a one-line error.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(designExample))
	f.Add([]byte("services: [{name: web, command: [web], listeners: [{name: http, address: 'tcp6://[::1]:80'}]}]"))
	f.Add([]byte("services: [{name: web, command: [web], fd_store_max: 0, state_handoff: true, state_timeout: 1s, listeners: [{name: http, address: 'tcp://127.0.0.1:80'}]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			if cfg != nil {
				t.Fatalf("config and error: %v", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if cfg == nil || len(cfg.Services) == 0 {
			t.Fatalf("no config and no error")
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v", err)
		}
	})
}
