package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// binWidth is the time resolution of the series that the plot draws.
const binWidth = 100 * time.Millisecond

// maxBins bounds the series: a row longer than this lands in the last bin.
const maxBins = 4000

// requestLimit bounds every client in count, next to the time bound.
const requestLimit = 2_000_000

// requestTimeout bounds one request: dial, write and the whole answer.
const requestTimeout = 5 * time.Second

// failurePause is how long a client waits after a failed request before
// it sends its next one (never the same one again: nothing is retried).
// It keeps a refusing server from turning into a busy loop.
const failurePause = 10 * time.Millisecond

// Failure classes.
const (
	classRefused = "refused"
	classReset   = "reset"
	classEOF     = "eof"
	classTimeout = "timeout"
	classOther   = "other"
)

var failureClasses = []string{classRefused, classReset, classEOF, classTimeout, classOther}

// genSeen is what the clients saw of one generation.
type genSeen struct {
	OK int `json:"ok"`
	// FirstConn is when the earliest connection that this generation
	// answered on was dialed; FirstAnswer when its first answer arrived.
	FirstConn   time.Time `json:"first_conn"`
	FirstAnswer time.Time `json:"first_answer"`
}

// loadStats is what one client, or all of them merged, saw.
type loadStats struct {
	OK       int
	Failed   map[string]int
	Samples  []string // the first few failures, verbatim
	ByGen    map[int]*genSeen
	OKBins   []int
	FailBins []int
	// Timings holds every successful request's timing, in the order the
	// client made them.
	Timings []timing
}

// timing is one successful request as its client timed it: when it began
// (µs since the row's start; a new connection's dial is part of the
// request) and how long it took until the last byte of the answer (µs).
type timing struct {
	At, Took uint32
}

func newLoadStats() *loadStats {
	return &loadStats{Failed: map[string]int{}, ByGen: map[int]*genSeen{},
		OKBins: make([]int, maxBins), FailBins: make([]int, maxBins)}
}

func (s *loadStats) merge(o *loadStats) {
	s.OK += o.OK
	for k, v := range o.Failed {
		s.Failed[k] += v
	}
	for _, f := range o.Samples {
		if len(s.Samples) < 20 {
			s.Samples = append(s.Samples, f)
		}
	}
	for gen, g := range o.ByGen {
		m := s.ByGen[gen]
		if m == nil {
			m = &genSeen{}
			s.ByGen[gen] = m
		}
		m.OK += g.OK
		m.FirstConn = earliest(m.FirstConn, g.FirstConn)
		m.FirstAnswer = earliest(m.FirstAnswer, g.FirstAnswer)
	}
	s.Timings = append(s.Timings, o.Timings...)
	for i := range s.OKBins {
		s.OKBins[i] += o.OKBins[i]
		s.FailBins[i] += o.FailBins[i]
	}
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

func (s *loadStats) failedTotal() int {
	n := 0
	for _, v := range s.Failed {
		n += v
	}
	return n
}

// load runs HTTP/1.1 clients that POST and never retry: a request without
// a 200 answer is a failure, whatever happened to it.
type load struct {
	addr      string
	path      string
	keepAlive bool
	start     time.Time
	stopCh    chan struct{}
	wg        sync.WaitGroup
	stats     []*loadStats
}

func startLoad(addr, path string, clients int, keepAlive bool, start time.Time) *load {
	l := &load{addr: addr, path: path, keepAlive: keepAlive, start: start, stopCh: make(chan struct{})}
	for i := range clients {
		st := newLoadStats()
		l.stats = append(l.stats, st)
		l.wg.Add(1)
		go l.client(i, st)
	}
	return l
}

// stop ends the clients (a request under way finishes first, within
// requestTimeout) and returns what they saw together.
func (l *load) stop() *loadStats {
	close(l.stopCh)
	l.wg.Wait()
	all := newLoadStats()
	for _, s := range l.stats {
		all.merge(s)
	}
	return all
}

type clientConn struct {
	c      net.Conn
	br     *bufio.Reader
	dialed time.Time
}

func (l *load) client(id int, st *loadStats) {
	defer l.wg.Done()
	var cc *clientConn
	defer func() {
		if cc != nil {
			cc.c.Close()
		}
	}()
	body := fmt.Appendf(nil, `{"client":%d,"pad":"0123456789abcdef"}`, id)
	var req bytes.Buffer
	fmt.Fprintf(&req, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", l.path, l.addr, len(body))
	if !l.keepAlive {
		req.WriteString("Connection: close\r\n")
	}
	req.WriteString("\r\n")
	req.Write(body)
	for range requestLimit {
		select {
		case <-l.stopCh:
			return
		default:
		}
		began := time.Now()
		if cc == nil {
			c, err := net.DialTimeout("tcp", l.addr, requestTimeout)
			if err != nil {
				l.fail(st, "dial", err)
				time.Sleep(failurePause)
				continue
			}
			cc = &clientConn{c: c, br: bufio.NewReader(c), dialed: began}
		}
		gen, closeConn, err := l.roundTrip(cc, req.Bytes())
		if err != nil {
			l.fail(st, "", err)
			cc.c.Close()
			cc = nil
			time.Sleep(failurePause)
			continue
		}
		l.record(st, gen, cc.dialed, began)
		if closeConn {
			cc.c.Close()
			cc = nil
		}
	}
}

func (l *load) roundTrip(cc *clientConn, req []byte) (gen int, closeConn bool, err error) {
	cc.c.SetDeadline(time.Now().Add(requestTimeout))
	if _, err := cc.c.Write(req); err != nil {
		return 0, false, fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(cc.br, nil)
	if err != nil {
		return 0, false, fmt.Errorf("read response: %w", err)
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, false, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, false, fmt.Errorf("status %s: %.200s", resp.Status, data)
	}
	var answer struct {
		Generation int `json:"generation"`
	}
	if err := json.Unmarshal(data, &answer); err != nil {
		return 0, false, fmt.Errorf("decode %q: %w", data, err)
	}
	return answer.Generation, resp.Close || !l.keepAlive, nil
}

func (l *load) bin(t time.Time) int {
	return min(max(int(t.Sub(l.start)/binWidth), 0), maxBins-1)
}

func (l *load) record(st *loadStats, gen int, dialed, began time.Time) {
	now := time.Now()
	st.Timings = append(st.Timings, timing{At: uint32(began.Sub(l.start) / time.Microsecond),
		Took: uint32(now.Sub(began) / time.Microsecond)})
	st.OK++
	st.OKBins[l.bin(now)]++
	g := st.ByGen[gen]
	if g == nil {
		g = &genSeen{}
		st.ByGen[gen] = g
	}
	g.OK++
	g.FirstConn = earliest(g.FirstConn, dialed)
	g.FirstAnswer = earliest(g.FirstAnswer, now)
}

func (l *load) fail(st *loadStats, what string, err error) {
	class := classify(err)
	st.Failed[class]++
	st.FailBins[l.bin(time.Now())]++
	if len(st.Samples) < 3 {
		st.Samples = append(st.Samples, fmt.Sprintf("%s: %s %v", class, what, err))
	}
}

// classify sorts a failed request by what the client saw.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return classRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return classReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return classEOF
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return classTimeout
	}
	return classOther
}
