package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSettingsReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "demo.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("greeting: hello\n")
	l, err := newLiveSettings(path)
	if err != nil || l.greeting() != "hello" {
		t.Fatalf("first load: %q, %v", l.greeting(), err)
	}
	for _, tc := range []struct{ file, want string }{
		{"greeting: bonjour\n", "bonjour"},
		{"greeting: [unclosed\n", "bonjour"}, // not YAML: kept
		{"greting: typo\n", "bonjour"},       // unknown key: kept
		{"", "bonjour"},                      // no greeting: kept
		{"greeting: 'hola'\n", "hola"},
	} {
		write(tc.file)
		l.reload()
		if got := l.greeting(); got != tc.want {
			t.Errorf("after reload of %q: greeting %q, want %q", tc.file, got, tc.want)
		}
	}
	os.Remove(path)
	l.reload()
	if l.greeting() != "hola" {
		t.Errorf("a missing file changed the greeting to %q", l.greeting())
	}
}

func TestSettingsLoad(t *testing.T) {
	if s, err := loadSettings(""); err != nil || s.Greeting != defaultGreeting {
		t.Errorf("no --config: %+v, %v", s, err)
	}
	if _, err := loadSettings("/nonexistent/demo.yaml"); err == nil {
		t.Error("missing file: no error")
	}
	if s, err := loadSettings("demo.yaml"); err != nil || s.Greeting != "hello" {
		t.Errorf("demo/demo.yaml: %+v, %v", s, err)
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("greeting: hi\ncolour: red\n"), 0o644)
	if _, err := loadSettings(bad); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("unknown key: %v", err)
	}
}
