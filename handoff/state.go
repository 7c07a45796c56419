package handoff

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
	"golang.org/x/sys/unix"
)

// A StateHandler hands the app's state from a generation to the next,
// in a service with state_handoff: true (which requires ready: notify).
//
// In a swap (or a canary start), once the new generation said it is ready,
// handoffd asks the old one for a snapshot: Snapshot runs in the old
// generation, which goes on serving, and writes into a sealed memfd that
// handoffd passes to the new generation, whose Restore reads it before
// Ready returns, so before it accepts a connection. Then handoffd moves
// the traffic. A generation that could not be given a snapshot (the first
// one, a crash replacement, a failed or slow Snapshot: state_timeout)
// starts cold: Restore is not called, and Ready returns all the same.
//
// The snapshot is not the last word: requests the old generation serves
// between its snapshot and the end of its drain change state that the new
// generation does not see. Final closes that gap where the app can
// express it: after the drain (see HandOverFinal), Final writes what
// changed since Snapshot, and handoffd relays it to the generation that
// is active then, whose Merge adds it, at any moment while it serves.
// Counters, sets and logs merge well; a cache can simply leave Final nil.
//
// Every function may be nil. Snapshot and Merge run on the SDK's own
// goroutine, concurrently with the app's handlers: they take the app's
// locks. Restore runs before the app serves. A Restore that fails must
// leave the app in a state it can serve from (cold): handoffd then
// activates the generation all the same.
type StateHandler struct {
	// Snapshot writes the state, in the old generation, when handoffd
	// asks for it (HANDOVER); what it writes is all the next generation
	// gets. An error sends nothing: the new generation starts cold.
	Snapshot func(w io.Writer) error
	// Restore reads the previous generation's snapshot, in the new
	// generation, before Ready returns.
	Restore func(r io.Reader) error
	// Final writes, in the old generation after its drain, what changed
	// since its last Snapshot (or since it started, if handoffd never
	// asked it for one).
	Final func(w io.Writer) error
	// Merge reads the Final of the older generation from, in the
	// generation active when that one finished its drain.
	Merge func(from int, r io.Reader) error
}

// HandleState sets the StateHandler of this process. Call it before
// Ready: the snapshot the previous generation hands over arrives once
// Ready said READY=1, and one that finds no Restore is lost. Without
// HANDOFF_STATE_FD in the environment (handoffd did not start this
// process, or the service has no state_handoff) the handler is never
// called.
func HandleState(h StateHandler) {
	state.mu.Lock()
	state.handler = h
	state.mu.Unlock()
	stateChan()
}

// HandOverFinal sends the output of the StateHandler's Final to handoffd
// (FDSTORE=1, FDNAME=handoff.final, HANDOFF_FINAL=1 with a sealed memfd),
// which relays it to the active generation's Merge. Call it once this
// generation has stopped changing its state: after its drain, when no
// request runs any more. Drainer.Drain (and so ServeAndDrain) and
// package handoffgrpc call it after their drain; an app that drains by
// other means calls it itself.
//
// Before it runs Final it merges every message already queued for this
// generation: a final that handoffd relayed here just before this
// generation's own drain ended is part of this generation's final. It
// sends once: later calls return nil. It returns once handoffd has read
// the final, or after a second, so that the process may exit right away.
// It does nothing and returns nil without a Final, and without
// HANDOFF_STATE_FD.
func HandOverFinal() error {
	final := currentHandler().Final
	if final == nil {
		return nil
	}
	c := stateChan()
	if c == nil {
		return nil
	}
	c.turn.Lock()
	defer c.turn.Unlock()
	if c.finalSent {
		return nil
	}
	c.handleQueued()
	f, err := kernel.SealedMemfd(stateproto.FinalName, final)
	if err != nil {
		return fmt.Errorf("handoff: hand over the final: %w", err)
	}
	defer f.Close()
	msg := stateproto.Message{stateproto.FDStore: "1", stateproto.FDName: stateproto.FinalName, stateproto.NotifyFinal: "1"}
	// The process usually exits next: wait until handoffd has it.
	if err := notifyState(msg, f, finalReadWait); err != nil {
		return fmt.Errorf("handoff: hand over the final: %w", err)
	}
	c.finalSent = true
	return nil
}

