package test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/handoffd/handoffd/api"
)

// longSpread is the demo's --spread in these tests: each draining
// generation tells its WebSockets and event streams to end within it.
const longSpread = "500ms"

// swapRepeatedly makes n swaps, every apart, waits until the last
// generation alone is left, and checks that every old generation drained
// to its end by itself (exit status 0), none cut by a deadline.
func swapRepeatedly(t *testing.T, d *daemon, n int, every time.Duration) api.ServiceStatus {
	t.Helper()
	first := d.status().Generations[0].ID
	for i := range n {
		time.Sleep(every)
		out, err := d.ctl("swap", "demo")
		if want := fmt.Sprintf("demo: generation %d active", first+i+1); err != nil || !strings.Contains(out, want) {
			t.Errorf("swap %d: %v: %q, want %q", i+1, err, out, want)
		}
	}
	last := first + n
	st := d.waitFor("every old generation exited", 40*time.Second, func(st api.ServiceStatus) bool {
		g := st.Generations[len(st.Generations)-1]
		return liveCount(st) == 1 && g.ID == last && g.State == api.StateActive
	})
	for _, g := range st.Generations[:len(st.Generations)-1] {
		if g.Exit != "exit status 0" {
			t.Errorf("generation %d ended %q, want a clean drain (exit status 0)", g.ID, g.Exit)
		}
	}
	return st
}

const (
	wsClients = 200
	wsEvery   = 100 * time.Millisecond // between a client's messages
)

// TestWebSocketsAcrossSwaps holds 200 WebSockets across 20 swaps: every
// connection to an old generation ends with close 1001 (never a reset or
// an EOF without a close frame), its client reconnects to a newer
// generation, and every message is echoed or its loss is seen by its
// client as that close.
func TestWebSocketsAcrossSwaps(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel() // 40 s of swaps each, mostly waiting: the modes side by side
			webSocketsAcrossSwaps(t, mode)
		})
	}
}

// wsClient is what one WebSocket client saw.
type wsClient struct {
	gens       []int // generation of each connection, in order
	goingAway  int   // connections that ended with close 1001
	sent, echo int   // messages sent, and echoed back
	unechoed   int   // messages sent but not echoed when a close 1001 came (seen by the client)
	failure    error
}

