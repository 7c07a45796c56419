package lifecycle

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
)

// world is the host that FuzzLifecycle's handoffds run on: the processes
// of generations, which outlive the handoffd that started them, and each
// service's steering, which the kernel keeps pinned across restarts of
// handoffd. Each handoffd is an incarnation: a Supervisor whose handles on
// processes, routers and launcher stop acting the moment it is killed, as
// a killed process's do.
//
// Sockets are real: one end of a socket pair stands for a listening
// socket, and every copy of it (handoffd's, the process's) is a real fd.
// The world keeps the other end, which reads end-of-file once every copy
// is closed: so it knows, from the kernel, whether a socket is still in
// its reuseport group, and whether anything leaked one.
type world struct {
	t    *testing.T
	root string // holds each incarnation's state_dir

	mu      sync.Mutex
	lastPID int
	procs   []*wproc
	// sockets are every socket made, by service; steer is each
	// service's pinned steering.
	sockets map[string][]*wsocket
	steer   map[string]*steering
	// onActivate, if set, is called as steering moves to generation gen
	// of service, holding mu.
	onActivate func(service string, gen int)
	// activated holds each socket that steering pointed at once.
	activated map[*wsocket]bool
	// startReady and startHealthy: new processes say READY=1 at once,
	// and pass their health checks.
	startReady, startHealthy bool
	// lingering: a process told to stop closes its listening sockets and
	// goes on until it has drained (an event) or is killed; else it exits
	// at once.
	lingering bool
	// broken holds the services whose command cannot run now: their
	// starts fail.
	broken map[string]bool
	// file is the config file: services, in order, by name.
	file []worldService
	inc  *incarnation
	// dead are the incarnations that were killed.
	dead []*incarnation
}

// worldService is a service of the config file.
type worldService struct {
	name      string
	port      int
	env       int // a harmless key that reloads change
	health    bool
	state     bool
	probation bool
}

// incarnation is one run of handoffd.
type incarnation struct {
	n    int
	dir  string // its state_dir
	sup  *Supervisor
	gone chan struct{} // closed when it is killed
	dead bool          // under world.mu
	// bg holds what runs in its background: swaps, reloads, Start.
	bg sync.WaitGroup
}

// wproc is a process of a generation. Its fields are guarded by world.mu.
type wproc struct {
	service  string
	gen, pid int
	ticks    uint64
	ready    chan struct{}
	done     chan struct{}
	status   string
	exitedAt time.Time
	// listening are its copies of its listening sockets, socks the
	// sockets they are, nil once it has closed them; held are its other
	// fds (the fd store it got).
	listening []*os.File
	socks     []*wsocket
	held      []*os.File
	healthy   bool
	// pending: it waits for handoffd to record it before its command runs.
	pending bool
	// sock is the socket it was started on (its first listener's).
	sock *wsocket
	// notice is its NOTIFY_SOCKET, read by incarnation by.
	notice func(Notice)
	by     *incarnation
	// states counts the STATE messages it got, on any state channel.
	states int
	got    []string
}

// wsocket is a listening socket of one generation of a service.
type wsocket struct {
	service string
	gen     int
	// peer is the world's end of the pair: it reads EOF once every copy
	// of the socket is closed.
	peer *os.File
	// dev and ino name the socket, whichever copy.
	dev, ino uint64
}

// open reports whether some fd still holds the socket.
func (s *wsocket) open() bool {
	var b [1]byte
	for {
		n, err := syscall.Read(int(s.peer.Fd()), b[:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return true
		case err == nil && n > 0:
			continue // nobody writes to it; drain anyway
		default:
			return false // EOF
		}
	}
}

// steering is what the kernel holds for one service: the sockets by slot
// (generation), the active slot and the canary's split.
type steering struct {
	slots  map[int]*wsocket
	active int
	canary int
	share  float64
}

const worldSlots = 64

func newWorld(t *testing.T) *world {
	w := &world{t: t, root: t.TempDir(), sockets: map[string][]*wsocket{}, steer: map[string]*steering{},
		activated: map[*wsocket]bool{}, broken: map[string]bool{}, startReady: true, startHealthy: true}
	t.Cleanup(w.close)
	return w
}

// render writes the config file for an incarnation whose state_dir is dir.
func (w *world) render(dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "control: %s\nstate_dir: %s\nmode: ebpf\nservices:\n", filepath.Join(w.root, "ctl.sock"), dir)
	for _, s := range w.file {
		fmt.Fprintf(&b, "  - name: %s\n    command: [%s]\n    env: [V=%d]\n", s.name, s.name, s.env)
		fmt.Fprintf(&b, "    listeners: [{name: http, address: \"tcp://127.0.0.1:%d\"}]\n", s.port)
		b.WriteString("    ready_timeout: 100ms\n    drain_timeout: 100ms\n")
		if s.state {
			b.WriteString("    state_handoff: true\n    state_timeout: 60ms\n")
		}
		if s.probation {
			b.WriteString("    probation: 100ms\n")
		}
		if s.health {
			b.WriteString("    health: {http: /healthz, listener: http, interval: 4ms, timeout: 200ms, healthy: 1, unhealthy: 2}\n")
		}
	}
	return b.String()
}