// finalReadWait bounds how long HandOverFinal waits for handoffd to take
// the final off NOTIFY_SOCKET.
const finalReadWait = time.Second

// stateMargin is how much longer than handoffd's state_timeout Ready
// waits for the STATE message: handoffd sends STATE=0 at its timeout.
const stateMargin = time.Second

// defaultStateTimeout is state_timeout's default, for a
// HANDOFF_STATE_TIMEOUT_MS that is missing.
const defaultStateTimeout = 5 * time.Second

// state is this process's state handoff: the app's handler and its end of
// the channel.
var state struct {
	mu      sync.Mutex
	handler StateHandler
	once    sync.Once
	ch      *stateChannel // nil without HANDOFF_STATE_FD
}

func currentHandler() StateHandler {
	state.mu.Lock()
	defer state.mu.Unlock()
	return state.handler
}

// stateChan returns this generation's state channel, opened on first use
// (and its reader started), or nil when there is none.
func stateChan() *stateChannel {
	state.once.Do(func() {
		fd, ok := os.LookupEnv(stateproto.EnvFD)
		timeout := os.Getenv(stateproto.EnvTimeout)
		os.Unsetenv(stateproto.EnvFD)
		os.Unsetenv(stateproto.EnvTimeout)
		if !ok {
			return
		}
		c, err := openStateChannel(fd, timeout)
		if err != nil {
			// The generation still serves: it starts cold and hands
			// nothing over, as handoffd's timeouts will tell.
			slog.Warn("state handoff: off", "generation", Generation(), "err", err)
			return
		}
		state.ch = c
		// Ends when handoffd closes its end of the channel and no
		// handoffd takes a new one (see reattach).
		go c.run()
	})
	return state.ch
}

// A stateChannel is the generation's end of its state channel, a
// SOCK_SEQPACKET socket whose messages stateproto describes.
type stateChannel struct {
	conn *net.UnixConn
	raw  syscall.RawConn
	wait time.Duration // how long Ready waits for STATE

	// turn is held while one message is received and handled, and by
	// HandOverFinal: a message is never taken off the socket without
	// being handled before a final is written.
	turn      sync.Mutex
	finalSent bool // under turn
	sent      bool // the channel is one this generation sent (reattach); under turn
	attached  bool // handoffd said ATTACHED=1 on it; under turn
	// unattached counts the channels sent in a row that handoffd closed
	// without ATTACHED=1; under turn.
	unattached int

	mu       sync.Mutex
	gotState bool // a STATE message was taken; under mu
	gaveUp   bool // Ready stopped waiting for it; under mu
	stated   chan struct{}
	endOnce  sync.Once

	stopped  chan struct{} // closed by stop
	stopOnce sync.Once
	done     chan struct{} // closed when run returns
}

func openStateChannel(fdString, timeout string) (*stateChannel, error) {
	fd, err := strconv.Atoi(fdString)
	if err != nil || fd < 0 {
		return nil, fmt.Errorf("%s=%q is not an fd number", stateproto.EnvFD, fdString)
	}
	wait := defaultStateTimeout
	if ms, err := strconv.Atoi(timeout); err == nil && ms > 0 {
		wait = time.Duration(ms) * time.Millisecond
	}
	f := os.NewFile(uintptr(fd), "handoff-state")
	conn, err := kernel.SeqpacketConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s=%d: %w", stateproto.EnvFD, fd, err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%s=%d: %w", stateproto.EnvFD, fd, err)
	}
	return &stateChannel{conn: conn, raw: raw, wait: wait + stateMargin,
		stated: make(chan struct{}), stopped: make(chan struct{}), done: make(chan struct{})}, nil
}