func webSocketsAcrossSwaps(t *testing.T, mode string) {
	d := startDaemon(t, daemonOptions{mode: mode, demoArgs: []string{"--spread", longSpread}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clients := make([]wsClient, wsClients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { clients[i].run(ctx, d.addr, i) })
	}
	time.Sleep(time.Second) // every client connected
	st := swapRepeatedly(t, d, swapCount, swapEvery)
	time.Sleep(time.Second) // the last reconnects have said hello
	cancel()
	wg.Wait()

	last := st.Generations[len(st.Generations)-1].ID
	var conns, goingAway, sent, echoed, unechoed, failed int
	for i, c := range clients {
		conns += len(c.gens)
		goingAway += c.goingAway
		sent, echoed, unechoed = sent+c.sent, echoed+c.echo, unechoed+c.unechoed
		if c.failure != nil {
			failed++
			if failed <= 10 {
				t.Errorf("client %d (generations %v): %v", i, c.gens, c.failure)
			}
			continue
		}
		if len(c.gens) == 0 || c.gens[len(c.gens)-1] != last {
			t.Errorf("client %d ended on generations %v, want it on %d", i, c.gens, last)
		}
		if c.goingAway != len(c.gens)-1 {
			t.Errorf("client %d: %d connections, %d ended with 1001: want every one but the last", i, len(c.gens), c.goingAway)
		}
		if c.sent != c.echo+c.unechoed {
			t.Errorf("client %d: %d messages sent, %d echoed, %d cut by a close: some vanished", i, c.sent, c.echo, c.unechoed)
		}
	}
	t.Logf("%d clients: %d connections, %d closed with 1001, %d failed; messages: %d sent, %d echoed, %d sent as a close 1001 came (the client saw it)",
		wsClients, conns, goingAway, failed, sent, echoed, unechoed)
	if failed > 0 {
		t.Errorf("%d of %d clients saw a failure", failed, wsClients)
	}
	// A client told late by a generation may find the next one draining
	// already and skip it; most clients go through every generation.
	if goingAway < wsClients*swapCount*9/10 {
		t.Errorf("%d connections ended with 1001, want nearly %d (each client at each swap)", goingAway, wsClients*swapCount)
	}
}

// run connects, checks the hello, and sends a message every wsEvery,
// each to be echoed; at a close 1001 it reconnects, and the new
// connection must come from a newer generation. Any other end is a
// failure. It stops when ctx ends.
func (c *wsClient) run(ctx context.Context, addr string, id int) {
	for ctx.Err() == nil {
		conn, gen, err := wsConnect(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.failure = fmt.Errorf("connect after generations %v: %w", c.gens, err)
			return
		}
		if n := len(c.gens); n > 0 && gen <= c.gens[n-1] {
			c.failure = fmt.Errorf("reconnected to generation %d after %v, want a newer one", gen, c.gens)
		}
		c.gens = append(c.gens, gen)
		err = c.converse(ctx, conn, id)
		conn.CloseNow()
		switch {
		case errors.Is(err, context.Canceled):
			return
		case websocket.CloseStatus(err) == websocket.StatusGoingAway:
			c.goingAway++
		default:
			c.failure = fmt.Errorf("connection to generation %d ended without close 1001: %w", gen, err)
			return
		}
	}
}

func wsConnect(ctx context.Context, addr string) (*websocket.Conn, int, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(dctx, "ws://"+addr+"/ws", nil)
	if err != nil {
		return nil, 0, fmt.Errorf("dial: %w", err)
	}
	_, hello, err := conn.Read(dctx)
	if err != nil {
		conn.CloseNow()
		return nil, 0, fmt.Errorf("read hello: %w", err)
	}
	var gen int
	if _, err := fmt.Sscanf(string(hello), `{"generation":%d}`, &gen); err != nil {
		conn.CloseNow()
		return nil, 0, fmt.Errorf("hello %q: %w", hello, err)
	}
	return conn, gen, nil
}

// converse sends a message every wsEvery while a reader takes the
// echoes, in order, until the connection ends or ctx does; it returns why
// the connection ended. Messages sent and not echoed by then were cut by
// that end, which the client sees.
func (c *wsClient) converse(ctx context.Context, conn *websocket.Conn, id int) error {
	var mu sync.Mutex
	var pending []string // sent, not yet echoed
	ended := make(chan error, 1)
	go func() {
		for {
			// Not ctx: at the end of the test the last echoes are still read.
			_, back, err := conn.Read(context.Background())
			if err == nil {
				mu.Lock()
				if len(pending) == 0 || pending[0] != string(back) {
					err = fmt.Errorf("echo %q, want the first of %q", back, pending)
				} else {
					pending = pending[1:]
					c.echo++
				}
				mu.Unlock()
			}
			if err != nil {
				ended <- err
				return
			}
		}
	}()
	finish := func(err error) error {
		mu.Lock()
		defer mu.Unlock()
		c.unechoed += len(pending)
		return err
	}
	tick := time.NewTicker(wsEvery)
	defer tick.Stop()
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			// The test is over: wait for the last echoes, then close.
			for wait := time.Now().Add(5 * time.Second); time.Now().Before(wait); time.Sleep(10 * time.Millisecond) {
				mu.Lock()
				n := len(pending)
				mu.Unlock()
				if n == 0 {
					break
				}
			}
			conn.Close(websocket.StatusNormalClosure, "test over")
			mu.Lock()
			defer mu.Unlock()
			if len(pending) > 0 {
				return fmt.Errorf("%d messages never echoed: %q", len(pending), pending)
			}
			return ctx.Err()
		case err := <-ended:
			return finish(err)
		case <-tick.C:
		}
		msg := fmt.Sprintf("client %d message %d", id, k)
		mu.Lock()
		pending = append(pending, msg)
		c.sent++
		mu.Unlock()
		// Not ctx: coder/websocket closes a connection whose Write is
		// cancelled, and the end of the test is no failure of the server.
		wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := conn.Write(wctx, websocket.MessageText, []byte(msg))
		cancel()
		if err != nil {
			// The reader has the reason (a close frame) or will have it.
			select {
			case rerr := <-ended:
				return finish(rerr)
			case <-time.After(10 * time.Second):
				return finish(fmt.Errorf("write: %w", err))
			}
		}
	}
}

const sseStreams = 100

// TestEventStreamsAcrossSwaps holds 100 server-sent event streams across
// 20 swaps: each stream ends with a retry hint, its client reconnects
// with Last-Event-ID to a newer generation, and the events run on
// without a gap or a repeat.
func TestEventStreamsAcrossSwaps(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel() // 40 s of swaps each, mostly waiting: the modes side by side
			eventStreamsAcrossSwaps(t, mode)
		})
	}
}

// sseClient is what one event-stream client saw.
type sseClient struct {
	gens    []int // generation of each stream
	retries int   // streams that ended with a retry hint
	bounces int   // of those, streams that ended before their first event
	events  int
	lastSeq int
	failure error
}

