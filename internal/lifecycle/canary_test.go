package lifecycle

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
)

// canaryService runs generation 1 active and generation 2 as a canary
// with share.
func canaryService(t *testing.T, share float64) (*Service, *fakeLauncher, *fakeRouter) {
	t.Helper()
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	res, err := s.SwapCanary(context.Background(), Split{Share: share, Sticky: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Generation != 2 || res.Previous != 1 || res.Canary == nil || res.Canary.Weight != share || !res.Canary.Sticky {
		t.Fatalf("SwapCanary = %+v", res)
	}
	if got := states(s); !slices.Equal(got, []string{"1:active", "2:canary"}) {
		t.Fatalf("after SwapCanary: %v", got)
	}
	if gen, sh := r.splitNow(); gen != 2 || sh != share || r.activeGen() != 1 {
		t.Fatalf("steering: split %d at %v, active %d; want 2 at %v, active 1", gen, sh, r.activeGen(), share)
	}
	return s, l, r
}

func weights(s *Service) map[int]float64 {
	w := map[int]float64{}
	for _, g := range s.Status().Generations {
		if g.Weight != nil {
			w[g.ID] = *g.Weight
		}
	}
	return w
}

func TestCanaryWeightAndPromote(t *testing.T) {
	s, l, r := canaryService(t, 0.05)
	if w := weights(s); w[1] != 0.95 || w[2] != 0.05 {
		t.Fatalf("weights %v, want 1: 0.95, 2: 0.05", w)
	}
	if _, err := s.Swap(context.Background()); !errors.Is(err, ErrCanaryRunning) {
		t.Fatalf("swap during a canary = %v, want ErrCanaryRunning", err)
	}
	if _, err := s.SwapCanary(context.Background(), Split{Share: 0.1}); !errors.Is(err, ErrCanaryRunning) {
		t.Fatalf("second canary = %v, want ErrCanaryRunning", err)
	}
	res, err := s.SetCanaryShare(0.25)
	if err != nil || res.Weight != 0.25 || res.Generation != 2 || res.Active != 1 {
		t.Fatalf("SetCanaryShare = %+v, %v", res, err)
	}
	if gen, sh := r.splitNow(); gen != 2 || sh != 0.25 {
		t.Fatalf("split %d at %v, want 2 at 0.25", gen, sh)
	}
	if _, err := s.SetCanaryShare(1.5); err == nil {
		t.Fatal("SetCanaryShare(1.5) succeeded")
	}
	sw, err := s.Promote()
	if err != nil || sw.Generation != 2 || sw.Previous != 1 {
		t.Fatalf("Promote = %+v, %v", sw, err)
	}
	if r.activeGen() != 2 {
		t.Fatalf("steering points at %d after promote, want 2", r.activeGen())
	}
	eventually(t, "generation 1 drained", func() bool { return slices.Equal(states(s), []string{"1:exited", "2:active"}) })
	if got := l.proc(1).got(); len(got) != 0 {
		t.Fatalf("the promoted canary got signals %v", got)
	}
	if w := weights(s); w[2] != 1 {
		t.Fatalf("weights %v after promote, want 2: 1", w)
	}
	if _, err := s.Promote(); !errors.Is(err, ErrNoCanary) {
		t.Fatalf("second promote = %v, want ErrNoCanary", err)
	}
	if _, err := s.SetCanaryShare(0.5); !errors.Is(err, ErrNoCanary) {
		t.Fatalf("SetCanaryShare without a canary = %v, want ErrNoCanary", err)
	}
	got := s.observer.(*fakeObserver).got()
	if !slices.Contains(got, "canary") || slices.Contains(got, "rolled_back") {
		t.Fatalf("observer saw %v", got)
	}
}

func TestCanaryRollback(t *testing.T) {
	s, l, r := canaryService(t, 0.5)
	res, err := s.Rollback()
	if err != nil || res.Generation != 1 || res.Previous != 2 {
		t.Fatalf("Rollback = %+v, %v", res, err)
	}
	if gen, sh := r.splitNow(); sh != 0 || r.activeGen() != 1 {
		t.Fatalf("split %d at %v, active %d; want no share, active 1", gen, sh, r.activeGen())
	}
	eventually(t, "canary drained", func() bool { return slices.Equal(states(s), []string{"1:active", "2:exited"}) })
	if got := l.proc(0).got(); len(got) != 0 {
		t.Fatalf("generation 1 got %v; a rollback must leave it untouched", got)
	}
	if got := s.observer.(*fakeObserver).got(); !slices.Contains(got, "rolled_back") {
		t.Fatalf("observer saw %v, want rolled_back", got)
	}
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatalf("swap after a rollback: %v", err)
	}
}

func TestCanaryCrashRollsBack(t *testing.T) {
	s, l, r := canaryService(t, 0.5)
	l.proc(1).exit("signal: segmentation fault")
	eventually(t, "rollback", func() bool { return slices.Equal(states(s), []string{"1:active", "2:exited"}) })
	if _, sh := r.splitNow(); sh != 0 || r.activeGen() != 1 {
		t.Fatalf("split share %v, active %d; want 0 and 1", sh, r.activeGen())
	}
	if l.count() != 2 {
		t.Fatalf("%d generations started; a rollback starts none", l.count())
	}
	if got := s.observer.(*fakeObserver).got(); !slices.Contains(got, "rolled_back") || crashes(s) != 1 {
		t.Fatalf("observer saw %v, want rolled_back and one crash", got)
	}
}

func TestActiveCrashPromotesCanary(t *testing.T) {
	s, l, r := canaryService(t, 0.1)
	l.proc(0).exit("signal: killed")
	eventually(t, "promotion", func() bool { return slices.Equal(states(s), []string{"1:exited", "2:active"}) })
	if r.activeGen() != 2 {
		t.Fatalf("steering points at %d, want 2", r.activeGen())
	}
	if l.count() != 2 {
		t.Fatalf("%d generations started; the canary takes over, none is started", l.count())
	}
}

func TestCanaryRefusedInFDPass(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	s.mode = api.ModeFDPass
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := s.SwapCanary(context.Background(), Split{Share: 0.05})
	if !errors.Is(err, ErrCanaryRefused) || !strings.Contains(err.Error(), "fdpass mode") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("canary in fdpass = %v, want one line that names fdpass mode", err)
	}
	if l.count() != 1 {
		t.Fatalf("%d generations started; a refused canary starts none", l.count())
	}
}

