package host

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// stderrLog is a generation's stderr: a file in handoffd's log directory
// that the process writes to directly. A pipe to handoffd would break when
// handoffd dies or restarts, and the app would die of SIGPIPE, or block
// once the pipe is full; a file never does. While the generation runs,
// handoffd copies what it writes to handoffd's own stderr and keeps the
// last lines, which say why a generation failed to start.
type stderrLog struct {
	path  string
	child *os.File // the generation's fd 2; nil for a re-adopted one

	// mu orders the copies: the follower's after a write, the last one
	// at finish.
	mu       sync.Mutex
	r        *os.File // the read side; nil once finished
	dst      io.Writer
	last     []byte // the end of what was written, for tail
	follower *logFollower
}

// maxStderrLog bounds the file while handoffd follows it: past this size
// it is emptied after a copy. Bytes the process writes between that copy
// and the truncation are lost from the file (they reached it, not us).
const maxStderrLog = 16 << 20

const tailBytes = 2048

func stderrPath(dir, service string, gen int) string {
	return filepath.Join(dir, fmt.Sprintf("%s.%d.stderr", service, gen))
}

func openStderrLog(dir, service string, gen int) (*stderrLog, error) {
	path := stderrPath(dir, service, gen)
	child, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open stderr log: %w", err)
	}
	return &stderrLog{path: path, child: child}, nil
}

// follow copies the log to dst whenever the process writes to it, until
// finish. fromEnd skips what is there already (a re-adopted generation's
// earlier output, which the previous handoffd copied). Without a
// follower (inotify refused), the log is copied at finish only.
func (l *stderrLog) follow(f *logFollower, dst io.Writer, fromEnd bool) {
	r, err := os.Open(l.path)
	if err != nil {
		return
	}
	if fromEnd {
		r.Seek(0, io.SeekEnd)
	}
	l.mu.Lock()
	l.r, l.dst = r, dst
	l.mu.Unlock()
	if f != nil && f.add(l) == nil {
		l.follower = f
	}
	l.copy() // what was written before the watch
}

// copy reads the log to its end, copies it to dst and keeps its tail; a
// log past maxStderrLog is emptied.
func (l *stderrLog) copy() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.r == nil {
		return
	}
	l.copyLocked()
	if fi, err := l.r.Stat(); err == nil && fi.Size() > maxStderrLog {
		l.copyLocked()
		if os.Truncate(l.path, 0) == nil {
			l.r.Seek(0, io.SeekStart)
		}
	}
}

func (l *stderrLog) copyLocked() {
	buf := make([]byte, 32<<10)
	for {
		n, err := l.r.Read(buf)
		if n > 0 {
			l.dst.Write(buf[:n])
			l.last = append(l.last, buf[:n]...)
			if len(l.last) > tailBytes {
				l.last = append(l.last[:0], l.last[len(l.last)-tailBytes:]...)
			}
		}
		if err != nil || n == 0 {
			return
		}
	}
}

// finish is called once the process has exited: it copies the last
// bytes, stops following and removes the file.
func (l *stderrLog) finish() {
	if l.follower != nil {
		l.follower.remove(l)
	}
	l.copy()
	l.mu.Lock()
	if l.r != nil {
		l.r.Close()
		l.r = nil
	}
	l.mu.Unlock()
	os.Remove(l.path)
}

// tail returns the last lines written, at most n, joined on one line.
func (l *stderrLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(bytes.ToValidUTF8(l.last, nil))), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, " | ")
}

// logDebounce gathers the writes of a burst into one copy.
const logDebounce = 10 * time.Millisecond

// logFollower follows the stderr logs of every generation with one
// inotify instance (IN_MODIFY per file): a log is read to its end after a
// write, and nothing runs while no generation writes. It is the one
// goroutine of all the logs; it runs while at least one log is followed
// and ends with the last (remove).
type logFollower struct {
	mu    sync.Mutex
	w     *fsnotify.Watcher // nil while no log is followed
	logs  map[string]*stderrLog
	ended chan struct{} // closed when the goroutine of w has returned
}

// add follows l. It fails when inotify refuses (no instance or watch
// left): l is then copied at its end only.
func (f *logFollower) add(l *stderrLog) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.w == nil {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			return fmt.Errorf("follow stderr logs: %w", err)
		}
		f.w, f.logs, f.ended = w, map[string]*stderrLog{}, make(chan struct{})
		go f.run(w, f.ended)
	}
	if err := f.w.Add(l.path); err != nil {
		return fmt.Errorf("follow %s: %w", l.path, err)
	}
	f.logs[l.path] = l
	return nil
}

// remove stops following l; the last log out closes the watcher and waits
// for its goroutine.
func (f *logFollower) remove(l *stderrLog) {
	f.mu.Lock()
	if f.logs[l.path] != l {
		f.mu.Unlock()
		return
	}
	delete(f.logs, l.path)
	f.w.Remove(l.path)
	if len(f.logs) > 0 {
		f.mu.Unlock()
		return
	}
	w, ended := f.w, f.ended
	f.w = nil
	f.mu.Unlock()
	w.Close()
	<-ended
}

// run copies the logs that were written to, a burst at a time, until w
// is closed. After a lost event (the queue overflowed) it copies all.
func (f *logFollower) run(w *fsnotify.Watcher, ended chan struct{}) {
	defer close(ended)
	dirty := map[*stderrLog]bool{}
	var flush <-chan time.Time
	for {
		select {
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if !ev.Has(fsnotify.Write) {
				continue
			}
			f.mu.Lock()
			if l := f.logs[ev.Name]; l != nil {
				dirty[l] = true
			}
			f.mu.Unlock()
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				f.mu.Lock()
				for _, l := range f.logs {
					dirty[l] = true
				}
				f.mu.Unlock()
			}
		case <-flush:
			for l := range dirty {
				l.copy()
				delete(dirty, l)
			}
			flush = nil
			continue
		}
		if flush == nil && len(dirty) > 0 {
			flush = time.After(logDebounce)
		}
	}
}

// resume follows the stderr file of a generation that an earlier handoffd
// started and this one re-adopted, until done is closed (the process
// exited), then removes it.
func (l *ExecLauncher) resume(service string, gen int, done <-chan struct{}) {
	if l.LogDir == "" {
		return
	}
	path := stderrPath(l.LogDir, service, gen)
	if _, err := os.Stat(path); err != nil {
		return
	}
	log := &stderrLog{path: path}
	log.follow(&l.logs, l.Stderr, true)
	go func() {
		<-done
		log.finish()
	}()
}