func eventStreamsAcrossSwaps(t *testing.T, mode string) {
	d := startDaemon(t, daemonOptions{mode: mode, demoArgs: []string{"--spread", longSpread}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clients := make([]sseClient, sseStreams)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { clients[i].run(ctx, d.addr) })
	}
	time.Sleep(time.Second)
	st := swapRepeatedly(t, d, swapCount, swapEvery)
	time.Sleep(time.Second)
	cancel()
	wg.Wait()

	last := st.Generations[len(st.Generations)-1].ID
	var streams, retries, bounces, events, failed int
	for i, c := range clients {
		streams, retries, bounces, events = streams+len(c.gens), retries+c.retries, bounces+c.bounces, events+c.events
		if c.failure != nil {
			failed++
			if failed <= 10 {
				t.Errorf("client %d (generations %v): %v", i, c.gens, c.failure)
			}
			continue
		}
		if len(c.gens) == 0 || c.gens[len(c.gens)-1] != last {
			t.Errorf("client %d ended on generations %v, want it on %d", i, c.gens, last)
		}
		if c.retries-c.bounces != len(c.gens)-1 {
			t.Errorf("client %d: %d streams, %d ended with a retry hint (%d before an event): want every one but the last", i, len(c.gens), c.retries, c.bounces)
		}
		if c.events != c.lastSeq {
			t.Errorf("client %d: %d events up to seq %d: a gap or a repeat", i, c.events, c.lastSeq)
		}
	}
	t.Logf("%d clients: %d streams, %d ended with a retry hint (%d before their first event: they reached a generation as it began to drain), %d failed; %d events, none lost or repeated",
		sseStreams, streams, retries, bounces, failed, events)
	if failed > 0 {
		t.Errorf("%d of %d clients saw a failure", failed, sseStreams)
	}
	if retries-bounces < sseStreams*swapCount*9/10 {
		t.Errorf("%d streams ended with a retry hint after events, want nearly %d (each client at each swap)", retries-bounces, sseStreams*swapCount)
	}
}

// run reads a stream, checks that each event's seq follows the last one
// seen, and at the stream's end (which must carry a retry hint) waits
// as told and reconnects with Last-Event-ID. It stops when ctx ends.
func (c *sseClient) run(ctx context.Context, addr string) {
	for ctx.Err() == nil {
		streamsBefore := len(c.gens)
		retry, err := c.stream(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.failure = err
			return
		}
		c.retries++
		if len(c.gens) < streamsBefore+1 {
			c.bounces++
		}
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

// stream reads one event stream on a new connection and returns the
// retry hint it ended with.
func (c *sseClient) stream(ctx context.Context, addr string) (time.Duration, error) {
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("dial after generations %v: %w", c.gens, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	fmt.Fprintf(conn, "GET /events HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nConnection: close\r\n", addr)
	if c.lastSeq > 0 {
		fmt.Fprintf(conn, "Last-Event-ID: %d\r\n", c.lastSeq)
	}
	fmt.Fprint(conn, "\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, fmt.Errorf("read response after generations %v: %w", c.gens, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	r := bufio.NewReader(resp.Body)
	var retry time.Duration
	gen := 0
	for {
		ev, err := readSSE(r)
		if errors.Is(err, errStreamEnd) {
			if retry == 0 {
				return 0, fmt.Errorf("stream of generation %d ended without a retry hint", gen)
			}
			return retry, nil
		}
		if err != nil {
			return 0, fmt.Errorf("stream of generation %d (after %v): %w", gen, c.gens, err)
		}
		if ms, ok := ev["retry"]; ok {
			n, err := strconv.Atoi(ms)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("retry hint %q", ms)
			}
			retry = time.Duration(n) * time.Millisecond
			continue
		}
		var g, seq int
		if _, err := fmt.Sscanf(ev["data"], `{"generation":%d,"seq":%d}`, &g, &seq); err != nil {
			return 0, fmt.Errorf("event %q: %w", ev, err)
		}
		if gen == 0 {
			if n := len(c.gens); n > 0 && g <= c.gens[n-1] {
				return 0, fmt.Errorf("stream resumed on generation %d after %v, want a newer one", g, c.gens)
			}
			gen = g
			c.gens = append(c.gens, g)
		}
		if seq != c.lastSeq+1 || ev["id"] != strconv.Itoa(seq) {
			return 0, fmt.Errorf("event %v after seq %d: want seq %d", ev, c.lastSeq, c.lastSeq+1)
		}
		c.lastSeq = seq
		c.events++
	}
}

var errStreamEnd = errors.New("end of stream")

// readSSE reads one event's fields, up to its blank line.
func readSSE(r *bufio.Reader) (map[string]string, error) {
	ev := map[string]string{}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if line == "" && len(ev) == 0 && err.Error() == "EOF" {
				return nil, errStreamEnd
			}
			return nil, fmt.Errorf("read (event so far %v, line %q): %w", ev, line, err)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			return ev, nil
		}
		k, v, _ := strings.Cut(line, ":")
		ev[k] = strings.TrimPrefix(v, " ")
	}
}
