package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// load runs HTTP clients that send POSTs and never retry one: a request
// that does not get a 200 answer is a failure, whatever the cause (refused,
// reset, closed without an answer, timeout).
type load struct {
	addr      string
	path      string
	keepAlive bool
	stopCh    chan struct{}
	wg        sync.WaitGroup

	mu        sync.Mutex
	ok        int
	failed    int
	failures  []string
	failedAt  []failure // every failure, up to loadLimit
	byGen     map[int]int
	firstSent map[int][]time.Time // send times of requests each generation answered, first few
}

// loadLimit bounds every client: it stops after this many requests or
// when stop is called, whichever comes first.
const loadLimit = 200000

func startLoad(addr, path string, clients int, keepAlive bool) *load {
	l := &load{addr: addr, path: path, keepAlive: keepAlive, stopCh: make(chan struct{}),
		byGen: map[int]int{}, firstSent: map[int][]time.Time{}}
	for i := range clients {
		l.wg.Add(1)
		go l.client(i)
	}
	return l
}

// failure is one failed request: when, and what the client saw; which
// client, and on what connection: the request's place there, and the
// generation that answered the requests before on it.
type failure struct {
	at     time.Time
	what   string
	client int
	sent   time.Time // when the request was sent; zero for a failed dial
	// nth is the request's place on its connection: 1 for the first, 2
	// and more on a kept connection.
	nth int
	// gen is the generation that answered the request before on the same
	// connection; 0 on a new connection.
	gen int
	// idle is how long the connection was idle before the request: from
	// the previous answer on it to the send; 0 on a new connection. A
	// draining generation may close a connection idle past its grace.
	idle time.Duration
}

// loadResult is what the clients saw.
type loadResult struct {
	OK, Failed int
	Failures   []string
	FailedAt   []failure
	ByGen      map[int]int
	firstSent  map[int][]time.Time
}

func (l *load) stop() loadResult {
	close(l.stopCh)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return loadResult{OK: l.ok, Failed: l.failed, Failures: l.failures, FailedAt: l.failedAt, ByGen: l.byGen, firstSent: l.firstSent}
}

// firstAfter returns when the first request sent at or after t was
// answered by generation gen, as a delay after t.
func (r loadResult) firstAfter(gen int, t time.Time) (time.Duration, bool) {
	for _, s := range r.firstSent[gen] {
		if !s.Before(t) {
			return s.Sub(t), true
		}
	}
	return 0, false
}

func (l *load) client(id int) {
	defer l.wg.Done()
	var conn net.Conn
	var br *bufio.Reader
	nth := 0 // requests sent on conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	body := []byte(fmt.Sprintf(`{"client":%d}`, id))
	connGen := 0           // the generation that last answered on conn
	var answered time.Time // when the last answer on conn was read
	for range loadLimit {
		select {
		case <-l.stopCh:
			return
		default:
		}
		if conn == nil {
			c, err := net.DialTimeout(l.network(), l.addr, 5*time.Second)
			if err != nil {
				l.fail(failure{client: id, what: fmt.Sprintf("dial: %v", err)})
				time.Sleep(10 * time.Millisecond)
				continue
			}
			conn, br = c, bufio.NewReader(c)
			nth, connGen = 0, 0
		}
		sent := time.Now()
		nth++
		var idle time.Duration
		if nth > 1 {
			idle = sent.Sub(answered)
		}
		gen, closeConn, err := l.roundTrip(conn, br, body)
		if err != nil {
			l.fail(failure{client: id, what: err.Error(), sent: sent, nth: nth, gen: connGen, idle: idle})
			conn.Close()
			conn = nil
			continue
		}
		l.record(gen, sent)
		connGen, answered = gen, time.Now()
		if closeConn {
			conn.Close()
			conn = nil
		}
	}
}

func (l *load) roundTrip(conn net.Conn, br *bufio.Reader, body []byte) (gen int, closeConn bool, err error) {
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	var req bytes.Buffer
	host := l.addr
	if l.network() == "unix" {
		host = "handoff.local"
	}
	fmt.Fprintf(&req, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", l.path, host, len(body))
	if !l.keepAlive {
		req.WriteString("Connection: close\r\n")
	}
	req.WriteString("\r\n")
	req.Write(body)
	if _, err := conn.Write(req.Bytes()); err != nil {
		return 0, false, fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, false, fmt.Errorf("read response: %w", err)
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, false, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, false, fmt.Errorf("status %s: %s", resp.Status, data)
	}
	var answer struct {
		Generation int `json:"generation"`
	}
	if err := json.Unmarshal(data, &answer); err != nil {
		return 0, false, fmt.Errorf("decode %q: %w", data, err)
	}
	return answer.Generation, resp.Close || !l.keepAlive, nil
}

// network is "unix" for an addr that is a socket's path, else "tcp".
func (l *load) network() string {
	if strings.HasPrefix(l.addr, "/") {
		return "unix"
	}
	return "tcp"
}

func (l *load) fail(f failure) {
	f.at = time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed++
	if len(l.failures) < 20 {
		l.failures = append(l.failures, f.what)
	}
	if len(l.failedAt) < loadLimit {
		l.failedAt = append(l.failedAt, f)
	}
}

func (l *load) record(gen int, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ok++
	l.byGen[gen]++
	// Keep the 64 earliest send times, sorted; requests are recorded
	// nearly in order, so this rarely moves anything.
	s := l.firstSent[gen]
	if len(s) == 64 && !sent.Before(s[63]) {
		return
	}
	i, _ := slices.BinarySearchFunc(s, sent, time.Time.Compare)
	s = slices.Insert(s, i, sent)
	if len(s) > 64 {
		s = s[:64]
	}
	l.firstSent[gen] = s
}

// lockedWriter is an io.Writer that several processes' output may share.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.String()
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
