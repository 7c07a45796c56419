package config

// The reference of the config file: every key the parser accepts, its
// default, what it does, what a reload does with it and an example. It is
// the one source of handoff.yaml(5) and of the keys in
// docs/configuration.md (see RenderMan and RenderMarkdown).
//
// Adding a key to Config, ServiceConfig, ListenerConfig or HealthConfig?
// Add a Key for it below, in its section: TestReferenceCoversParser fails
// until every yaml tag has one, TestReferenceExamples parses its example
// (in a small config, with ExampleWith beside it) and checks its Reload
// against Diff, TestReferenceDefaults checks its Default against what the
// parser fills in. Then run make docs, which rewrites docs/configuration.md;
// make install renders handoff.yaml(5) from the same table.

// Reload says what a reload of the config does with a changed key.
type Reload int

// What a reload does with a changed key. The zero value is no answer, so
// that a new key must say.
const (
	_ Reload = iota
	// ReloadRestart: refused; the key applies when handoffd restarts.
	ReloadRestart
	// ReloadNextGeneration: the service's next generation (next swap,
	// watched change or crash replacement) runs with it.
	ReloadNextGeneration
	// ReloadAtOnce: applies to the running service at once.
	ReloadAtOnce
	// ReloadReAdd: refused while the service runs; remove the service,
	// reload, add it back.
	ReloadReAdd
	// ReloadAddRemove: a service added starts, one removed stops.
	ReloadAddRemove
)

// String says what the reload does, as the reference prints it.
func (r Reload) String() string {
	switch r {
	case ReloadRestart:
		return "refused: restart handoffd to apply it"
	case ReloadNextGeneration:
		return "applies from the service's next generation"
	case ReloadAtOnce:
		return "applies at once"
	case ReloadReAdd:
		return "refused while the service runs: remove the service, reload, add it back"
	case ReloadAddRemove:
		return "a service added starts, a service removed stops"
	}
	return "unknown"
}

// Key is one key of the config file.
type Key struct {
	// Path is the key's place in the file, its YAML keys joined by dots
	// (lists are passed through): "services.listeners.backlog".
	Path string
	// Type says how the value is written.
	Type string
	// Default is the value the parser fills in when the key is absent,
	// as YAML; "" when it fills in none.
	Default string
	// DefaultNote, when set, says in words what Default is or where it
	// comes from; the reference prints it instead of Default.
	DefaultNote string
	// Required keys have no default: a config without them is refused.
	Required bool
	// Doc says what the key does, in sentences. `code` is set in bold in
	// the man page.
	Doc string
	// Example is a value of the key, as YAML (flow style for lists and
	// maps), that the parser accepts.
	Example string
	// ExampleWith, when the example needs other keys beside it to be
	// valid, sets them in the test that parses the example: a YAML flow
	// map of keys of the same level, e.g. {address: "udp://:8443"}. It is
	// not printed.
	ExampleWith string
	// Reload says what a reload of the config does with a changed value.
	Reload Reload
}

// Name is the key's last part, as it is written in the file.
func (k Key) Name() string {
	for i := len(k.Path) - 1; i >= 0; i-- {
		if k.Path[i] == '.' {
			return k.Path[i+1:]
		}
	}
	return k.Path
}

// Section is a group of keys at one place of the file.
type Section struct {
	// Title is the section's heading.
	Title string
	// Prefix is the Path of the section's keys less their Name:
	// "services.listeners" ("" at the top level).
	Prefix string
	// Doc introduces the section, in sentences.
	Doc  string
	Keys []Key
}

