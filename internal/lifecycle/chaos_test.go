package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/stateproto"
)

// FuzzLifecycle runs handoffd (a Supervisor) with two services, a and b,
// through a random sequence of events and checks what must hold whatever
// the order. The events: swaps, canaries (start, share change, promote,
// rollback), processes that become ready or exit in any state, crashes
// of the active generation, health checks that pass and fail, ends of
// probation, ready timeouts, fd store and state handoff messages, kill -9
// and SIGTERM of handoffd with its restart (re-adoption from the state
// file as the dead one left it), and config reloads that change a
// service, add one (c) or remove it. Events go to one service at a time;
// '1', '2' and '3' choose a, b or c.
//
// Checked whatever the order:
//   - steering never moves to a generation whose process had exited;
//   - no invariant of the state machine breaks (Service.Invariants);
//   - once the events stop and processes start normally again, every
//     service has exactly one live active generation, and new
//     connections go, by the world's model of steer.c, to a process
//     that accepts and that is the active generation or the canary;
//     every other process has exited but the standby's, and no socket of
//     an exited generation is held open by anyone;
//   - no process runs that handoffd does not know (no orphan), and every
//     socket copy is closed once all has stopped (no fd leak);
//   - a (state_handoff) never sends a generation more than one STATE
//     message, and its active one has had its one;
//   - nothing one service does changes another: a service that got no
//     event keeps its first generation, untouched.
//
// The events run with the real goroutines of handoffd, so each run also
// explores their interleavings; the seeds in testdata/fuzz/FuzzLifecycle
// are sequences that broke these rules once. A leading 'p' gives a and b
// probation; a leading 'g' makes processes linger after their stop signal
// until they drain ('D') or drain_timeout kills them.
func FuzzLifecycle(f *testing.F) {
	f.Fuzz(func(t *testing.T, events []byte) {
		if len(events) > 24 {
			events = events[:24]
		}
		c := newChaos(t, events)
		for _, e := range events {
			if !slices.Contains(chaosEvents, e) {
				e = chaosEvents[int(e)%len(chaosEvents)] // so that any byte is an event
			}
			c.play(e)
		}
		c.settle()
	})
}

// chaosEvents are the events that play knows.
var chaosEvents = []byte("123SCcPbnRQXADFfuhKkLlwTx")

// chaos is handoffd in a world whose processes the events control.
type chaos struct {
	t      *testing.T
	w      *world
	target string // the service events go to
	share  int    // the next share of 'c'
	// touched are the services that events went to.
	touched map[string]bool
	// first holds the pid of each service's generation that serves once
	// handoffd started, and started how many processes it had then.
	first, started map[string]int
}

func newChaos(t *testing.T, events []byte) *chaos {
	// Failed services are retried within the settling time.
	was := defaultBackoff
	defaultBackoff = retryBackoff{first: 10 * time.Millisecond, max: 100 * time.Millisecond}
	t.Cleanup(func() { defaultBackoff = was })
	w := newWorld(t)
	probation := false
	for _, e := range events {
		if e == 'p' {
			probation = true
		} else if e == 'g' {
			w.lingering = true
		} else {
			break
		}
	}
	w.file = []worldService{
		{name: "a", port: 1, state: true, health: true, probation: probation},
		{name: "b", port: 2, probation: probation},
	}
	c := &chaos{t: t, w: w, target: "a", touched: map[string]bool{}, first: map[string]int{}, started: map[string]int{}}
	w.start(nil)
	w.inc.bg.Wait()
	// A first start that failed (a slow health check) is retried.
	c.waitResting()
	w.mu.Lock()
	for _, p := range w.procs {
		c.started[p.service]++
		if !chanClosed(p.done) {
			c.first[p.service] = p.pid
		}
	}
	w.startReady = false
	w.mu.Unlock()
	return c
}

// service returns the target service in the running handoffd, or nil.
func (c *chaos) service() *Service {
	svc, err := c.w.inc.sup.Service(c.target)
	if err != nil {
		return nil
	}
	return svc
}

