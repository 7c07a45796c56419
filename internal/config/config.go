package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/handoffd/handoffd/api"
)

// DefaultConfigPath is where handoffd looks for its config file.
const DefaultConfigPath = "/etc/handoff/handoff.yaml"

// Config is the whole handoffd configuration file.
type Config struct {
	Control  string   `yaml:"control"`
	Metrics  string   `yaml:"metrics"`
	Mode     api.Mode `yaml:"mode"`
	StateDir string   `yaml:"state_dir"`
	BPFDir   string   `yaml:"bpf_dir"`
	// Group may use the whole control API besides root; empty: root only.
	Group string `yaml:"group"`
	// ReadGroup may also read status; empty: nobody else.
	ReadGroup string          `yaml:"read_group"`
	Services  []ServiceConfig `yaml:"services"`
}

// ServiceConfig describes one supervised service.
type ServiceConfig struct {
	Name         string           `yaml:"name"`
	Command      []string         `yaml:"command"`
	Dir          string           `yaml:"dir"`
	Env          []string         `yaml:"env"`
	User         string           `yaml:"user"`
	Group        string           `yaml:"group"`
	Listeners    []ListenerConfig `yaml:"listeners"`
	ReadyTimeout Duration         `yaml:"ready_timeout"`
	DrainTimeout Duration         `yaml:"drain_timeout"`
	// Probation keeps a replaced generation in standby until the new one
	// has lived this long; if the new one dies sooner, steering flips
	// back. 0 (the default) retires the old generation at once.
	Probation  Duration `yaml:"probation"`
	StopSignal Signal   `yaml:"stop_signal"`
	// StopDelay is how long a replaced generation keeps serving, with
	// no new connections coming (ebpf mode), before its stop signal: an
	// app whose drain drops the connections it accepted but has not read
	// yet finishes them first. It counts in drain_timeout. 0 (the
	// default) signals at once.
	StopDelay Duration `yaml:"stop_delay"`
	Watch     []string `yaml:"watch"`
	// Ready says when a new generation is ready: ReadyNotify (READY=1 on
	// NOTIFY_SOCKET, then the health check if there is one) or
	// ReadyHealth (the health check alone, for apps without sd_notify).
	Ready string `yaml:"ready"`
	// Health, when set, checks each generation through its own listening
	// socket before it receives traffic, and rolls back a canary or a
	// generation on probation that fails it.
	Health *HealthConfig `yaml:"health"`
	// FDStoreMax bounds the fds a service's generations may keep in
	// handoffd's fd store (FDSTORE=1 on NOTIFY_SOCKET); 0 turns the store
	// off. Nil (unset) is DefaultFDStoreMax; see FDStoreLimit.
	FDStoreMax *int `yaml:"fd_store_max"`
	// StateHandoff adds the state handoff to swaps and canary starts:
	// once the new generation said READY=1, the old one hands it a
	// snapshot of its state before it is activated. Needs ready: notify.
	StateHandoff bool `yaml:"state_handoff"`
	// StateTimeout bounds the whole state handoff of one swap (snapshot,
	// delivery, LOADED); past it the new generation starts cold.
	StateTimeout Duration `yaml:"state_timeout"`
	// Join lets a process that handoffd did not start become the
	// service's next generation over the control socket (POST
	// /v1/services/NAME/join): root, members of group, and processes
	// with the service's user (and group). Off by default.
	Join bool `yaml:"join"`
}

// DefaultFDStoreMax is fd_store_max when the config does not set it.
const DefaultFDStoreMax = 16

// MaxFDStoreMax is the highest fd_store_max.
const MaxFDStoreMax = 1024

// FDStoreLimit returns fd_store_max: how many fds the service may keep
// in the fd store (0: none).
func (s *ServiceConfig) FDStoreLimit() int {
	if s.FDStoreMax == nil {
		return DefaultFDStoreMax
	}
	return *s.FDStoreMax
}

// When a generation is ready (ServiceConfig.Ready).
const (
	ReadyNotify = "notify"
	ReadyHealth = "health"
)

// HealthConfig is a service's health check.
type HealthConfig struct {
	// HTTP is the path of a GET whose 2xx answer passes.
	HTTP string `yaml:"http"`
	// TCP checks that a connection is accepted, instead of HTTP.
	TCP bool `yaml:"tcp"`
	// Listener names the listener that is checked; default the first TCP
	// one.
	Listener string   `yaml:"listener"`
	Interval Duration `yaml:"interval"`
	Timeout  Duration `yaml:"timeout"`
	// Healthy is how many checks in a row must pass before a generation
	// may receive traffic.
	Healthy int `yaml:"healthy"`
	// Unhealthy is how many checks in a row must fail before a canary or
	// a generation on probation is rolled back.
	Unhealthy int `yaml:"unhealthy"`
}

