package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// rootReply is what the demo answers to GET /.
type rootReply struct {
	Service    string `json:"service"`
	Generation int    `json:"generation"`
	PID        int    `json:"pid"`
	Greeting   string `json:"greeting"`
}

func getRoot(addr string) (rootReply, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return rootReply{}, err
	}
	defer resp.Body.Close()
	var r rootReply
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("GET /: %s", resp.Status)
	}
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// eventuallyTrue polls cond for up to limit.
func eventuallyTrue(limit time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestReloadAppUnderLoad changes the demo's greeting with `handoffctl
// reload demo` while clients that never retry send POSTs: the same
// process (generation 1, same pid) answers with the new greeting, a bad
// file keeps it, and no request fails.
func TestReloadAppUnderLoad(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { reloadAppUnderLoad(t, mode) })
	}
}

func reloadAppUnderLoad(t *testing.T, mode string) {
	conf := filepath.Join(t.TempDir(), "demo.yaml")
	writeFile(t, conf, "greeting: hello\n")
	d := startDaemon(t, daemonOptions{mode: mode, demoArgs: []string{"--config", conf}})
	before, err := getRoot(d.addr)
	if err != nil || before.Greeting != "hello" {
		t.Fatalf("GET / before reload: %+v, %v; want greeting hello", before, err)
	}
	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)

	writeFile(t, conf, "greeting: bonjour\n")
	out, err := d.ctl("reload", "demo")
	if want := fmt.Sprintf("demo: generation 1 (pid %d) told to reload", before.PID); err != nil || !strings.Contains(out, want) {
		t.Fatalf("reload: %v: %q, want %q", err, out, want)
	}
	var after rootReply
	if !eventuallyTrue(5*time.Second, func() bool { after, err = getRoot(d.addr); return err == nil && after.Greeting == "bonjour" }) {
		t.Fatalf("greeting after reload: %+v, %v; want bonjour", after, err)
	}
	// A bad file: the greeting in use stays.
	writeFile(t, conf, "greeting: [unclosed\n")
	if out, err := d.ctl("reload", "demo"); err != nil {
		t.Fatalf("reload with a bad file: %v: %s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	if r, err := getRoot(d.addr); err != nil || r.Greeting != "bonjour" {
		t.Errorf("after reloading a bad file: %+v, %v; want greeting bonjour kept", r, err)
	}
	time.Sleep(300 * time.Millisecond)
	res := l.stop()

	t.Logf("requests: %d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d requests failed, first ones: %q", res.Failed, res.Failures)
	}
	if res.OK == 0 {
		t.Error("no request succeeded: the load did not run")
	}
	st := d.status()
	if len(st.Generations) != 1 || st.Generations[0].PID != before.PID || st.Generations[0].State != api.StateActive {
		t.Errorf("after reloads: generations %+v; want generation 1 (pid %d) alone and active: a reload is no swap", st.Generations, before.PID)
	}
	if after.PID != before.PID || after.Generation != 1 {
		t.Errorf("greeting changed by pid %d generation %d, want pid %d generation 1", after.PID, after.Generation, before.PID)
	}
	if !strings.Contains(d.logText(), "keeping the current one") {
		t.Errorf("the demo did not log why it kept its config:\n%s", d.logText())
	}
}

// webService is a second service for the demo binary on addr.
func webService(addr string) string {
	return fmt.Sprintf(`  - name: web
    command: [%q, "--version", "web"]
    env: %s
    listeners:
      - name: http
        address: tcp://%s
    ready_timeout: 10s
    drain_timeout: 5s
`, filepath.Join(bin, "demo"), demoEnv(), addr)
}

func serviceStatus(d *daemon, name string) (api.ServiceStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := d.client.Status(ctx, name)
	if err != nil {
		return api.ServiceStatus{}, err
	}
	return st.Services[0], nil
}

