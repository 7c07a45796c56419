package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
)

// TestExitedStandbyClosesItsSockets: a generation in standby that dies
// takes its listening sockets out of the reuseport group at once, so that
// no steering fallback hashes a new connection onto a socket nobody
// accepts from.
func TestExitedStandbyClosesItsSockets(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{peers: map[int][]*os.File{}}
	t.Cleanup(r.closePeers)
	s := testService(t, l, r)
	s.cfg.Probation = config.Duration(time.Minute)
	mustSwap(t, s)
	mustSwap(t, s)
	if got := states(s); !slices.Equal(got, []string{"1:standby", "2:active"}) {
		t.Fatalf("after the swap: %v, want generation 1 in standby", got)
	}
	if !r.open(1) {
		t.Fatal("the standby's sockets are closed while it runs: a rollback would find no listener")
	}
	l.proc(0).exit("signal: killed")
	eventually(t, "the standby's exit seen", func() bool { return slices.Equal(states(s), []string{"1:exited", "2:active"}) })
	if r.open(1) {
		t.Error("handoffd still holds the exited standby's listening sockets")
	}
	if !r.open(2) || r.activeGen() != 2 {
		t.Errorf("the active generation lost its sockets or steering (steering at %d)", r.activeGen())
	}
}

// TestCanaryRefusedBesideCrashedActive: while the active generation is
// dead and its replacement fails, a canary would get a share of new
// connections beside a socket nobody accepts from, and hold the
// replacement off until someone promotes or rolls it back. It is refused;
// the replacement goes on.
func TestCanaryRefusedBesideCrashedActive(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	mustSwap(t, s)
	l.mu.Lock()
	l.failStarts = 1 // the first replacement cannot start
	l.mu.Unlock()
	l.proc(0).exit("signal: segmentation fault")
	eventually(t, "the first replacement failed", func() bool { return slices.Contains(states(s), "2:failed") })
	var err error
	for range 100 {
		if _, err = s.SwapCanary(context.Background(), Split{Share: 0.05}); !errors.Is(err, ErrSwapInProgress) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !errors.Is(err, ErrCanaryRefused) {
		t.Errorf("canary beside a crashed active generation: %v, want it refused", err)
	}
	eventually(t, "a replacement active", func() bool { return servingNow(s) })
	s.mu.Lock()
	canary := s.canary
	s.mu.Unlock()
	if canary != nil {
		t.Errorf("generation %d runs as a canary; the replacement must be the active generation alone", canary.ID)
	}
	if gen, share := r.splitNow(); share != 0 {
		t.Errorf("steering still splits %v to generation %d", share, gen)
	}
}

// TestCanaryStartLosesToActiveCrash: the active generation dies while a
// canary starts. The canary does not take a share beside the dead one:
// its start fails, and the replacement of the active generation wins.
func TestCanaryStartLosesToActiveCrash(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	mustSwap(t, s)
	l.setReady(false)
	errc := make(chan error, 1)
	go func() { _, err := s.SwapCanary(context.Background(), Split{Share: 0.05}); errc <- err }()
	eventually(t, "the canary started", func() bool { return l.count() == 2 })
	l.proc(0).exit("signal: segmentation fault")
	eventually(t, "the crash seen", func() bool { return slices.Contains(states(s), "1:exited") })
	l.setReady(true)
	l.proc(1).setReady()
	if err := <-errc; !errors.Is(err, ErrCanaryRefused) {
		t.Errorf("canary whose active generation died during its start: %v, want it refused", err)
	}
	eventually(t, "a replacement active", func() bool { return servingNow(s) })
	if gen, share := r.splitNow(); share != 0 {
		t.Errorf("steering still splits %v to generation %d", share, gen)
	}
	if errs := s.Invariants(); len(errs) > 0 {
		t.Errorf("invariants broken: %v", errs)
	}
}

// TestAddedServiceSavedBeforeItRuns: a service added by a reload is in
// StateFile as soon as its generation 1 runs, before it is even ready,
// so that a handoffd killed at any point after the start re-adopts it
// instead of orphaning it.
func TestAddedServiceSavedBeforeItRuns(t *testing.T) {
	dir := t.TempDir()
	head := "control: /run/handoff/handoffd.sock\nstate_dir: " + dir + "\nservices:"
	demo := serviceDoc("demo", "V=1", freeAddress(t))
	sup, l := testSupervisor(t, parse(t, head+demo))
	l.setReady(false)
	reloaded := make(chan error, 1)
	go func() {
		_, err := sup.Reload(context.Background(), parse(t, head+demo+serviceDoc("web", "W=1", freeAddress(t))))
		reloaded <- err
	}()
	eventually(t, "web's generation 1 started", func() bool { return len(l.started("web")) == 1 })
	const pid = 1001 // the fake pid of generation 1
	saved := false
	for deadline := time.Now().Add(time.Second); !saved && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		st, err := loadState(dir)
		if err != nil {
			t.Fatal(err)
		}
		ss, _ := st.service("web")
		saved = slices.ContainsFunc(ss.Generations, func(g savedGeneration) bool { return g.PID == pid })
	}
	l.readyAll()
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	if !saved {
		t.Errorf("web's generation 1 (pid %d) ran for a second without being in %s", pid, StateFile)
	}
}

