package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
)

// fakeProcess is a generation whose readiness and exit the test drives.
type fakeProcess struct {
	pid     int
	ready   chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	signals []syscall.Signal
	// exitOn makes the process exit when it receives one of these.
	exitOn map[syscall.Signal]bool
	status string
	// noReload: the process never said that it reloads on SIGHUP.
	noReload bool
	// spec is what it was started with; stored, what it found in its
	// stored fds (name=contents).
	spec   LaunchSpec
	stored []string
	// ch is its state channel, nil without state_handoff.
	ch *fakeChannel
}

// Channel implements Stateful.
func (p *fakeProcess) Channel() StateChannel {
	if p.ch == nil {
		return nil
	}
	return p.ch
}

// send sends a message with files to handoffd on NOTIFY_SOCKET.
func (p *fakeProcess) send(m stateproto.Message, files ...*os.File) {
	sealed := len(files) > 0
	for _, f := range files {
		sealed = sealed && kernel.CheckSealed(int(f.Fd())) == nil
	}
	p.spec.Notice(Notice{Msg: m, Files: files, Sealed: sealed})
}

func (p *fakeProcess) Reloads() bool { return !p.noReload }

func (p *fakeProcess) Pid() int               { return p.pid }
func (p *fakeProcess) Ready() <-chan struct{} { return p.ready }
func (p *fakeProcess) Done() <-chan struct{}  { return p.done }
func (p *fakeProcess) ExitStatus() string     { <-p.done; return p.status }

func (p *fakeProcess) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	p.signals = append(p.signals, sig)
	exit := p.exitOn[sig] || sig == syscall.SIGKILL
	p.mu.Unlock()
	if exit {
		p.exit("signal: " + sig.String())
	}
	return nil
}

func (p *fakeProcess) exit(status string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
	default:
		p.status = status
		close(p.done)
	}
}

func (p *fakeProcess) setReady() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !chanClosed(p.ready) {
		close(p.ready)
	}
}

func (p *fakeProcess) got() []syscall.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]syscall.Signal(nil), p.signals...)
}

// fakeLauncher hands out fakeProcesses; ready says whether they become
// ready at once.
type fakeLauncher struct {
	mu    sync.Mutex
	procs []*fakeProcess
	ready bool
	// ignoreStop makes processes ignore the stop signal.
	ignoreStop bool
	// noReload makes processes that never say they reload on SIGHUP.
	noReload bool
	// onState, if set, is how processes answer what handoffd sends on
	// their state channels; see answerState.
	onState func(p *fakeProcess, m stateproto.Message, data string)
	// failStarts makes that many next starts fail, as a command that
	// cannot be run does.
	failStarts int
}

// errNoCommand is what a start fails with under failStarts.
var errNoCommand = errors.New("exec demo: no such file or directory")

func (l *fakeLauncher) Start(spec LaunchSpec) (Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failStarts > 0 {
		l.failStarts--
		return nil, errNoCommand
	}
	p := &fakeProcess{pid: 1000 + spec.Generation, ready: make(chan struct{}), done: make(chan struct{}),
		exitOn: map[syscall.Signal]bool{syscall.SIGTERM: !l.ignoreStop, syscall.SIGHUP: l.noReload}, noReload: l.noReload}
	if l.ready {
		close(p.ready)
	}
	p.spec = spec
	for _, sf := range spec.Stored {
		data, err := io.ReadAll(io.NewSectionReader(sf.File, 0, 1<<20))
		if err != nil {
			return nil, err
		}
		p.stored = append(p.stored, sf.Name+"="+string(data))
	}
	if spec.StateChannel {
		p.ch = &fakeChannel{replies: make(chan stateproto.Message, 8)}
		if on := l.onState; on != nil {
			p.ch.onSend = func(m stateproto.Message, data string) { on(p, m, data) }
		}
	}
	l.procs = append(l.procs, p)
	return p, nil
}

// fakeChannel is handoffd's end of a fake generation's state channel:
// what handoffd sends is recorded, with the contents of the file
// attached, and onSend plays the generation's side.
type fakeChannel struct {
	mu      sync.Mutex
	sent    []string
	replies chan stateproto.Message
	onSend  func(m stateproto.Message, data string)
}

func (c *fakeChannel) Send(m stateproto.Message, f *os.File) error {
	var data string
	if f != nil {
		b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
		if err != nil {
			return err
		}
		data = string(b)
	}
	line := strings.TrimSpace(strings.ReplaceAll(string(m.Encode()), "\n", " "))
	if f != nil {
		line += " [" + data + "]"
	}
	c.mu.Lock()
	c.sent = append(c.sent, line)
	on := c.onSend
	c.mu.Unlock()
	if on != nil {
		on(m, data)
	}
	return nil
}