// healthServer answers /healthz with code; probes dial it.
type healthServer struct {
	mu   sync.Mutex
	code map[int]int // by generation; default 200
	srv  *httptest.Server
}

func newHealthServer(t *testing.T, r *fakeRouter) *healthServer {
	h := &healthServer{code: map[int]int{}}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		gen, _ := strconv.Atoi(req.Header.Get("X-Gen"))
		h.mu.Lock()
		code, ok := h.code[gen]
		h.mu.Unlock()
		if !ok {
			code = http.StatusOK
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(h.srv.Close)
	r.probe = func(ctx context.Context, gen int) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", h.srv.Listener.Addr().String())
		if err != nil {
			return nil, err
		}
		return &genConn{Conn: c, gen: gen}, nil
	}
	return h
}

// genConn tells the health server which generation a probe is for, by
// adding a header to the request it carries.
type genConn struct {
	net.Conn
	gen  int
	sent bool
}

func (c *genConn) Write(b []byte) (int, error) {
	if !c.sent {
		c.sent = true
		if i := strings.Index(string(b), "\r\n"); i >= 0 {
			hdr := "\r\nX-Gen: " + strconv.Itoa(c.gen)
			out := append([]byte(string(b[:i])+hdr), b[i:]...)
			if _, err := c.Conn.Write(out); err != nil {
				return 0, err
			}
			return len(b), nil
		}
	}
	return c.Conn.Write(b)
}

func (h *healthServer) set(gen, code int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.code[gen] = code
}

func healthConfig(s *Service, ready string) {
	s.cfg.Ready = ready
	s.cfg.Health = &config.HealthConfig{HTTP: "/healthz", Listener: "http", Interval: config.Duration(5 * time.Millisecond),
		Timeout: config.Duration(time.Second), Healthy: 2, Unhealthy: 3}
	// Room for a slow check on a busy machine under -race.
	s.cfg.ReadyTimeout = config.Duration(time.Second)
}

func TestNeverHealthyIsNeverActivated(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	h := newHealthServer(t, r)
	healthConfig(s, config.ReadyNotify)
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.set(2, http.StatusServiceUnavailable)
	_, err := s.Swap(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not healthy within ready_timeout") || !strings.Contains(err.Error(), "503 Service Unavailable") {
		t.Fatalf("swap to a never-healthy generation = %v", err)
	}
	if r.activeGen() != 1 {
		t.Fatalf("steering points at %d, want 1", r.activeGen())
	}
	if got := states(s); !slices.Equal(got, []string{"1:active", "2:failed"}) {
		t.Fatalf("states %v", got)
	}
}

func TestReadyHealthNeedsNoNotify(t *testing.T) {
	l, r := &fakeLauncher{ready: false}, &fakeRouter{}
	s := testService(t, l, r)
	newHealthServer(t, r)
	healthConfig(s, config.ReadyHealth)
	res, err := s.Swap(context.Background())
	if err != nil || res.Generation != 1 {
		t.Fatalf("swap of an app that never says READY=1 = %+v, %v", res, err)
	}
}

// In fdpass mode (here: eBPF refused at start, so auto fell back) every
// generation accepts from one shared socket: no check can tell that the
// new one alone is healthy, so ready: health fails the start, in one line.
func TestReadyHealthRefusedInFDPass(t *testing.T) {
	l, r := &fakeLauncher{ready: false}, &fakeRouter{}
	s := testService(t, l, r)
	s.mode = api.ModeFDPass
	newHealthServer(t, r)
	healthConfig(s, config.ReadyHealth)
	_, err := s.Swap(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ready: health needs ebpf mode") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("swap with ready: health in fdpass = %v, want one line that says it needs ebpf mode", err)
	}
	if r.activeGen() != 0 {
		t.Fatalf("generation %d activated without a check", r.activeGen())
	}
}

