package handoff

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
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
// Call OnReload before Ready: until then SIGHUP ends the process.
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

// stopReloads ends every OnReload handler, for good: the process drains.
func stopReloads() {
	reloads.mu.Lock()
	defer reloads.mu.Unlock()
	reloads.draining = true
	for h := range reloads.handlers {
		h.stop()
	}
}
