package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/gin-gonic/gin"
	"github.com/handoffd/handoffd/handoff"
)

const (
	// eventEvery is the pace of GET /events.
	eventEvery = 100 * time.Millisecond
	// eventRetry is the reconnect delay GET /events suggests at its end.
	eventRetry = 100 * time.Millisecond
)

// serveWebSocket is GET /ws: the first message says which generation
// serves it, then every message comes back as it was sent. When the
// drain tells it to go, it closes with 1001 (going away), and the client
// reconnects to the next generation.
func serveWebSocket(c *gin.Context, app appInfo) {
	conn, err := websocket.Accept(c.Writer, c.Request, nil)
	if err != nil {
		return // Accept answered the request
	}
	defer conn.CloseNow()
	ctx := c.Request.Context()
	hello := fmt.Sprintf(`{"generation":%d}`, app.Generation)
	if err := conn.Write(ctx, websocket.MessageText, []byte(hello)); err != nil {
		return
	}
	echoed := make(chan error, 1)
	go func() { echoed <- echo(ctx, conn) }()
	select {
	case <-handoff.Draining(ctx):
		// Close sends the close frame and waits for the client's: the
		// echo loop then ends with the close error.
		conn.Close(websocket.StatusGoingAway, fmt.Sprintf("generation %d is draining", app.Generation))
		<-echoed
	case <-echoed:
	}
}

func echo(ctx context.Context, conn *websocket.Conn) error {
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		if err := conn.Write(ctx, typ, data); err != nil {
			return err
		}
	}
}

// serveEvents is GET /events, a stream of server-sent events, one every
// 100 ms: `id: K` and `data: {"generation":N,"seq":K}`. A client that
// reconnects with Last-Event-ID: K resumes at K+1. At a drain the stream
// ends with a `retry:` hint, so the client reconnects to the next
// generation soon.
func serveEvents(c *gin.Context, app appInfo) {
	seq := 1
	if last := c.GetHeader("Last-Event-ID"); last != "" {
		n, err := strconv.Atoi(last)
		if err != nil || n < 0 {
			c.JSON(http.StatusBadRequest, gin.H{"error": "Last-Event-ID: want the number of an event"})
			return
		}
		seq = n + 1
	}
	w := c.Writer
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	w.Flush()
	ctx := c.Request.Context()
	draining := handoff.Draining(ctx)
	tick := time.NewTicker(eventEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			fmt.Fprintf(w, "id: %d\ndata: {\"generation\":%d,\"seq\":%d}\n\n", seq, app.Generation, seq)
			w.Flush()
			seq++
		case <-draining:
			fmt.Fprintf(w, "retry: %d\n\n", eventRetry.Milliseconds())
			w.Flush()
			return
		case <-ctx.Done():
			return // the client left
		}
	}
}
