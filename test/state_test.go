package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

// The state handoff and the fd store, end to end: the demo's counter
// carried across swaps (POST /counter adds one), and a Python program that
// keeps a memfd in the fd store with systemd's own protocol.

// postCounter is the demo's answer to POST /counter.
type postCounter struct {
	Counter       int64 `json:"counter"`
	Generation    int   `json:"generation"`
	AfterSnapshot bool  `json:"after_snapshot"`
}

// getCounter is the demo's answer to GET /counter.
type getCounter struct {
	Counter       int64 `json:"counter"`
	Generation    int   `json:"generation"`
	Restored      bool  `json:"restored"`
	RestoredFrom  int   `json:"restored_from"`
	RestoredValue int64 `json:"restored_value"`
	AfterSnapshot int64 `json:"after_snapshot"`
	Merged        int64 `json:"merged"`
}

// rawRequest sends one HTTP/1.1 request on conn and reads its answer: a
// request that does not get a 200 is an error, and nothing is retried.
// closeConn says whether the connection must not be used again.
func rawRequest(conn net.Conn, br *bufio.Reader, host, method, path string, keepAlive bool) (body []byte, closeConn bool, err error) {
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n", method, path, host)
	if !keepAlive {
		req.WriteString("Connection: close\r\n")
	}
	req.WriteString("\r\n")
	if _, err := conn.Write(req.Bytes()); err != nil {
		return nil, false, fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, false, fmt.Errorf("read response: %w", err)
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, false, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, false, fmt.Errorf("status %s: %s", resp.Status, body)
	}
	return body, resp.Close || !keepAlive, nil
}

// counterCall sends one request for /counter on a new connection and
// decodes the answer into v.
func counterCall(addr, method string, v any) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	body, _, err := rawRequest(conn, bufio.NewReader(conn), addr, method, "/counter", false)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode %q: %w", body, err)
	}
	return nil
}

