//go:build fleet

package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/api"
)

// fleetHosts is how many hosts the fleet has; the bad release fails on
// the second, so at least three show that the hosts after it stay as
// they were.
const fleetHosts = 3

// fleetClients is the number of load clients per host and kind (a new
// connection per request, keep-alive).
const fleetClients = 4

// TestFleet rolls releases across a fleet with the Ansible collection in
// deploy/ansible, run by Debian's ansible-core: three hosts, each a
// network namespace with its own sshd, handoffd and app on port 8080,
// all of them under load from clients that never retry (a new connection
// per request, and keep-alive) for the whole test. The role installs the
// package (HANDOFF_DEB, as make deb builds it) and release v1; a check-mode
// rollout of v2 changes nothing; the rollout of v2 goes host by host
// (canary, gate, promote); the same rollout again changes nothing; v3,
// whose canary turns unhealthy on host 2, stops there: host 1 runs v3,
// host 2 is back on v2 and host 3 was never touched. Not one request may
// fail. It needs root and eBPF: the fleet build tag keeps it out of make
// test (make test-fleet runs it).
func TestFleet(t *testing.T) {
	requireEBPF(t)
	deb := os.Getenv("HANDOFF_DEB")
	if deb == "" {
		t.Fatal("HANDOFF_DEB: name the .deb to install (make test-fleet builds it)")
	}
	deb, _ = filepath.Abs(deb)
	for _, tool := range []string{"ansible-playbook", "ansible-galaxy", "/usr/sbin/sshd", "ssh", "ssh-keygen", "ip", "nsenter", "start-stop-daemon", "dpkg"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: make test-fleet installs ansible-core and openssh-server", tool)
		}
	}
	// start-stop-daemon detaches each host's handoffd: as a subreaper this
	// process becomes its parent and reaps it, and whatever else the
	// hosts leave behind.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become a subreaper: %v", err)
	}
	start := time.Now()
	installed := exec.Command("dpkg-query", "-W", "handoffd").Run() == nil
	if !installed {
		// The hosts share this machine's dpkg: the test removes what it installed.
		t.Cleanup(func() {
			if out, err := exec.Command("dpkg", "--purge", "handoffd").CombinedOutput(); err != nil {
				t.Errorf("dpkg --purge handoffd: %v\n%s", err, out)
			}
		})
	}

	dir := t.TempDir()
	fleet := newFleet(t, dir, fleetHosts)
	a := newAnsible(t, dir, fleet)
	t.Cleanup(func() {
		// The runs' timestamped log, to see where the time went.
		if out := os.Getenv("HANDOFF_FLEET_OUT"); out != "" {
			if log, err := os.ReadFile(filepath.Join(a.dir, "ansible.log")); err == nil {
				os.WriteFile(out+"-ansible.log", log, 0o644)
			}
		}
		if t.Failed() {
			for _, h := range fleet.hosts {
				log, _ := os.ReadFile(h.logFile())
				t.Logf("%s: handoffd log:\n%s", h.name, log)
			}
		}
	})
	demo := filepath.Join(bin, "demo")
	release := func(name string) []string {
		return []string{"-e", "handoffd_release=" + name,
			"-e", fmt.Sprintf(`{"handoffd_release_files": [{"src": %q}]}`, demo)}
	}
	fig := &fleetFigures{Hosts: map[string]*hostFigures{}}
	for _, h := range fleet.hosts {
		fig.Hosts[h.name] = &hostFigures{Address: net.JoinHostPort(h.addr, fmt.Sprint(fleetAppPort))}
	}

	// The role, on every host: package, release v1, config, handoffd. The
	// hosts share one dpkg database here, so one host at a time (-f 1).
	run := a.playbook(t, "install v1", 0, append([]string{"-f", "1", "handoffd.handoffd.install", "-e", "handoffd_deb=" + deb}, release("v1")...)...)
	fig.Runs = append(fig.Runs, run)
	for _, h := range fleet.hosts {
		st := h.waitActive(t, 1)
		if v := h.version(t); v != "v1" {
			t.Fatalf("%s answers version %q, want v1", h.name, v)
		}
		fig.Hosts[h.name].Before = genIDs(st)
	}

	loads := map[string][2]*load{}
	for _, h := range fleet.hosts {
		addr := fig.Hosts[h.name].Address
		loads[h.name] = [2]*load{startLoad(addr, "/slow?ms=2", fleetClients, false), startLoad(addr, "/slow?ms=2", fleetClients, true)}
	}
	stopLoads := func() {
		for name, ls := range loads {
			for i, l := range ls {
				r := l.stop()
				hf := fig.Hosts[name]
				hf.Requests[i], hf.Failed[i] = r.OK+r.Failed, r.Failed
				if r.Failed > 0 {
					kind := []string{"new connection per request", "keep-alive"}[i]
					t.Errorf("%s, %s: %d of %d requests failed: %v", name, kind, r.Failed, r.OK+r.Failed, r.Failures)
				}
				hf.ByGeneration = mergeCounts(hf.ByGeneration, r.ByGen)
				if r.OK+r.Failed >= fleetClients*loadLimit {
					t.Errorf("%s: the clients stopped at their limit of %d requests before the test ended", name, loadLimit)
				}
			}
		}
		loads = nil
	}
	t.Cleanup(func() {
		if loads != nil {
			stopLoads()
		}
	})
	// Every host is served before anything changes.
	time.Sleep(time.Second)

	rollout := func(what string, wantCode int, rel string, extra ...string) fleetRun {
		args := append([]string{"handoffd.handoffd.rollout", "-e", "rollout_service=app", "-e", "rollout_share=20",
			"-e", "rollout_bake_seconds=6"}, release(rel)...)
		return a.playbook(t, what, wantCode, append(args, extra...)...)
	}

	// Check mode says what it would do and changes nothing.
	swaps := map[string]map[string]float64{}
	for _, h := range fleet.hosts {
		swaps[h.name] = h.swapsTotal(t)
	}
	run = rollout("rollout v2, check mode", 0, "v2", "--check", "-v", "-e", "rollout_serial=3")
	fig.Runs = append(fig.Runs, run)
	if n := strings.Count(run.output, "app: would start a canary with 20% of new connections"); n != fleetHosts {
		t.Errorf("check mode: %d hosts said they would start a canary, want %d", n, fleetHosts)
	}
	for _, h := range fleet.hosts {
		h.expectGenerations(t, "after the check-mode rollout", []int{1}, 1)
		h.expectSwaps(t, "after the check-mode rollout", swaps[h.name])
		if _, err := os.Stat(filepath.Join(h.releaseRoot(), "v2")); err == nil {
			t.Errorf("%s: check mode copied release v2", h.name)
		}
	}

	// v2, host by host.
	run = rollout("rollout v2", 0, "v2")
	fig.Runs = append(fig.Runs, run)
	for _, h := range fleet.hosts {
		st := h.waitActive(t, 2)
		if v := h.version(t); v != "v2" {
			t.Errorf("%s answers version %q after the rollout of v2", h.name, v)
		}
		want := maps2(swaps[h.name], map[string]float64{"canary": 1, "ok": 1})
		h.expectSwaps(t, "after the rollout of v2", want)
		swaps[h.name] = want
		fig.Hosts[h.name].AfterGood = genIDs(st)
	}
	if !run.serialOrder(fleet.hosts, "Promote the canary") {
		t.Errorf("rollout v2 did not promote host by host in inventory order:\n%s", run.output)
	}

	// The same release again: every host runs it, nothing changes.
	pids := map[string]int{}
	for _, h := range fleet.hosts {
		pids[h.name] = h.active(t).PID
	}
	run = rollout("rollout v2 again", 0, "v2", "-e", "rollout_serial=3")
	fig.Runs = append(fig.Runs, run)
	for _, h := range fleet.hosts {
		if c := run.recap(h.name, "changed"); c != 0 {
			t.Errorf("rollout v2 again: %s changed=%d, want 0", h.name, c)
		}
		if g := h.active(t); g.ID != 2 || g.PID != pids[h.name] {
			t.Errorf("rollout v2 again: %s runs generation %d (pid %d), want 2 (pid %d)", h.name, g.ID, g.PID, pids[h.name])
		}
		h.expectSwaps(t, "after the rollout of v2 again", swaps[h.name])
	}

	// v3 turns unhealthy on host 2: the rollout stops there.
	run = rollout("rollout v3, unhealthy on host 2", 2, "v3")
	fig.Runs = append(fig.Runs, run)
	h1, h2, rest := fleet.hosts[0], fleet.hosts[1], fleet.hosts[2:]
	h1.waitActive(t, 3)
	if v := h1.version(t); v != "v3" {
		t.Errorf("host1 answers version %q, want v3", v)
	}
	h1.expectSwaps(t, "after the rollout of v3", maps2(swaps[h1.name], map[string]float64{"canary": 1, "ok": 1}))
	if g := h2.active(t); g.ID != 2 || g.PID != pids[h2.name] {
		t.Errorf("host2 runs generation %d (pid %d) after the failed rollout, want 2 (pid %d)", g.ID, g.PID, pids[h2.name])
	}
	// handoffd rolled the canary back itself: the rollout's rollback found nothing left to do.
	h2.expectSwaps(t, "after the rollout of v3", maps2(swaps[h2.name], map[string]float64{"canary": 1, "rolled_back": 1}))
	if v := h2.version(t); v != "v2" {
		t.Errorf("host2 answers version %q after the rollback, want v2", v)
	}
	if cfg, _ := os.ReadFile(h2.configFile()); !bytes.Contains(cfg, []byte("/v2/demo")) || bytes.Contains(cfg, []byte("/v3/")) {
		t.Errorf("host2's config does not name v2 again after the rollback:\n%s", cfg)
	}
	if !strings.Contains(run.output, "rollout of app v3 stopped at host2") {
		t.Errorf("the failed rollout does not say where it stopped:\n%s", run.output)
	}
	for _, h := range rest {
		if g := h.active(t); g.ID != 2 || g.PID != pids[h.name] {
			t.Errorf("%s runs generation %d (pid %d) after the failed rollout, want 2 (pid %d) untouched", h.name, g.ID, g.PID, pids[h.name])
		}
		h.expectGenerations(t, "after the failed rollout", []int{2}, 2)
		h.expectSwaps(t, "after the failed rollout", swaps[h.name])
		if _, err := os.Stat(filepath.Join(h.releaseRoot(), "v3")); err == nil {
			t.Errorf("%s: release v3 was copied to a host after the failure", h.name)
		}
		if cfg, _ := os.ReadFile(h.configFile()); bytes.Contains(cfg, []byte("/v3/")) {
			t.Errorf("%s: config names v3", h.name)
		}
		if c := run.recap(h.name, "ok"); c != -1 {
			t.Errorf("%s ran %d tasks in the stopped rollout, want none", h.name, c)
		}
	}
	for _, h := range fleet.hosts {
		fig.Hosts[h.name].AfterBad = genIDs(h.status(t))
	}

	stopLoads()
	fig.Seconds = time.Since(start).Seconds()
	fig.report(t)
}