func (c *fakeChannel) Receive(ctx context.Context) (stateproto.Message, error) {
	select {
	case m := <-c.replies:
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// got returns what handoffd sent, one line per message.
func (c *fakeChannel) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sent)
}

// answerState is the state side of a well-behaved generation: it hands
// over "state of N" on HANDOVER and loads what it receives.
func answerState(p *fakeProcess, m stateproto.Message, _ string) {
	switch {
	case m[stateproto.Handover] == "1":
		f := sealedMemfd(fmt.Sprintf("state of %d", p.pid-1000))
		p.send(stateproto.Message{stateproto.FDStore: "1", stateproto.FDName: stateproto.StateName, stateproto.NotifyState: "1"}, f)
	case m[stateproto.State] == "1":
		p.ch.replies <- stateproto.Message{stateproto.Loaded: "1"}
	}
}

// sealedMemfd returns a sealed memfd that holds data, or panics.
func sealedMemfd(data string) *os.File {
	f, err := kernel.SealedMemfd("test", func(w io.Writer) error { _, err := io.WriteString(w, data); return err })
	if err != nil {
		panic(err)
	}
	return f
}

// Adopt finds nothing: no earlier handoffd ran in a unit test.
func (l *fakeLauncher) Adopt(string, int, int, uint64) (Process, error) {
	return nil, ErrGone
}

// fdTable is the fd table of a re-adopted fake process, for FileFinder:
// the files it holds, and whether its listening sockets are missing.
type fdTable struct {
	files []*os.File
	// noListeners: FindListeners finds none; else each is a fresh
	// socket, as handoffd's copy of a listener is.
	noListeners bool
	// searches, if set, counts the calls of FindFiles.
	searches *int
}

func (t fdTable) FindListeners(ls []config.ListenerConfig) ([]*os.File, error) {
	if t.noListeners {
		return nil, fmt.Errorf("listener %s (%s) not found among the fds", ls[0].Name, ls[0].Address)
	}
	var out []*os.File
	for range ls {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			closeFiles(out)
			return nil, err
		}
		syscall.Close(fds[1])
		out = append(out, os.NewFile(uintptr(fds[0]), "adopted listener"))
	}
	return out, nil
}

func (t fdTable) FindFiles(want map[FileID]bool) (map[FileID]*os.File, error) {
	if t.searches != nil {
		*t.searches++
	}
	found := map[FileID]*os.File{}
	for _, f := range t.files {
		dev, ino, err := fileID(f)
		id := FileID{dev, ino}
		if err != nil || !want[id] || found[id] != nil {
			continue
		}
		d, err := kernel.Dup(f)
		if err != nil {
			return found, err
		}
		found[id] = d
	}
	return found, nil
}

// StartTicks gives every fake process the same start time.
func (l *fakeLauncher) StartTicks(pid int) uint64 { return 1 }

func (l *fakeLauncher) setReady(ready bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ready = ready
}

// readyAll makes every process ready.
func (l *fakeLauncher) readyAll() {
	l.mu.Lock()
	procs := slices.Clone(l.procs)
	l.mu.Unlock()
	for _, p := range procs {
		p.setReady()
	}
}

func (l *fakeLauncher) proc(i int) *fakeProcess {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.procs[i]
}

func (l *fakeLauncher) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.procs)
}

// fakeRouter records the active generation. Its sockets are real files
// (one end of a socket pair per listener), so that -race and fd bugs show.
type fakeRouter struct {
	mu       sync.Mutex
	active   int
	prepared []int
	failAt   int // activate fails for this generation
	// failPromote makes Promote fail after it moved the active slot of
	// the first listener, as a map update refused half way does.
	failPromote bool
	// listeners is how many sockets Prepare returns (default 1).
	listeners int
	// canary and share are the split (SetSplit, Promote).
	canary int
	share  float64
	sticky bool
	// probe dials the health checks of a generation (default: refused).
	probe func(ctx context.Context, gen int) (net.Conn, error)
	// peers, when not nil, keeps the other end of each socket Prepare
	// hands out, by generation, so that open tells whether handoffd
	// still holds a generation's sockets.
	peers map[int][]*os.File
	// released counts the calls of Release.
	released int
}