// bg runs f in the background of the running handoffd.
func (c *chaos) bg(f func(svc *Service)) {
	svc := c.service()
	if svc == nil {
		return
	}
	c.w.inc.bg.Go(func() { f(svc) })
}

// play applies one event, then lets handoffd's goroutines run a little.
func (c *chaos) play(e byte) {
	w := c.w
	switch e {
	case '1', '2', '3':
		c.target = string(rune('a' + e - '1'))
	case 'S', 'C', 'c', 'P', 'b', 'n', 'R', 'Q', 'X', 'A', 'D', 'F', 'f', 'u', 'h', 'l', 'x':
		c.touched[c.target] = true
	case 'L':
		c.touched["c"] = true
	}
	switch e {
	case 'S': // a swap, in the background: its process waits for 'R'
		c.bg(func(svc *Service) { svc.Swap(context.Background()) })
	case 'C': // a canary for 30% of new connections
		c.bg(func(svc *Service) { svc.SwapCanary(context.Background(), Split{Share: 0.3}) })
	case 'c': // the canary's share changes
		shares := []float64{0.6, 0, 1, 0.3}
		c.share++
		if svc := c.service(); svc != nil {
			svc.SetCanaryShare(shares[c.share%len(shares)])
		}
	case 'P': // promote by hand
		if svc := c.service(); svc != nil {
			svc.Promote()
		}
	case 'b': // rollback by hand
		if svc := c.service(); svc != nil {
			svc.Rollback()
		}
	case 'n': // end the probation by hand
		if svc := c.service(); svc != nil {
			svc.DrainStandby()
		}
	case 'R': // the newest process says READY=1
		c.newest(func(p *wproc) { closeOnce(p.ready) })
	case 'Q': // the newest process says READY=1 and exits at once
		c.newest(func(p *wproc) { closeOnce(p.ready); w.exitLocked(p, "exited when ready") })
	case 'X': // the newest process exits, whatever its state
		c.newest(func(p *wproc) { w.exitLocked(p, "exited") })
	case 'A': // the active generation crashes
		if svc := c.service(); svc != nil {
			svc.mu.Lock()
			cur := svc.current
			svc.mu.Unlock()
			if cur != nil {
				w.exit(cur.proc.(interface{ proc() *wproc }).proc(), "crashed")
			}
		}
	case 'D': // the oldest live process exits (a drained one, usually)
		if ps := w.live(c.target); len(ps) > 0 {
			w.exit(ps[0], "exited")
		}
	case 'F': // the newest live process stores a memfd
		if ps := w.live(c.target); len(ps) > 0 {
			w.send(ps[len(ps)-1], store("f"), sealedMemfd("f"))
		}
	case 'f': // the oldest live process sends a final delta
		if ps := w.live(c.target); len(ps) > 0 {
			w.send(ps[0], stateproto.Message{stateproto.NotifyFinal: "1"}, sealedMemfd("delta"))
		}
	case 'u': // the newest live process fails its health checks from now on
		c.newest(func(p *wproc) { p.healthy = false })
	case 'h': // every process of the service passes them again
		w.mu.Lock()
		for _, p := range w.procs {
			if p.service == c.target {
				p.healthy = true
			}
		}
		w.mu.Unlock()
	case 'x': // the service's command cannot run any more (until the end)
		w.mu.Lock()
		w.broken[c.target] = true
		w.mu.Unlock()
	case 'K': // kill -9 of handoffd, and its restart
		w.kill(false)
	case 'k': // SIGTERM of handoffd, and its restart
		w.kill(true)
	case 'L': // a reload that adds service c, or removes it
		w.mu.Lock()
		if i := slices.IndexFunc(w.file, func(s worldService) bool { return s.name == "c" }); i >= 0 {
			w.file = slices.Delete(w.file, i, i+1)
		} else {
			w.file = append(w.file, worldService{name: "c", port: 3})
		}
		w.mu.Unlock()
		c.reload()
	case 'l': // a reload that changes a harmless key of the service
		w.mu.Lock()
		for i := range w.file {
			if w.file[i].name == c.target {
				w.file[i].env++
			}
		}
		w.mu.Unlock()
		c.reload()
	case 'w': // a little time passes, less than any timeout
		time.Sleep(30 * time.Millisecond)
	case 'T': // time passes: ready timeouts, probations, drain timeouts
		time.Sleep(150 * time.Millisecond)
	}
	time.Sleep(3 * time.Millisecond)
}