// countingLauncher re-adopts generation 2 holding nothing and generation
// 1 holding every file of holds.
type countingLauncher struct {
	fakeLauncher
	holds    []*os.File
	searches int
}

func (l *countingLauncher) Adopt(_ string, gen, pid int, _ uint64) (Process, error) {
	p := &fakeProcess{pid: pid, ready: make(chan struct{}), done: make(chan struct{}), exitOn: map[syscall.Signal]bool{syscall.SIGTERM: true}}
	close(p.ready)
	fp := &findingProcess{fakeProcess: p, fdTable: fdTable{searches: &l.searches}}
	if gen == 1 {
		fp.files = l.holds
	}
	return fp, nil
}

// TestFDStoreReadoptedInOnePass: re-adopting the fd store reads each
// generation's fds once, whatever the number of stored fds.
func TestFDStoreReadoptedInOnePass(t *testing.T) {
	l := &fakeLauncher{ready: true}
	s := testService(t, l, &fakeRouter{})
	s.cfg.Probation = config.Duration(time.Minute)
	mustSwap(t, s)
	mustSwap(t, s)
	const stored = 16
	var holds []*os.File
	for i := range stored {
		f := sealedMemfd(string(rune('a' + i)))
		holds = append(holds, f)
		l.proc(1).send(store(string(rune('a'+i))), dup(t, f))
	}
	t.Cleanup(func() { closeFiles(holds) })
	saved := s.saved()
	al := &countingLauncher{fakeLauncher: fakeLauncher{ready: true}, holds: holds}
	s2 := adopted(t, s.cfg, s.mode, al, saved)
	if n := len(s2.Status().FDStore); n != stored {
		t.Fatalf("%d stored fds re-adopted, want %d", n, stored)
	}
	if al.searches > 2 {
		t.Errorf("the fds of 2 generations were searched %d times for %d stored fds, want once each", al.searches, stored)
	}
}

// fastRetries makes s retry failed starts after 20 ms, then 40 ms.
func fastRetries(s *Service) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retry = retryBackoff{first: 20 * time.Millisecond, max: 40 * time.Millisecond}
}