// TestReloadConfig sends SIGHUP to handoffd with a config that adds a
// service (it starts), then with an invalid one (refused: both services
// run on, untouched), then removes the service with reload-config.
func TestReloadConfig(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	base, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	demoPID := d.status().Generations[0].PID
	webAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))

	writeFile(t, d.config, string(base)+webService(webAddr))
	d.cmd.Process.Signal(syscall.SIGHUP)
	var web api.ServiceStatus
	if !eventuallyTrue(15*time.Second, func() bool {
		web, err = serviceStatus(d, "web")
		return err == nil && len(web.Generations) == 1 && web.Generations[0].State == api.StateActive
	}) {
		t.Fatalf("web not started by SIGHUP: %+v, %v\n%s", web, err, d.logText())
	}
	if r, err := getRoot(webAddr); err != nil || r.Service != "web" || r.Generation != 1 {
		t.Fatalf("GET / on web: %+v, %v", r, err)
	}
	webPID := web.Generations[0].PID

	// Invalid: an unknown key. Refused, on SIGHUP and on reload-config.
	writeFile(t, d.config, string(base)+webService(webAddr)+"    colour: red\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	if !eventuallyTrue(5*time.Second, func() bool { return strings.Contains(d.logText(), "colour") }) {
		t.Errorf("handoffd did not log why it refused the config:\n%s", d.logText())
	}
	out, err := d.ctl("reload-config")
	if err == nil || !strings.Contains(out, "colour") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("reload-config of an invalid config: %v: %q; want a one-line refusal naming the key", err, out)
	}
	// A change that needs a restart of handoffd is refused too.
	writeFile(t, d.config, strings.Replace(string(base), "control: ", "control: /elsewhere", 1)+webService(webAddr))
	if out, err := d.ctl("reload-config"); err == nil || !strings.Contains(out, "restart handoffd") {
		t.Errorf("reload-config with a new control path: %v: %q; want a refusal", err, out)
	}
	for name, pid := range map[string]int{"demo": demoPID, "web": webPID} {
		st, err := serviceStatus(d, name)
		if err != nil || len(st.Generations) != 1 || st.Generations[0].PID != pid || st.Generations[0].State != api.StateActive {
			t.Errorf("%s after refused reloads: %+v, %v; want pid %d still active", name, st, err, pid)
		}
	}

	writeFile(t, d.config, string(base))
	out, err = d.ctl("reload-config")
	if err != nil || !strings.Contains(out, "removed (draining): web") {
		t.Fatalf("reload-config removing web: %v: %q", err, out)
	}
	if !eventuallyTrue(10*time.Second, func() bool { return syscall.Kill(webPID, 0) != nil }) {
		t.Errorf("web's generation (pid %d) still runs after its service was removed", webPID)
	}
	if _, err := serviceStatus(d, "web"); err == nil {
		t.Error("status still shows web")
	}
}