// WholeExample is a config that sets most keys, each with a comment.
const WholeExample = `control: /run/handoff/handoffd.sock   # HTTP/JSON API on a UNIX socket, 0660
metrics: 127.0.0.1:9370               # Prometheus /metrics (none when unset)
mode: auto                            # auto | ebpf | fdpass
state_dir: /run/handoff               # state.json (re-adoption), logs/ (generations' stderr), notify/
bpf_dir: /sys/fs/bpf/handoff          # where steering is pinned
group: ""                             # may use the whole control API besides root
read_group: ""                        # may read status
services:
  - name: demo                        # a-z, 0-9, - and _
    command: ["./bin/demo"]           # argv, never passed to a shell
    dir: .
    env: ["GIN_MODE=release"]
    user: ""                          # run generations as this user
    group: ""                         # and this group
    listeners:
      - name: http                    # the name in LISTEN_FDNAMES
        address: tcp://127.0.0.1:8080 # tcp://, tcp4://, tcp6://, unix:///path (always fdpass)
        backlog: 4096
    ready_timeout: 10s
    drain_timeout: 30s
    stop_signal: SIGTERM
    stop_delay: 0s                    # wait between the steering flip and stop_signal (< drain_timeout)
    probation: 0s                     # keep the replaced generation in standby this long
    watch: []                         # files whose change swaps the service
    ready: notify                     # notify (READY=1) | health (the health check alone)
    fd_store_max: 16                  # fds kept in the fd store (FDSTORE=1); 0: none
    state_handoff: false              # the old generation hands its state to the new one (needs ready: notify)
    state_timeout: 5s                 # bounds the state handoff of one swap
    join: false                       # let a process handoffd did not start become the next generation
    health:                           # optional; checked on the generation's own socket before activation
      http: /healthz                  # GET, 2xx passes; or  tcp: true
      listener: http                  # default: the first
      interval: 200ms
      timeout: 1s
      healthy: 2                      # passes in a row before it may receive traffic
      unhealthy: 3                    # failures in a row that roll back a canary or a probation
`

