package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/handoffd/handoffd/internal/config"
)

// watchQuiet is how long a watched file must stay unchanged before the
// swap its change triggers: a binary being copied in is written many
// times, and must be whole before a generation runs it.
const watchQuiet = 500 * time.Millisecond

// fileWatcher swaps a service when one of its watched files changes. It
// watches each file's directory rather than the file: a file replaced by
// a rename (how binaries are installed) is a new inode, which a watch on
// the old one never sees.
//
// Its goroutine is owned by the Supervisor, which stops it when the
// service is removed, when its watch paths or dir change, and on Stop.
type fileWatcher struct {
	fsw    *fsnotify.Watcher
	files  map[string]bool // absolute, cleaned paths
	quiet  time.Duration
	swap   func(context.Context) error
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	// paths and dir are what the fileWatcher was made from.
	paths []string
	dir   string
}

// newFileWatcher watches paths (relative ones are taken from dir) and calls
// swap once they have been quiet for quiet after a change: a write, a
// file created or renamed onto the path, or a change of its attributes
// (touch). A file removed, or renamed away, triggers nothing by itself.
func newFileWatcher(dir string, paths []string, quiet time.Duration, swap func(context.Context) error, log *slog.Logger) (*fileWatcher, error) {
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch files: %w", err)
	}
	files := map[string]bool{}
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			fsw.Close()
			return nil, fmt.Errorf("watch %s: %w", p, err)
		}
		files[abs] = true
	}
	for f := range files {
		if d := filepath.Dir(f); !slices.Contains(fsw.WatchList(), d) {
			if err := fsw.Add(d); err != nil {
				fsw.Close()
				return nil, fmt.Errorf("watch directory %s: %w", d, err)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &fileWatcher{fsw: fsw, files: files, quiet: quiet, swap: swap, log: log, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), paths: slices.Clone(paths), dir: dir}
	go w.run()
	return w, nil
}

const triggers = fsnotify.Create | fsnotify.Write | fsnotify.Chmod

func (w *fileWatcher) run() {
	defer close(w.done)
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	var changed string
	for {
		select {
		case <-w.ctx.Done():
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			if w.files[ev.Name] && ev.Has(triggers) {
				changed = ev.Name
				settle.Reset(w.quiet)
			}
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			// An overflow loses events; swap to be sure the newest file runs.
			w.log.Warn("watching files", "err", err)
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				changed = "(events lost)"
				settle.Reset(w.quiet)
			}
		case <-settle.C:
			if w.swapFor(changed) {
				settle.Reset(w.quiet)
			}
		}
	}
}

// swapFor swaps because path changed; it reports whether to try again
// later, when another swap was under way: that one may have started
// before the file was whole.
func (w *fileWatcher) swapFor(path string) (again bool) {
	w.log.Info("watched file changed: swapping", "path", path)
	err := w.swap(w.ctx)
	switch {
	case err == nil, w.ctx.Err() != nil, errors.Is(err, ErrStopped):
		return false
	case errors.Is(err, ErrSwapInProgress):
		w.log.Info("a swap is under way: swapping again once it ends", "path", path)
		return true
	}
	w.log.Error("swap after a watched file changed", "path", path, "err", err)
	return false
}

// stop ends the fileWatcher and waits for its goroutine; a swap it started
// is abandoned.
func (w *fileWatcher) stop() {
	w.cancel()
	<-w.done
	w.fsw.Close()
}

// watchFiles (re)starts the fileWatcher of svc for sc.Watch, if the paths or the
// dir changed; no paths stops it. A fileWatcher that cannot start is logged:
// the service runs on, swapped by hand.
func (s *Supervisor) watchFiles(svc *Service, sc *config.ServiceConfig) {
	name := svc.Name()
	s.mu.Lock()
	old := s.fileWatchers[name]
	s.mu.Unlock()
	if old != nil && old.dir == sc.Dir && slices.Equal(old.paths, sc.Watch) {
		return
	}
	s.unwatchFiles(name)
	if len(sc.Watch) == 0 {
		return
	}
	log := s.log.With("service", name)
	swap := func(ctx context.Context) error { _, err := svc.Swap(ctx); return err }
	w, err := newFileWatcher(sc.Dir, sc.Watch, watchQuiet, swap, log)
	if err != nil {
		log.Error("cannot watch files: swaps only by hand", "err", err)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		w.stop()
		return
	}
	if s.fileWatchers == nil {
		s.fileWatchers = map[string]*fileWatcher{}
	}
	s.fileWatchers[name] = w
	s.mu.Unlock()
	log.Info("watching files", "paths", sc.Watch)
}

// unwatchFiles stops the fileWatcher of the named service, if any.
func (s *Supervisor) unwatchFiles(name string) {
	s.mu.Lock()
	w := s.fileWatchers[name]
	delete(s.fileWatchers, name)
	s.mu.Unlock()
	if w != nil {
		w.stop()
	}
}
