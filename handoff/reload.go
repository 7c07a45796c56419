package handoff

import (
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/handoffd/handoffd/internal/joinproto"
)

// reloads holds the OnReload handlers that still run.
var reloads struct {
	mu       sync.Mutex
	handlers map[*reloadHandler]bool
	draining bool
}

type reloadHandler struct {
	sigs chan os.Signal
	done chan struct{}
	once sync.Once
}

// OnReload calls fn each time the process receives SIGHUP, which
// `handoffctl reload SERVICE` sends to the active generation so that it
// re-reads its configuration without a swap. Calls are serial: a SIGHUP
// that arrives while fn runs makes one more call once it returns.
//
// It stops when the process starts draining (Drainer.Drain, and so
// ServeAndDrain) or when stop is called: from then on, with no handler
// left, SIGHUP is ignored rather than left to its default action, which
// would end the process and cut the requests it still drains. The drain's
// own signals (SIGTERM, SIGINT) are not touched.
//
// OnReload tells handoffd, with HANDOFF_RELOAD=1 on NOTIFY_SOCKET (and
// in Ready's notification), that this process reloads on SIGHUP:
// handoffd sends SIGHUP only to a generation that said so, since its
// default action would end the process. Call OnReload before Ready: until
// then SIGHUP ends the process, and a process that joined handoffd from
// outside can say it only until Ready.
func OnReload(fn func()) (stop func()) {
	h := &reloadHandler{sigs: make(chan os.Signal, 1), done: make(chan struct{})}
	reloads.mu.Lock()
	defer reloads.mu.Unlock()
	if reloads.draining {
		return func() {}
	}
	if reloads.handlers == nil {
		reloads.handlers = map[*reloadHandler]bool{}
	}
	reloads.handlers[h] = true
	signal.Notify(h.sigs, syscall.SIGHUP)
	// The goroutine ends when stop is called or the drain begins.
	go h.run(fn)
	// Before Ready, Ready's notification says it; after, this one does.
	Notify(joinproto.Reloads)
	return func() {
		reloads.mu.Lock()
		defer reloads.mu.Unlock()
		h.stop()
	}
}

func (h *reloadHandler) run(fn func()) {
	for {
		select {
		case <-h.done:
			return
		case <-h.sigs:
		}
		select {
		case <-h.done: // the drain began while the signal waited
			return
		default:
			fn()
		}
	}
}

// stop ends h. Callers hold reloads.mu.
func (h *reloadHandler) stop() {
	h.once.Do(func() {
		close(h.done)
		delete(reloads.handlers, h)
		if len(reloads.handlers) == 0 {
			// Ignore, not Stop: with no handler left, SIGHUP's default
			// action would end the process.
			signal.Ignore(syscall.SIGHUP)
		} else {
			signal.Stop(h.sigs)
		}
	})
}

// handlesReloads reports whether an OnReload handler runs.
func handlesReloads() bool {
	reloads.mu.Lock()
	defer reloads.mu.Unlock()
	return len(reloads.handlers) > 0
}

// StopReloads ends every OnReload handler for good, as a Drainer's drain
// does: from then on SIGHUP is ignored. An app that drains by other means
// (a gRPC server, see package handoffgrpc) calls it when its drain begins.
func StopReloads() { stopReloads() }

// stopReloads ends every OnReload handler, for good: the process drains.
func stopReloads() {
	reloads.mu.Lock()
	defer reloads.mu.Unlock()
	reloads.draining = true
	for h := range reloads.handlers {
		h.stop()
	}
}