// scrapeBy fetches /metrics on a connection of its own (a kept-alive one
// would count among handoffd's fds) and returns the series of name of the
// demo service, keyed by their label key.
func (d *daemon) scrapeBy(name, key string) map[string]float64 {
	d.t.Helper()
	out := map[string]float64{}
	f, ok := d.families(ownConn)[name]
	if !ok {
		d.t.Fatalf("handoffd exports no %s", name)
	}
	for _, m := range f.GetMetric() {
		if label(m, "service") == "demo" {
			out[label(m, key)] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return out
}

// The metrics of the fd store and of the state handoff.
const (
	metricRefused  = "handoff_fd_store_refused_total"
	metricHandoffs = "handoff_state_handoffs_total"
	metricFinals   = "handoff_state_finals_total"
)

// waitCounter polls GET /counter, once every old generation has exited,
// until it reads want; a value over want fails at once (nothing may be
// counted twice), one under it fails after limit (a final never merged).
func (d *daemon) waitCounter(want int64, limit time.Duration) getCounter {
	d.t.Helper()
	d.waitFor("every old generation exited", 40*time.Second*slow, func(st api.ServiceStatus) bool { return liveCount(st) == 1 })
	deadline := time.Now().Add(limit)
	for {
		var g getCounter
		if err := counterCall(d.addr, "GET", &g); err != nil {
			d.t.Fatalf("GET /counter: %v", err)
		}
		if g.Counter > want {
			d.t.Fatalf("counter is %d, over %d: %+v", g.Counter, want, g)
		}
		if g.Counter == want {
			return g
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("counter is %d after %s, want %d: %+v", g.Counter, limit, want, g)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStateCounterSequential: one client, 10 POST /counter, a swap, 10
// more, ... over 20 swaps. With state_handoff the counter ends at exactly
// 210; without it, each generation counts from 0 (over 5 swaps).
func TestStateCounterSequential(t *testing.T) {
	for _, mode := range modes {
		for _, on := range []bool{true, false} {
			name := mode + map[bool]string{true: "/state_handoff", false: "/no-state_handoff"}[on]
			t.Run(name, func(t *testing.T) { stateCounterSequential(t, mode, on) })
		}
	}
}

func stateCounterSequential(t *testing.T, mode string, on bool) {
	const perGen = 10
	yaml := ""
	if on {
		yaml = "    state_handoff: true\n"
	}
	// Without state_handoff, 5 swaps show the counter restart as well as
	// 20 (each costs a second with race-built binaries).
	swaps := swapCount
	if !on {
		swaps = min(swapCount, 5)
	}
	d := startDaemon(t, daemonOptions{mode: mode, metrics: true, serviceYAML: yaml})
	type answer struct {
		postCounter
		newest int // the generation active when it was sent
	}
	var answers []answer
	for round := range swaps + 1 {
		gen := round + 1
		if round > 0 {
			d.ctlOK(fmt.Sprintf("generation %d active", gen), "swap", "demo")
		}
		for range perGen {
			var a postCounter
			if err := counterCall(d.addr, "POST", &a); err != nil {
				t.Fatalf("POST /counter %d (generation %d active): %v", len(answers)+1, gen, err)
			}
			answers = append(answers, answer{a, gen})
		}
	}
	last := swaps + 1

	// Requests sent after a swap returned reach the new generation; in
	// fdpass mode the old one may still accept until its stop signal
	// lands (a stale answer, counted here and in the final delta).
	stale, own, first := 0, map[int]int64{}, map[int]int64{}
	for i, a := range answers {
		own[a.Generation]++
		if _, ok := first[a.Generation]; !ok {
			first[a.Generation] = a.Counter
		}
		if a.Generation != a.newest {
			stale++
			t.Logf("POST %d answered by generation %d while %d was active: %+v", i+1, a.Generation, a.newest, a.postCounter)
			if mode == "ebpf" {
				t.Errorf("POST %d answered by generation %d, want %d: steering sends new connections to the active generation only", i+1, a.Generation, a.newest)
			}
			continue
		}
		switch {
		case !on && a.Counter != own[a.Generation]:
			t.Errorf("without state_handoff, POST %d: counter %d, want %d (generation %d's own count)", i+1, a.Counter, own[a.Generation], a.Generation)
		case on && stale == 0 && a.Counter != int64(i+1):
			t.Errorf("POST %d: counter %d, want %d (generation %d)", i+1, a.Counter, i+1, a.Generation)
		}
	}
	if !on {
		for gen := 1; gen <= last; gen++ {
			if first[gen] != 1 {
				t.Errorf("without state_handoff, the first POST answered by generation %d says %d, want 1", gen, first[gen])
			}
		}
		g := d.waitCounter(own[last], 5*time.Second)
		if g.Restored || g.Generation != last {
			t.Errorf("without state_handoff, GET /counter: %+v; want generation %d, not restored", g, last)
		}
		if n := d.scrapeBy(metricHandoffs, "result"); n["loaded"] != 0 {
			t.Errorf("%s = %v without state_handoff, want no loaded handoff", metricHandoffs, n)
		}
		t.Logf("without state_handoff: %d POSTs over %d swaps, each generation counted from 0 (%d stale answers)", len(answers), swaps, stale)
		return
	}
	want := int64(perGen * last)
	g := d.waitCounter(want, 5*time.Second*slow)
	if !g.Restored || g.RestoredFrom != last-1 || g.Generation != last {
		t.Errorf("GET /counter: %+v; want generation %d restored from %d", g, last, last-1)
	}
	if stale == 0 && g.RestoredValue != want-perGen {
		t.Errorf("generation %d restored %d, want %d", last, g.RestoredValue, want-perGen)
	}
	n := d.scrapeBy(metricHandoffs, "result")
	if n["loaded"] != float64(swaps) || n["failed"] != 0 || n["timeout"] != 0 {
		t.Errorf("%s = %v, want loaded %d, no failed or timeout", metricHandoffs, n, swaps)
	}
	t.Logf("counter %d after %d POSTs and %d swaps (%d stale answers; the last generation merged %d from finals); handoffs %v",
		g.Counter, len(answers), swaps, stale, g.Merged, n)
}

// counterLoad runs clients that POST /counter on kept-alive connections
// and never retry: every answer is kept, a request without a 200 answer
// is a failure.
type counterLoad struct {
	addr     string
	stopCh   chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	answers  [][]postCounter // per client
	fails    [][]string      // per client
}

func startCounterLoad(addr string, clients int) *counterLoad {
	l := &counterLoad{addr: addr, stopCh: make(chan struct{}), answers: make([][]postCounter, clients), fails: make([][]string, clients)}
	for i := range clients {
		l.wg.Add(1)
		go l.client(i)
	}
	return l
}

func (l *counterLoad) client(id int) {
	defer l.wg.Done()
	var conn net.Conn
	var br *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for range loadLimit {
		select {
		case <-l.stopCh:
			return
		default:
		}
		if conn == nil {
			c, err := net.DialTimeout("tcp", l.addr, 5*time.Second)
			if err != nil {
				l.fails[id] = append(l.fails[id], "dial: "+err.Error())
				time.Sleep(10 * time.Millisecond)
				continue
			}
			conn, br = c, bufio.NewReader(c)
		}
		body, closeConn, err := rawRequest(conn, br, l.addr, "POST", "/counter", true)
		var a postCounter
		if err == nil {
			if err = json.Unmarshal(body, &a); err != nil {
				err = fmt.Errorf("decode %q: %w", body, err)
			}
		}
		if err != nil {
			l.fails[id] = append(l.fails[id], err.Error())
			conn.Close()
			conn = nil
			continue
		}
		l.answers[id] = append(l.answers[id], a)
		if closeConn {
			conn.Close()
			conn = nil
		}
	}
}

// stop ends the clients and returns every answer and failure.
func (l *counterLoad) stop() (answers []postCounter, fails []string) {
	l.stopOnce.Do(func() { close(l.stopCh) })
	l.wg.Wait()
	for i := range l.answers {
		answers = append(answers, l.answers[i]...)
		fails = append(fails, l.fails[i]...)
	}
	return answers, fails
}

// stateRun is one run of TestStateCounterUnderLoad.
type stateRun struct {
	mode  string
	final bool // the demo sends its final delta after the drain
}

func (r stateRun) name() string {
	return r.mode + map[bool]string{true: "/final", false: "/no-final"}[r.final]
}

// stateRuns: make test covers each mode once and each way of ending a
// generation once; HANDOFF_STATE=all runs all four.
var stateRuns = []stateRun{{"ebpf", true}, {"fdpass", false}}

// TestStateCounterUnderLoad: 32 clients POST /counter, never retried,
// across 20 swaps. Not one request fails; no generation starts from less
// than what the one before it acknowledged before its snapshot; the
// counter read after each swap (once the old generation exited) never
// decreases; and what is lost is exactly what the old generations
// acknowledged after their snapshots: the final counter is the acks minus
// those, or, with the final delta, all the acks.
func TestStateCounterUnderLoad(t *testing.T) {
	runs := stateRuns
	if os.Getenv("HANDOFF_STATE") == "all" {
		runs = []stateRun{{"ebpf", true}, {"ebpf", false}, {"fdpass", true}, {"fdpass", false}}
	}
	for _, r := range runs {
		t.Run(r.name(), func(t *testing.T) { stateCounterUnderLoad(t, r) })
	}
}

func stateCounterUnderLoad(t *testing.T, r stateRun) {
	d := startDaemon(t, daemonOptions{mode: r.mode, metrics: true, serviceYAML: "    state_handoff: true\n",
		demoArgs: []string{fmt.Sprintf("--counter-final=%t", r.final)}})
	l := startCounterLoad(d.addr, loadClients)
	t.Cleanup(func() { l.stop() }) // a test that fails half-way stops its clients too
	time.Sleep(300 * time.Millisecond)
	gets := map[int]getCounter{}
	for i := range swapCount {
		time.Sleep(swapEvery)
		gen := i + 2
		d.ctlOK(fmt.Sprintf("generation %d active", gen), "swap", "demo")
		d.waitFor(fmt.Sprintf("generation %d exited", gen-1), 30*time.Second*slow, func(st api.ServiceStatus) bool {
			return stateOf(st, gen-1) == api.StateExited
		})
		var g getCounter
		if err := counterCall(d.addr, "GET", &g); err != nil {
			t.Fatalf("GET /counter after swap %d: %v", i+1, err)
		}
		if g.Generation != gen {
			t.Errorf("GET /counter after swap %d answered by generation %d, want %d", i+1, g.Generation, gen)
		}
		gets[gen] = g
	}
	time.Sleep(500 * time.Millisecond)
	answers, fails := l.stop()
	last := swapCount + 1

	acked, after := int64(len(answers)), int64(0)
	byGen := map[int]int64{}
	afterByGen := map[int]int64{}
	maxBefore := map[int]int64{} // highest counter answered before the snapshot
	for _, a := range answers {
		byGen[a.Generation]++
		if a.AfterSnapshot {
			after++
			afterByGen[a.Generation]++
		} else if a.Counter > maxBefore[a.Generation] {
			maxBefore[a.Generation] = a.Counter
		}
	}
	if len(fails) > 0 {
		t.Errorf("%d of %d requests failed, first ones: %q", len(fails), len(fails)+len(answers), fails[:min(len(fails), 10)])
	}
	if acked < int64(20*swapCount*loadClients/10) {
		t.Errorf("only %d requests succeeded: the load did not run", acked)
	}
	var perSwap []string
	prev := int64(0)
	took := d.handoffTimes() // in the order of the swaps
	for gen := 2; gen <= last; gen++ {
		g := gets[gen]
		phase := "?"
		if gen-2 < len(took) {
			phase = took[gen-2].Round(10 * time.Microsecond).String()
		}
		perSwap = append(perSwap, fmt.Sprintf("%d:acked %d after_snapshot %d restored %d read %d handoff %s",
			gen-1, byGen[gen-1], afterByGen[gen-1], g.RestoredValue, g.Counter, phase))
		if !g.Restored || g.RestoredFrom != gen-1 {
			t.Errorf("generation %d: restored %t from %d, want from %d", gen, g.Restored, g.RestoredFrom, gen-1)
		}
		if g.RestoredValue < maxBefore[gen-1] {
			t.Errorf("generation %d restored %d, but generation %d had answered %d before its snapshot: the state went backwards",
				gen, g.RestoredValue, gen-1, maxBefore[gen-1])
		}
		if g.Counter < prev {
			t.Errorf("GET /counter after swap %d read %d, less than %d read after the swap before", gen-1, g.Counter, prev)
		}
		prev = g.Counter
	}
	want := acked - after
	if r.final {
		want = acked
	}
	g := d.waitCounter(want, 5*time.Second*slow)
	t.Logf("%s: %d acked, %d of them after the old generation's snapshot; final counter %d (merged %d); per swap (old generation: its acks, after its snapshot, restored by the next, read after the swap, the handoff phase): %s",
		r.name(), acked, after, g.Counter, g.Merged, strings.Join(perSwap, "; "))
	handoffs, finals := d.scrapeBy(metricHandoffs, "result"), d.scrapeBy(metricFinals, "result")
	t.Logf("%s = %v, %s = %v; the state handoff phase took %s", metricHandoffs, handoffs, metricFinals, finals, spread(took))
	if handoffs["loaded"] != float64(swapCount) {
		t.Errorf("%s = %v, want loaded %d", metricHandoffs, handoffs, swapCount)
	}
	if r.final && (finals["relayed"] != float64(swapCount) || finals["dropped"] != 0) {
		t.Errorf("%s = %v, want %d relayed, none dropped", metricFinals, finals, swapCount)
	}
	if !r.final && (finals["relayed"] != 0 || g.Merged != 0) {
		t.Errorf("--counter-final=false: %s = %v, merged %d; want no final", metricFinals, finals, g.Merged)
	}
}

// handoffTimes returns how long each state handoff took, as handoffd
// logged it (took= of "state handed over").
func (d *daemon) handoffTimes() []time.Duration {
	var out []time.Duration
	for line := range strings.SplitSeq(d.logText(), "\n") {
		if !strings.Contains(line, `msg="state handed over"`) {
			continue
		}
		for field := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(field, "took="); ok {
				if took, err := time.ParseDuration(v); err == nil {
					out = append(out, took)
				}
			}
		}
	}
	return out
}

// requirePython returns Debian's python3, which runs test/testdata/fdstore.py
// (gunicorn's package brings it; .ci/run installs it): the test fails in
// CI without it, and is skipped elsewhere.
func requirePython(t *testing.T) string {
	t.Helper()
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err == nil {
		return python
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not installed (apt-get install python3) (CI=true: not skipping)", python)
	}
	t.Skipf("%s not installed (apt-get install python3)", python)
	return ""
}

// fdStoreCommand is the command line of the Python program that uses
// systemd's fd store (test/testdata/fdstore.py), with args.
func fdStoreCommand(t *testing.T, args ...string) []string {
	t.Helper()
	script, err := filepath.Abs("testdata/fdstore.py")
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{requirePython(t), script}, args...)
}

// pyAnswer is the Python program's answer to GET /.
type pyAnswer struct {
	Generation int      `json:"generation"`
	PID        int      `json:"pid"`
	Found      bool     `json:"found"` // it found the memfd "pystate" in LISTEN_FDS
	Held       string   `json:"held"`  // what the memfd held then
	Kind       string   `json:"kind"`  // the memfd's /proc/self/fd link
	Names      []string `json:"names"` // LISTEN_FDNAMES
	Handoff    struct {
		State    *string `json:"state"`    // the STATE it got, if any
		Reason   *string `json:"reason"`   // the REASON of STATE=0
		Restored *string `json:"restored"` // what the snapshot of STATE=1 held
		Finals   []struct {
			From string `json:"from"`
			Data string `json:"data"`
		} `json:"finals"`
	} `json:"handoff"`
}

// pyClient talks to the Python program: a new connection per request,
// so nothing is ever re-sent.
var pyClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

func pyGet(t *testing.T, addr string) pyAnswer {
	t.Helper()
	resp, err := pyClient.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET /: %v", err)
	}
	defer resp.Body.Close()
	var a pyAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatalf("GET /: %s: %v", resp.Status, err)
	}
	return a
}

func pyPost(t *testing.T, addr, path string) {
	t.Helper()
	resp, err := pyClient.Post("http://"+addr+path, "text/plain", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s", path, resp.Status)
	}
}

// fdStore reads the service's fd store from `handoffctl status --json`:
// how many fds are stored under each name.
func (d *daemon) fdStore() map[string]int {
	d.t.Helper()
	out, err := d.ctl("status", "--json", "demo")
	if err != nil {
		d.t.Fatalf("status --json: %v: %s", err, out)
	}
	var st struct {
		Services []struct {
			FDStore map[string]int `json:"fd_store"`
		} `json:"services"`
	}
	decodeJSON(d.t, out, &st)
	if len(st.Services) != 1 {
		d.t.Fatalf("status --json: %d services", len(st.Services))
	}
	return st.Services[0].FDStore
}

// waitStore waits until the fd store holds want.
func (d *daemon) waitStore(want map[string]int) {
	d.t.Helper()
	deadline := time.Now().Add(5 * time.Second * slow)
	for {
		got := d.fdStore()
		if len(got) == len(want) && func() bool {
			for k, v := range want {
				if got[k] != v {
					return false
				}
			}
			return true
		}() {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("fd store holds %v, want %v\n%s", got, want, d.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSystemdFDStore runs a Python program that knows nothing of handoffd:
// it stores a memfd with systemd's protocol on its first run, and finds
// that very memfd again (with what every generation before it wrote in
// it) after a swap and after kill -9 of the active generation; once it
// removes it (FDSTOREREMOVE=1), the next generation finds nothing.
func TestSystemdFDStore(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { systemdFDStore(t, mode) })
	}
}

func systemdFDStore(t *testing.T, mode string) {
	d := startDaemon(t, daemonOptions{mode: mode, command: fdStoreCommand(t)})
	p1 := pyGet(t, d.addr)
	if p1.Generation != 1 || p1.Found || !strings.HasPrefix(p1.Kind, "/memfd:pystate") || !slices.Equal(p1.Names, []string{"http"}) {
		t.Fatalf("generation 1: %+v; want a fresh memfd, LISTEN_FDNAMES http", p1)
	}
	d.waitStore(map[string]int{"pystate": 1})
	line1 := fmt.Sprintf("generation 1 pid %d\n", p1.PID)

	d.ctlOK("generation 2 active", "swap", "demo")
	p2 := pyGet(t, d.addr)
	if p2.Generation != 2 || !p2.Found || p2.Held != line1 || !strings.HasPrefix(p2.Kind, "/memfd:pystate") ||
		!slices.Equal(p2.Names, []string{"http", "pystate"}) {
		t.Fatalf("after a swap: %+v; want generation 2 to find the memfd holding %q, LISTEN_FDNAMES http:pystate", p2, line1)
	}

	// A crash: kill -9 of the active generation, by pid.
	if err := syscall.Kill(p2.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.waitFor("generation 3 replaced the killed one", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		return stateOf(st, 3) == api.StateActive
	})
	p3 := pyGet(t, d.addr)
	line2 := fmt.Sprintf("generation 2 pid %d\n", p2.PID)
	if p3.Generation != 3 || !p3.Found || p3.Held != line1+line2 || !slices.Equal(p3.Names, []string{"http", "pystate"}) {
		t.Fatalf("after kill -9: %+v; want generation 3 to find the memfd holding %q", p3, line1+line2)
	}
	d.waitStore(map[string]int{"pystate": 1})

	// FDSTOREREMOVE=1: the next generation finds nothing, and stores anew.
	pyPost(t, d.addr, "/remove?name=pystate")
	d.waitStore(map[string]int{})
	d.ctlOK("generation 4 active", "swap", "demo")
	p4 := pyGet(t, d.addr)
	if p4.Generation != 4 || p4.Found || !slices.Equal(p4.Names, []string{"http"}) {
		t.Fatalf("after FDSTOREREMOVE: %+v; want generation 4 to find nothing", p4)
	}
	d.waitStore(map[string]int{"pystate": 1})
	if strings.Contains(d.logText(), `msg="fd store: refused"`) {
		t.Errorf("handoffd refused fds of a program that follows systemd's protocol")
	}
	t.Logf("memfd stored by generation 1 (pid %d), found by generation 2 after a swap and by generation 3 after kill -9 of pid %d; removed, not found by generation 4",
		p1.PID, p2.PID)
}

// TestStateHandoffWithoutSDK: the Python program also speaks handoffd's
// state handoff by itself (internal/stateproto), over 10 swaps: each
// generation answers HANDOVER=1 with a sealed memfd, the next one gets it
// (STATE=1) before it is active, and then the final (FINAL=N) that the
// old one sends once it has stopped, right before it exits.
func TestStateHandoffWithoutSDK(t *testing.T) {
	d := startDaemon(t, daemonOptions{metrics: true, command: fdStoreCommand(t), serviceYAML: "    state_handoff: true\n"})
	p := pyGet(t, d.addr)
	if p.Handoff.State == nil || *p.Handoff.State != "0" {
		t.Errorf("generation 1: %+v; want STATE=0 (no previous generation)", p.Handoff)
	}
	const swaps = 10
	for gen := 2; gen <= swaps+1; gen++ {
		d.ctlOK(fmt.Sprintf("generation %d active", gen), "swap", "demo")
		p = pyGet(t, d.addr)
		if want := fmt.Sprintf("snapshot of generation %d\n", gen-1); p.Generation != gen || p.Handoff.State == nil ||
			*p.Handoff.State != "1" || p.Handoff.Restored == nil || *p.Handoff.Restored != want {
			t.Errorf("generation %d right after the swap: %+v; want STATE=1 with %q", gen, p.Handoff, want)
		}
		d.waitFor(fmt.Sprintf("generation %d exited", gen-1), 30*time.Second*slow, func(st api.ServiceStatus) bool {
			return stateOf(st, gen-1) == api.StateExited
		})
		deadline := time.Now().Add(2 * time.Second * slow)
		for len(p.Handoff.Finals) == 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			p = pyGet(t, d.addr)
		}
		if f := p.Handoff.Finals; len(f) != 1 || f[0].From != strconv.Itoa(gen-1) || f[0].Data != fmt.Sprintf("final of generation %d\n", gen-1) {
			t.Errorf("generation %d got finals %+v; want generation %d's", gen, f, gen-1)
		}
	}
	handoffs, finals := d.scrapeBy(metricHandoffs, "result"), d.scrapeBy(metricFinals, "result")
	if handoffs["loaded"] != swaps || handoffs["cold"] != 1 || finals["relayed"] != swaps {
		t.Errorf("%s = %v, %s = %v; want 1 cold (generation 1), %d loaded, %d finals relayed", metricHandoffs, handoffs, metricFinals, finals, swaps, swaps)
	}
}

// TestFDStoreRollback: a rollback changes nothing in the fd store. With
// probation, generation 2 stores one more memfd and is rolled back from;
// generation 1 serves again, the store keeps both, and generation 3 finds
// both in LISTEN_FDS, in the order they were stored.
func TestFDStoreRollback(t *testing.T) {
	d := startDaemon(t, daemonOptions{probation: "30s", command: fdStoreCommand(t)})
	d.waitStore(map[string]int{"pystate": 1})
	d.ctlOK("generation 2 active", "swap", "demo")
	pyPost(t, d.addr, "/store?name=second&n=1")
	d.waitStore(map[string]int{"pystate": 1, "second": 1})
	d.ctlOK("rolled back to generation 1", "rollback", "demo")
	if p := pyGet(t, d.addr); p.Generation != 1 {
		t.Fatalf("after the rollback generation %d answered, want 1", p.Generation)
	}
	d.waitStore(map[string]int{"pystate": 1, "second": 1})
	d.ctlOK("generation 3 active", "swap", "demo")
	if p := pyGet(t, d.addr); p.Generation != 3 || !p.Found || !slices.Equal(p.Names, []string{"http", "pystate", "second"}) {
		t.Errorf("generation 3 after a rollback: %+v; want the memfd and the one generation 2 stored", p)
	}
}

// fdsOf lists the targets of pid's open fds.
func fdsOf(t *testing.T, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if link, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			out = append(out, link)
		}
	}
	slices.Sort(out)
	return out
}

