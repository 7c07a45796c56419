package lifecycle

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
)

// lazyRouter is the Router of a service whose router could not be built
// when handoffd started (its steering would not load, say): each Prepare
// tries again, so that the service, failed meanwhile, starts once the
// cause is gone. Until then it routes nothing.
type lazyRouter struct {
	build func() (Router, error)

	mu sync.Mutex
	r  Router // nil until built
}

// errNoRouter is what a lazyRouter that is not built answers for what
// only a built one can do.
var errNoRouter = errors.New("the service's listeners are not set up")

func (l *lazyRouter) built() Router {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r
}

func (l *lazyRouter) Prepare(gen int) ([]*os.File, error) {
	l.mu.Lock()
	if l.r == nil {
		r, err := l.build()
		if err != nil {
			l.mu.Unlock()
			return nil, err
		}
		l.r = r
	}
	r := l.r
	l.mu.Unlock()
	return r.Prepare(gen)
}

func (l *lazyRouter) Activate(gen int) error {
	if r := l.built(); r != nil {
		return r.Activate(gen)
	}
	return errNoRouter
}

func (l *lazyRouter) Stats(gen, i int) (SlotStats, bool) {
	if r := l.built(); r != nil {
		return r.Stats(gen, i)
	}
	return SlotStats{}, false
}

func (l *lazyRouter) Migrated() uint64 {
	if r := l.built(); r != nil {
		return r.Migrated()
	}
	return 0
}

func (l *lazyRouter) Forget(gen int) {
	if r := l.built(); r != nil {
		r.Forget(gen)
	}
}

func (l *lazyRouter) Adopt(gen int, files []*os.File) error {
	if r := l.built(); r != nil {
		return r.Adopt(gen, files)
	}
	return errNoRouter
}

func (l *lazyRouter) Release() error {
	if r := l.built(); r != nil {
		return r.Release()
	}
	return nil
}

func (l *lazyRouter) Close() error {
	if r := l.built(); r != nil {
		return r.Close()
	}
	return nil
}

func (l *lazyRouter) SetSplit(gen int, share float64, sticky bool) error {
	if r := l.built(); r != nil {
		return r.SetSplit(gen, share, sticky)
	}
	return errNoRouter
}

func (l *lazyRouter) Promote(gen int) error {
	if r := l.built(); r != nil {
		return r.Promote(gen)
	}
	return errNoRouter
}

func (l *lazyRouter) DialProbe(ctx context.Context, gen, i int) (net.Conn, error) {
	if r := l.built(); r != nil {
		return r.DialProbe(ctx, gen, i)
	}
	return nil, errNoRouter
}

// Slots is 0 until the router is built: no generation holds a slot then.
func (l *lazyRouter) Slots() int {
	if r := l.built(); r != nil {
		return r.Slots()
	}
	return 0
}