func TestUnhealthyCanaryRollsBack(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	h := newHealthServer(t, r)
	healthConfig(s, config.ReadyNotify)
	if _, err := s.Swap(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SwapCanary(context.Background(), Split{Share: 0.2}); err != nil {
		t.Fatal(err)
	}
	h.set(2, http.StatusInternalServerError)
	eventually(t, "rollback", func() bool { return slices.Equal(states(s), []string{"1:active", "2:exited"}) })
	if _, sh := r.splitNow(); sh != 0 || r.activeGen() != 1 {
		t.Fatalf("split share %v, active %d; want 0 and 1", sh, r.activeGen())
	}
	if got := l.proc(1).got(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
		t.Fatalf("the unhealthy canary got %v, want SIGTERM", got)
	}
}

func TestUnhealthyDuringProbationRollsBack(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	h := newHealthServer(t, r)
	healthConfig(s, config.ReadyNotify)
	s.cfg.Probation = config.Duration(time.Minute)
	for range 2 {
		if _, err := s.Swap(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	h.set(2, http.StatusInternalServerError)
	eventually(t, "rollback", func() bool { return slices.Equal(states(s), []string{"1:active", "2:exited"}) })
	if r.activeGen() != 1 {
		t.Fatalf("steering points at %d, want 1", r.activeGen())
	}
}

// TestPromoteRefusedKeepsTheActive: a promotion whose map update fails
// half way is undone: the active generation keeps serving beside the
// canary, with its split, and a promotion can be asked again.
func TestPromoteRefusedKeepsTheActive(t *testing.T) {
	s, l, r := canaryService(t, 0.2)
	r.mu.Lock()
	r.failPromote = true
	r.mu.Unlock()
	_, err := s.Promote()
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "map update refused") {
		t.Fatalf("Promote = %v; want one line with the router's reason", err)
	}
	if got := states(s); !slices.Equal(got, []string{"1:active", "2:canary"}) {
		t.Fatalf("after a refused promotion: %v, want 1:active 2:canary", got)
	}
	if gen, sh := r.splitNow(); gen != 2 || sh != 0.2 || r.activeGen() != 1 {
		t.Fatalf("steering: split %d at %v, active %d; want 2 at 0.2, active 1", gen, sh, r.activeGen())
	}
	if st := s.Status(); st.State != api.ServiceRunning {
		t.Fatalf("service %s after a refused promotion, want running", st.State)
	}
	if got := l.proc(0).got(); len(got) != 0 {
		t.Fatalf("generation 1 got %v; a refused promotion must leave it untouched", got)
	}
	r.mu.Lock()
	r.failPromote = false
	r.mu.Unlock()
	if res, err := s.Promote(); err != nil || res.Generation != 2 || r.activeGen() != 2 {
		t.Fatalf("Promote again = %+v, %v, steering at %d; want generation 2 active", res, err, r.activeGen())
	}
	if errs := s.Invariants(); len(errs) > 0 {
		t.Fatalf("invariants broken: %v", errs)
	}
}

// TestActiveCrashPromotesCanaryDespiteRouter: the active generation dies
// during a canary, and the promotion's map update fails. The canary is
// all that runs: it becomes the active generation all the same, steered
// to by Activate, so that status, the state file and steering agree, and
// swaps go on; the service is not left with a dead active beside a
// canary, which nothing would replace.
func TestActiveCrashPromotesCanaryDespiteRouter(t *testing.T) {
	s, l, r := canaryService(t, 0.1)
	r.mu.Lock()
	r.failPromote = true
	r.mu.Unlock()
	l.proc(0).exit("signal: killed")
	eventually(t, "promotion", func() bool { return slices.Equal(states(s), []string{"1:exited", "2:active"}) })
	if gen, sh := r.splitNow(); r.activeGen() != 2 || sh != 0 {
		t.Fatalf("steering: active %d, split %d at %v; want 2 active and no split", r.activeGen(), gen, sh)
	}
	st := s.Status()
	if st.State != api.ServiceRunning {
		t.Fatalf("service %s, want running", st.State)
	}
	saved := s.saved()
	if saved.Current != 2 || len(saved.Generations) != 1 || saved.Generations[0].State != api.StateActive {
		t.Fatalf("state file records current %d, %+v; want generation 2 active alone", saved.Current, saved.Generations)
	}
	if _, err := s.Promote(); !errors.Is(err, ErrNoCanary) {
		t.Fatalf("Promote after the takeover = %v, want ErrNoCanary", err)
	}
	if res, err := s.Swap(context.Background()); err != nil || res.Previous != 2 {
		t.Fatalf("swap after the takeover = %+v, %v", res, err)
	}
	if errs := s.Invariants(); len(errs) > 0 {
		t.Fatalf("invariants broken: %v", errs)
	}
}
