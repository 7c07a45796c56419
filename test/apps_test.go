package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// An unmodified app from a Debian package that takes its listener from
// systemd socket activation (LISTEN_FDS, or fd 3 by name on its command
// line), with a tiny app of its language that answers like the demo:
// {"generation":N,...}.
type debianApp struct {
	name     string
	packages []string // what apt-get installs (.ci/run does)
	binary   string
	probe    []string // a command that must succeed too (a module's import), if any
	files    map[string]string
	command  func(dir string) []string
	// serviceYAML holds the service keys the app always needs.
	serviceYAML string
	// modes are those the app can run in; nil for every one.
	modes []string
}

// Indexes in debianApps.
const (
	appGunicorn = iota
	appPuma
	appUvicorn
	appGthread
)

// wsgiApp is the app of both gunicorn rows.
const wsgiApp = `import json, os
GEN = int(os.environ["HANDOFF_GENERATION"])
def app(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n) if n else b""
    out = json.dumps({"generation": GEN, "pid": os.getpid(), "bytes": len(body)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
`

var debianApps = []debianApp{
	appGunicorn: {
		name: "gunicorn (Python)", packages: []string{"gunicorn"}, binary: "/usr/bin/gunicorn",
		files: map[string]string{"app.py": wsgiApp},
		command: func(dir string) []string {
			return []string{"/usr/bin/gunicorn", "--chdir", dir, "--workers", "4", "--graceful-timeout", "20", "app:app"}
		},
	},
	appPuma: {
		name: "puma (Ruby)", packages: []string{"puma", "ruby-sd-notify"}, binary: "/usr/bin/puma",
		files: map[string]string{
			"config.ru": `require 'json'
GEN = Integer(ENV.fetch('HANDOFF_GENERATION'))
run lambda { |env|
  body = env['rack.input'].read
  out = JSON.generate({ generation: GEN, pid: Process.pid, bytes: body.bytesize })
  [200, { 'Content-Type' => 'application/json', 'Content-Length' => out.bytesize.to_s }, [out]]
}
`,
			"puma.rb": "bind_to_activated_sockets 'only'\nthreads 8, 8\n",
		},
		command: func(dir string) []string {
			return []string{"/usr/bin/puma", "--config", filepath.Join(dir, "puma.rb"), filepath.Join(dir, "config.ru")}
		},
	},
	// uvicorn knows neither LISTEN_FDS nor sd_notify: it is told its
	// socket's fd, and ready: health, through that socket, is its only
	// gate (which needs ebpf mode).
	appUvicorn: {
		name: "uvicorn (Python)", packages: []string{"python3-uvicorn"}, binary: "/usr/bin/python3",
		probe: []string{"/usr/bin/python3", "-c", "import uvicorn"},
		files: map[string]string{"app.py": `import json, os
GEN = int(os.environ["HANDOFF_GENERATION"])
async def app(scope, receive, send):
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    out = json.dumps({"generation": GEN, "pid": os.getpid(), "bytes": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
`},
		command: func(dir string) []string {
			return []string{"/usr/bin/python3", "-m", "uvicorn", "--app-dir", dir, "--fd", "3", "--lifespan", "off",
				"--no-access-log", "--log-level", "warning", "app:app"}
		},
		serviceYAML: "    ready: health\n" + healthYAML,
		modes:       []string{"ebpf"},
	},
	appGthread: {
		name: "gunicorn gthread (Python)", packages: []string{"gunicorn"}, binary: "/usr/bin/gunicorn",
		files: map[string]string{"app.py": wsgiApp},
		command: func(dir string) []string {
			return []string{"/usr/bin/gunicorn", "--chdir", dir, "--worker-class", "gthread", "--workers", "4", "--threads", "8",
				"--graceful-timeout", "20", "app:app"}
		},
	},
}

// requireApp fails (CI) or skips the test when the app is not installed.
func requireApp(t *testing.T, a debianApp) {
	t.Helper()
	_, err := exec.LookPath(a.binary)
	if err == nil && a.probe != nil {
		err = exec.Command(a.probe[0], a.probe[1:]...).Run()
	}
	if err == nil {
		return
	}
	why := fmt.Sprintf("%s not installed (apt-get install %s)", a.name, strings.Join(a.packages, " "))
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: not skipping)", why)
	}
	t.Skip(why)
}

// loss is what a run's failed requests may be.
type loss int

