package host

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
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
	// mark holds how far the log was copied (markPath), so that a
	// handoffd restarted goes on from there; nil where it could not be
	// made. marked is the offset it holds.
	mark   *os.File
	marked int64
}

// maxStderrLog bounds the file while handoffd follows it: past this size
// it is emptied after a copy. Bytes the process writes between that copy
// and the truncation are lost from the file (they reached it, not us).
const maxStderrLog = 16 << 20

const tailBytes = 2048

func stderrPath(dir, service string, gen int) string {
	return filepath.Join(dir, fmt.Sprintf("%s.%d.stderr", service, gen))
}

// markPath is the file beside the log at path that says, in decimal, up
// to which offset handoffd has copied the log.
func markPath(path string) string { return path + ".copied" }

func openStderrLog(dir, service string, gen int) (*stderrLog, error) {
	path := stderrPath(dir, service, gen)
	child, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open stderr log: %w", err)
	}
	return &stderrLog{path: path, child: child}, nil
}

// follow copies the log to dst whenever the process writes to it, until
// finish. resume goes on from where the previous handoffd's copy of a
// re-adopted generation's log stopped, as its mark says (or from the end,
// where there is no mark), so that what the process wrote while no
// handoffd ran is copied, and nothing twice. Without a follower (inotify
// refused), the log is copied at finish only.
func (l *stderrLog) follow(f *logFollower, dst io.Writer, resume bool) {
	r, err := os.Open(l.path)
	if err != nil {
		return
	}
	flags := os.O_RDWR | os.O_CREATE
	if !resume {
		flags |= os.O_TRUNC
	}
	mark, err := os.OpenFile(markPath(l.path), flags, 0o600)
	if err != nil {
		mark = nil
	}
	if resume {
		resumeAt(r, mark)
	}
	l.mu.Lock()
	l.r, l.dst, l.mark = r, dst, mark
	l.mu.Unlock()
	if f != nil && f.add(l) == nil {
		l.follower = f
	}
	for l.copy() { // what was written before the watch
	}
}

// resumeAt moves r to the offset that mark holds, or to the end where
// mark holds none or one past the end (the log was emptied since).
func resumeAt(r, mark *os.File) {
	if mark != nil {
		b := make([]byte, 32)
		n, _ := mark.ReadAt(b, 0)
		at, err := strconv.ParseInt(strings.TrimSpace(string(b[:n])), 10, 64)
		if fi, serr := r.Stat(); err == nil && serr == nil && at >= 0 && at <= fi.Size() {
			r.Seek(at, io.SeekStart)
			return
		}
	}
	r.Seek(0, io.SeekEnd)
}

// markLocked writes how far the log was copied to its mark.
func (l *stderrLog) markLocked() {
	at, err := l.r.Seek(0, io.SeekCurrent)
	if l.mark == nil || err != nil || at == l.marked {
		return
	}
	if _, err := l.mark.WriteAt(fmt.Appendf(nil, "%020d\n", at), 0); err == nil {
		l.marked = at
	}
}

// copyChunk bounds what one copy reads: one goroutine copies every
// generation's log, and a flood in one must not hold up the others.
const copyChunk = 256 << 10

// copy reads at most copyChunk of the log, copies it to dst and keeps its
// tail, and reports whether more is left to read. A log past
// maxStderrLog is emptied once read to its end.
func (l *stderrLog) copy() (more bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.r == nil {
		return false
	}
	defer l.markLocked()
	at, err := l.r.Seek(0, io.SeekCurrent)
	if fi, serr := l.r.Stat(); err == nil && serr == nil && fi.Size() < at {
		// Emptied by something else (a rotation that copies and
		// truncates): what it holds now was written since.
		l.r.Seek(0, io.SeekStart)
	}
	if l.copyLocked(copyChunk) {
		return true
	}
	if fi, err := l.r.Stat(); err == nil && fi.Size() > maxStderrLog {
		l.copyLocked(maxStderrLog)
		if os.Truncate(l.path, 0) == nil {
			l.r.Seek(0, io.SeekStart)
		}
	}
	return false
}

// copyLocked copies up to limit bytes of the log, and reports whether it
// stopped at the limit rather than at the end.
func (l *stderrLog) copyLocked(limit int) bool {
	buf := make([]byte, 32<<10)
	for copied := 0; copied < limit; {
		n, err := l.r.Read(buf[:min(len(buf), limit-copied)])
		if n > 0 {
			copied += n
			l.dst.Write(buf[:n])
			l.last = append(l.last, buf[:n]...)
			if len(l.last) > tailBytes {
				l.last = append(l.last[:0], l.last[len(l.last)-tailBytes:]...)
			}
		}
		if err != nil || n == 0 {
			return false
		}
	}
	return true
}

// finish is called once the process has exited: it copies the last
// bytes, stops following and removes the file.
func (l *stderrLog) finish() {
	if l.follower != nil {
		l.follower.remove(l)
	}
	for l.copy() {
	}
	l.mu.Lock()
	if l.r != nil {
		l.r.Close()
		l.r = nil
	}
	if l.mark != nil {
		l.mark.Close()
		l.mark = nil
	}
	l.mu.Unlock()
	os.Remove(l.path)
	os.Remove(markPath(l.path))
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
// write, a chunk at a time in turn with the other logs written to, and
// nothing runs while no generation writes. It is the one
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

// now is a channel that is always ready.
var now = func() <-chan time.Time {
	c := make(chan time.Time)
	close(c)
	return c
}()

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
			f.written(ev, dirty)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			f.lost(err, dirty)
		case <-flush:
			// A chunk of each log written to, in turn; the logs with
			// more left go on in the next round, after the events
			// that came meanwhile.
			for l := range dirty {
				if !l.copy() {
					delete(dirty, l)
				}
			}
			flush = nil
			if len(dirty) > 0 {
				if !f.pending(w, dirty) {
					return
				}
				flush = now
			}
			continue
		}
		if flush == nil && len(dirty) > 0 {
			flush = time.After(logDebounce)
		}
	}
}

// pending takes the events that wait, without waiting for more; false
// once w is closed.
func (f *logFollower) pending(w *fsnotify.Watcher, dirty map[*stderrLog]bool) bool {
	for {
		select {
		case ev, ok := <-w.Events:
			if !ok {
				return false
			}
			f.written(ev, dirty)
		case err, ok := <-w.Errors:
			if !ok {
				return false
			}
			f.lost(err, dirty)
		default:
			return true
		}
	}
}

// written marks the log of a write event dirty.
func (f *logFollower) written(ev fsnotify.Event, dirty map[*stderrLog]bool) {
	if !ev.Has(fsnotify.Write) {
		return
	}
	f.mu.Lock()
	if l := f.logs[ev.Name]; l != nil {
		dirty[l] = true
	}
	f.mu.Unlock()
}

// lost marks every log dirty after the kernel dropped events.
func (f *logFollower) lost(err error, dirty map[*stderrLog]bool) {
	if !errors.Is(err, fsnotify.ErrEventOverflow) {
		return
	}
	f.mu.Lock()
	for _, l := range f.logs {
		dirty[l] = true
	}
	f.mu.Unlock()
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