// Reference lists every key of the config file, section by section.
var Reference = []Section{
	{
		Title: "Top-level keys",
		Doc: "handoffd's own settings, and the list of services. The flags `--control`, `--metrics` and `--mode` " +
			"override the keys of the same name, also on reload.",
		Keys: []Key{
			{
				Path: "control", Type: "absolute path", Default: "/run/handoff/handoffd.sock",
				Doc: "The control socket: the HTTP/JSON API that `handoffctl` uses, on a UNIX socket of mode 0660, " +
					"owned by root and `group`, in a directory created 0755. handoffd refuses to start if a directory " +
					"on the way is world-writable without the sticky bit. `handoffctl` finds it through `--control` " +
					"or `HANDOFF_CONTROL`: under systemd, set that to the same path (`systemctl edit handoffd`).",
				Example: "/run/web/handoffd.sock", Reload: ReloadRestart,
			},
			{
				Path: "metrics", Type: "HOST:PORT", DefaultNote: "none: no metrics are served",
				Doc: "Where Prometheus scrapes `/metrics` (the `handoff_` metrics, Go's and the process's). " +
					"Anyone who reaches the address can read it: keep it on loopback or behind a firewall.",
				Example: "127.0.0.1:9370", Reload: ReloadRestart,
			},
			{
				Path: "mode", Type: "auto, ebpf or fdpass", Default: "auto",
				Doc: "How generations share a listener. `ebpf`: a listening socket per generation, steered by an " +
					"eBPF `SK_REUSEPORT` program (atomic cutover, migrated queues, canaries, health checks before " +
					"activation). `fdpass`: one listening socket per listener, passed to every generation; the old " +
					"generation's stop signal is the cutover. `auto` probes at start and uses ebpf where the kernel " +
					"and the privileges allow it, else fdpass, with a log line that says why. `unix://` listeners " +
					"are always passed.",
				Example: "fdpass", Reload: ReloadRestart,
			},
			{
				Path: "state_dir", Type: "absolute path", Default: "/run/handoff",
				Doc: "handoffd's state: `state.json` (0600), from which a restarted handoffd re-adopts the generations " +
					"that still run; `logs/` (0700), the generations' stderr; `notify/` (0711), a directory per " +
					"generation that only it (and root) may enter, holding its `NOTIFY_SOCKET`. handoffd lays it out " +
					"at start: a missing `state_dir` is made 0755, an existing one must be handoffd's and gets the " +
					"search bits the control socket's groups and the generations need.",
				Example: "/run/handoff-web", Reload: ReloadRestart,
			},
			{
				Path: "bpf_dir", Type: "absolute path in bpffs", Default: "/sys/fs/bpf/handoff",
				Doc: "Where the steering programs, their maps and the connection counter are pinned, one directory " +
					"per service and listener, so that steering outlives handoffd. handoffd mounts bpffs at " +
					"`/sys/fs/bpf` if none is there. Whoever can write the maps steers the traffic: keep it root's.",
				Example: "/sys/fs/bpf/handoff-web", Reload: ReloadRestart,
			},
			{
				Path: "group", Type: "group name or gid", DefaultNote: "none: root and handoffd's own user only",
				Doc:     "Members of this group may use the whole control API, as root does.",
				Example: "ops", Reload: ReloadRestart,
			},
			{
				Path: "read_group", Type: "group name or gid", DefaultNote: "none",
				Doc:     "Members of this group may read status (`handoffctl status`, `GET /v1/status`) and nothing else.",
				Example: "monitoring", Reload: ReloadRestart,
			},
			{
				Path: "services", Type: "list of services", Required: true,
				Doc:     "The services handoffd runs, at least one; the keys of each are below.",
				Example: `[{name: web, command: [/usr/local/bin/web], listeners: [{name: http, address: "tcp://:8081"}]}]`,
				Reload:  ReloadAddRemove,
			},
		},
	},
	{
		Title: "Service keys", Prefix: "services",
		Doc: "Each entry of `services` runs one service as numbered generations. A reload applies a changed " +
			"service's keys to its next generation (next swap, watched change or crash replacement), but for " +
			"those marked otherwise.",
		Keys: []Key{
			{
				Path: "services.name", Type: "1-63 of a-z, 0-9, - and _", Required: true,
				Doc: "Names the service in `handoffctl`, status, metrics and logs, and to its generations " +
					"(`HANDOFF_SERVICE`). It starts with a letter or a digit, and is unique in the file.",
				Example: "web", Reload: ReloadReAdd,
			},
			{
				Path: "services.command", Type: "list of strings", Required: true,
				Doc: "The program and its arguments, never passed to a shell. A program with a slash in its name " +
					"is taken from `dir` when relative; one without is looked up in the generation's `PATH`.",
				Example: `["/usr/local/bin/web", "--config", "/etc/web/web.yaml"]`, Reload: ReloadNextGeneration,
			},
			{
				Path: "services.dir", Type: "directory", Default: ".",
				Doc: "The generations' working directory; a relative `command` or `watch` path starts there. " +
					"A relative `dir` starts at handoffd's own working directory.",
				Example: "/srv/web", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.env", Type: "list of NAME=value", Default: "[]",
				Doc: "Added to the generations' environment, which otherwise holds only `PATH` (a fixed default " +
					"unless set here) and what handoffd sets: `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, " +
					"`NOTIFY_SOCKET` and `HANDOFF_*`, which `env` may not set. Nothing of handoffd's own " +
					"environment reaches a generation.",
				Example: `["GIN_MODE=release", "PATH=/usr/local/bin:/usr/bin:/bin"]`, Reload: ReloadNextGeneration,
			},
			{
				Path: "services.user", Type: "user name or uid", DefaultNote: "none: handoffd's own user",
				Doc: "Runs the generations as this user, with its primary group and its supplementary groups. " +
					"Leaving uid 0 clears every capability; `no_new_privs` is always set. The command and the " +
					"handoffd binary must be executable by that user.",
				Example: "www-data", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.group", Type: "group name or gid", DefaultNote: "none: the user's primary group",
				Doc:     "Runs the generations with this group instead of the user's primary group.",
				Example: "www-data", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.listeners", Type: "list of listeners", Required: true,
				Doc: "The service's listening sockets, at least one, handed to each generation in `LISTEN_FDS` in " +
					"this order; the keys of each are below. Two services may not listen on one address.",
				Example: `[{name: http, address: "tcp://127.0.0.1:8080"}, {name: admin, address: "unix:///run/web/admin.sock"}]`,
				Reload:  ReloadReAdd,
			},
			{
				Path: "services.ready_timeout", Type: "duration", Default: "10s",
				Doc: "How long a new generation has to be ready (`READY=1`, then its health check if there is one); " +
					"past it the generation fails, is killed, and the active generation stays. The state handoff " +
					"is not counted in it.",
				Example: "30s", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.drain_timeout", Type: "duration", Default: "30s",
				Doc: "How long a replaced generation has, from the moment it is replaced, to drain and exit; then " +
					"SIGKILL, " +
					"and what it still held is logged and counted. `stop_delay` counts in it. A generation reads " +
					"what it has from its stop signal in `HANDOFF_DRAIN_TIMEOUT_MS` (`handoff.DrainTimeout()`).",
				Example: "2m", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.stop_signal", Type: "signal name", Default: "SIGTERM",
				Doc: "The signal that tells a replaced generation to drain: SIGTERM, SIGINT, SIGQUIT, SIGHUP, " +
					"SIGUSR1, SIGUSR2 or SIGWINCH, with or without `SIG`.",
				Example: "SIGQUIT", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.stop_delay", Type: "duration", Default: "0s",
				Doc: "How long a replaced generation keeps serving after the steering flip, with no new connection " +
					"reaching it (ebpf mode), before its stop signal: an app whose drain drops the connections it " +
					"accepted but has not read yet (puma) finishes them first. Counts in `drain_timeout` and must " +
					"be less than it.",
				Example: "1s", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.probation", Type: "duration", Default: "0s",
				Doc: "Keeps the replaced generation in standby, running and steerable, until the new one has lived " +
					"this long: if the new one dies or fails its health check sooner, steering flips back in one " +
					"map update. `handoffctl rollback` flips back by hand, `handoffctl drain` ends the probation. " +
					"0 retires the replaced generation at once.",
				Example: "30s", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.watch", Type: "list of paths", Default: "[]",
				Doc: "Files, relative to `dir`, whose change swaps the service: written, touched or replaced by a " +
					"rename (so `install` or `mv` onto the path is seen), once the file has been quiet for 500 ms. " +
					"Removing one swaps nothing. The directory of each must exist.",
				Example: `["bin/web", "web.yaml"]`, Reload: ReloadNextGeneration,
			},
			{
				Path: "services.ready", Type: "notify or health", Default: "notify",
				Doc: "When a new generation is ready: `notify`, once it says `READY=1` on `NOTIFY_SOCKET` (then its " +
					"health check, if there is one); `health`, once its health check passes, for apps that never " +
					"say `READY=1`. `health` needs `health` and ebpf mode: it is refused with `mode: fdpass` and " +
					"with a `unix://` listener, and fails a generation's start where `mode: auto` fell back.",
				Example: "health", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.health", Type: "health check", DefaultNote: "none: no health check",
				Doc: "Checks each new generation through its own listening socket before any client reaches it " +
					"(ebpf mode; in fdpass mode from its activation on), then while it serves. A canary or a " +
					"generation on probation that fails it is rolled back. The keys are below.",
				Example: "{http: /healthz, interval: 1s}", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.fd_store_max", Type: "0 to 1024", Default: "16",
				Doc: "How many fds the service's generations may keep in the fd store (`FDSTORE=1`); 0 turns the " +
					"store off. Snapshots and finals of the state handoff are passed on at once and do not count. " +
					"A lower value on reload keeps what is stored.",
				Example: "64", Reload: ReloadAtOnce,
			},
			{
				Path: "services.state_handoff", Type: "boolean", Default: "false",
				Doc: "Adds the state handoff to swaps and canary starts: once the new generation says `READY=1`, " +
					"the old one hands it a snapshot of its state, and after its drain a final delta. Needs " +
					"`ready: notify`. Turned on by a reload, it applies from the next swap, which starts cold.",
				Example: "true", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.state_timeout", Type: "duration", Default: "5s",
				Doc: "Bounds the state handoff of one swap (snapshot, delivery, `LOADED=1`); past it the new " +
					"generation starts cold. Not counted in `ready_timeout`.",
				Example: "2s", Reload: ReloadAtOnce,
			},
			{
				Path: "services.join", Type: "boolean", Default: "false",
				Doc: "Lets a process that handoffd did not start become the service's next generation over the " +
					"control socket (`handoff.Listen` with `HANDOFF_CONTROL` and `HANDOFF_SERVICE`). Off, every join " +
					"is refused, root's included. On, root, members of `group` and processes that run as the service " +
					"would (its `user`, with its `group` or the user's primary group) may join; a process that is, or " +
					"runs under, a live generation of another service may not, whatever its uid.",
				Example: "true", Reload: ReloadAtOnce,
			},
		},
	},
	{
		Title: "Listener keys", Prefix: "services.listeners",
		Doc: "Each entry of a service's `listeners` is a listening socket that handoffd makes itself and hands " +
			"to the generations. A service's listeners cannot change while it runs.",
		Keys: []Key{
			{
				Path: "services.listeners.name", Type: "1-63 of a-z, 0-9, - and _", Required: true,
				Doc: "The listener's name in `LISTEN_FDNAMES`, which `handoff.Listen` asks for. It starts with a " +
					"letter or a digit, and is unique in the service.",
				Example: "api", Reload: ReloadReAdd,
			},
			{
				Path: "services.listeners.address", Type: "URL", Required: true,
				Doc: "`tcp://HOST:PORT`, `tcp4://` or `tcp6://` for one family, or `unix:///absolute/path.sock` " +
					"(always passed, as in fdpass mode). An empty host binds every IPv4 address (`tcp://:8080`; " +
					"`tcp6://[::]:8080` for IPv6); a host name matches any of its addresses when a restarted " +
					"handoffd re-adopts the socket. `udp://HOST:PORT` (or `udp4://`, `udp6://`) is a QUIC " +
					"listener and needs `protocol: quic`.",
				Example: `"tcp://:8080"`, Reload: ReloadReAdd,
			},
			{
				Path: "services.listeners.backlog", Type: "1 to 65535", Default: "4096",
				Doc:     "The length of the accept queue (listen(2)'s backlog; the kernel caps it at `net.core.somaxconn`).",
				Example: "1024", Reload: ReloadReAdd,
			},
			{
				Path: "services.listeners.protocol", Type: "quic", DefaultNote: "none (TCP)",
				Doc: "`quic` on a `udp://` address: each generation gets a UDP socket of its own, and the " +
					"steering program sends every packet by the connection ID it carries to the generation " +
					"that holds the connection (HTTP/3 with `handoff/handoffquic`). The same port number may " +
					"serve TCP on another listener. Needs ebpf mode: refused in fdpass mode, and `mode: auto` " +
					"refuses to fall back to fdpass with one. `backlog` does not apply.",
				Example: "quic", ExampleWith: `{address: "udp://127.0.0.1:8080"}`, Reload: ReloadReAdd,
			},
		},
	},
	{
		Title: "Health check keys", Prefix: "services.health",
		Doc: "A service's `health` check, made through the very listening socket that will take the traffic: in " +
			"ebpf mode the steering program sends each probe's connection to the new generation alone.",
		Keys: []Key{
			{
				Path: "services.health.http", Type: "path", DefaultNote: "none",
				Doc:     "A GET of this path that must answer 2xx to pass. Give `http` or `tcp`, not both.",
				Example: "/healthz", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.health.tcp", Type: "boolean", Default: "false",
				Doc:     "`true`: a check passes when a connection is accepted.",
				Example: "true", ExampleWith: `{http: ""}`, Reload: ReloadNextGeneration,
			},
			{
				Path: "services.health.listener", Type: "a listener's name", DefaultNote: "the service's first TCP listener",
				Doc:     "The listener checked; a TCP one.",
				Example: "http", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.health.interval", Type: "duration", Default: "200ms",
				Doc:     "The time between two checks.",
				Example: "1s", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.health.timeout", Type: "duration", Default: "1s",
				Doc:     "How long one check may take.",
				Example: "500ms", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.health.healthy", Type: "1 or more", Default: "2",
				Doc:     "Passes in a row before a new generation may receive traffic.",
				Example: "3", Reload: ReloadNextGeneration,
			},
			{
				Path: "services.health.unhealthy", Type: "1 or more", Default: "3",
				Doc:     "Failures in a row that roll back a canary or a generation on probation.",
				Example: "5", Reload: ReloadNextGeneration,
			},
		},
	},
}
