package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"
)

// Mode says how a service's listeners move from one generation to the next.
type Mode string

const (
	// ModeAuto picks ModeEBPF when the kernel allows it, else ModeFDPass.
	ModeAuto Mode = "auto"
	// ModeEBPF gives each generation its own SO_REUSEPORT socket and steers
	// new connections with an SK_REUSEPORT program.
	ModeEBPF Mode = "ebpf"
	// ModeFDPass shares one listening socket per listener between generations.
	ModeFDPass Mode = "fdpass"
)

// DefaultConfigPath is where handoffd looks for its config file.
const DefaultConfigPath = "/etc/handoff/handoff.yaml"

// Config is the whole handoffd configuration file.
type Config struct {
	Control  string          `yaml:"control"`
	Metrics  string          `yaml:"metrics"`
	Mode     Mode            `yaml:"mode"`
	StateDir string          `yaml:"state_dir"`
	BPFDir   string          `yaml:"bpf_dir"`
	Services []ServiceConfig `yaml:"services"`
}

// ServiceConfig describes one supervised service.
type ServiceConfig struct {
	Name         string           `yaml:"name"`
	Command      []string         `yaml:"command"`
	Dir          string           `yaml:"dir"`
	Env          []string         `yaml:"env"`
	User         string           `yaml:"user"`
	Listeners    []ListenerConfig `yaml:"listeners"`
	ReadyTimeout Duration         `yaml:"ready_timeout"`
	DrainTimeout Duration         `yaml:"drain_timeout"`
	StopSignal   Signal           `yaml:"stop_signal"`
	Watch        []string         `yaml:"watch"`
}

// ListenerConfig is one named listening socket of a service.
type ListenerConfig struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	Backlog int    `yaml:"backlog"`
}

// Duration is a time.Duration written as "10s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string such as "500ms" or "30s".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (write e.g. 10s or 500ms)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// Signal is a signal written by name ("SIGTERM" or "TERM") in YAML.
type Signal syscall.Signal

var signalNames = map[string]syscall.Signal{
	"SIGTERM": syscall.SIGTERM, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT,
	"SIGHUP": syscall.SIGHUP, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2,
	"SIGWINCH": syscall.SIGWINCH,
}

// UnmarshalYAML parses a signal name.
func (s *Signal) UnmarshalYAML(n *yaml.Node) error {
	name := strings.ToUpper(n.Value)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig, ok := signalNames[name]
	if !ok {
		return fmt.Errorf("line %d: unknown signal %q (use one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH)", n.Line, n.Value)
	}
	*s = Signal(sig)
	return nil
}

// Std returns s as a syscall.Signal.
func (s Signal) Std() syscall.Signal { return syscall.Signal(s) }

