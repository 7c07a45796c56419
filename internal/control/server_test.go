package control

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

// testAPI returns the API of a supervisor with one service "demo" run by
// fakes, whose generations become ready at once.
func testAPI(t *testing.T, cfg *config.Config) *API {
	t.Helper()
	if cfg == nil {
		cfg = &config.Config{}
	}
	return NewAPI(testSupervisor(t, cfg, &fakeLauncher{}), nil)
}

var rootPeer = &kernel.PeerCred{PID: 1, UID: 0, GID: 0}

// call makes one request as peer (nil: no credentials) and returns the
// status and the error message of the answer.
func call(t *testing.T, h http.Handler, peer *kernel.PeerCred, method, target, body string) (int, string) {
	t.Helper()
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	if peer != nil {
		r = r.WithContext(WithPeerCred(r.Context(), peer))
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, target, ct)
	}
	var e api.ErrorBody
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Errorf("%s %s: answer is not JSON: %q", method, target, w.Body.String())
	}
	return w.Code, e.Error
}

func TestAPIAccess(t *testing.T) {
	// Groups that exist everywhere are not needed: the policy compares
	// gids, so name them by number.
	a := testAPI(t, &config.Config{Group: "100", ReadGroup: "65534"})
	h := a.Handler()
	nobody := &kernel.PeerCred{PID: 42, UID: 65534, GID: 65534}
	stranger := &kernel.PeerCred{PID: 43, UID: 1234, GID: 1234}
	member := &kernel.PeerCred{PID: 44, UID: 1234, GID: 1234, Groups: []uint32{100}}
	for _, tc := range []struct {
		name         string
		peer         *kernel.PeerCred
		method, path string
		want         int
		wantErr      string
	}{
		{"root status", rootPeer, "GET", "/v1/status", 200, ""},
		{"root swap", rootPeer, "POST", "/v1/services/demo/swap", 200, ""},
		{"reader status", nobody, "GET", "/v1/status", 200, ""},
		{"reader swap", nobody, "POST", "/v1/services/demo/swap", 403, "permission denied: uid 65534 may not POST /v1/services/demo/swap; only root and members of group 100 may"},
		{"reader stop", nobody, "POST", "/v1/stop", 403, "permission denied"},
		{"stranger status", stranger, "GET", "/v1/status", 403, "only root and members of group 100 or of read_group 65534 may"},
		{"group member swap", member, "POST", "/v1/services/demo/swap", 200, ""},
		{"no credentials", nil, "GET", "/v1/status", 403, "credentials are unknown"},
		{"stranger unknown path", stranger, "GET", "/v2/secret", 403, "permission denied"},
	} {
		code, msg := call(t, h, tc.peer, tc.method, tc.path, "")
		if code != tc.want || !strings.Contains(msg, tc.wantErr) {
			t.Errorf("%s: %d %q, want %d %q", tc.name, code, msg, tc.want, tc.wantErr)
		}
	}
}

func TestAPIRootOnlyByDefault(t *testing.T) {
	h := testAPI(t, nil).Handler()
	self := &kernel.PeerCred{UID: uint32(os.Geteuid())}
	if code, _ := call(t, h, self, "GET", "/v1/status", ""); code != 200 {
		t.Errorf("handoffd's own uid: status %d", code)
	}
	if code, msg := call(t, h, &kernel.PeerCred{UID: 1000, GID: 100, Groups: []uint32{0}}, "GET", "/v1/status", ""); code != 403 || !strings.Contains(msg, "only root may") {
		t.Errorf("non-root: %d %q, want 403", code, msg)
	}
}