const (
	// measured: the run reports what it saw (HANDOFF_APPS=all).
	measured loss = iota
	// none: every request must succeed (the measured result is 0, so a
	// failure is a regression).
	none
	// unreadClosed: the old generation, told to stop, closes the new
	// connections it accepted before the flip and has not read yet. A
	// failure must be the first request of its connection, cut (EOF or
	// reset).
	unreadClosed
	// keptClosed: the old generation, told to stop, closes the kept
	// (keep-alive) connections it is not reading from, racing their
	// clients' next request, or leaves that request unread until it
	// exits. A failure must be a request on a kept connection whose
	// earlier requests a generation answered that a swap had replaced
	// before the failure, cut (EOF or reset).
	keptClosed
)

// appRun is one run of an app under load: its mode, its clients, extra
// service keys and arguments, and what its failed requests may be.
type appRun struct {
	app         int // index in debianApps
	mode        string
	keepAlive   bool
	serviceYAML string
	args        []string // added to the app's command line
	loss        loss
}

func (r appRun) name() string {
	short := map[int]string{appGunicorn: "gunicorn", appPuma: "puma", appUvicorn: "uvicorn", appGthread: "gthread"}[r.app]
	name := fmt.Sprintf("%s/%s/%s", short, r.mode, map[bool]string{false: "new-connection", true: "keep-alive"}[r.keepAlive])
	if r.serviceYAML != "" {
		name += "/" + strings.ReplaceAll(strings.TrimSpace(r.serviceYAML), ": ", "=")
	}
	if len(r.args) > 0 {
		name += "/" + strings.Join(r.args, "=")
	}
	return name
}

const stopDelay = "    stop_delay: 1s\n"

// keepAliveOff is gunicorn's setting that closes every connection after
// its response, with "Connection: close".
var keepAliveOff = []string{"--keep-alive", "0"}

// appRuns are the runs of make test: where each app is clean, what
// stop_delay and an app's own setting change, and the losses that
// nothing in handoffd removes, each held to its cause. HANDOFF_APPS=all
// adds the rest of the matrix (every app, mode and client), for the table
// in docs/apps.md.
var appRuns = []appRun{
	{app: appGunicorn, mode: "ebpf", keepAlive: true, loss: none},
	{app: appGunicorn, mode: "fdpass", keepAlive: true, loss: none},
	{app: appPuma, mode: "ebpf", loss: unreadClosed},
	{app: appPuma, mode: "ebpf", serviceYAML: stopDelay, loss: none},
	{app: appUvicorn, mode: "ebpf", serviceYAML: stopDelay, loss: none},
	{app: appUvicorn, mode: "ebpf", keepAlive: true, serviceYAML: stopDelay, loss: keptClosed},
	{app: appGthread, mode: "ebpf", keepAlive: true, loss: keptClosed},
	{app: appGthread, mode: "ebpf", keepAlive: true, args: keepAliveOff, loss: none},
}

// TestUnmodifiedApps runs real apps of other languages, unmodified, under
// handoffd, with 32 clients that never retry and 20 swaps, and reports
// the failed requests per swap and what the clients saw.
func TestUnmodifiedApps(t *testing.T) {
	runs := appRuns
	if os.Getenv("HANDOFF_APPS") == "all" {
		runs = nil
		for app, a := range debianApps {
			appModes := a.modes
			if appModes == nil {
				appModes = modes
			}
			for _, mode := range appModes {
				for _, keepAlive := range []bool{false, true} {
					runs = append(runs, appRun{app: app, mode: mode, keepAlive: keepAlive})
				}
			}
		}
		for _, keepAlive := range []bool{false, true} {
			runs = append(runs, appRun{app: appPuma, mode: "ebpf", keepAlive: keepAlive, serviceYAML: stopDelay},
				appRun{app: appUvicorn, mode: "ebpf", keepAlive: keepAlive, serviceYAML: stopDelay})
		}
		for _, mode := range modes {
			runs = append(runs, appRun{app: appGthread, mode: mode, keepAlive: true, args: keepAliveOff})
		}
	}
	for _, r := range runs {
		t.Run(r.name(), func(t *testing.T) { unmodifiedApp(t, r) })
	}
}