// TestWatchSwapsOnce adds watch: to the demo by reload-config (no swap),
// then under load touches the watched file, replaces it by a rename, and
// writes it slowly in chunks like a copy: each makes exactly one swap,
// and no request fails.
func TestWatchSwapsOnce(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	trigger := filepath.Join(t.TempDir(), "release")
	writeFile(t, trigger, "v1\n")
	base, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, d.config, string(base)+fmt.Sprintf("    watch: [%q]\n", trigger))
	if out, err := d.ctl("reload-config"); err != nil || !strings.Contains(out, "changed (from the next generation on): demo") {
		t.Fatalf("reload-config adding watch: %v: %q", err, out)
	}
	if st := d.status(); len(st.Generations) != 1 {
		t.Fatalf("reload-config swapped: %+v", st.Generations)
	}

	l := startLoad(d.addr, "/slow?ms=2", loadClients, false)
	time.Sleep(300 * time.Millisecond)
	steps := []struct {
		what   string
		change func()
	}{
		{"touch", func() { now := time.Now(); os.Chtimes(trigger, now, now) }},
		{"replace by rename", func() {
			writeFile(t, trigger+".new", "v2\n")
			os.Rename(trigger+".new", trigger)
		}},
		{"slow copy", func() {
			f, err := os.OpenFile(trigger, os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for range 10 {
				f.Write([]byte("chunk\n"))
				time.Sleep(100 * time.Millisecond)
			}
		}},
	}
	for i, step := range steps {
		want := i + 2
		step.change()
		d.waitFor(fmt.Sprintf("generation %d active after %s", want, step.what), 10*time.Second, func(st api.ServiceStatus) bool {
			last := st.Generations[len(st.Generations)-1]
			return last.ID >= want && last.State == api.StateActive
		})
		time.Sleep(1500 * time.Millisecond) // three times the quiet period: no second swap
		st := d.status()
		if last := st.Generations[len(st.Generations)-1]; last.ID != want {
			t.Errorf("%s: generation %d is the last, want %d: exactly one swap", step.what, last.ID, want)
		}
	}
	res := l.stop()
	t.Logf("requests: %d ok, %d failed; per generation %v", res.OK, res.Failed, res.ByGen)
	if res.Failed > 0 {
		t.Errorf("%d requests failed, first ones: %q", res.Failed, res.Failures)
	}
	for gen := 1; gen <= len(steps)+1; gen++ {
		if res.ByGen[gen] == 0 {
			t.Errorf("generation %d answered no request", gen)
		}
	}
}

// TestReloadAddedServiceSurvivesKill adds a service by reload-config
// whose generation 1 never says it is ready, and kills handoffd (SIGKILL)
// while it starts: the restarted handoffd finds that generation in its
// state, ends it (it never was active) and starts the service afresh,
// instead of leaving it running unsupervised beside a new generation 1
// (in fdpass mode, holding the port that the new one could not bind).
func TestReloadAddedServiceSurvivesKill(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			d := startDaemon(t, daemonOptions{mode: mode})
			demoPID := d.status().Generations[0].PID
			base, err := os.ReadFile(d.config)
			if err != nil {
				t.Fatal(err)
			}
			webAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			web := strings.Replace(webService(webAddr), `"--version", "web"]`, `"--version", "web", "--fault", "hang@1"]`, 1)
			writeFile(t, d.config, string(base)+web)
			reloaded := make(chan string, 1)
			go func() { out, _ := d.ctl("reload-config"); reloaded <- out }()
			// Its process runs and has its listener once it says why it
			// never gets ready.
			var orphan int
			if !eventuallyTrue(15*time.Second, func() bool {
				for _, pid := range generationsOf(d.control) {
					if pid != demoPID {
						orphan = pid
					}
				}
				return orphan != 0 && strings.Contains(d.logText(), "never saying ready")
			}) {
				t.Fatalf("web's generation 1 did not start:\n%s", d.logText())
			}
			d.end(syscall.SIGKILL)
			<-reloaded
			d.startAgain()
			st := d.waitForService("web", "web started afresh", 15*time.Second, func(st api.ServiceStatus) bool {
				last := st.Generations[len(st.Generations)-1]
				return last.State == api.StateActive
			})
			if last := st.Generations[len(st.Generations)-1]; last.ID != 2 || last.PID == orphan {
				t.Errorf("web after the restart: %+v; want generation 2 active, a process other than %d", st.Generations, orphan)
			}
			if !eventuallyTrue(5*time.Second, func() bool { return !slices.Contains(generationsOf(d.control), orphan) }) {
				t.Errorf("web's generation 1 (pid %d), started before the SIGKILL, still runs unsupervised", orphan)
				syscall.Kill(orphan, syscall.SIGKILL)
			}
			if r, err := getRoot(webAddr); err != nil || r.Generation != 2 {
				t.Errorf("GET / on web: %+v, %v; want generation 2", r, err)
			}
		})
	}
}