func TestAPIBadRequests(t *testing.T) {
	h := testAPI(t, nil).Handler()
	for _, tc := range []struct {
		method, path, body string
		want               int
		wantErr            string
	}{
		{"GET", "/v1/services/demo/swap", "", 405, "method GET not allowed on /v1/services/demo/swap (allowed: POST)"},
		{"DELETE", "/v1/status", "", 405, "method DELETE not allowed"},
		{"GET", "/v1/nothing", "", 404, "no endpoint /v1/nothing"},
		{"POST", "/v1/services/nope/swap", "", 404, `no such service "nope"`},
		{"GET", "/v1/status?service=nope", "", 404, `no such service "nope"`},
		{"POST", "/v1/services/demo/swap", `{"timeout":"1s","force":true}`, 400, `unknown field "force"`},
		{"POST", "/v1/services/demo/swap", `{"timeout":"soon"}`, 400, `timeout "soon"`},
		{"POST", "/v1/services/demo/swap", `{"timeout":"-1s"}`, 400, `timeout "-1s"`},
		{"POST", "/v1/services/demo/swap", `{} {}`, 400, "more than one JSON value"},
		{"POST", "/v1/services/demo/swap", `[1]`, 400, "request body"},
		{"POST", "/v1/services/demo/swap", `{"timeout":"` + strings.Repeat("x", maxRequestBody) + `"}`, 413, "request body too large"},
		{"POST", "/v1/services/demo/stop", `{"now":1}`, 400, `unknown field "now"`},
		{"POST", "/v1/services/demo/swap", `{"timeout":"5s"}`, 200, ""},
		{"POST", "/v1/services/demo/swap", `{"canary":0}`, 400, "canary 0%: give a share above 0 and at most 100"},
		{"POST", "/v1/services/demo/swap", `{"canary":101}`, 400, "canary 101%"},
		{"POST", "/v1/services/demo/swap", `{"sticky":true}`, 400, "sticky applies to a canary"},
		{"POST", "/v1/services/demo/swap", `{"canary":5}`, 422, "service demo runs in fdpass mode"},
		{"POST", "/v1/services/demo/canary", `{"weight":-1}`, 400, "weight -1%"},
		{"POST", "/v1/services/demo/canary", `{"weight":25}`, 409, "no canary is running"},
		{"POST", "/v1/services/demo/promote", ``, 409, "no canary is running"},
	} {
		code, msg := call(t, h, rootPeer, tc.method, tc.path, tc.body)
		if code != tc.want || !strings.Contains(msg, tc.wantErr) {
			t.Errorf("%s %s %.40q: %d %q, want %d %q", tc.method, tc.path, tc.body, code, msg, tc.want, tc.wantErr)
		}
	}
}

func TestAPISwapInProgress(t *testing.T) {
	l := &fakeLauncher{}
	a := NewAPI(testSupervisor(t, &config.Config{}, l), nil)
	gate := make(chan struct{})
	l.set(gate, nil)
	svc, _ := a.sup.Service("demo")
	swapped := make(chan error, 1)
	go func() { _, err := svc.Swap(context.Background()); swapped <- err }()
	// The swap holds the service's swap lock while Start waits at the gate.
	for st, _ := a.sup.Status("demo"); !st.Services[0].Swapping; st, _ = a.sup.Status("demo") {
		time.Sleep(time.Millisecond)
	}
	code, msg := call(t, a.Handler(), rootPeer, "POST", "/v1/services/demo/swap", "")
	close(gate)
	if err := <-swapped; err != nil {
		t.Fatal(err)
	}
	if code != http.StatusConflict || !strings.Contains(msg, lifecycle.ErrSwapInProgress.Error()) {
		t.Errorf("second swap: %d %q, want 409", code, msg)
	}
}