// TestFailedServiceRetriedWithBackoff: the active generation crashes and
// its replacements cannot start. While the first replacement runs, the
// dead generation's sockets still queue for it; once it failed the
// service is failed, with its reason, and holds no socket that nobody
// accepts from; it is retried after the backoff, each wait longer, until
// a start succeeds.
func TestFailedServiceRetriedWithBackoff(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{peers: map[int][]*os.File{}}
	t.Cleanup(r.closePeers)
	s := testService(t, l, r)
	fastRetries(s)
	mustSwap(t, s)
	if st := s.Status(); st.State != api.ServiceRunning || st.Failure != nil {
		t.Fatalf("after the first swap: %s, %+v; want running", st.State, st.Failure)
	}
	// The first replacement waits for READY=1 until ready_timeout.
	l.setReady(false)
	began := time.Now()
	l.proc(0).exit("signal: segmentation fault")
	eventually(t, "the first replacement started", func() bool { return l.count() == 2 })
	if st := s.Status(); st.State != api.ServiceStarting || !r.open(1) {
		t.Errorf("during the first replacement: %s, sockets of generation 1 open %v; want starting, and its queue held", st.State, r.open(1))
	}
	l.mu.Lock()
	l.failStarts = 2 // and the next two cannot start at all
	l.mu.Unlock()
	eventually(t, "the service failed", func() bool { return s.Status().State == api.ServiceFailed })
	st := s.Status()
	if f := st.Failure; f == nil || f.Attempts < 1 || !strings.Contains(f.Reason, "not ready within ready_timeout") || f.NextRetry == nil {
		t.Errorf("failure %+v; want the first replacement's reason and the next retry", f)
	}
	if r.open(1) || r.releases() == 0 {
		t.Errorf("a failed service holds the dead generation's sockets (open %v) or kept its own (released %d times)", r.open(1), r.releases())
	}
	l.setReady(true)
	eventually(t, "a replacement serving", func() bool { return s.Status().State == api.ServiceRunning })
	// 200 ms of ready_timeout, then 20, 40 and 40 ms of backoff.
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Errorf("served again %s after the crash, sooner than ready_timeout and three backoffs", took)
	}
	st = s.Status()
	last := st.Generations[len(st.Generations)-1]
	if st.Failure != nil || last.State != api.StateActive || r.activeGen() != last.ID || last.ID != 5 {
		t.Errorf("after the recovery: failure %+v, generations %v, steering at %d; want generation 5 (after 3 failed starts) active and steered", st.Failure, states(s), r.activeGen())
	}
	if errs := s.Invariants(); len(errs) > 0 {
		t.Errorf("invariants broken: %v", errs)
	}
}