// HealthListener returns the index of the listener that the health check
// uses.
func (s *ServiceConfig) HealthListener() int {
	if s.Health == nil {
		return 0
	}
	for i, l := range s.Listeners {
		if l.Name == s.Health.Listener {
			return i
		}
	}
	return 0
}

// ListenerConfig is one named listening socket of a service.
type ListenerConfig struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	Backlog int    `yaml:"backlog"`
	// Protocol is what a udp:// listener carries: ProtocolQUIC, the one
	// protocol whose datagrams steering can follow across generations.
	// TCP listeners leave it empty.
	Protocol string `yaml:"protocol"`
}

// ProtocolQUIC is the protocol of a QUIC (HTTP/3) listener on udp://.
const ProtocolQUIC = "quic"

// QUIC reports whether l is a QUIC listener (udp:// with protocol: quic).
func (l ListenerConfig) QUIC() bool { return l.Protocol == ProtocolQUIC }

// ErrQUICNeedsEBPF refuses a QUIC listener where the service would run in
// fdpass mode.
var ErrQUICNeedsEBPF = errors.New("a QUIC listener needs ebpf mode: every packet of a QUIC connection must reach the " +
	"generation that holds it, which only the steering program can do; one socket shared in fdpass mode cannot: use mode: ebpf")

// QUICListeners returns "service/listener" for each QUIC listener of c.
func (c *Config) QUICListeners() []string {
	var names []string
	for _, s := range c.Services {
		for _, l := range s.Listeners {
			if l.QUIC() {
				names = append(names, s.Name+"/"+l.Name)
			}
		}
	}
	return names
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

// LoadConfig reads, parses and validates the config file at path. Besides
// what ParseConfig checks, it checks the config against the host: dirs,
// programs, watched paths, users and groups must exist. Every problem found
// is listed in the one-line error.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := parseConfig(data, true)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses and validates a config document, filling in defaults.
// Unknown keys are errors, so that a typo never goes unnoticed. It does not
// look at the host: see LoadConfig and CheckHost.
func ParseConfig(data []byte) (*Config, error) { return parseConfig(data, false) }

func parseConfig(data []byte, host bool) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, oneLine(err)
	}
	cfg.setDefaults()
	errs := []error{cfg.Validate()}
	if host {
		errs = append(errs, cfg.CheckHost())
	}
	if err := joinErrors(errs...); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// joinErrors joins the non-nil errors into one error on one line, the
