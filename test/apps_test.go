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

// An unmodified app from a Debian package that supports systemd socket
// activation (LISTEN_FDS) and readiness (sd_notify READY=1), with a tiny
// app of its language that answers like the demo: {"generation":N,...}.
type debianApp struct {
	name     string
	packages []string // what apt-get installs (.ci/run does)
	binary   string
	files    map[string]string
	command  func(dir string) []string
}

var debianApps = []debianApp{
	{
		name: "gunicorn (Python)", packages: []string{"gunicorn"}, binary: "/usr/bin/gunicorn",
		files: map[string]string{"app.py": `import json, os
GEN = int(os.environ["HANDOFF_GENERATION"])
def app(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n) if n else b""
    out = json.dumps({"generation": GEN, "pid": os.getpid(), "bytes": len(body)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
`},
		command: func(dir string) []string {
			return []string{"/usr/bin/gunicorn", "--chdir", dir, "--workers", "4", "--graceful-timeout", "20", "app:app"}
		},
	},
	{
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
}

// requireApp fails (CI) or skips the test when the app is not installed.
func requireApp(t *testing.T, a debianApp) {
	t.Helper()
	if _, err := exec.LookPath(a.binary); err == nil {
		return
	}
	why := fmt.Sprintf("%s not installed (apt-get install %s)", a.binary, strings.Join(a.packages, " "))
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: not skipping)", why)
	}
	t.Skip(why)
}

// appRun is one run of an app under load: its mode, its clients, extra
// service keys, and whether its requests must all succeed (where the
// measured result is 0 failed, a failure is a regression).
type appRun struct {
	app         int // index in debianApps
	mode        string
	keepAlive   bool
	serviceYAML string
	mustBeClean bool
}

func (r appRun) name() string {
	name := fmt.Sprintf("%s/%s/%s", strings.Fields(debianApps[r.app].name)[0], r.mode,
		map[bool]string{false: "new-connection", true: "keep-alive"}[r.keepAlive])
	if r.serviceYAML != "" {
		name += "/" + strings.ReplaceAll(strings.TrimSpace(r.serviceYAML), ": ", "=")
	}
	return name
}

// appRuns are the runs of make test: where each app is clean, and what
// stop_delay changes for puma. HANDOFF_APPS=all adds the rest of the
// matrix (every app, mode and client), for the table in docs/apps.md.
var appRuns = []appRun{
	{app: 0, mode: "ebpf", keepAlive: true, mustBeClean: true},
	{app: 0, mode: "fdpass", keepAlive: true, mustBeClean: true},
	{app: 1, mode: "ebpf", keepAlive: false},
	{app: 1, mode: "ebpf", keepAlive: false, serviceYAML: "    stop_delay: 1s\n", mustBeClean: true},
}

// TestUnmodifiedApps runs real apps of other languages, unmodified, under
// handoffd, with 32 clients that never retry and 20 swaps, and reports
// the failed requests per swap and what the clients saw.
func TestUnmodifiedApps(t *testing.T) {
	runs := appRuns
	if os.Getenv("HANDOFF_APPS") == "all" {
		runs = nil
		for app := range debianApps {
			for _, mode := range modes {
				for _, keepAlive := range []bool{false, true} {
					runs = append(runs, appRun{app: app, mode: mode, keepAlive: keepAlive})
				}
			}
		}
		runs = append(runs, appRun{app: 1, mode: "ebpf", serviceYAML: "    stop_delay: 1s\n"},
			appRun{app: 1, mode: "ebpf", keepAlive: true, serviceYAML: "    stop_delay: 1s\n"})
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
	d := startDaemon(t, daemonOptions{mode: r.mode, command: a.command(dir), serviceYAML: r.serviceYAML})
	l := startLoad(d.addr, "/slow", loadClients, r.keepAlive)
	time.Sleep(300 * time.Millisecond)
	var swaps []time.Time
	for i := range swapCount {
		time.Sleep(swapEvery)
		swaps = append(swaps, time.Now())
		if out, err := d.ctl("swap", "demo"); err != nil || !strings.Contains(out, fmt.Sprintf("generation %d active", i+2)) {
			t.Errorf("swap %d: %v: %q", i+1, err, out)
		}
	}
	time.Sleep(500 * time.Millisecond)
	res := l.stop()
	perSwap, kinds := failuresBySwap(res.FailedAt, swaps)
	if os.Getenv("HANDOFF_APPS_LOG") != "" {
		t.Log(d.logText())
	}
	t.Logf("%s: %d ok, %d failed; failed per swap %v; what clients saw: %s", r.name(), res.OK, res.Failed, perSwap, kinds)
	if r.mustBeClean && res.Failed > 0 {
		t.Errorf("%d requests failed, first ones: %q", res.Failed, res.Failures)
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
