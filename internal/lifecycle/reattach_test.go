package lifecycle

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/stateproto"
)

// reattachProcess is a re-adopted fake generation: its NOTIFY_SOCKET is
// bound again (Renotify), and the channel it sends becomes its own
// (AttachChannel), with answerState as its side.
type reattachProcess struct {
	*fakeProcess
	fdTable
	mu       sync.Mutex
	channel  *fakeChannel
	attached []*os.File // what AttachChannel took, closed
}

func (p *reattachProcess) Renotify(notice func(Notice)) error {
	p.spec.Notice = notice
	return nil
}

func (p *reattachProcess) Channel() StateChannel {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.channel == nil {
		return nil
	}
	return p.channel
}

func (p *reattachProcess) AttachChannel(f *os.File) error {
	f.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.attached = append(p.attached, f)
	if p.channel != nil {
		return errors.New("has one already")
	}
	p.channel = &fakeChannel{replies: make(chan stateproto.Message, 8)}
	p.fakeProcess.ch = p.channel
	p.channel.onSend = func(m stateproto.Message, data string) { answerState(p.fakeProcess, m, data) }
	return nil
}

// reattachLauncher re-adopts every saved generation as a
// reattachProcess.
type reattachLauncher struct {
	fakeLauncher
	adopted []*reattachProcess
}

func (l *reattachLauncher) Adopt(_ string, gen, pid int, _ uint64) (Process, error) {
	p := &fakeProcess{pid: pid, ready: make(chan struct{}), done: make(chan struct{}), exitOn: map[syscall.Signal]bool{syscall.SIGTERM: true}}
	close(p.ready)
	rp := &reattachProcess{fakeProcess: p}
	l.mu.Lock()
	l.adopted = append(l.adopted, rp)
	l.mu.Unlock()
	return rp, nil
}

// adopted returns a new Service, as a restarted handoffd makes it, that
// has re-adopted saved with l.
func adopted(t *testing.T, cfg *config.ServiceConfig, mode api.Mode, l Launcher, saved savedService) *Service {
	t.Helper()
	s := newService(cfg, mode, "/tmp/ctl.sock", &fakeRouter{}, l, fakeCounter{}, &fakeObserver{}, quietLogger())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Stop(ctx)
	})
	s.adopt(saved)
	if s.adoptErr != nil {
		t.Fatal(s.adoptErr)
	}
	return s
}

// readopt runs a handoffd restart: a new Service re-adopts what s saved,
// with state_handoff as given.
func readopt(t *testing.T, s *Service, stateHandoff bool) (*Service, *reattachLauncher) {
	t.Helper()
	saved := s.saved()
	cfg := *s.cfg
	cfg.StateHandoff = stateHandoff
	l := &reattachLauncher{fakeLauncher: fakeLauncher{ready: true, ignoreStop: true, onState: answerState}}
	s2 := adopted(t, &cfg, s.mode, l, saved)
	if len(l.adopted) != 1 || l.adopted[0].spec.Notice == nil {
		t.Fatalf("re-adopted %d generations, want 1 with its NOTIFY_SOCKET bound again", len(l.adopted))
	}
	return s2, l
}

var channelMsg = stateproto.Message{stateproto.NotifyChannel: "1"}

// After a restart of handoffd, the re-adopted generation sends a new
// state channel: it is attached (ATTACHED=1), a second one is refused,
// and the next swap hands the state over from it.
func TestStateChannelReattached(t *testing.T) {
	s, _ := stateService(t, answerState)
	mustSwap(t, s)
	s2, l := readopt(t, s, true)
	p := l.adopted[0]
	if channelOf(p) != nil {
		t.Fatal("a channel before the generation sent one")
	}
	r, w, _ := os.Pipe()
	p.send(channelMsg, r)
	if got, want := p.channel.got(), []string{"ATTACHED=1"}; !slices.Equal(got, want) {
		t.Fatalf("the re-adopted generation got %q, want %q", got, want)
	}
	p.send(channelMsg, w) // a second one: refused
	if got := s2.observer.(*fakeObserver).got(); !slices.Contains(got, "refused unexpected") {
		t.Fatalf("observed %q, want the second channel refused", got)
	}
	if len(p.channel.got()) != 1 {
		t.Fatalf("the refused channel was attached: %q", p.channel.got())
	}
	mustSwap(t, s2)
	if got, want := l.proc(0).ch.got(), []string{"STATE=1 [state of 1]"}; !slices.Equal(got, want) {
		t.Fatalf("generation 2 got %q, want %q", got, want)
	}
	if got := handoffs(s2); !slices.Equal(got, []string{"handoff loaded"}) {
		t.Fatalf("observed %q, want one loaded handoff", got)
	}
}

// A channel from a generation of a service without state_handoff is
// refused and closed.
func TestStateChannelRefusedWithoutStateHandoff(t *testing.T) {
	s, _ := stateService(t, answerState)
	mustSwap(t, s)
	s2, l := readopt(t, s, false)
	p := l.adopted[0]
	r, w, _ := os.Pipe()
	defer w.Close()
	p.send(channelMsg, r)
	if got := s2.observer.(*fakeObserver).got(); !slices.Equal(got, []string{"refused unexpected"}) {
		t.Fatalf("observed %q, want the channel refused", got)
	}
	if channelOf(p) != nil || len(p.attached) != 0 {
		t.Fatal("the channel was attached")
	}
	if _, err := r.Stat(); err == nil {
		t.Fatal("the refused channel is still open")
	}
}
