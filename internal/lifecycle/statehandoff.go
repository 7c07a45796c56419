package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/stateproto"
)

// The results of a state handoff, the result label of
// handoff_state_handoffs_total.
const (
	HandoffLoaded  = "loaded"
	HandoffCold    = "cold"
	HandoffFailed  = "failed"
	HandoffTimeout = "timeout"
)

// snapshot is what the old generation answered to HANDOVER=1: its sealed
// memfd, or why there is none (result is then HandoffCold or
// HandoffFailed).
type snapshot struct {
	file   *os.File
	result string
	reason string
}

// handOver runs the state handoff of g, a new generation that said
// READY=1, when the service has state_handoff: the current generation is
// asked for a snapshot, which g receives (STATE=1) and loads (LOADED=1);
// or g hears why it starts cold (STATE=0). It never fails: whatever goes
// wrong, or takes longer than state_timeout, only makes g start cold.
func (s *Service) handOver(ctx context.Context, cfg *config.ServiceConfig, g *Generation) {
	ch := channelOf(g.proc)
	if !cfg.StateHandoff || ch == nil {
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.StateTimeout.Std())
	defer cancel()
	snap, from := s.takeSnapshot(ctx, g)
	msg := stateproto.Message{stateproto.State: "1"}
	if snap.file == nil {
		msg = stateproto.Message{stateproto.State: "0", stateproto.Reason: snap.reason}
	}
	err := ch.Send(msg, snap.file)
	if snap.file != nil {
		snap.file.Close()
	}
	result, reason := snap.result, snap.reason
	switch {
	case err != nil:
		result, reason = HandoffFailed, fmt.Sprintf("send STATE to generation %d: %v", g.ID, err)
	case snap.file != nil:
		result, reason = s.awaitLoaded(ctx, ch, g)
	}
	s.observer.StateHandoff(s.name, result)
	attrs := []any{"generation", g.ID, "from", from, "result", result, "took", time.Since(start)}
	switch result {
	case HandoffLoaded:
		s.log.Info("state handed over", attrs...)
	case HandoffCold: // nothing to hand over: no failure
		s.log.Info("generation starts cold", append(attrs, "reason", reason)...)
	default:
		s.log.Warn("state handoff: generation starts cold", append(attrs, "reason", reason)...)
	}
}

// takeSnapshot asks the current generation, if there is one that can be
// asked, for its snapshot on behalf of g, and waits for it until ctx
// ends. from is the generation asked (0: none).
func (s *Service) takeSnapshot(ctx context.Context, g *Generation) (snap snapshot, from int) {
	s.mu.Lock()
	old := s.current
	switch {
	case old == nil:
		s.mu.Unlock()
		return snapshot{result: HandoffCold, reason: "no previous generation runs"}, 0
	case chanClosed(old.proc.Done()):
		s.mu.Unlock()
		return snapshot{result: HandoffCold, reason: fmt.Sprintf("the previous generation %d has exited", old.ID)}, old.ID
	}
	oc := channelOf(old.proc)
	if oc == nil {
		s.mu.Unlock()
		return snapshot{result: HandoffCold, reason: fmt.Sprintf("the previous generation %d has no state channel (started without state_handoff, joined from outside, or re-adopted after a restart of handoffd and sent none)", old.ID)}, old.ID
	}
	reply := make(chan snapshot, 1)
	old.handover = reply
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if old.handover == reply {
			old.handover = nil
		}
		s.mu.Unlock()
		select { // an answer that came too late
		case late := <-reply:
			if late.file != nil {
				late.file.Close()
			}
		default:
		}
	}()
	if err := oc.Send(stateproto.Message{stateproto.Handover: "1"}, nil); err != nil {
		return snapshot{result: HandoffFailed, reason: fmt.Sprintf("send HANDOVER to generation %d: %v", old.ID, err)}, old.ID
	}
	select {
	case snap := <-reply:
		return snap, old.ID
	case <-old.proc.Done():
		return snapshot{result: HandoffFailed, reason: fmt.Sprintf("generation %d exited before it handed over its state", old.ID)}, old.ID
	case <-s.stopCh:
		return snapshot{result: HandoffFailed, reason: "the service is stopping"}, old.ID
	case <-ctx.Done():
		return snapshot{result: timeoutResult(ctx), reason: fmt.Sprintf("generation %d handed over no state within state_timeout: %v", old.ID, ctx.Err())}, old.ID
	}
}