// problems separated by "; ".
func joinErrors(errs ...error) error {
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
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
		c.Mode = api.ModeAuto
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
		if s.Ready == "" {
			s.Ready = ReadyNotify
		}
		if s.FDStoreMax == nil {
			n := DefaultFDStoreMax
			s.FDStoreMax = &n
		}
		if s.StateTimeout == 0 {
			s.StateTimeout = Duration(5 * time.Second)
		}
		if h := s.Health; h != nil {
			if h.Listener == "" && len(s.Listeners) > 0 {
				// The first TCP listener: a QUIC one cannot be checked.
				h.Listener = s.Listeners[0].Name
				for _, l := range s.Listeners {
					if !l.QUIC() {
						h.Listener = l.Name
						break
					}
				}
			}
			if h.Interval == 0 {
				h.Interval = Duration(200 * time.Millisecond)
			}
			if h.Timeout == 0 {
				h.Timeout = Duration(time.Second)
			}
			if h.Healthy == 0 {
				h.Healthy = 2
			}
			if h.Unhealthy == 0 {
				h.Unhealthy = 3
			}
		}
		for j := range s.Listeners {
			if s.Listeners[j].Backlog == 0 {
				s.Listeners[j].Backlog = 4096
			}
		}
	}
}

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Validate checks the whole config document and returns every problem
// found, each naming the field to fix, on one line. It does not look at
// the host; CheckHost does.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Mode {
	case api.ModeAuto, api.ModeEBPF, api.ModeFDPass:
	default:
		add("mode %q: use auto, ebpf or fdpass", c.Mode)
	}
	if !filepath.IsAbs(c.Control) {
		add("control %q: must be an absolute path to a UNIX socket", c.Control)
	}
	if c.Metrics != "" {
		if _, port, err := net.SplitHostPort(c.Metrics); err != nil || !validPort(port, true) {
			add("metrics %q: write HOST:PORT, e.g. 127.0.0.1:9370", c.Metrics)
		}
	}
	if !filepath.IsAbs(c.StateDir) {
		add("state_dir %q: must be an absolute path", c.StateDir)
	}
	if !filepath.IsAbs(c.BPFDir) {
		add("bpf_dir %q: must be an absolute path", c.BPFDir)
	}
	if len(c.Services) == 0 {
		add("services: at least one service is needed")
	}
	seen := map[string]bool{}
	// In ebpf mode two services on one address would share a reuseport
	// group, each steering the other's connections: refuse it.
	addrs := map[string]string{}
	for i := range c.Services {
		s := &c.Services[i]
		for _, err := range s.validate() {
			add("services[%d] (%s): %w", i, s.Name, err)
		}
		if seen[s.Name] {
			add("services[%d]: name %q is used twice", i, s.Name)
		}
		seen[s.Name] = true
		if c.Mode == api.ModeFDPass {
			for _, l := range s.Listeners {
				if l.QUIC() {
					add("services[%d] (%s): listener %s: %w", i, s.Name, l.Name, ErrQUICNeedsEBPF)
				}
			}
		}
		if s.Ready == ReadyHealth && (c.Mode == api.ModeFDPass || s.hasUnixListener()) {
			add("services[%d] (%s): %w (mode: fdpass, or a unix:// listener)", i, s.Name, ErrReadyHealthFDPass)
		}
		for _, l := range s.Listeners {
			if other, ok := addrs[l.Address]; ok && other != s.Name {
				add("services[%d] (%s): listener %s: address %s is also service %s's", i, s.Name, l.Name, l.Address, other)
			}
			addrs[l.Address] = s.Name
		}
	}
	return joinErrors(errs...)
}

// ReservedEnv reports whether handoffd sets the variable name for a
// generation; a
// service's env must not set them.
func ReservedEnv(name string) bool {
	return strings.HasPrefix(name, "LISTEN_") || strings.HasPrefix(name, "HANDOFF_") || name == "NOTIFY_SOCKET"
}

var envNamePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (s *ServiceConfig) validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !namePattern.MatchString(s.Name) {
		add("name %q: use 1-63 characters of a-z, 0-9, '-' and '_'", s.Name)
	}
	if len(s.Command) == 0 || s.Command[0] == "" {
		add("command: give the program and its arguments as a list, e.g. [\"./bin/demo\"]")
	}
	for j, arg := range s.Command {
		if strings.ContainsRune(arg, 0) {
			add("command[%d]: contains a NUL byte", j)
		}
	}
	if s.Dir == "" || strings.ContainsRune(s.Dir, 0) {
		add("dir %q: give a directory", s.Dir)
	}
	if len(s.Listeners) == 0 {
		add("listeners: at least one listener is needed")
	}
	names := map[string]bool{}
	for j, l := range s.Listeners {
		if !namePattern.MatchString(l.Name) {
			add("listeners[%d]: name %q: use 1-63 characters of a-z, 0-9, '-' and '_'", j, l.Name)
		} else if names[l.Name] {
			add("listeners[%d]: name %q is used twice", j, l.Name)
		}
		names[l.Name] = true
		if _, _, err := ParseAddress(l.Address); err != nil {
			add("listeners[%d] (%s): %w", j, l.Name, err)
		}
		if l.Backlog < 1 || l.Backlog > 65535 {
			add("listeners[%d] (%s): backlog %d: use 1..65535", j, l.Name, l.Backlog)
		}
		if err := validateProtocol(l); err != nil {
			add("listeners[%d] (%s): %w", j, l.Name, err)
		}
	}
	if s.ReadyTimeout <= 0 {
		add("ready_timeout: must be positive")
	}
	if s.DrainTimeout <= 0 {
		add("drain_timeout: must be positive")
	}
	if s.Probation < 0 {
		add("probation: must not be negative")
	}
	errs = append(errs, s.validateHealth(names)...)
	errs = append(errs, s.validateState()...)
	if s.StopDelay < 0 || (s.DrainTimeout > 0 && s.StopDelay >= s.DrainTimeout) {
		add("stop_delay: must be at least 0 and less than drain_timeout (%s)", s.DrainTimeout.Std())
	}
	for _, e := range s.Env {
		name, _, ok := strings.Cut(e, "=")
		switch {
		case !ok:
			add("env %q: write NAME=value", e)
		case !envNamePattern.MatchString(name) || strings.ContainsRune(e, 0):
			add("env %q: the name must be letters, digits and '_', the value free of NUL bytes", e)
		case ReservedEnv(name):
			add("env %q: %s is set by handoffd", e, name)
		}
	}
	for j, w := range s.Watch {
		if w == "" || strings.ContainsRune(w, 0) {
			add("watch[%d] %q: give a path", j, w)
		}
	}
	return errs
}