// open reports whether handoffd still holds a socket of generation gen:
// a socket pair's end reads EOF once the other end is closed.
func (r *fakeRouter) open(gen int) bool {
	r.mu.Lock()
	peers := slices.Clone(r.peers[gen])
	r.mu.Unlock()
	buf := make([]byte, 1)
	for _, p := range peers {
		n, _, err := syscall.Recvfrom(int(p.Fd()), buf, syscall.MSG_DONTWAIT)
		if n != 0 || err != nil { // EAGAIN: the other end is open
			return true
		}
	}
	return false
}

// closePeers closes the ends kept in peers.
func (r *fakeRouter) closePeers() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ps := range r.peers {
		closeFiles(ps)
	}
	r.peers = nil
}

func (r *fakeRouter) SetSplit(gen int, share float64, sticky bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.canary, r.share, r.sticky = gen, share, sticky
	return nil
}

func (r *fakeRouter) Promote(gen int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failPromote {
		r.active = gen
		return errors.New("listener http2: map update refused")
	}
	r.active, r.canary, r.share, r.sticky = gen, 0, 0, false
	return nil
}

func (r *fakeRouter) DialProbe(ctx context.Context, gen, _ int) (net.Conn, error) {
	r.mu.Lock()
	probe := r.probe
	r.mu.Unlock()
	if probe == nil {
		return nil, errors.New("connection refused")
	}
	return probe(ctx, gen)
}

// splitNow returns the canary's generation and share.
func (r *fakeRouter) splitNow() (int, float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.canary, r.share
}

func (r *fakeRouter) Prepare(gen int) ([]*os.File, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prepared = append(r.prepared, gen)
	var files []*os.File
	for range max(r.listeners, 1) {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			closeFiles(files)
			return nil, err
		}
		if r.peers != nil {
			r.peers[gen] = append(r.peers[gen], os.NewFile(uintptr(fds[1]), fmt.Sprintf("peer of gen %d", gen)))
		} else {
			syscall.Close(fds[1])
		}
		files = append(files, os.NewFile(uintptr(fds[0]), fmt.Sprintf("gen %d", gen)))
	}
	return files, nil
}

func (r *fakeRouter) Activate(gen int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen == r.failAt {
		return fmt.Errorf("map update refused")
	}
	r.active = gen
	return nil
}

func (r *fakeRouter) activeGen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.active
}

func (r *fakeRouter) Close() error { return nil }
func (r *fakeRouter) Release() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.released++
	return nil
}

func (r *fakeRouter) releases() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.released
}
func (r *fakeRouter) Stats(int, int) (SlotStats, bool) { return SlotStats{Selected: 9}, true }
func (r *fakeRouter) Migrated() uint64                 { return 3 }
func (r *fakeRouter) Forget(int)                       {}
func (r *fakeRouter) Adopt(int, []*os.File) error      { return nil }
func (r *fakeRouter) Slots() int                       { return 64 }

// fakeCounter reads each socket's fd as the real one does, and counts 7
// connections per generation from the kernel in ebpf mode, 5 from /proc
// in fdpass mode.
type fakeCounter struct{}

func (fakeCounter) AcceptQueue(f *os.File) (uint32, bool) {
	var st syscall.Stat_t
	return 0, syscall.Fstat(int(f.Fd()), &st) == nil
}

func (fakeCounter) Count(gens []*Counted) {
	for _, g := range gens {
		n, source := int64(5), api.SourceProc
		if g.Mode == api.ModeEBPF {
			n, source = 7, api.SourceEBPF
		}
		g.Total, g.Source = &n, source
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeObserver records swap results and phase names in order.
type fakeObserver struct {
	mu     sync.Mutex
	events []string
}

func (o *fakeObserver) SwapDone(_, result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, result)
}

func (o *fakeObserver) PhaseDone(_, phase string, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, phase)
}

func (o *fakeObserver) DrainKilled(_ string, held int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, fmt.Sprintf("killed %d", held))
}

func (o *fakeObserver) FDStoreRefused(_, reason string) { o.add("refused " + reason) }
func (o *fakeObserver) StateHandoff(_, result string)   { o.add("handoff " + result) }
func (o *fakeObserver) StateFinal(_, result string)     { o.add("final " + result) }
func (o *fakeObserver) GenerationCrashed(string)        { o.add("crashed") }

func (o *fakeObserver) add(e string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, e)
}

func (o *fakeObserver) got() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.events...)
}

// fakeRouters is a NewRouter of fakeRouters.
func fakeRouters(*config.ServiceConfig, bool) (Router, error) { return &fakeRouter{}, nil }