// LoadConfig reads, parses and validates the config file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses and validates a config document, filling in defaults.
// Unknown keys are errors, so that a typo never goes unnoticed.
func ParseConfig(data []byte) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, oneLine(err)
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// oneLine folds the multi-line errors of the YAML decoder into one line.
func oneLine(err error) error {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	s = strings.ReplaceAll(s, "unmarshal errors:\n  ", "")
	return errors.New(strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", ";")), " "))
}

func (c *Config) setDefaults() {
	if c.Control == "" {
		c.Control = "/run/handoff/handoffd.sock"
	}
	if c.Mode == "" {
		c.Mode = ModeAuto
	}
	if c.StateDir == "" {
		c.StateDir = "/run/handoff"
	}
	if c.BPFDir == "" {
		c.BPFDir = "/sys/fs/bpf/handoff"
	}
	for i := range c.Services {
		s := &c.Services[i]
		if s.Dir == "" {
			s.Dir = "."
		}
		if s.ReadyTimeout == 0 {
			s.ReadyTimeout = Duration(10 * time.Second)
		}
		if s.DrainTimeout == 0 {
			s.DrainTimeout = Duration(30 * time.Second)
		}
		if s.StopSignal == 0 {
			s.StopSignal = Signal(syscall.SIGTERM)
		}
		for j := range s.Listeners {
			if s.Listeners[j].Backlog == 0 {
				s.Listeners[j].Backlog = 4096
			}
		}
	}
}

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Validate checks the whole config and returns the first problem found,
// naming the field to fix.
func (c *Config) Validate() error {
	switch c.Mode {
	case ModeAuto, ModeEBPF, ModeFDPass:
	default:
		return fmt.Errorf("mode %q: use auto, ebpf or fdpass", c.Mode)
	}
	if !strings.HasPrefix(c.Control, "/") {
		return fmt.Errorf("control %q: must be an absolute path to a UNIX socket", c.Control)
	}
	if len(c.Services) == 0 {
		return errors.New("services: at least one service is needed")
	}
	seen := map[string]bool{}
	for i := range c.Services {
		s := &c.Services[i]
		if err := s.validate(); err != nil {
			return fmt.Errorf("services[%d] (%s): %w", i, s.Name, err)
		}
		if seen[s.Name] {
			return fmt.Errorf("services[%d]: name %q is used twice", i, s.Name)
		}
		seen[s.Name] = true
	}
	return nil
}

func (s *ServiceConfig) validate() error {
	if !namePattern.MatchString(s.Name) {
		return fmt.Errorf("name %q: use 1-63 characters of a-z, 0-9, '-' and '_'", s.Name)
	}
	if len(s.Command) == 0 || s.Command[0] == "" {
		return errors.New("command: give the program and its arguments as a list, e.g. [\"./bin/demo\"]")
	}
	if len(s.Listeners) == 0 {
		return errors.New("listeners: at least one listener is needed")
	}
	names := map[string]bool{}
	for j, l := range s.Listeners {
		if !namePattern.MatchString(l.Name) {
			return fmt.Errorf("listeners[%d]: name %q: use 1-63 characters of a-z, 0-9, '-' and '_'", j, l.Name)
		}
		if names[l.Name] {
			return fmt.Errorf("listeners[%d]: name %q is used twice", j, l.Name)
		}
		names[l.Name] = true
		if _, _, err := ParseAddress(l.Address); err != nil {
			return fmt.Errorf("listeners[%d] (%s): %w", j, l.Name, err)
		}
		if l.Backlog < 1 || l.Backlog > 65535 {
			return fmt.Errorf("listeners[%d] (%s): backlog %d: use 1..65535", j, l.Name, l.Backlog)
		}
	}
	if s.ReadyTimeout <= 0 {
		return errors.New("ready_timeout: must be positive")
	}
	if s.DrainTimeout <= 0 {
		return errors.New("drain_timeout: must be positive")
	}
	for _, e := range s.Env {
		if !strings.Contains(e, "=") {
			return fmt.Errorf("env %q: write NAME=value", e)
		}
	}
	return nil
}

// ParseAddress splits a listener address such as tcp://127.0.0.1:8080 into
// the network for net.Listen and the host:port (or path).
func ParseAddress(addr string) (network, hostport string, err error) {
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" && u.Path == "" {
		return "", "", fmt.Errorf("address %q: write tcp://HOST:PORT (or tcp4://, tcp6://, unix://PATH)", addr)
	}
	switch u.Scheme {
	case "tcp", "tcp4", "tcp6":
		if u.Port() == "" || u.Path != "" {
			return "", "", fmt.Errorf("address %q: write %s://HOST:PORT", addr, u.Scheme)
		}
		return u.Scheme, u.Host, nil
	case "unix":
		return "", "", fmt.Errorf("address %q: unix:// listeners need fdpass mode, which this build does not support yet", addr)
	default:
		return "", "", fmt.Errorf("address %q: unknown scheme %q (use tcp://, tcp4:// or tcp6://)", addr, u.Scheme)
	}
}