func unmodifiedApp(t *testing.T, r appRun) {
	a := debianApps[r.app]
	requireApp(t, a)
	dir := t.TempDir()
	for name, text := range a.files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	command := append(a.command(dir), r.args...)
	d := startDaemon(t, daemonOptions{mode: r.mode, command: command, serviceYAML: a.serviceYAML + r.serviceYAML})
	// With stop_delay, kept connections stay on the old generation that
	// long after the flip: swaps that come sooner would replace the new
	// one before any of them reached it.
	every, settle := swapEvery, 500*time.Millisecond
	if strings.Contains(r.serviceYAML, "stop_delay") {
		settle += time.Second
		if r.keepAlive {
			every += time.Second
		}
	}
	l := startLoad(d.addr, "/slow", loadClients, r.keepAlive)
	time.Sleep(300 * time.Millisecond)
	var swaps []time.Time
	for i := range swapCount {
		time.Sleep(every)
		swaps = append(swaps, time.Now())
		if out, err := d.ctl("swap", "demo"); err != nil || !strings.Contains(out, fmt.Sprintf("generation %d active", i+2)) {
			t.Errorf("swap %d: %v: %q", i+1, err, out)
		}
	}
	time.Sleep(settle) // until the last generation has answered
	res := l.stop()
	perSwap, kinds := failuresBySwap(res.FailedAt, swaps)
	if os.Getenv("HANDOFF_APPS_LOG") != "" {
		t.Log(d.logText())
	}
	t.Logf("%s: %d ok, %d failed; failed per swap %v; what clients saw: %s; longest wait for a failure: %s",
		r.name(), res.OK, res.Failed, perSwap, kinds, longestWait(res.FailedAt))
	switch r.loss {
	case none:
		if res.Failed > 0 {
			t.Errorf("%d requests failed, first ones: %q", res.Failed, res.Failures)
		}
	case unreadClosed, keptClosed:
		for _, f := range res.FailedAt {
			if why := r.loss.misfit(f, swaps); why != "" {
				t.Errorf("a failure unlike the known loss: %s: sent %s (request %d on its connection, which generation %d answered before), failed %s: %s",
					why, f.sent.Format("15:04:05.000"), f.nth, f.gen, f.at.Format("15:04:05.000"), f.what)
			}
		}
	}
	if res.OK < 20*swapCount*loadClients/10 {
		t.Errorf("only %d requests succeeded: the load did not run", res.OK)
	}
	for gen := 2; gen <= swapCount+1; gen++ {
		if res.ByGen[gen] == 0 {
			t.Errorf("generation %d answered no request", gen)
		}
	}
}

// failuresBySwap counts the failures after each swap (before the next)
// and sums up what clients saw, most common first.
func failuresBySwap(fails []failure, swaps []time.Time) ([]int, string) {
	per := make([]int, len(swaps))
	kind := map[string]int{}
	for _, f := range fails {
		i := sort.Search(len(swaps), func(i int) bool { return swaps[i].After(f.at) }) - 1
		if i >= 0 {
			per[i]++
		}
		kind[failureKind(f.what)]++
	}
	var parts []string
	for k, n := range kind {
		parts = append(parts, fmt.Sprintf("%d× %s", n, k))
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] > parts[j] })
	return per, strings.Join(parts, ", ")
}

// failureKind names what a client saw without the details that vary.
func failureKind(what string) string {
	for _, k := range []string{"connection reset by peer", "connection refused", "broken pipe", "EOF", "i/o timeout", "status"} {
		if strings.Contains(what, k) {
			op, _, _ := strings.Cut(what, ":")
			return op + ": " + k
		}
	}
	return what
}

// misfit says how f differs from the loss l, or "" when it is one.
func (l loss) misfit(f failure, swaps []time.Time) string {
	if !cut(f.what) {
		return "not a cut connection (EOF or reset)"
	}
	switch l {
	case unreadClosed:
		if f.nth != 1 {
			return "not the first request on its connection"
		}
		if len(swaps) == 0 || f.at.Before(swaps[0]) {
			return "before any swap"
		}
	case keptClosed:
		if f.nth < 2 || f.gen < 1 {
			return "not on a kept connection"
		}
		// Swap k (from 1) replaces generation k.
		if f.gen > len(swaps) || f.at.Before(swaps[f.gen-1]) {
			return "on a connection of a generation not replaced yet"
		}
	}
	return ""
}

// cut reports whether what a client saw is its connection closed or
// reset under its request.
func cut(what string) bool {
	return strings.Contains(what, "EOF") || strings.Contains(what, "connection reset by peer") ||
		strings.Contains(what, "broken pipe")
}

// longestWait returns the longest time a failed request waited for its
// failure.
func longestWait(fails []failure) time.Duration {
	var longest time.Duration
	for _, f := range fails {
		if !f.sent.IsZero() {
			longest = max(longest, f.at.Sub(f.sent))
		}
	}
	return longest.Round(time.Millisecond)
}