// reload has the running handoffd read its config file again, in the
// background (it waits for an added service's first generation).
func (c *chaos) reload() {
	sup := c.w.inc.sup
	c.w.inc.bg.Go(func() { sup.ReloadConfig(context.Background()) })
}

// newest runs f, holding the world's lock, on the target service's newest
// process, live or not.
func (c *chaos) newest(f func(p *wproc)) {
	w := c.w
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range slices.Backward(w.procs) {
		if p.service == c.target {
			f(p)
			return
		}
	}
}

func closeOnce(ch chan struct{}) {
	if !chanClosed(ch) {
		close(ch)
	}
}

func (h *handle) proc() *wproc { return h.p }

// settle lets processes start normally again and waits until handoffd
// is at rest, then checks it.
func (c *chaos) settle() {
	c.t.Helper()
	w := c.w
	w.mu.Lock()
	w.startReady, w.startHealthy = true, true
	clear(w.broken)
	for _, p := range w.procs {
		closeOnce(p.ready)
		p.healthy = true
	}
	w.mu.Unlock()
	w.inc.bg.Wait()
	c.waitResting()
	w.checkInvariants(w.inc)
	c.checkStates()
	c.checkUntouched()
}

// waitResting waits until handoffd is at rest, or fails the test.
func (c *chaos) waitResting() {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.resting()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("handoffd did not come to rest: %v; generations %v", err, c.generations())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// generations lists each service's generations, for a failure message.
func (c *chaos) generations() map[string][]string {
	out := map[string][]string{}
	for _, svc := range c.w.inc.sup.list() {
		out[svc.Name()] = states(svc)
	}
	return out
}

// resting says why handoffd is not (yet) in its one good resting state.
func (c *chaos) resting() error {
	w := c.w
	running := map[string]bool{}
	var errs []error
	for _, svc := range w.inc.sup.list() {
		running[svc.Name()] = true
		if err := c.serviceResting(svc); err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", svc.Name(), err))
		}
	}
	for _, p := range w.live("") {
		if !running[p.service] {
			errs = append(errs, fmt.Errorf("service %s is not running, but its generation %d (pid %d) is", p.service, p.gen, p.pid))
		}
	}
	return errors.Join(errs...)
}