// start runs a new handoffd, which finds state (the state file its
// predecessor left, nil for none) in its state_dir.
func (w *world) start(state []byte) {
	w.t.Helper()
	inc := &incarnation{gone: make(chan struct{})}
	w.mu.Lock()
	inc.n = len(w.dead) + 1
	w.mu.Unlock()
	inc.dir = filepath.Join(w.root, fmt.Sprint(inc.n))
	if err := os.Mkdir(inc.dir, 0o700); err != nil {
		w.t.Fatal(err)
	}
	if state != nil {
		if err := os.WriteFile(filepath.Join(inc.dir, StateFile), state, 0o600); err != nil {
			w.t.Fatal(err)
		}
	}
	load := func() (*config.Config, error) {
		w.mu.Lock()
		doc := w.render(inc.dir)
		w.mu.Unlock()
		return config.ParseConfig([]byte(doc))
	}
	cfg, err := load()
	if err != nil {
		w.t.Fatal(err)
	}
	sup, err := New(cfg, Options{Mode: api.ModeEBPF, NewRouter: w.newRouter(inc), Launcher: &wlauncher{w: w, inc: inc},
		Counter: fakeCounter{}, Logger: worldLogger(inc.n), LoadConfig: load})
	if err != nil {
		w.t.Fatalf("handoffd %d does not start: %v", inc.n, err)
	}
	inc.sup = sup
	w.mu.Lock()
	w.inc = inc
	w.mu.Unlock()
	// Its first starts wait for processes that the events make ready.
	inc.bg.Go(func() { sup.Start(context.Background()) })
}

// kill ends the running handoffd as SIGKILL does, or, graceful, as
// SIGTERM does (a last save of the state first), and starts the next one
// on the state file as it was at that moment.
func (w *world) kill(graceful bool) { w.killWith(graceful, nil) }

// killWith is kill with the next handoffd finding state in its state
// file, instead of what the dead one left (nil).
func (w *world) killWith(graceful bool, state []byte) {
	inc := w.inc
	if graceful {
		inc.sup.Detach()
	}
	w.mu.Lock()
	if state == nil {
		var err error
		state, err = w.stateFile()
		if err != nil {
			w.mu.Unlock()
			w.t.Fatal(err)
		}
	}
	inc.dead = true
	close(inc.gone)
	for _, p := range w.procs {
		if p.pending && p.by == inc {
			w.exitLocked(p, "not run: handoffd died")
		}
	}
	w.dead = append(w.dead, inc)
	w.mu.Unlock()
	w.checkInvariants(inc)
	w.bury(inc)
	w.start(state)
}

// stateFile reads the running handoffd's state file (nil when there is
// none yet).
func (w *world) stateFile() ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(w.inc.dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

// bury lets the goroutines of a killed handoffd unwind, and closes the
// fds it held, as its death did: its handles are done, and its routers
// and launcher act no more.
func (w *world) bury(inc *incarnation) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	inc.sup.Stop(ctx)
	if ctx.Err() != nil {
		w.t.Errorf("handoffd %d: its goroutines did not end: %v", inc.n, ctx.Err())
	}
	inc.bg.Wait()
}

// checkInvariants reports the broken invariants of inc's services.
func (w *world) checkInvariants(inc *incarnation) {
	for _, svc := range inc.sup.list() {
		if broken := svc.Invariants(); len(broken) > 0 {
			w.t.Errorf("handoffd %d, service %s: invariants broken: %v", inc.n, svc.Name(), broken)
		}
	}
}