// snapshotNotice hands the answer of g to HANDOVER=1 to the swap that
// waits for it. It is delivered under s.mu, so that a swap that stops
// waiting (takeSnapshot) finds in its channel any answer taken for it.
func (s *Service) snapshotNotice(g *Generation, n Notice) {
	m, files := n.Msg, n.Files
	var snap snapshot
	unsealed := false
	switch {
	case m[stateproto.NotifyState] != "1":
		snap = snapshot{result: HandoffCold, reason: fmt.Sprintf("generation %d has no state to hand over: %s", g.ID, m[stateproto.Status])}
	case len(files) != 1 || !n.Sealed:
		unsealed = true
		snap = snapshot{result: HandoffFailed, reason: fmt.Sprintf("generation %d sent a snapshot that is not one sealed memfd", g.ID)}
	default:
		snap = snapshot{file: files[0], result: HandoffLoaded}
	}
	s.mu.Lock()
	reply := g.handover
	g.handover = nil
	if reply != nil {
		reply <- snap // buffered: never blocks
	}
	s.mu.Unlock()
	switch {
	case reply == nil:
		s.refuse(g, stateproto.StateName, len(files), RefusedUnexpected, "HANDOFF_STATE that no swap asked for")
		closeFiles(files)
	case unsealed:
		s.refuse(g, stateproto.StateName, len(files), RefusedUnsealed, "a snapshot must be one sealed memfd")
		closeFiles(files)
	case snap.file == nil:
		closeFiles(files)
	}
}

// attachChannel makes the socket that g sent (HANDOFF_STATE_CHANNEL=1)
// its state channel, and tells it so (ATTACHED=1): g is a re-adopted
// generation whose channel died with the previous handoffd. It is
// refused, and closed, when g has a channel already or the service has
// no state_handoff.
func (s *Service) attachChannel(g *Generation, n Notice) {
	const name = "handoff.channel" // for the log: the message has no FDNAME
	files := n.Files
	on := s.Config().StateHandoff
	attacher, ok := g.proc.(ChannelAttacher)
	var why string
	switch {
	case !on:
		why = "a state channel, but the service has no state_handoff"
	case n.Msg[stateproto.NotifyChannel] != "1" || len(files) != 1:
		why = fmt.Sprintf("%s=%s with %d fds, want 1 and one socket", stateproto.NotifyChannel, n.Msg[stateproto.NotifyChannel], len(files))
	case channelOf(g.proc) != nil:
		why = "a state channel, but the generation has one already"
	case !ok:
		why = "a state channel from a generation that handoffd started or that joined: it cannot take one"
	}
	if why != "" {
		s.refuse(g, name, len(files), RefusedUnexpected, why)
		closeFiles(files)
		return
	}
	if err := attacher.AttachChannel(files[0]); err != nil {
		s.refuse(g, name, 1, RefusedUnexpected, err.Error())
		return
	}
	if err := channelOf(g.proc).Send(stateproto.Message{stateproto.Attached: "1"}, nil); err != nil {
		s.log.Warn("state channel attached, but the generation cannot be told", "generation", g.ID, "err", err)
		return
	}
	s.log.Info("state channel re-attached", "generation", g.ID)
}

// awaitLoaded waits for g's LOADED answer.
func (s *Service) awaitLoaded(ctx context.Context, ch StateChannel, g *Generation) (result, reason string) {
	for {
		m, err := ch.Receive(ctx)
		switch {
		case ctx.Err() != nil:
			return timeoutResult(ctx), fmt.Sprintf("generation %d did not load the state within state_timeout: %v", g.ID, ctx.Err())
		case err != nil:
			return HandoffFailed, fmt.Sprintf("read LOADED of generation %d: %v", g.ID, err)
		}
		switch m[stateproto.Loaded] {
		case "1":
			return HandoffLoaded, ""
		case "0":
			return HandoffFailed, fmt.Sprintf("generation %d could not load the state: %s", g.ID, m[stateproto.Error])
		}
	}
}

// timeoutResult is the result of a handoff that ctx ended: a timeout,
// unless the swap itself was given up.
func timeoutResult(ctx context.Context) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return HandoffTimeout
	}
	return HandoffFailed
}