// TestAPISwapOfFailedService: a swap of a failed service, whose command
// cannot start, is answered at once with one line that names the reason,
// by its own start or, while handoffd's retry holds the swap, by the
// failure; never at the end of the request's timeout.
func TestAPISwapOfFailedService(t *testing.T) {
	errNoCommand := errors.New("exec demo: no such file or directory")
	l := &fakeLauncher{fail: errNoCommand}
	a := NewAPI(testSupervisor(t, &config.Config{}, l), nil)
	st, _ := a.sup.Status("demo")
	if s := st.Services[0]; s.State != api.ServiceFailed || s.Failure == nil {
		t.Fatalf("demo is %s, %+v; want failed", s.State, s.Failure)
	}
	swap := func(what string, want int) {
		t.Helper()
		began := time.Now()
		code, msg := call(t, a.Handler(), rootPeer, "POST", "/v1/services/demo/swap", `{"timeout": "10s"}`)
		if took := time.Since(began); code != want || took > 2*time.Second || strings.Contains(msg, "\n") || !strings.Contains(msg, errNoCommand.Error()) {
			t.Errorf("%s: %d %q after %s; want %d at once, one line with %q", what, code, msg, took, want, errNoCommand)
		}
	}
	swap("swap of a failed service", http.StatusInternalServerError)
	// handoffd's next retry waits at the gate, holding the swap.
	gate := make(chan struct{})
	defer close(gate)
	l.set(gate, errNoCommand)
	deadline := time.Now().Add(10 * time.Second)
	for st, _ := a.sup.Status("demo"); !st.Services[0].Swapping; st, _ = a.sup.Status("demo") {
		if time.Now().After(deadline) {
			t.Fatal("handoffd did not retry the failed demo within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	swap("swap during a retry", http.StatusConflict)
}

// TestControlSocketPeerCred runs the API on a real control socket: the
// server reads the peer's credentials, and the socket is 0660.
func TestControlSocketPeerCred(t *testing.T) {
	dir := t.TempDir()
	a := testAPI(t, &config.Config{Control: filepath.Join(dir, "sub", "ctl.sock")})
	ln, err := a.Listen()
	if err != nil {
		t.Fatal(err)
	}
	srv := a.Server()
	go srv.Serve(ln)
	defer srv.Close()
	fi, err := os.Stat(a.sup.Config().Control)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("control socket mode %s, want 0660 socket", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Dir(a.sup.Config().Control)); fi.Mode().Perm() != 0o755 {
		t.Errorf("control socket dir mode %s, want 0755", fi.Mode())
	}
	st, err := api.NewClient(a.sup.Config().Control).Status(context.Background(), "")
	if err != nil || len(st.Services) != 1 {
		t.Fatalf("status as uid %d over the socket: %+v, %v", os.Geteuid(), st, err)
	}
}

func TestListenControlRefusesUnsafeDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := ListenControl(filepath.Join(dir, "ctl.sock"), -1, -1)
	if err == nil || !strings.Contains(err.Error(), "world-writable without the sticky bit") {
		t.Fatalf("world-writable dir: %v", err)
	}
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	ln, err := ListenControl(filepath.Join(dir, "ctl.sock"), -1, -1)
	if err != nil {
		t.Fatalf("sticky world-writable dir: %v", err)
	}
	ln.Close()
}

// TestStopAnswersBeforeShutdown stops handoffd through the API as
// handoffctl stop does, with a shutdown that closes the server at once, as
// handoffd's main does: the 200 must reach the client first.
func TestStopAnswersBeforeShutdown(t *testing.T) {
	for i := range 20 {
		dir := t.TempDir()
		var srv *http.Server
		a := NewAPI(testSupervisor(t, &config.Config{Control: filepath.Join(dir, "ctl.sock")}, &fakeLauncher{}),
			func() { srv.Close() })
		ln, err := a.Listen()
		if err != nil {
			t.Fatal(err)
		}
		srv = a.Server()
		go srv.Serve(ln)
		// The whole answer, body included, must arrive: a client that
		// reads it (curl, another language's client) sees no cut.
		c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", a.sup.Config().Control)
		}}}
		resp, err := c.Post("http://handoffd/v1/stop", "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatalf("stop %d: %v", i+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || string(body) != "{}\n" {
			t.Fatalf("stop %d: %s, body %q, %v; want 200 and {}", i+1, resp.Status, body, err)
		}
	}
}