func (s *ServiceConfig) validateHealth(listeners map[string]bool) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch s.Ready {
	case ReadyNotify:
	case ReadyHealth:
		if s.Health == nil {
			add("ready: health needs a health: check to tell when a generation is ready")
		}
	default:
		add("ready %q: use notify (READY=1) or health (the health check alone)", s.Ready)
	}
	h := s.Health
	if h == nil {
		return errs
	}
	switch {
	case h.HTTP != "" && h.TCP:
		add("health: give http: PATH or tcp: true, not both")
	case h.HTTP == "" && !h.TCP:
		add("health: give http: PATH (a GET that answers 2xx) or tcp: true (connect only)")
	case h.HTTP != "" && (!strings.HasPrefix(h.HTTP, "/") || strings.ContainsAny(h.HTTP, " \r\n\x00")):
		add("health.http %q: give a path that starts with /, e.g. /healthz", h.HTTP)
	}
	if !listeners[h.Listener] {
		add("health.listener %q: name one of the service's listeners", h.Listener)
	} else {
		for _, l := range s.Listeners {
			if network, _, _ := ParseAddress(l.Address); l.Name == h.Listener && network == "unix" {
				add("health.listener %q: a unix:// listener cannot be checked; name a TCP one", h.Listener)
			}
			if l.Name == h.Listener && l.QUIC() {
				add("health.listener %q: a QUIC listener cannot be checked; name a TCP one", h.Listener)
			}
		}
	}
	if h.Interval <= 0 || h.Timeout <= 0 {
		add("health: interval and timeout must be positive")
	}
	if h.Healthy < 1 || h.Unhealthy < 1 {
		add("health: healthy and unhealthy must be 1 or more")
	}
	return errs
}

func (s *ServiceConfig) validateState() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if n := s.FDStoreLimit(); n < 0 || n > MaxFDStoreMax {
		add("fd_store_max %d: use 0 (no fd store) to %d", n, MaxFDStoreMax)
	}
	if s.StateTimeout <= 0 {
		add("state_timeout: must be positive")
	}
	if s.StateHandoff && s.Ready != ReadyNotify {
		add("state_handoff: needs ready: notify (the new generation says READY=1, then receives the state)")
	}
	return errs
}

// CheckHost checks the config against this host: each service's dir exists
// and is a directory, a command given as a path is an executable file,
// watched files' directories exist, and every user and group is known. It
// returns every problem found, on one line.
func (c *Config) CheckHost() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Group != "" {
		if _, err := LookupGroup(c.Group); err != nil {
			add("group: %w", err)
		}
	}
	if c.ReadGroup != "" {
		if _, err := LookupGroup(c.ReadGroup); err != nil {
			add("read_group: %w", err)
		}
	}
	for i := range c.Services {
		for _, err := range c.Services[i].checkHost() {
			add("services[%d] (%s): %w", i, c.Services[i].Name, err)
		}
	}
	return joinErrors(errs...)
}

func (s *ServiceConfig) checkHost() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if fi, err := os.Stat(s.Dir); err != nil {
		add("dir %q: %w", s.Dir, pathError(err))
	} else if !fi.IsDir() {
		add("dir %q: not a directory", s.Dir)
	}
	if len(s.Command) > 0 && strings.Contains(s.Command[0], "/") {
		prog := s.Command[0]
		if !filepath.IsAbs(prog) {
			prog = filepath.Join(s.Dir, prog)
		}
		if fi, err := os.Stat(prog); err != nil {
			add("command[0] %q: %w", s.Command[0], pathError(err))
		} else if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			add("command[0] %q: not an executable file", s.Command[0])
		}
	}
	for j, w := range s.Watch {
		if w == "" {
			continue
		}
		if !filepath.IsAbs(w) {
			w = filepath.Join(s.Dir, w)
		}
		if fi, err := os.Stat(filepath.Dir(w)); err != nil || !fi.IsDir() {
			add("watch[%d] %q: directory %s does not exist", j, s.Watch[j], filepath.Dir(w))
		}
	}
	if s.User != "" {
		if _, err := LookupUser(s.User); err != nil {
			add("user: %w", err)
		}
	}
	if s.Group != "" {
		if _, err := LookupGroup(s.Group); err != nil {
			add("group: %w", err)
		}
	}
	return errs
}