// run reads and handles the channel's messages until handoffd closes it
// for good: a channel that handoffd closed because it restarted is made
// anew (see reattach).
func (c *stateChannel) run() {
	defer close(c.done)
	defer c.endState()
	for {
		m, files, err := c.receive()
		if err == nil {
			c.handle(m, files)
			c.turn.Unlock()
			continue
		}
		if !errors.Is(err, io.EOF) {
			if !errors.Is(err, net.ErrClosed) {
				slog.Warn("state handoff: channel failed", "generation", Generation(), "err", err)
			}
			return
		}
		// No STATE comes on a closed channel: Ready must not wait.
		c.endState()
		if !c.reattach() {
			return
		}
	}
}

// The schedule on which reattach sends a new channel: every
// reattachFast during reattachFastFor, then every reattachSlow until
// reattachGiveUp.
const (
	reattachFast    = 200 * time.Millisecond
	reattachFastFor = 30 * time.Second
	reattachSlow    = 5 * time.Second
	reattachGiveUp  = 10 * time.Minute
	// reattachRefusals is how many channels in a row handoffd may
	// close without ATTACHED=1 before reattach gives up.
	reattachRefusals = 3
)

// reattach replaces the channel that handoffd closed. A handoffd that
// restarts re-adopts this generation and binds its NOTIFY_SOCKET again,
// but the channel died with the one before: a new socket pair is made,
// and one end sent on NOTIFY_SOCKET (HANDOFF_STATE_CHANNEL=1), again and
// again until a handoffd takes it, then read. It returns false, with a
// log line, when this generation is done with the channel: its final was
// sent, handoffd refused the last reattachRefusals channels (closed them
// without ATTACHED=1), or none was taken within reattachGiveUp.
func (c *stateChannel) reattach() bool {
	c.turn.Lock()
	if c.finalSent {
		c.turn.Unlock()
		return false
	}
	if c.sent && !c.attached {
		// Refused, or read by a handoffd that was dying: a few times
		// in a row is a refusal.
		c.unattached++
		if c.unattached >= reattachRefusals {
			c.turn.Unlock()
			slog.Warn("state handoff: off: handoffd closed the state channels sent to it without taking them (its log says why)",
				"generation", Generation(), "sent", c.unattached)
			return false
		}
	} else {
		c.unattached = 0
	}
	c.turn.Unlock()
	start := time.Now()
	for {
		conn, raw, err := sendChannel()
		if err == nil {
			c.turn.Lock()
			defer c.turn.Unlock()
			select {
			case <-c.stopped:
				conn.Close()
				return false
			default:
			}
			c.conn.Close()
			c.conn, c.raw = conn, raw
			c.sent, c.attached = true, false
			return true
		}
		waited := time.Since(start)
		if errors.Is(err, errNoNotify) || waited >= reattachGiveUp {
			slog.Warn("state handoff: off: handoffd took no new state channel", "generation", Generation(), "waited", waited.Round(time.Second), "err", err)
			return false
		}
		wait := reattachFast
		if waited >= reattachFastFor {
			wait = reattachSlow
		}
		select {
		case <-time.After(wait):
		case <-c.stopped:
			return false
		}
	}
}

// stop ends the channel for good: run returns, and reattach too.
func (c *stateChannel) stop() {
	c.stopOnce.Do(func() { close(c.stopped) })
	// A reattach that did not see stopped has swapped the conn by
	// now. The close waits for a read in progress, which may wait for
	// turn: turn is not held across it.
	c.turn.Lock()
	conn := c.conn
	c.turn.Unlock()
	conn.Close()
}

