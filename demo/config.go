package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"

	"go.yaml.in/yaml/v3"
)

// settings are what the demo reads from its --config file, e.g.
//
//	greeting: "hello"
//
// SIGHUP (`handoffctl reload demo`) reads the file again: the generation
// changes its greeting without a swap.
type settings struct {
	Greeting string `yaml:"greeting"`
}

// defaultGreeting is the greeting of a demo run without --config.
const defaultGreeting = "hello"

// loadSettings reads the config file at path; an empty path gives the
// defaults. Unknown keys and an empty greeting are errors.
func loadSettings(path string) (*settings, error) {
	if path == "" {
		return &settings{Greeting: defaultGreeting}, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s settings
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if s.Greeting == "" {
		return nil, fmt.Errorf("config %s: greeting: must not be empty", path)
	}
	return &s, nil
}

// liveSettings are the settings in use: requests read them while a
// reload replaces them.
type liveSettings struct {
	path string
	cur  atomic.Pointer[settings]
}

func newLiveSettings(path string) (*liveSettings, error) {
	s, err := loadSettings(path)
	if err != nil {
		return nil, err
	}
	l := &liveSettings{path: path}
	l.cur.Store(s)
	return l, nil
}

func (l *liveSettings) greeting() string { return l.cur.Load().Greeting }

// reload reads the file again; a bad file keeps the settings in use.
func (l *liveSettings) reload() {
	s, err := loadSettings(l.path)
	if err != nil {
		slog.Error("reload config: keeping the current one", "err", err, "greeting", l.greeting())
		return
	}
	old := l.cur.Swap(s)
	slog.Info("config reloaded", "path", l.path, "greeting", s.Greeting, "was", old.Greeting)
}