// fleetFigures is what TestFleet measured.
type fleetFigures struct {
	Runs    []fleetRun
	Hosts   map[string]*hostFigures
	Seconds float64
}

// hostFigures is one host's: its load, and its live generations (id:state)
// after each step.
type hostFigures struct {
	Address      string
	Requests     [2]int // new connection per request, keep-alive
	Failed       [2]int
	ByGeneration map[int]int
	Before       []string
	AfterGood    []string
	AfterBad     []string
}

func (f *fleetFigures) report(t *testing.T) {
	var b strings.Builder
	fmt.Fprintf(&b, "fleet of %d hosts, %d+%d clients each (new connection per request + keep-alive), %.0f s in all\n",
		len(f.Hosts), fleetClients, fleetClients, f.Seconds)
	for _, r := range f.Runs {
		fmt.Fprintf(&b, "  %-34s exit %d in %5.1f s\n", r.What, r.Code, r.Seconds)
	}
	var names []string
	for n := range f.Hosts {
		names = append(names, n)
	}
	slices.Sort(names)
	total, failed := 0, 0
	for _, n := range names {
		h := f.Hosts[n]
		fmt.Fprintf(&b, "  %s %s: requests %d + %d, failed %d + %d; by generation %v; generations v1 %v, v2 %v, v3 %v\n",
			n, h.Address, h.Requests[0], h.Requests[1], h.Failed[0], h.Failed[1], h.ByGeneration, h.Before, h.AfterGood, h.AfterBad)
		total += h.Requests[0] + h.Requests[1]
		failed += h.Failed[0] + h.Failed[1]
	}
	fmt.Fprintf(&b, "  all hosts: %d requests, %d failed\n", total, failed)
	t.Log("\n" + b.String())
	if out := os.Getenv("HANDOFF_FLEET_OUT"); out != "" {

		data, _ := json.MarshalIndent(f, "", "  ")
		if err := os.WriteFile(out+".json", data, 0o644); err != nil {
			t.Error(err)
		}
		if err := os.WriteFile(out+".txt", []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// genIDs lists a service's live generations as "id:state".
func genIDs(st api.ServiceStatus) []string {
	var out []string
	for _, g := range st.Generations {
		if g.State.Live() {
			out = append(out, fmt.Sprintf("%d:%s", g.ID, g.State))
		}
	}
	return out
}

func mergeCounts(a, b map[int]int) map[int]int {
	if a == nil {
		a = map[int]int{}
	}
	for k, v := range b {
		a[k] += v
	}
	return a
}

// maps2 returns base with add added, key by key.
func maps2(base, add map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range add {
		out[k] += v
	}
	return out
}

func (h *fleetHost) status(t *testing.T) api.ServiceStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := h.client().Status(ctx, "app")
	if err != nil {
		t.Fatalf("%s: status: %v", h.name, err)
	}
	return st.Services[0]
}

// active returns the host's active generation.
func (h *fleetHost) active(t *testing.T) api.GenerationStatus {
	t.Helper()
	st := h.status(t)
	for _, g := range st.Generations {
		if g.State == api.StateActive {
			return g
		}
	}
	t.Fatalf("%s: no active generation: %+v", h.name, st.Generations)
	return api.GenerationStatus{}
}

// waitActive waits until generation id is active and the only live one
// (the one before has drained), for 60 s at most.
func (h *fleetHost) waitActive(t *testing.T, id int) api.ServiceStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second * slow)
	for {
		st := h.status(t)
		live := genIDs(st)
		if len(live) == 1 && live[0] == fmt.Sprintf("%d:active", id) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: generation %d not the only live one after 60 s: %v", h.name, id, live)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// expectGenerations checks that the host's live generations are exactly
// live, all but the last of them gone, and that handoffd never started a
// generation after last (state.json's counter).
func (h *fleetHost) expectGenerations(t *testing.T, when string, live []int, last int) {
	t.Helper()
	var ids []int
	for _, g := range h.status(t).Generations {
		if g.State.Live() {
			ids = append(ids, g.ID)
		}
		if g.ID > last {
			t.Errorf("%s %s: generation %d (%s) exists, want none after %d", h.name, when, g.ID, g.State, last)
		}
	}
	if !slices.Equal(ids, live) {
		t.Errorf("%s %s: live generations %v, want %v", h.name, when, ids, live)
	}
}

// version returns the release the host's app answers GET / with (the
// demo's --version), on a new connection to the host's address.
func (h *fleetHost) version(t *testing.T) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(fmt.Sprintf("http://%s:%d/", h.addr, fleetAppPort))
	if err != nil {
		t.Fatalf("%s: GET /: %v", h.name, err)
	}
	defer resp.Body.Close()
	var answer struct {
		Version string `json:"version"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		t.Fatalf("%s: GET /: %v", h.name, err)
	}
	return answer.Version
}

// swapsTotal reads handoff_swaps_total of the app by result from
// handoffd's /metrics on the host (127.0.0.1:9370 in its namespace).
func (h *fleetHost) swapsTotal(t *testing.T) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	page, err := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+h.netns, "/usr/bin/python3", "-c",
		`import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:9370/metrics", timeout=10).read().decode())`).Output()
	if err != nil {
		t.Fatalf("%s: read /metrics: %v", h.name, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(page))
	if err != nil {
		t.Fatalf("%s: parse /metrics: %v", h.name, err)
	}
	out := map[string]float64{}
	for _, m := range families["handoff_swaps_total"].GetMetric() {
		if v := m.GetCounter().GetValue(); label(m, "service") == "app" && v != 0 {
			out[label(m, "result")] = v
		}
	}
	return out
}

func (h *fleetHost) expectSwaps(t *testing.T, when string, want map[string]float64) {
	t.Helper()
	got := h.swapsTotal(t)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s %s: handoff_swaps_total %v, want %v", h.name, when, got, want)
	}
}

// ansibleRunner runs ansible-playbook with a config, inventory and
// collection of the test's own.
type ansibleRunner struct {
	dir string
	env []string
}

// fleetRun is one ansible-playbook run.
type fleetRun struct {
	What    string
	Code    int
	Seconds float64
	output  string
}

// newAnsible builds the collection in deploy/ansible with ansible-galaxy
// and installs it in dir, writes the inventory of the fleet and an
// ansible.cfg whose ssh knows the hosts' keys.
func newAnsible(t *testing.T, dir string, f *fleetNet) *ansibleRunner {
	t.Helper()
	a := &ansibleRunner{dir: filepath.Join(dir, "ansible")}
	for _, d := range []string{"home", "local", "cp", "dist"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	cfg := fmt.Sprintf(`[defaults]
inventory = %[1]s/inventory.json
collections_path = %[1]s/collections
local_tmp = %[1]s/local
log_path = %[1]s/ansible.log
interpreter_python = /usr/bin/python3
forks = 5
retry_files_enabled = False
timeout = 30

[ssh_connection]
ssh_args = -F /dev/null -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=%[2]s/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o IdentityFile=%[2]s/id -o BatchMode=yes
control_path_dir = %[1]s/cp
pipelining = True
`, a.dir, f.keys)
	if err := os.WriteFile(filepath.Join(a.dir, "ansible.cfg"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a.env = append(os.Environ(), "ANSIBLE_CONFIG="+filepath.Join(a.dir, "ansible.cfg"), "ANSIBLE_HOME="+filepath.Join(a.dir, "home"),
		"ANSIBLE_NOCOLOR=1", "ANSIBLE_FORCE_COLOR=0", "PYTHONDONTWRITEBYTECODE=1")

	hosts := map[string]any{}
	for _, h := range f.hosts {
		hv := map[string]any{
			"ansible_host":             h.addr,
			"ansible_remote_tmp":       filepath.Join(h.dir, "tmp"),
			"handoffd_config_file":     h.configFile(),
			"handoffd_control":         h.control(),
			"handoffd_state_dir":       h.stateDir(),
			"handoffd_bpf_dir":         h.bpfDir,
			"handoffd_pidfile":         h.pidfile(),
			"handoffd_log_file":        h.logFile(),
			"handoffd_release_root":    h.releaseRoot(),
			"handoffd_service_manager": "start-stop-daemon",
		}
		if h.name == "host2" {
			// Release v3's canary answers 503 on /healthz from 2 s after
			// it is ready, on this host only.
			hv["app_faults"] = map[string]string{"v3": "unhealthy@*:2s"}
		}
		hosts[h.name] = hv
	}
	inventory := map[string]any{"all": map[string]any{"children": map[string]any{"handoffd": map[string]any{
		"hosts": hosts,
		"vars": map[string]any{
			"ansible_user":  "root",
			"handoffd_mode": "ebpf",
			"app_faults":    map[string]string{},
			"handoffd_services": []any{map[string]any{
				"name": "app",
				"command": "{{ [handoffd_release_root ~ '/' ~ handoffd_release ~ '/demo', '--version', handoffd_release]" +
					" + (['--fault', app_faults[handoffd_release]] if handoffd_release in app_faults else []) }}",
				"env":           []string{"GIN_MODE=release"},
				"listeners":     []any{map[string]any{"name": "http", "address": fmt.Sprintf("tcp://0.0.0.0:%d", fleetAppPort)}},
				"ready_timeout": (20 * time.Second * slow).String(),
				"drain_timeout": "30s",
				"health":        map[string]any{"http": "/healthz", "interval": "200ms", "unhealthy": 3},
			}},
		},
	}}}}
	data, _ := json.MarshalIndent(inventory, "", "  ")
	if err := os.WriteFile(filepath.Join(a.dir, "inventory.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}

	src, _ := filepath.Abs("../deploy/ansible")
	a.run(t, "ansible-galaxy", "collection", "build", "--output-path", filepath.Join(a.dir, "dist"), src)
	tarballs, _ := filepath.Glob(filepath.Join(a.dir, "dist", "handoffd-handoffd-*.tar.gz"))
	if len(tarballs) != 1 {
		t.Fatalf("ansible-galaxy collection build made %v", tarballs)
	}
	a.run(t, "ansible-galaxy", "collection", "install", "--offline", "-p", filepath.Join(a.dir, "collections"), tarballs[0])
	a.run(t, "ansible-playbook", "--syntax-check", "handoffd.handoffd.rollout")
	a.run(t, "ansible-playbook", "--syntax-check", "handoffd.handoffd.install")
	return a
}

// run runs an ansible tool that must succeed within two minutes.
func (a *ansibleRunner) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env, cmd.Dir = a.env, a.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// playbook runs ansible-playbook for at most ten minutes and checks its
// exit status: 0 for success, 2 for a host that failed.
func (a *ansibleRunner) playbook(t *testing.T, what string, wantCode int, args ...string) fleetRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute*slow)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ansible-playbook", args...)
	cmd.Env, cmd.Dir = a.env, a.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	r := fleetRun{What: what, Code: cmd.ProcessState.ExitCode(), Seconds: time.Since(start).Seconds(), output: out.String()}
	logName := filepath.Join(a.dir, strings.NewReplacer(" ", "-", ",", "").Replace(what)+".log")
	os.WriteFile(logName, out.Bytes(), 0o644)
	if ctx.Err() != nil {
		t.Fatalf("%s: ansible-playbook still ran after 10 minutes:\n%s", what, out.String())
	}
	if r.Code != wantCode {
		t.Fatalf("%s: ansible-playbook exited %d (%v), want %d:\n%s", what, r.Code, err, wantCode, out.String())
	}
	t.Logf("%s: exit %d in %.1f s\n%s", what, r.Code, r.Seconds, recapOf(r.output))
	return r
}

// recapOf returns the PLAY RECAP lines of an ansible-playbook output.
func recapOf(out string) string {
	if i := strings.LastIndex(out, "PLAY RECAP"); i >= 0 {
		return out[i:]
	}
	return "(no PLAY RECAP)"
}

// recap returns the count named key (ok, changed, failed, ...) of host in
// the run's PLAY RECAP, or -1 when the recap does not list the host.
func (r fleetRun) recap(host, key string) int {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(host) + `\s+:.*\b` + key + `=(\d+)`)
	m := re.FindStringSubmatch(recapOf(r.output))
	if m == nil {
		return -1
	}
	var n int
	fmt.Sscan(m[1], &n)
	return n
}

// serialOrder says whether the task named task ran on the hosts one after
// the other, in inventory order.
func (r fleetRun) serialOrder(hosts []*fleetHost, task string) bool {
	last := -1
	for _, h := range hosts {
		re := regexp.MustCompile(`(?s)TASK \[` + regexp.QuoteMeta(task) + `\][^\n]*\n(?:[^\n]+\n)*?changed: \[` + regexp.QuoteMeta(h.name) + `\]`)
		loc := re.FindStringIndex(r.output)
		if loc == nil || loc[0] <= last {
			return false
		}
		last = loc[0]
	}
	return true
}