// TestFailedServiceRetriedAtOnce: a failed service waits for its backoff,
// unless a config reload changes it or a swap by hand retries it.
func TestFailedServiceRetriedAtOnce(t *testing.T) {
	for _, how := range []string{"reload", "swap"} {
		t.Run(how, func(t *testing.T) {
			l, r := &fakeLauncher{ready: true}, &fakeRouter{}
			s := testService(t, l, r)
			s.retry = retryBackoff{first: time.Hour, max: time.Hour}
			mustSwap(t, s)
			l.mu.Lock()
			l.failStarts = 1
			l.mu.Unlock()
			l.proc(0).exit("signal: killed")
			eventually(t, "the service failed", func() bool { return s.Status().State == api.ServiceFailed })
			if next := s.Status().Failure.NextRetry; next == nil || time.Until(*next) < 59*time.Minute {
				t.Fatalf("next retry at %v, want in an hour", next)
			}
			switch how {
			case "reload":
				cfg := *s.Config()
				s.setConfig(&cfg)
			case "swap":
				if _, err := s.Swap(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "serving again", func() bool { return s.Status().State == api.ServiceRunning })
			if errs := s.Invariants(); len(errs) > 0 {
				t.Errorf("invariants broken: %v", errs)
			}
		})
	}
}

// TestSupervisorStartsBesideBrokenService: a service that cannot start
// leaves handoffd's start, and the other service, alone: it is failed
// and retried.
func TestSupervisorStartsBesideBrokenService(t *testing.T) {
	head := configHead(t)
	l := &specLauncher{fakeLauncher: fakeLauncher{ready: true}, broken: "web"}
	cfg := parse(t, head+serviceDoc("demo", "V=1", freeAddress(t))+serviceDoc("web", "W=1", freeAddress(t)))
	sup, err := New(cfg, Options{Mode: api.ModeFDPass, NewRouter: fakeRouters, Launcher: l, Counter: fakeCounter{}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sup.Stop(ctx)
	})
	sup.Start(context.Background())
	st, err := sup.Status("")
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range st.Services {
		want := map[string]api.ServiceState{"demo": api.ServiceRunning, "web": api.ServiceFailed}[svc.Name]
		if svc.State != want {
			t.Errorf("%s is %s, want %s (%+v)", svc.Name, svc.State, want, svc.Failure)
		}
	}
	l.mu.Lock()
	l.broken = ""
	l.mu.Unlock()
	web, _ := sup.Service("web")
	cfgWeb := *web.Config()
	web.setConfig(&cfgWeb)
	eventually(t, "web serving once fixed", func() bool { return web.Status().State == api.ServiceRunning })
}

// readoptLauncher re-adopts saved generations as findingProcesses: the
// services in gone have exited (zombies), those in noListeners run but
// hold no listener handoffd can find.
type readoptLauncher struct {
	specLauncher
	gone, noListeners map[string]bool
	adopted           map[string]*fakeProcess
}

func (l *readoptLauncher) Adopt(service string, gen, pid int, _ uint64) (Process, error) {
	if l.gone[service] {
		return nil, fmt.Errorf("%w: pid %d has exited (not reaped yet)", ErrGone, pid)
	}
	p := &fakeProcess{pid: pid, ready: make(chan struct{}), done: make(chan struct{}), exitOn: map[syscall.Signal]bool{syscall.SIGTERM: true}}
	close(p.ready)
	l.mu.Lock()
	l.adopted[service] = p
	l.mu.Unlock()
	return &findingProcess{fakeProcess: p, fdTable: fdTable{noListeners: l.noListeners[service]}}, nil
}

// TestReadoptionNeverStopsHandoffd: after a restart, one service's active
// generation is gone (a zombie), another's runs without a listener
// handoffd can find, a third is whole. handoffd builds all three: the
// first starts afresh, the second is failed and replaced, the third is
// re-adopted untouched.
func TestReadoptionNeverStopsHandoffd(t *testing.T) {
	dir := t.TempDir()
	head := "control: /run/handoff/handoffd.sock\nstate_dir: " + dir + "\nservices:"
	cfg := parse(t, head+serviceDoc("demo", "V=1", freeAddress(t))+serviceDoc("web", "W=1", freeAddress(t))+serviceDoc("api", "A=1", freeAddress(t)))
	saved := savedState{Mode: api.ModeFDPass}
	for i, name := range []string{"demo", "web", "api"} {
		saved.Services = append(saved.Services, savedService{Name: name, LastID: 1, Current: 1,
			Generations: []savedGeneration{{ID: 1, PID: 5000 + i, State: api.StateActive, StartTicks: 1}}})
	}
	data, _ := json.Marshal(saved)
	if err := writeFileAtomic(filepath.Join(dir, StateFile), data); err != nil {
		t.Fatal(err)
	}
	l := &readoptLauncher{specLauncher: specLauncher{fakeLauncher: fakeLauncher{ready: true}},
		gone: map[string]bool{"demo": true}, noListeners: map[string]bool{"web": true}, adopted: map[string]*fakeProcess{}}
	sup, err := New(cfg, Options{Mode: api.ModeFDPass, NewRouter: fakeRouters, Launcher: l, Counter: fakeCounter{}, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("New with a service that cannot be re-adopted: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sup.Stop(ctx)
	})
	sup.Start(context.Background())
	eventually(t, "every service serving", func() bool {
		st, _ := sup.Status("")
		for _, svc := range st.Services {
			if svc.State != api.ServiceRunning {
				return false
			}
		}
		return true
	})
	gens := func(name string) []string {
		var out []string
		st, _ := sup.Status(name)
		for _, g := range st.Services[0].Generations {
			out = append(out, fmt.Sprintf("%d:%s", g.ID, g.State))
		}
		return out
	}
	if got := gens("demo"); !slices.Equal(got, []string{"1:exited", "2:active"}) {
		t.Errorf("demo: %v; want its gone generation 1 shown exited, and generation 2 active", got)
	}
	if st, _ := sup.Status("demo"); st.Services[0].Generations[0].Exit != "exited while handoffd was not running" {
		t.Errorf("demo's generation 1: %+v", st.Services[0].Generations[0])
	}
	eventually(t, "web's unadoptable generation 1 drained", func() bool {
		return slices.Equal(gens("web"), []string{"1:exited", "2:active"})
	})
	if got := l.adopted["web"].got(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
		t.Errorf("web's generation 1 got %v, want the stop signal once its replacement was active", got)
	}
	if got := gens("api"); !slices.Equal(got, []string{"1:active"}) || len(l.adopted["api"].got()) > 0 {
		t.Errorf("api: %v, signals %v; want generation 1 re-adopted and left alone", got, l.adopted["api"].got())
	}
	for _, name := range []string{"demo", "web", "api"} {
		svc, _ := sup.Service(name)
		if errs := svc.Invariants(); len(errs) > 0 {
			t.Errorf("%s: invariants broken: %v", name, errs)
		}
	}
}

// The active generation dies after a failed start has made the service
// failed (its exit is handled second): its sockets are closed as every
// socket of a failed service is, instead of queueing new connections that
// nobody serves until a retry succeeds.
func TestActiveExitAfterFailureClosesItsSockets(t *testing.T) {
	l, r := &fakeLauncher{ready: true}, &fakeRouter{}
	s := testService(t, l, r)
	mustSwap(t, s)
	l.setReady(false) // the retries wait, so that nothing replaces it meanwhile
	s.mu.Lock()
	l.proc(0).exit("crashed") // its exit is handled once s.mu is free
	s.failedLocked(errors.New("start generation 2: fork/exec demo: no such file or directory"))
	s.mu.Unlock()
	eventually(t, "generation 1 exited", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.gens[0].state == api.StateExited
	})
	s.mu.Lock()
	held := len(s.gens[0].files)
	s.mu.Unlock()
	if held != 0 || len(s.Invariants()) > 0 {
		t.Fatalf("the failed service still holds %d sockets of its exited generation 1; invariants: %v", held, s.Invariants())
	}
}

// TestSwapOfFailedServiceSaysWhy: a swap by hand of a failed service,
// whose command cannot start, answers at once with one line that names
// the reason: its own start's, or, while a retry of handoffd holds the
// swap, the failure's; it never waits for its caller's timeout.
func TestSwapOfFailedServiceSaysWhy(t *testing.T) {
	l, r := &fakeLauncher{ready: true, failStarts: 1 << 20}, &fakeRouter{}
	s := testService(t, l, r)
	s.mu.Lock()
	s.retry = retryBackoff{first: time.Minute, max: time.Minute}
	s.mu.Unlock()
	if _, err := s.Swap(context.Background()); err == nil {
		t.Fatal("first start succeeded with a command that cannot start")
	}
	if st := s.Status(); st.State != api.ServiceFailed {
		t.Fatalf("service %s, want failed", st.State)
	}
	check := func(what string, swap func(context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		began := time.Now()
		err := swap(ctx)
		took := time.Since(began)
		if err == nil || took > time.Second || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), errNoCommand.Error()) {
			t.Errorf("%s: %v after %s; want at once one line with %q", what, err, took, errNoCommand)
		}
	}
	check("swap", func(ctx context.Context) error { _, err := s.Swap(ctx); return err })
	check("canary", func(ctx context.Context) error { _, err := s.SwapCanary(ctx, Split{Share: 0.1}); return err })
	// A retry under way holds the swap.
	s.swapMu.Lock()
	check("swap during a retry", func(ctx context.Context) error {
		_, err := s.Swap(ctx)
		if !errors.Is(err, ErrSwapInProgress) {
			return fmt.Errorf("not refused as in progress: %w", err)
		}
		return err
	})
	s.swapMu.Unlock()
}