// checkFDs checks that handoffd holds as many fds as before, after what:
// at once, or once a connection that is closing is gone (within 3 s).
func (d *daemon) checkFDs(before []string, after string) {
	d.t.Helper()
	pid := d.cmd.Process.Pid
	d.status() // the control client's kept-alive connection, in before too
	deadline := time.Now().Add(3 * time.Second)
	for {
		now := fdsOf(d.t, pid)
		if len(now) == len(before) {
			return
		}
		if time.Now().After(deadline) {
			d.t.Errorf("after %s handoffd holds %d fds, %d before: %s", after, len(now), len(before), fdDiff(before, now))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fdDiff says which fd targets are in now and not in before, and the
// other way round (each counted as often as it occurs).
func fdDiff(before, now []string) string {
	count := map[string]int{}
	for _, s := range now {
		count[s]++
	}
	for _, s := range before {
		count[s]--
	}
	var added, gone []string
	for s, n := range count {
		for ; n > 0; n-- {
			added = append(added, s)
		}
		for ; n < 0; n++ {
			gone = append(gone, s)
		}
	}
	slices.Sort(added)
	slices.Sort(gone)
	return fmt.Sprintf("new %q, gone %q", added, gone)
}

// refusals returns handoffd's "fd store: refused" log lines.
func (d *daemon) refusals() []string {
	var out []string
	for line := range strings.SplitSeq(d.logText(), "\n") {
		if strings.Contains(line, `msg="fd store: refused"`) {
			out = append(out, line)
		}
	}
	return out
}

// waitRefusals waits until handoffd logged n refusals, and returns them.
func (d *daemon) waitRefusals(n int) []string {
	d.t.Helper()
	deadline := time.Now().Add(5 * time.Second * slow)
	for {
		r := d.refusals()
		if len(r) >= n {
			return r
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%d fd store refusals logged, want %d\n%s", len(r), n, d.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFDStoreBounds: the Python program sends, one at a time, what the fd
// store must refuse: more fds than fd_store_max, an FDNAME of 300 bytes,
// a datagram over 4096 bytes with fds attached, a snapshot nobody asked
// for, and (--bad-state) a pipe where a sealed memfd is required, as its
// snapshot (HANDOFF_STATE=1) and as its final (HANDOFF_FINAL=1). Each is
// refused with a log line that says why and counted in the metrics;
// handoffd holds as many fds after each as before (nothing leaked), and
// the service serves on and swaps. The store is the same in both modes:
// ebpf only.
func TestFDStoreBounds(t *testing.T) {
	// GOGC=off: an *os.File leaked by handoffd would be closed by its
	// finalizer at the next garbage collection, and hide from the count.
	d := startDaemon(t, daemonOptions{metrics: true, command: fdStoreCommand(t, "--bad-state"), wrap: []string{"/usr/bin/env", "GOGC=off"},
		serviceYAML: "    fd_store_max: 2\n    state_handoff: true\n"})
	d.waitStore(map[string]int{"pystate": 1})
	pyPost(t, d.addr, "/store?name=extra&n=1")
	stored := map[string]int{"pystate": 1, "extra": 1}
	d.waitStore(stored)
	d.status()
	before := fdsOf(t, d.cmd.Process.Pid)
	abuses := []struct {
		path, reason string
		fds          int
	}{
		{"/store?name=toomany&n=3", "full", 3},
		{"/abuse/name?len=300", "name", 1},
		{"/abuse/oversize?n=2", "oversize", 2},
		{"/abuse/unexpected", "unexpected", 1},
	}
	for i, a := range abuses {
		pyPost(t, d.addr, a.path)
		line := d.waitRefusals(i + 1)[i]
		for _, want := range []string{"level=WARN", "service=demo", "generation=1", "reason=" + a.reason, fmt.Sprintf("fds=%d", a.fds)} {
			if !strings.Contains(line, want) {
				t.Errorf("POST %s: handoffd logged %q, want %s in it", a.path, line, want)
			}
		}
		t.Logf("POST %s: %s", a.path, line)
		d.checkFDs(before, "refusing "+a.reason)
	}
	d.waitStore(stored)

	// Generation 1 answers HANDOVER=1 with a pipe, and sends a pipe as its
	// final: both refused; generation 2 starts cold, the swap succeeds.
	d.ctlOK("generation 2 active", "swap", "demo")
	d.waitFor("generation 1 exited", 30*time.Second*slow, func(st api.ServiceStatus) bool { return stateOf(st, 1) == api.StateExited })
	lines := d.waitRefusals(len(abuses) + 2)
	for _, line := range lines[len(abuses):] {
		if !strings.Contains(line, "reason=unsealed") || !strings.Contains(line, "generation=1") {
			t.Errorf("handoffd logged %q, want reason=unsealed from generation 1", line)
		}
		t.Logf("swap: %s", line)
	}
	p2 := pyGet(t, d.addr)
	if p2.Generation != 2 || !p2.Found || p2.Handoff.State == nil || *p2.Handoff.State != "0" ||
		!slices.Equal(p2.Names, []string{"http", "pystate", "extra"}) {
		t.Errorf("generation 2: %+v; want it to find the store and start cold (STATE=0)", p2)
	}
	d.checkFDs(before, "a swap whose snapshot and final were refused")
	d.waitStore(stored)

	refused := d.scrapeBy(metricRefused, "reason")
	for reason, want := range map[string]float64{"full": 1, "name": 1, "oversize": 1, "unexpected": 1, "unsealed": 2, "off": 0} {
		if refused[reason] != want {
			t.Errorf("%s{reason=%q} = %v, want %v", metricRefused, reason, refused[reason], want)
		}
	}
	handoffs, finals := d.scrapeBy(metricHandoffs, "result"), d.scrapeBy(metricFinals, "result")
	if handoffs["failed"] != 1 || handoffs["loaded"] != 0 || finals["dropped"] != 1 || finals["relayed"] != 0 {
		t.Errorf("%s = %v, %s = %v; want 1 failed handoff and 1 dropped final", metricHandoffs, handoffs, metricFinals, finals)
	}
	t.Logf("%s = %v; handoffd held %d fds before and after", metricRefused, refused, len(before))
}

// TestFDStoreOff: with fd_store_max: 0 the Python program's memfd is
// refused (reason off) and closed, and the next generation finds nothing.
func TestFDStoreOff(t *testing.T) {
	d := startDaemon(t, daemonOptions{metrics: true, command: fdStoreCommand(t), wrap: []string{"/usr/bin/env", "GOGC=off"},
		serviceYAML: "    fd_store_max: 0\n"})
	line := d.waitRefusals(1)[0]
	for _, want := range []string{"generation=1", "name=pystate", "fds=1", "reason=off"} {
		if !strings.Contains(line, want) {
			t.Errorf("handoffd logged %q, want %s in it", line, want)
		}
	}
	if fds := fdsOf(t, d.cmd.Process.Pid); slices.ContainsFunc(fds, func(s string) bool { return strings.HasPrefix(s, "/memfd:") }) {
		t.Errorf("handoffd holds a memfd with fd_store_max 0: %q", fds)
	}
	d.ctlOK("generation 2 active", "swap", "demo")
	if p := pyGet(t, d.addr); p.Generation != 2 || p.Found || !slices.Equal(p.Names, []string{"http"}) {
		t.Errorf("generation 2: %+v; want it to find nothing", p)
	}
	if r := d.scrapeBy(metricRefused, "reason"); r["off"] != 2 {
		t.Errorf("%s = %v, want off 2 (each generation's memfd)", metricRefused, r)
	}
}

// TestFDStoreAcrossRestart: the fd store outlives handoffd. After kill -9
// of handoffd, the new one re-adopts generation 1 and takes the stored
// memfd back from it (pidfd_getfd); generation 2 finds it.
func TestFDStoreAcrossRestart(t *testing.T) {
	d := startDaemon(t, daemonOptions{command: fdStoreCommand(t)})
	p1 := pyGet(t, d.addr)
	d.waitStore(map[string]int{"pystate": 1})
	d.restart(syscall.SIGKILL)
	d.waitFor("re-adopted generation 1", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		return len(st.Generations) == 1 && st.Generations[0].State == api.StateActive && st.Generations[0].PID == p1.PID
	})
	d.waitStore(map[string]int{"pystate": 1})
	if fds := fdsOf(t, d.cmd.Process.Pid); !slices.ContainsFunc(fds, func(s string) bool { return strings.HasPrefix(s, "/memfd:pystate") }) {
		t.Errorf("the new handoffd holds no memfd pystate: %q", fds)
	}
	d.ctlOK("generation 2 active", "swap", "demo")
	p2 := pyGet(t, d.addr)
	if want := fmt.Sprintf("generation 1 pid %d\n", p1.PID); p2.Generation != 2 || !p2.Found || p2.Held != want {
		t.Errorf("after a restart of handoffd and a swap: %+v; want generation 2 to find the memfd holding %q", p2, want)
	}
}

// TestStateAcrossRestart: the demo counts with state_handoff, handoffd is
// killed (SIGKILL) and restarted, and re-adopts generation 1, which sends
// it a new state channel on its NOTIFY_SOCKET, bound again. A swap under
// load then hands the counter over from the re-adopted generation to
// generation 2, and generation 1's final (what it counted after its
// snapshot, until its drain ended) is relayed: the counter ends exact
// against the acknowledged POSTs.
func TestStateAcrossRestart(t *testing.T) {
	requireEBPF(t)
	d := startDaemon(t, daemonOptions{metrics: true, serviceYAML: "    state_handoff: true\n"})
	const before = 10
	for i := range before {
		var a postCounter
		if err := counterCall(d.addr, "POST", &a); err != nil || a.Counter != int64(i+1) {
			t.Fatalf("POST /counter %d: %+v, %v; want counter %d", i+1, a, err, i+1)
		}
	}
	pid := d.status().Generations[0].PID
	d.restart(syscall.SIGKILL)
	restarted := time.Now()
	d.waitFor("re-adopted generation 1", 15*time.Second*slow, func(st api.ServiceStatus) bool {
		return len(st.Generations) == 1 && st.Generations[0].State == api.StateActive && st.Generations[0].PID == pid
	})
	deadline := time.Now().Add(5 * time.Second * slow)
	for !strings.Contains(d.logText(), `msg="state channel re-attached" service=demo generation=1`) {
		if time.Now().After(deadline) {
			t.Fatalf("generation 1 sent no new state channel to the restarted handoffd\n%s", d.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
	attached := time.Since(restarted)

	l := startCounterLoad(d.addr, 2)
	t.Cleanup(func() { l.stop() })
	time.Sleep(300 * time.Millisecond)
	d.ctlOK("generation 2 active", "swap", "demo")
	time.Sleep(300 * time.Millisecond)
	answers, fails := l.stop()
	if len(fails) > 0 {
		t.Errorf("%d requests failed, first ones: %q", len(fails), fails[:min(len(fails), 10)])
	}
	var after, maxBefore int64
	for _, a := range answers {
		switch {
		case a.Generation == 1 && a.AfterSnapshot:
			after++
		case a.Generation == 1 && a.Counter > maxBefore:
			maxBefore = a.Counter
		}
	}
	want := before + int64(len(answers))
	g := d.waitCounter(want, 5*time.Second*slow)
	if !g.Restored || g.RestoredFrom != 1 || g.Generation != 2 || g.RestoredValue < max(maxBefore, before) {
		t.Errorf("GET /counter: %+v; want generation 2 restored from 1, at least %d", g, max(maxBefore, before))
	}
	if g.Merged != after {
		t.Errorf("generation 2 merged %d from finals, want %d (generation 1's answers after its snapshot)", g.Merged, after)
	}
	handoffs, finals := d.scrapeBy(metricHandoffs, "result"), d.scrapeBy(metricFinals, "result")
	if handoffs["loaded"] != 1 || finals["relayed"] != 1 || finals["dropped"] != 0 {
		t.Errorf("%s = %v, %s = %v; want 1 loaded, 1 relayed", metricHandoffs, handoffs, metricFinals, finals)
	}
	t.Logf("channel re-attached %s after the restart; %d POSTs before it, %d during the swap (%d by generation 1 after its snapshot); counter %d, restored %d, merged %d",
		attached.Round(time.Millisecond), before, len(answers), after, g.Counter, g.RestoredValue, g.Merged)
}