// close stops the running handoffd, ends every process and checks that
// no socket is held by anyone any more.
func (w *world) close() {
	if inc := w.inc; inc != nil && inc.sup != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := inc.sup.Stop(ctx); err != nil {
			w.t.Errorf("stop: %v", err)
		}
		cancel()
		inc.bg.Wait()
	}
	w.mu.Lock()
	procs := slices.Clone(w.procs)
	w.mu.Unlock()
	for _, p := range procs {
		w.exit(p, "test over")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, list := range w.sockets {
		for _, s := range list {
			if s.open() {
				w.t.Errorf("service %s: a copy of generation %d's socket is still open after everything stopped", s.service, s.gen)
			}
			s.peer.Close()
		}
	}
}

// exit ends p; its fds close with it.
func (w *world) exit(p *wproc, status string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.exitLocked(p, status)
}

func (w *world) exitLocked(p *wproc, status string) {
	if chanClosed(p.done) {
		return
	}
	p.status, p.exitedAt = status, time.Now()
	closeFiles(p.listening)
	closeFiles(p.held)
	p.listening, p.socks, p.held = nil, nil, nil
	close(p.done)
}

// signal delivers sig to p.
func (w *world) signal(p *wproc, sig syscall.Signal) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case sig == syscall.SIGKILL:
		w.exitLocked(p, "signal: killed")
	case sig == syscall.SIGTERM && w.lingering:
		closeFiles(p.listening)
		p.listening, p.socks = nil, nil
	case sig == syscall.SIGTERM:
		w.exitLocked(p, "signal: terminated")
	}
}

// live returns the live processes of service (every service: ""),
// oldest first.
func (w *world) live(service string) []*wproc {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*wproc
	for _, p := range w.procs {
		if !chanClosed(p.done) && (service == "" || p.service == service) {
			out = append(out, p)
		}
	}
	return out
}

// send sends m with files on p's NOTIFY_SOCKET; nobody reads it once the
// handoffd that did is dead.
func (w *world) send(p *wproc, m stateproto.Message, files ...*os.File) {
	w.mu.Lock()
	notice, by := p.notice, p.by
	alive := !chanClosed(p.done) && by != nil && !by.dead
	w.mu.Unlock()
	if !alive || notice == nil {
		closeFiles(files)
		return
	}
	sealed := len(files) > 0
	for _, f := range files {
		sealed = sealed && kernel.CheckSealed(int(f.Fd())) == nil
	}
	notice(Notice{Msg: m, Files: files, Sealed: sealed})
}

// steered checks a change of steering towards slot gen of st, made by
// inc: it must not point at a process that had exited, unless steering
// goes back to a socket it pointed at before (handoffd holds the sockets
// of the current generation, dead or not, so that new connections wait
// for its replacement). Callers hold w.mu.
func (w *world) steered(inc *incarnation, st *steering, service string, gen int) {
	s := st.slots[gen%worldSlots]
	if s == nil {
		w.t.Errorf("handoffd %d: steering of %s moved to slot %d, where no socket was ever put", inc.n, service, gen%worldSlots)
		return
	}
	again := w.activated[s]
	w.activated[s] = true
	for _, p := range w.procs {
		// A process may exit while a swap activates it (nothing makes
		// the two atomic); one that exited well before was missed.
		if p.sock == s && !again && !p.exitedAt.IsZero() && time.Since(p.exitedAt) > 10*time.Millisecond {
			w.t.Errorf("handoffd %d: steering of %s moved to generation %d, whose process had exited", inc.n, service, gen)
		}
	}
}

// route says where a new connection of service goes whose hash is h (0
// to 1), as steer.c decides: the split's slot or the active one, the
// other when that one is empty, and else any socket of the group.
func (w *world) route(service string, h float64) (s *wsocket, fellBack bool) {
	st := w.steer[service]
	if st != nil {
		key, other := st.active, st.active
		if st.share > 0 && st.canary != st.active {
			if h < st.share {
				key, other = st.canary, st.active
			} else {
				other = st.canary
			}
		}
		for _, slot := range []int{key, other} {
			if s := st.slots[slot%worldSlots]; s != nil && s.open() {
				return s, false
			}
		}
	}
	var open []*wsocket
	for _, s := range w.sockets[service] {
		if s.open() {
			open = append(open, s)
		}
	}
	if len(open) == 0 {
		return nil, true
	}
	return open[int(h*float64(len(open)))%len(open)], true
}

