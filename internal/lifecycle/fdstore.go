package lifecycle

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/stateproto"
)

// The fd store is systemd's (see package stateproto): a generation sends
// fds on NOTIFY_SOCKET with FDSTORE=1 and FDNAME=name, and every later
// generation of the service finds them in LISTEN_FDS after its
// listeners. The fds belong to the service, not to the generation that
// stored them: a crash replacement, a canary and a rollback leave the
// store as it is.

// Reasons for refusing fds, the reason label of
// handoff_fd_store_refused_total.
const (
	RefusedFull       = "full"
	RefusedName       = "name"
	RefusedUnsealed   = "unsealed"
	RefusedOversize   = "oversize"
	RefusedUnexpected = "unexpected"
	RefusedOff        = "off"
)

// storedFD is one fd of the store.
type storedFD struct {
	name     string
	file     *os.File
	dev, ino uint64
}

// fileID returns the st_dev and st_ino of f.
func fileID(f *os.File) (dev, ino uint64, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, fmt.Errorf("stat %s: no st_dev and st_ino", f.Name())
	}
	return st.Dev, st.Ino, nil
}

// notice acts on what generation g sent for the fd store or its state.
func (s *Service) notice(g *Generation, n Notice) {
	m := n.Msg
	name := m[stateproto.FDName]
	switch {
	case n.Oversize:
		s.refuse(g, name, n.Refused, RefusedOversize, fmt.Sprintf("a message over %d bytes, or with more fds than fit", stateproto.MaxMessage))
		closeFiles(n.Files)
	case m[stateproto.NotifyState] != "":
		s.snapshotNotice(g, n)
	case m[stateproto.NotifyFinal] == "1":
		s.finalNotice(g, n)
	case m[stateproto.NotifyChannel] != "":
		s.attachChannel(g, n)
	case m[stateproto.FDStoreRemove] == "1":
		closeFiles(n.Files)
		s.unstore(g, nameOrDefault(name))
	case m[stateproto.FDStore] == "1":
		s.store(g, nameOrDefault(name), n.Files)
	case len(n.Files) > 0:
		s.refuse(g, name, len(n.Files), RefusedUnexpected, "fds sent without FDSTORE=1")
		closeFiles(n.Files)
	}
}

func nameOrDefault(name string) string {
	if name == "" {
		return stateproto.DefaultFDName
	}
	return name
}

// refuse logs and counts fds refused; closing them is the caller's job.
// A long name is cut in the log line (why says how long it was).
func (s *Service) refuse(g *Generation, name string, fds int, reason, why string) {
	if len(name) > 64 {
		name = name[:64] + "..."
	}
	s.log.Warn("fd store: refused", "generation", g.ID, "name", name, "fds", fds, "reason", reason, "why", why)
	s.observer.FDStoreRefused(s.name, reason)
}

// store keeps files under name, all of them or none: a file stored
// already (same st_dev and st_ino) is kept once, as systemd does.
func (s *Service) store(g *Generation, name string, files []*os.File) {
	if err := stateproto.ValidFDName(name); err != nil {
		s.refuse(g, name, len(files), RefusedName, err.Error())
		closeFiles(files)
		return
	}
	if len(files) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		// No generation follows: closeStore may have run already.
		closeFiles(files)
		return
	}
	limit := s.cfg.FDStoreLimit()
	if limit == 0 {
		s.refuse(g, name, len(files), RefusedOff, "fd_store_max is 0")
		closeFiles(files)
		return
	}
	var add []storedFD
	dups := 0
	for _, f := range files {
		dev, ino, err := fileID(f)
		if err != nil || s.holds(dev, ino, add) {
			dups++
			f.Close()
			continue
		}
		add = append(add, storedFD{name: name, file: f, dev: dev, ino: ino})
	}
	if n := len(s.stored) + len(add); n > limit {
		s.refuse(g, name, len(add), RefusedFull, fmt.Sprintf("%d fds stored, fd_store_max is %d", len(s.stored), limit))
		for _, sf := range add {
			sf.file.Close()
		}
		return
	}
	s.stored = append(s.stored, add...)
	s.log.Info("fd store: stored", "generation", g.ID, "name", name, "fds", len(add), "already_stored", dups, "total", len(s.stored))
	s.changed()
}

