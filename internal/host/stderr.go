package host

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// stderrLog is a generation's stderr: a file in handoffd's log directory
// that the process writes to directly. A pipe to handoffd would break when
// handoffd dies or restarts, and the app would die of SIGPIPE; a file
// never does. While the generation runs, handoffd copies what it writes to
// handoffd's own stderr and keeps the last lines, which say why a
// generation failed to start.
type stderrLog struct {
	path  string
	child *os.File // the generation's fd 2

	stop chan struct{} // closed when the process has exited
	done chan struct{} // closed when the last bytes were copied

	mu   sync.Mutex
	last []byte // the end of what was written, for tail
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
	return &stderrLog{path: path, child: child, stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// follow copies the log to dst until the process has exited, then removes
// the file. It is the goroutine that owns the read side. fromEnd skips
// what is there already (a re-adopted generation's earlier output, which
// the previous handoffd copied).
func (l *stderrLog) follow(dst io.Writer, fromEnd bool) {
	defer close(l.done)
	defer os.Remove(l.path)
	r, err := os.Open(l.path)
	if err != nil {
		return
	}
	defer r.Close()
	if fromEnd {
		r.Seek(0, io.SeekEnd)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		l.copy(r, dst)
		select {
		case <-l.stop:
			l.copy(r, dst)
			return
		case <-tick.C:
		}
		if fi, err := r.Stat(); err == nil && fi.Size() > maxStderrLog {
			l.copy(r, dst)
			if os.Truncate(l.path, 0) == nil {
				r.Seek(0, io.SeekStart)
			}
		}
	}
}

func (l *stderrLog) copy(r io.Reader, dst io.Writer) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			dst.Write(buf[:n])
			l.mu.Lock()
			l.last = append(l.last, buf[:n]...)
			if len(l.last) > tailBytes {
				l.last = append(l.last[:0], l.last[len(l.last)-tailBytes:]...)
			}
			l.mu.Unlock()
		}
		if err != nil || n == 0 {
			return
		}
	}
}

// finish is called once the process has exited: it waits for the last
// bytes to be copied.
func (l *stderrLog) finish() {
	close(l.stop)
	<-l.done
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
	log := &stderrLog{path: path, stop: make(chan struct{}), done: make(chan struct{})}
	go log.follow(l.Stderr, true)
	go func() {
		<-done
		log.finish()
	}()
}