// accepting returns the live process that accepts on s, or nil.
func (w *world) accepting(s *wsocket) *wproc {
	for _, p := range w.procs {
		if slices.Contains(p.socks, s) && !chanClosed(p.done) {
			return p
		}
	}
	return nil
}

// wlauncher is the Launcher of one incarnation.
type wlauncher struct {
	w   *world
	inc *incarnation
}

var errHandoffdDead = errors.New("handoffd was killed")

func (l *wlauncher) Start(spec LaunchSpec) (Process, error) {
	w := l.w
	w.mu.Lock()
	if l.inc.dead {
		w.mu.Unlock()
		return nil, errHandoffdDead
	}
	if w.broken[spec.Service] {
		w.mu.Unlock()
		return nil, fmt.Errorf("fork/exec %s: no such file or directory", spec.Service)
	}
	var socks []*wsocket
	for _, f := range spec.Files {
		s := w.socketOf(spec.Service, spec.Generation, f)
		if s == nil {
			w.t.Errorf("generation %d of %s started with a socket that is not its own", spec.Generation, spec.Service)
		}
		socks = append(socks, s)
	}
	w.lastPID++
	p := &wproc{service: spec.Service, gen: spec.Generation, pid: 1000 + w.lastPID, ticks: uint64(w.lastPID),
		ready: make(chan struct{}), done: make(chan struct{}), healthy: w.startHealthy, notice: spec.Notice, by: l.inc,
		socks: socks}
	if len(socks) > 0 {
		p.sock = socks[0]
	}
	if w.startReady {
		close(p.ready)
	}
	// The child gets copies of what it is started with.
	for _, f := range spec.Files {
		p.listening = append(p.listening, mustDup(f))
	}
	for _, sf := range spec.Stored {
		p.held = append(p.held, mustDup(sf.File))
	}
	w.procs = append(w.procs, p)
	h := newHandle(w, l.inc, p)
	if spec.StateChannel {
		h.ch = w.channel(h)
	}
	p.pending = spec.Started != nil
	w.mu.Unlock()
	// The process exists; its command runs once handoffd recorded it,
	// and never if handoffd dies before (the child reads end-of-file
	// where it waits for the word to go on).
	if spec.Started != nil {
		err := spec.Started(p.pid)
		w.mu.Lock()
		p.pending = false
		switch {
		case err != nil:
			w.exitLocked(p, "not run: "+err.Error())
		case l.inc.dead:
			w.exitLocked(p, "not run: handoffd died")
		}
		w.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	return h, nil
}

// socketOf returns the socket of generation gen of service that f is a
// copy of, or nil. Callers hold w.mu.
func (w *world) socketOf(service string, gen int, f *os.File) *wsocket {
	dev, ino, err := fileID(f)
	if err != nil {
		return nil
	}
	for _, s := range w.sockets[service] {
		if s.gen == gen && s.dev == dev && s.ino == ino {
			return s
		}
	}
	return nil
}

func mustDup(f *os.File) *os.File {
	d, err := kernel.Dup(f)
	if err != nil {
		panic(err)
	}
	return d
}

func (l *wlauncher) Adopt(service string, gen, pid int, ticks uint64) (Process, error) {
	w := l.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if l.inc.dead {
		return nil, errHandoffdDead
	}
	var p *wproc
	for _, q := range w.procs {
		if q.pid == pid && q.ticks == ticks && !chanClosed(q.done) {
			p = q
		}
	}
	if p == nil {
		return nil, ErrGone
	}
	if p.service != service || p.gen != gen {
		w.t.Errorf("re-adopting generation %d of %s found pid %d, generation %d of %s", gen, service, pid, p.gen, p.service)
	}
	return &adoptedHandle{handle: newHandle(w, l.inc, p)}, nil
}

func (l *wlauncher) StartTicks(pid int) uint64 {
	l.w.mu.Lock()
	defer l.w.mu.Unlock()
	for _, p := range l.w.procs {
		if p.pid == pid && !chanClosed(p.done) {
			return p.ticks
		}
	}
	return 0
}

// handle is an incarnation's Process: it is done when the process exits
// or the incarnation dies, and signals nothing once the incarnation is
// dead.
type handle struct {
	w    *world
	inc  *incarnation
	p    *wproc
	done chan struct{}
	mu   sync.Mutex
	ch   *fakeChannel // the state channel with this incarnation
}

func newHandle(w *world, inc *incarnation, p *wproc) *handle {
	h := &handle{w: w, inc: inc, p: p, done: make(chan struct{})}
	go func() {
		select {
		case <-p.done:
		case <-inc.gone:
		}
		close(h.done)
	}()
	return h
}

func (h *handle) Pid() int               { return h.p.pid }
func (h *handle) Ready() <-chan struct{} { return h.p.ready }
func (h *handle) Done() <-chan struct{}  { return h.done }
func (h *handle) Reloads() bool          { return true }

func (h *handle) ExitStatus() string {
	<-h.done
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	if h.p.status == "" {
		return "handoffd was killed"
	}
	return h.p.status
}

func (h *handle) Signal(sig syscall.Signal) error {
	h.w.mu.Lock()
	dead := h.inc.dead
	h.w.mu.Unlock()
	if dead {
		return errHandoffdDead
	}
	h.w.signal(h.p, sig)
	return nil
}

func (h *handle) Channel() StateChannel {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch == nil {
		return nil
	}
	return h.ch
}

// channel makes h's state channel, whose other end is the process: it
// hands over its snapshot on HANDOVER=1 and loads what it receives.
func (w *world) channel(h *handle) *fakeChannel {
	ch := &fakeChannel{replies: make(chan stateproto.Message, 8)}
	ch.onSend = func(m stateproto.Message, data string) {
		w.mu.Lock()
		dead := h.inc.dead
		if !dead {
			h.p.got = append(h.p.got, strings.TrimSpace(strings.ReplaceAll(string(m.Encode()), "\n", " ")))
			if _, ok := m[stateproto.State]; ok {
				h.p.states++
			}
		}
		w.mu.Unlock()
		switch {
		case dead:
		case m[stateproto.Handover] == "1":
			f := sealedMemfd(fmt.Sprintf("state of %d", h.p.gen))
			w.send(h.p, stateproto.Message{stateproto.FDStore: "1", stateproto.FDName: stateproto.StateName, stateproto.NotifyState: "1"}, f)
		case m[stateproto.State] == "1":
			ch.replies <- stateproto.Message{stateproto.Loaded: "1"}
		}
	}
	return ch
}

// adoptedHandle is the Process of a re-adopted generation.
type adoptedHandle struct{ *handle }

func (h *adoptedHandle) Renotify(notice func(Notice)) error {
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	if h.inc.dead {
		return errHandoffdDead
	}
	h.p.notice, h.p.by = notice, h.inc
	return nil
}

func (h *adoptedHandle) AttachChannel(f *os.File) error {
	f.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch != nil {
		return errors.New("has one already")
	}
	h.ch = h.w.channel(h.handle)
	return nil
}

// FindListeners returns copies of the process's listening sockets.
func (h *adoptedHandle) FindListeners(listeners []config.ListenerConfig) ([]*os.File, error) {
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	if chanClosed(h.p.done) {
		return nil, ErrGone
	}
	if len(h.p.listening) < len(listeners) {
		return nil, fmt.Errorf("listener %s not found among the fds of pid %d", listeners[0].Name, h.p.pid)
	}
	var files []*os.File
	for _, f := range h.p.listening {
		files = append(files, mustDup(f))
	}
	return files, nil
}

// FindFiles returns copies of the process's fds named in want.
func (h *adoptedHandle) FindFiles(want map[FileID]bool) (map[FileID]*os.File, error) {
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	if chanClosed(h.p.done) {
		return nil, ErrGone
	}
	found := map[FileID]*os.File{}
	for _, f := range slices.Concat(h.p.listening, h.p.held) {
		if d, i, err := fileID(f); err == nil && want[FileID{d, i}] && found[FileID{d, i}] == nil {
			found[FileID{d, i}] = mustDup(f)
		}
	}
	return found, nil
}

// wrouter is the Router of one service in one incarnation.
type wrouter struct {
	w       *world
	inc     *incarnation
	service string
	st      *steering
}

// newRouter is inc's NewRouter: adopting reopens the pinned steering,
// else fresh steering replaces the pins.
func (w *world) newRouter(inc *incarnation) NewRouter {
	return func(sc *config.ServiceConfig, adopting bool) (Router, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if inc.dead {
			return nil, errHandoffdDead
		}
		st := w.steer[sc.Name]
		if adopting && st == nil {
			return nil, fmt.Errorf("no steering pinned for %s", sc.Name)
		}
		if !adopting {
			st = &steering{slots: map[int]*wsocket{}}
			w.steer[sc.Name] = st
		}
		return &wrouter{w: w, inc: inc, service: sc.Name, st: st}, nil
	}
}

// gate locks the world for a router operation, or says the incarnation
// is dead (and unlocks).
func (r *wrouter) gate() bool {
	r.w.mu.Lock()
	if r.inc.dead {
		r.w.mu.Unlock()
		return false
	}
	return true
}

func (r *wrouter) Prepare(gen int) ([]*os.File, error) {
	if !r.gate() {
		return nil, errHandoffdDead
	}
	defer r.w.mu.Unlock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := syscall.SetNonblock(fds[1], true); err != nil {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
		return nil, err
	}
	f := os.NewFile(uintptr(fds[0]), fmt.Sprintf("%s gen %d", r.service, gen))
	s := &wsocket{service: r.service, gen: gen, peer: os.NewFile(uintptr(fds[1]), "peer")}
	if dev, ino, err := fileID(f); err == nil {
		s.dev, s.ino = dev, ino
	}
	r.w.sockets[r.service] = append(r.w.sockets[r.service], s)
	r.st.slots[gen%worldSlots] = s
	return []*os.File{f}, nil
}

func (r *wrouter) Activate(gen int) error {
	if !r.gate() {
		return nil
	}
	defer r.w.mu.Unlock()
	r.w.steered(r.inc, r.st, r.service, gen)
	r.st.active = gen
	if r.w.onActivate != nil {
		r.w.onActivate(r.service, gen)
	}
	return nil
}

func (r *wrouter) SetSplit(gen int, share float64, _ bool) error {
	if !r.gate() {
		return nil
	}
	defer r.w.mu.Unlock()
	if share > 0 {
		r.w.steered(r.inc, r.st, r.service, gen)
	}
	r.st.canary, r.st.share = gen, share
	return nil
}

func (r *wrouter) Promote(gen int) error {
	if !r.gate() {
		return nil
	}
	defer r.w.mu.Unlock()
	r.w.steered(r.inc, r.st, r.service, gen)
	r.st.active, r.st.canary, r.st.share = gen, 0, 0
	return nil
}

// DialProbe reaches generation gen's own socket: a process that accepts
// on it answers 200, or 503 when it is unhealthy.
func (r *wrouter) DialProbe(ctx context.Context, gen, _ int) (net.Conn, error) {
	if !r.gate() {
		return nil, errHandoffdDead
	}
	s := r.st.slots[gen%worldSlots]
	var p *wproc
	if s != nil && s.open() {
		p = r.w.accepting(s)
	}
	healthy := p != nil && p.healthy
	r.w.mu.Unlock()
	if p == nil {
		return nil, errors.New("connection refused")
	}
	client, server := net.Pipe()
	go answerProbe(server, healthy)
	return client, nil
}

// answerProbe answers one health check on c.
func answerProbe(c net.Conn, healthy bool) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return
	}
	io.Copy(io.Discard, req.Body)
	status := "200 OK"
	if !healthy {
		status = "503 Service Unavailable"
	}
	fmt.Fprintf(c, "HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status)
}

func (r *wrouter) Close() error {
	if !r.gate() {
		return nil
	}
	defer r.w.mu.Unlock()
	if r.w.steer[r.service] == r.st {
		delete(r.w.steer, r.service) // the pins
	}
	return nil
}

func (r *wrouter) Stats(int, int) (SlotStats, bool) { return SlotStats{}, false }
func (r *wrouter) Migrated() uint64                 { return 0 }
func (r *wrouter) Forget(int)                       {}
func (r *wrouter) Adopt(int, []*os.File) error      { return nil }
func (r *wrouter) Release() error                   { return nil }
func (r *wrouter) Slots() int                       { return worldSlots }

// worldLogger is handoffd n's logger: quiet, unless HANDOFF_FUZZ_LOG is
// set (to read what a failing sequence did).
func worldLogger(n int) *slog.Logger {
	if os.Getenv("HANDOFF_FUZZ_LOG") == "" {
		return quietLogger()
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("handoffd", n)
}