// holds reports whether the store, or add, has the file dev/ino.
// Callers hold s.mu.
func (s *Service) holds(dev, ino uint64, add []storedFD) bool {
	for _, sf := range append(s.stored[:len(s.stored):len(s.stored)], add...) {
		if sf.dev == dev && sf.ino == ino {
			return true
		}
	}
	return false
}

// unstore closes and forgets the fds stored under name.
func (s *Service) unstore(g *Generation, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.stored[:0]
	removed := 0
	for _, sf := range s.stored {
		if sf.name == name {
			s.closeStored(sf.file)
			removed++
			continue
		}
		kept = append(kept, sf)
	}
	clear(s.stored[len(kept):])
	s.stored = kept
	s.log.Info("fd store: removed", "generation", g.ID, "name", name, "fds", removed, "total", len(s.stored))
	if removed > 0 {
		s.changed()
	}
}

// lendStore returns the stored fds for a new generation's start; the
// store closes none of them until giveBackStore. Callers hold s.mu.
func (s *Service) lendStore() []StoredFile {
	s.starting++
	out := make([]StoredFile, len(s.stored))
	for i, sf := range s.stored {
		out[i] = StoredFile{Name: sf.name, File: sf.file}
	}
	return out
}

// giveBackStore ends what lendStore began, and closes the fds removed
// from the store meanwhile. Callers hold s.mu.
func (s *Service) giveBackStore() {
	s.starting--
	if s.starting == 0 {
		closeFiles(s.closeLater)
		s.closeLater = nil
	}
}

// closeStored closes f, a file taken out of the store, or later if a
// start may be passing it on now. Callers hold s.mu.
func (s *Service) closeStored(f *os.File) {
	if s.starting > 0 {
		s.closeLater = append(s.closeLater, f)
		return
	}
	f.Close()
}

// storeStatus counts the stored fds by name, for status. Callers hold
// s.mu.
func (s *Service) storeStatus() map[string]int {
	m := map[string]int{}
	for _, sf := range s.stored {
		m[sf.name]++
	}
	return m
}

// closeStore closes every stored fd, when the service stops.
func (s *Service) closeStore() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sf := range s.stored {
		s.closeStored(sf.file)
	}
	s.stored = nil
}

// finalNotice relays the final delta of a drained generation g to the
// generation active now.
func (s *Service) finalNotice(g *Generation, n Notice) {
	files := n.Files
	defer closeFiles(files)
	s.mu.Lock()
	draining, to, stopped := g.state == api.StateDraining, s.current, s.stopped
	s.mu.Unlock()
	switch {
	case !draining:
		s.refuse(g, stateproto.FinalName, len(files), RefusedUnexpected, "HANDOFF_FINAL from a generation that is not draining")
		s.observer.StateFinal(s.name, "dropped")
		return
	case len(files) != 1 || !n.Sealed:
		s.refuse(g, stateproto.FinalName, len(files), RefusedUnsealed, "a final must be one sealed memfd")
		s.observer.StateFinal(s.name, "dropped")
		return
	}
	var ch StateChannel
	if to != nil && !chanClosed(to.proc.Done()) {
		ch = channelOf(to.proc)
	}
	if ch == nil && stopped {
		// Nobody takes the state of a service that stops, by design.
		s.log.Info("state final dropped: the service is stopping", "generation", g.ID)
		s.observer.StateFinal(s.name, "dropped")
		return
	}
	if ch == nil {
		s.log.Warn("state final dropped: no active generation with a state channel", "generation", g.ID)
		s.observer.StateFinal(s.name, "dropped")
		return
	}
	if err := ch.Send(stateproto.Message{stateproto.Final: strconv.Itoa(g.ID)}, files[0]); err != nil {
		s.log.Warn("state final dropped", "generation", g.ID, "to", to.ID, "err", err)
		s.observer.StateFinal(s.name, "dropped")
		return
	}
	s.log.Info("state final relayed", "generation", g.ID, "to", to.ID)
	s.observer.StateFinal(s.name, "relayed")
}