// pathError drops the path and operation from an *os.PathError, which
// the caller names already.
func pathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// LookupUser returns the user named name, or with the numeric id name.
func LookupUser(name string) (*user.User, error) {
	u, err := user.Lookup(name)
	if err != nil && isNumeric(name) {
		u, err = user.LookupId(name)
	}
	if err != nil {
		return nil, fmt.Errorf("unknown user %q", name)
	}
	return u, nil
}

// LookupGroup returns the gid of the group named name, or with the
// numeric id name.
func LookupGroup(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err != nil && isNumeric(name) {
		g, err = user.LookupGroupId(name)
	}
	if err != nil {
		return 0, fmt.Errorf("unknown group %q", name)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q: gid %q is not a number", name, g.Gid)
	}
	return uint32(gid), nil
}

func isNumeric(s string) bool {
	_, err := strconv.ParseUint(s, 10, 32)
	return err == nil
}

// validPort says whether port is a decimal port number; port 0 is
// allowed only when zeroOK.
func validPort(port string, zeroOK bool) bool {
	n, err := strconv.Atoi(port)
	return err == nil && n <= 65535 && (n >= 1 || zeroOK && n == 0) && strconv.Itoa(n) == port
}

// validateProtocol checks that a udp:// listener says protocol: quic, and
// that only a udp:// one does.
func validateProtocol(l ListenerConfig) error {
	network, _, err := ParseAddress(l.Address)
	if err != nil {
		return nil // said already
	}
	udp := strings.HasPrefix(network, "udp")
	switch {
	case l.Protocol != "" && l.Protocol != ProtocolQUIC:
		return fmt.Errorf("protocol %q: the one protocol is quic (on a udp:// address); TCP listeners leave it out", l.Protocol)
	case udp && !l.QUIC():
		return fmt.Errorf("address %s: a udp:// listener needs protocol: quic (plain UDP cannot be steered across generations)", l.Address)
	case !udp && l.QUIC():
		return fmt.Errorf("protocol: quic needs a udp:// address, e.g. udp://127.0.0.1:8443")
	}
	return nil
}

// ParseAddress splits a listener address such as tcp://127.0.0.1:8080 into
// the network for net.Listen (net.ListenUDP for udp://) and the host:port
// (or path).
func ParseAddress(addr string) (network, hostport string, err error) {
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" && u.Path == "" {
		return "", "", fmt.Errorf("address %q: write tcp://HOST:PORT (or tcp4://, tcp6://, udp://, unix://PATH)", addr)
	}
	switch u.Scheme {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		if u.Port() == "" || u.Path != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return "", "", fmt.Errorf("address %q: write %s://HOST:PORT", addr, u.Scheme)
		}
		if !validPort(u.Port(), false) {
			return "", "", fmt.Errorf("address %q: port %s: use 1..65535", addr, u.Port())
		}
		return u.Scheme, u.Host, nil
	case "unix":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return "", "", fmt.Errorf("address %q: write unix:///absolute/path.sock", addr)
		}
		return "unix", u.Path, nil
	default:
		return "", "", fmt.Errorf("address %q: unknown scheme %q (use tcp://, tcp4://, tcp6://, udp:// with protocol: quic, or unix://)", addr, u.Scheme)
	}
}

// ErrReadyHealthFDPass refuses ready: health where a service runs in
// fdpass mode.
var ErrReadyHealthFDPass = errors.New("ready: health needs ebpf mode, where a check reaches the new generation through its own socket; " +
	"in fdpass mode every generation accepts from one shared socket: use ready: notify")

func (s *ServiceConfig) hasUnixListener() bool {
	for _, l := range s.Listeners {
		if network, _, _ := ParseAddress(l.Address); network == "unix" {
			return true
		}
	}
	return false
}

// ListenerMode says how listener l is handed over in a service that runs
// in mode: a unix:// listener is always shared (fdpass), since
// SO_REUSEPORT does not apply to it.
func ListenerMode(l ListenerConfig, mode api.Mode) api.Mode {
	if network, _, _ := ParseAddress(l.Address); mode == api.ModeEBPF && network != "unix" {
		return api.ModeEBPF
	}
	return api.ModeFDPass
}
