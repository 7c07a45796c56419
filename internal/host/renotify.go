package host

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

// adoptedProcess is a generation that an earlier handoffd started and
// this one re-adopted. Its NOTIFY_SOCKET and its state channel died with
// that handoffd: Renotify binds the socket again, at the address the
// generation has in its environment, and the generation sends a new
// channel on it (stateproto.NotifyChannel), which AttachChannel takes.
type adoptedProcess struct {
	*PidfdProcess
	// notifyAddrs are the addresses a handoffd gives this generation's
	// NOTIFY_SOCKET: only one of them is bound again.
	notifyAddrs func(addr string) bool
	// done is closed once the process exited and what it sent last on
	// NOTIFY_SOCKET was read.
	done chan struct{}

	// exited is set, under mu, once the process exited.
	exited atomic.Bool

	mu         sync.Mutex
	notify     *net.UnixConn // nil until Renotify
	notifyRead chan struct{} // closed when the reader of notify returned
	channel    *stateChannel // nil until AttachChannel
	reportedConns
}

func newAdoptedProcess(p *PidfdProcess, notifyAddrs func(string) bool) *adoptedProcess {
	a := &adoptedProcess{PidfdProcess: p, notifyAddrs: notifyAddrs, done: make(chan struct{})}
	go a.wait()
	return a
}

// Done implements lifecycle.Process: the lifecycle hears of everything
// the process sent before it hears of its exit, as for a started one.
func (p *adoptedProcess) Done() <-chan struct{} { return p.done }

func (p *adoptedProcess) wait() {
	<-p.PidfdProcess.Done()
	p.mu.Lock()
	p.exited.Store(true)
	notify, read := p.notify, p.notifyRead
	p.mu.Unlock()
	if notify != nil {
		closeNotifyRead(notify, read)
	}
	p.mu.Lock()
	if p.channel != nil {
		p.channel.close()
	}
	p.mu.Unlock()
	close(p.done)
}

// Renotify implements lifecycle.Renotifier: it binds the NOTIFY_SOCKET
// of the process again, at the path in its environment, which must be the
// one that handoffd gives this generation in the notify directory, and
// reads it as Start does. The generation's directory there, with the
// access its user was given, stays as the previous handoffd made it.
func (p *adoptedProcess) Renotify(notice func(lifecycle.Notice)) error {
	addr, err := environValue(p.Pid(), "NOTIFY_SOCKET")
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	if !p.notifyAddrs(addr) {
		return fmt.Errorf("notify socket: NOTIFY_SOCKET=%q of pid %d is not one that handoffd gives", addr, p.Pid())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited.Load() || p.notify != nil {
		return nil
	}
	c, err := bindNotify(addr)
	if err != nil {
		return err
	}
	p.notify, p.notifyRead = c, make(chan struct{})
	go func() {
		defer close(p.notifyRead)
		readNotify(c, p.Pid(), &p.exited, notice, func(_, reloads bool) {
			if reloads {
				p.SetReloads()
			}
		}, &p.reportedConns)
	}()
	return nil
}

// Channel implements lifecycle.Stateful.
func (p *adoptedProcess) Channel() lifecycle.StateChannel {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.channel == nil {
		return nil
	}
	return p.channel
}

// AttachChannel implements lifecycle.ChannelAttacher: f, a SOCK_SEQPACKET
// socket that the generation sent, becomes its state channel. f is
// closed, whatever the outcome.
func (p *adoptedProcess) AttachChannel(f *os.File) error {
	defer f.Close()
	c, err := kernel.SeqpacketConn(f)
	if err != nil {
		return fmt.Errorf("state channel: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.exited.Load():
		c.Close()
		return errors.New("state channel: the generation exited")
	case p.channel != nil:
		c.Close()
		return errors.New("state channel: the generation has one already")
	}
	p.channel = &stateChannel{c: c}
	return nil
}

// environValue returns the value of name in the environment that process
// pid was started with.
func environValue(pid int, name string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return "", err
	}
	for kv := range bytes.SplitSeq(b, []byte{0}) {
		if v, ok := strings.CutPrefix(string(kv), name+"="); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("pid %d has no %s", pid, name)
}

// notifyAddrs returns whether an address is the one that a handoffd gives
// to generation gen of service as its NOTIFY_SOCKET, with dir as the
// notify directory: its file there, or where a handoffd older than the
// directory per generation put it. Never an abstract name: anyone may
// bind one.
func notifyAddrs(dir, service string, gen int) func(string) bool {
	return func(addr string) bool {
		if dir == "" {
			return false
		}
		path, err := notifyPath(dir, service, gen)
		return (err == nil && addr == path) || addr == legacyNotifyPath(dir, service, gen)
	}
}