// serviceResting checks one service at rest.
func (c *chaos) serviceResting(svc *Service) error {
	w := c.w
	if svc.swapping.Load() {
		return errors.New("a swap is under way")
	}
	svc.mu.Lock()
	var active []*Generation
	for _, g := range svc.gens {
		if g.state == api.StateActive {
			active = append(active, g)
		}
	}
	cur, canary, standby, failure := svc.current, svc.canary, svc.standby, svc.failure
	svc.mu.Unlock()
	switch {
	case failure != nil:
		return fmt.Errorf("the service is failed: %v", failure.reason)
	case len(active) != 1:
		return fmt.Errorf("%d active generations", len(active))
	case cur != active[0]:
		return errors.New("the active generation is not the current one")
	case chanClosed(cur.proc.Done()):
		return fmt.Errorf("active generation %d has exited", cur.ID)
	case canary != nil && chanClosed(canary.proc.Done()):
		return fmt.Errorf("canary generation %d has exited", canary.ID)
	case standby != nil && chanClosed(standby.proc.Done()):
		return fmt.Errorf("standby generation %d has exited", standby.ID)
	}
	known := map[int]bool{}
	svc.mu.Lock()
	for _, g := range svc.gens {
		if g.state.Live() {
			known[g.pid] = true
		}
	}
	svc.mu.Unlock()
	allowed := map[int]string{cur.pid: "active"}
	if canary != nil {
		allowed[canary.pid] = "canary"
	}
	if standby != nil {
		allowed[standby.pid] = "standby"
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	name := svc.Name()
	for i := range 100 {
		h := (float64(i) + 0.5) / 100
		s, fellBack := w.route(name, h)
		switch {
		case s == nil:
			return fmt.Errorf("a new connection (hash %.3f) finds no socket", h)
		case fellBack:
			return fmt.Errorf("a new connection (hash %.3f) falls back to the kernel's hash: steering points at no open socket", h)
		}
		p := w.accepting(s)
		switch {
		case p == nil:
			return fmt.Errorf("new connections (hash %.3f) go to generation %d's socket, where nobody accepts", h, s.gen)
		case allowed[p.pid] != "active" && allowed[p.pid] != "canary":
			return fmt.Errorf("new connections (hash %.3f) go to generation %d, which is neither active nor a canary", h, p.gen)
		case canary == nil && p.pid != cur.pid:
			return fmt.Errorf("new connections (hash %.3f) go to generation %d, not the active %d", h, p.gen, cur.ID)
		}
	}
	for _, p := range w.procs {
		switch {
		case p.service != name || chanClosed(p.done) || allowed[p.pid] != "":
		case !known[p.pid]:
			return fmt.Errorf("generation %d (pid %d) runs, and handoffd does not know it", p.gen, p.pid)
		default:
			return fmt.Errorf("generation %d (pid %d) runs, but it is neither active, canary nor standby", p.gen, p.pid)
		}
	}
	for _, s := range w.sockets[name] {
		if !s.open() {
			continue
		}
		live := false
		for _, p := range w.procs {
			live = live || p.sock == s && allowed[p.pid] != ""
		}
		if !live {
			var holders []string
			for _, p := range w.procs {
				if slices.Contains(p.socks, s) {
					holders = append(holders, fmt.Sprintf("pid %d (%s)", p.pid, p.statusLocked()))
				}
			}
			ents, _ := os.ReadDir("/proc/self/fd")
			n := 0
			for _, e := range ents {
				if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); l == fmt.Sprintf("socket:[%d]", s.ino) {
					n++
				}
			}
			return fmt.Errorf("the socket of generation %d, which no longer runs, is still held open (%d fds; processes %v)", s.gen, n, holders)
		}
	}
	return nil
}

// checkStates: of a service with state_handoff, no generation got more
// than one STATE message, and the active one has had its one.
func (c *chaos) checkStates() {
	c.w.mu.Lock()
	var names []string
	for _, ws := range c.w.file {
		if ws.state {
			names = append(names, ws.name)
		}
	}
	c.w.mu.Unlock()
	for _, name := range names {
		svc, err := c.w.inc.sup.Service(name)
		if err != nil {
			continue
		}
		svc.mu.Lock()
		active := svc.current.pid
		svc.mu.Unlock()
		c.w.mu.Lock()
		for _, p := range c.w.procs {
			if p.service == name && (p.states > 1 || p.pid == active && p.states != 1) {
				c.t.Errorf("generation %d of %s got %d STATE messages: %q", p.gen, name, p.states, p.got)
			}
		}
		c.w.mu.Unlock()
	}
}

// checkUntouched: a service that no event went to still runs the
// generation that served once handoffd started, and no other process of
// it started since: nothing another service did, and no restart or reload
// of handoffd, changed it.
func (c *chaos) checkUntouched() {
	for name, pid := range c.first {
		if c.touched[name] {
			continue
		}
		c.w.mu.Lock()
		var gens []string
		ok := true
		n := 0
		for _, p := range c.w.procs {
			if p.service != name {
				continue
			}
			n++
			gens = append(gens, fmt.Sprintf("%d (pid %d, %s)", p.gen, p.pid, p.statusLocked()))
			if p.pid == pid && p.statusLocked() != "running" {
				ok = false
			}
		}
		c.w.mu.Unlock()
		if !ok || n != c.started[name] {
			c.t.Errorf("service %s got no event, yet its generations changed: %v", name, gens)
		}
	}
}

// statusLocked says whether p runs. Callers hold world.mu.
func (p *wproc) statusLocked() string {
	if chanClosed(p.done) {
		return "exited: " + p.status
	}
	if p.listening == nil {
		return "stopped accepting"
	}
	return "running"
}