// sendChannel makes a new channel and sends handoffd its end on
// NOTIFY_SOCKET, waiting (briefly) until handoffd read it.
func sendChannel() (*net.UnixConn, syscall.RawConn, error) {
	conn, theirs, err := kernel.SeqpacketPair("handoff-state (handoffd's end)")
	if err != nil {
		return nil, nil, err
	}
	defer theirs.Close()
	raw, err := conn.SyscallConn()
	if err == nil {
		err = notifyState(stateproto.Message{stateproto.NotifyChannel: "1"}, theirs, finalReadWait)
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, raw, nil
}

// receive waits for the next message and returns it with c.turn held; on
// an error c.turn is not held.
func (c *stateChannel) receive() (stateproto.Message, []*os.File, error) {
	var (
		m     stateproto.Message
		files []*os.File
		rerr  error
	)
	err := c.raw.Read(func(fd uintptr) bool {
		c.turn.Lock()
		var got bool
		m, files, got, rerr = receiveNow(int(fd))
		if !got {
			c.turn.Unlock()
		}
		return got || rerr != nil // false: wait for the next message
	})
	if err == nil {
		err = rerr
	}
	return m, files, err
}

// handleQueued handles the messages already queued on the channel,
// without waiting for more. Callers hold c.turn.
func (c *stateChannel) handleQueued() {
	c.raw.Control(func(fd uintptr) {
		for {
			m, files, got, err := receiveNow(int(fd))
			if !got || err != nil {
				return
			}
			c.handle(m, files)
		}
	})
}

// receiveNow takes one message off the channel without waiting: got is
// false when none is queued (or on an error). A message that does not
// fit comes back empty, its fds closed. io.EOF means handoffd closed its
// end.
func receiveNow(fd int) (m stateproto.Message, files []*os.File, got bool, err error) {
	buf := make([]byte, stateproto.MaxMessage)
	oob := make([]byte, kernel.RightsSpace(stateproto.MaxFDs))
	n, oobn, flags, queued, err := kernel.ReadMsgNow(fd, buf, oob)
	switch {
	case err != nil:
		return nil, nil, false, fmt.Errorf("read the state channel: %w", err)
	case !queued:
		return nil, nil, false, nil
	}
	fds, perr := kernel.ParseRights(oob[:oobn], flags)
	if n == 0 && oobn == 0 {
		return nil, nil, false, io.EOF
	}
	if perr != nil || flags&unix.MSG_TRUNC != 0 {
		kernel.CloseFDs(fds)
		slog.Warn("state handoff: message dropped", "generation", Generation(),
			"err", errors.Join(perr, truncated(flags)))
		return stateproto.Message{}, nil, true, nil
	}
	for _, fd := range fds {
		files = append(files, os.NewFile(uintptr(fd), "handoff-state-fd"))
	}
	return stateproto.Parse(buf[:n]), files, true, nil
}

func truncated(flags int) error {
	if flags&unix.MSG_TRUNC != 0 {
		return fmt.Errorf("message over %d bytes", stateproto.MaxMessage)
	}
	return nil
}

// handle acts on one message from handoffd and closes its files. Callers
// hold c.turn.
func (c *stateChannel) handle(m stateproto.Message, files []*os.File) {
	defer closeFiles(files)
	switch {
	case m[stateproto.Handover] == "1":
		c.handOver()
	case m[stateproto.State] != "":
		c.restore(m, files)
	case m[stateproto.Final] != "":
		c.merge(m, files)
	case m[stateproto.Attached] == "1":
		c.attached = true
		slog.Info("state handoff: channel re-attached", "generation", Generation())
	case len(m) > 0:
		slog.Warn("state handoff: unknown message ignored", "generation", Generation(), "message", string(m.Encode()))
	}
}

// handOver answers HANDOVER: a snapshot in a sealed memfd, or
// HANDOFF_STATE=0 with the reason.
func (c *stateChannel) handOver() {
	msg := stateproto.Message{stateproto.NotifyState: "0"}
	var snap *os.File
	if h := currentHandler(); h.Snapshot == nil {
		msg[stateproto.Status] = "no StateHandler.Snapshot: nothing to hand over"
	} else if f, err := kernel.SealedMemfd(stateproto.StateName, h.Snapshot); err != nil {
		msg[stateproto.Status] = oneLine("snapshot failed: " + err.Error())
	} else {
		snap = f
		defer f.Close()
		msg = stateproto.Message{stateproto.FDStore: "1", stateproto.FDName: stateproto.StateName, stateproto.NotifyState: "1"}
	}
	if err := notifyState(msg, snap, 0); err != nil {
		slog.Warn("state handoff: cannot answer HANDOVER", "generation", Generation(), "err", err)
	}
}

// restore handles STATE: Restore runs on the snapshot, if it came in time
// for Ready, and handoffd hears LOADED=1 or LOADED=0 with the error.
func (c *stateChannel) restore(m stateproto.Message, files []*os.File) {
	c.mu.Lock()
	late, again := c.gaveUp, c.gotState
	c.gotState = true
	c.mu.Unlock()
	if again {
		slog.Warn("state handoff: second STATE message ignored", "generation", Generation())
		return
	}
	defer c.endState()
	if m[stateproto.State] != "1" {
		return // cold: handoffd says why in its log and does not wait for LOADED
	}
	err := c.load(files, late)
	answer := stateproto.Message{stateproto.Loaded: "1"}
	if err != nil {
		answer = stateproto.Message{stateproto.Loaded: "0", stateproto.Error: oneLine(err.Error())}
		slog.Warn("state handoff: starting cold", "generation", Generation(), "err", err)
	}
	if _, err := c.conn.Write(answer.Encode()); err != nil {
		slog.Warn("state handoff: cannot answer STATE", "generation", Generation(), "err", err)
	}
}

func (c *stateChannel) load(files []*os.File, late bool) error {
	restore := currentHandler().Restore
	r, err := sealedReader(files)
	switch {
	case err != nil:
		return fmt.Errorf("STATE=1: %w", err)
	case late:
		return errors.New("the snapshot came after Ready stopped waiting for it")
	case restore == nil:
		return errors.New("no StateHandler.Restore")
	}
	if err := restore(r); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

// merge hands FINAL, an older generation's final, to Merge.
func (c *stateChannel) merge(m stateproto.Message, files []*os.File) {
	from, err := strconv.Atoi(m[stateproto.Final])
	log := slog.With("generation", Generation(), "from", m[stateproto.Final])
	merge := currentHandler().Merge
	r, rerr := sealedReader(files)
	switch {
	case err != nil:
		log.Warn("state handoff: final dropped: FINAL is not a generation number")
	case rerr != nil:
		log.Warn("state handoff: final dropped", "err", rerr)
	case merge == nil:
		log.Warn("state handoff: final dropped: no StateHandler.Merge")
	case c.finalSent:
		log.Warn("state handoff: final dropped: this generation already sent its own")
	default:
		if err := merge(from, r); err != nil {
			log.Warn("state handoff: merge failed", "err", err)
		}
	}
}

// sealedReader reads the one sealed memfd of a message from its start,
// whatever its file offset, which its senders share.
func sealedReader(files []*os.File) (io.Reader, error) {
	if len(files) != 1 {
		return nil, fmt.Errorf("%d fds attached, want 1", len(files))
	}
	f := files[0]
	if err := kernel.CheckSealed(int(f.Fd())); err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat memfd: %w", err)
	}
	return io.NewSectionReader(f, 0, fi.Size()), nil
}

// awaitState waits, after READY=1, until STATE was handled (Restore
// included), the channel ended, or handoffd's state_timeout passed with a
// margin; a STATE that comes later is refused (LOADED=0).
func (c *stateChannel) awaitState() {
	t := time.NewTimer(c.wait)
	defer t.Stop()
	select {
	case <-c.stated:
		return
	case <-t.C:
	}
	c.mu.Lock()
	taken := c.gotState
	c.gaveUp = !taken
	c.mu.Unlock()
	if taken {
		<-c.stated // Restore runs: the app must not serve before it ends
		return
	}
	slog.Warn("state handoff: no STATE from handoffd, starting cold", "generation", Generation(), "waited", c.wait)
}

func (c *stateChannel) endState() { c.endOnce.Do(func() { close(c.stated) }) }

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// oneLine makes s fit a KEY=value line of a message.
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 1024 {
		s = s[:1024]
	}
	return s
}
