package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
)

// maxSlow caps GET|POST /slow?ms=N.
const maxSlow = 60 * time.Second

// appInfo is what the routes report about this process.
type appInfo struct {
	Service    string `json:"service"`
	Generation int    `json:"generation"`
	PID        int    `json:"pid"`
	Version    string `json:"version"`
}

// rootReply is GET /: the process, and the greeting of its config file.
type rootReply struct {
	appInfo
	Greeting string `json:"greeting"`
}

// newEngine returns the demo's routes; greeting gives the greeting in
// use, which a reload may change, healthy what GET /healthz answers, and
// count the state behind /counter.
func newEngine(app appInfo, greeting func() string, healthy func() bool, count *counter, accessLog bool) *gin.Engine {
	r := gin.New()
	r.Use(gin.Recovery())
	if accessLog {
		r.Use(logRequests)
	}
	r.GET("/", func(c *gin.Context) { c.JSON(http.StatusOK, rootReply{app, greeting()}) })
	r.GET("/healthz", func(c *gin.Context) {
		if !healthy() {
			c.String(http.StatusServiceUnavailable, "unhealthy")
			return
		}
		c.String(http.StatusOK, "ok")
	})
	slow := func(c *gin.Context) { serveSlow(c, app) }
	r.GET("/slow", slow)
	r.POST("/slow", slow)
	r.GET("/ws", func(c *gin.Context) { serveWebSocket(c, app) })
	r.GET("/events", func(c *gin.Context) { serveEvents(c, app) })
	count.routes(r)
	return r
}

// serveSlow answers after ms milliseconds; a POST's body is read and its
// length reported, so load tests can check that nothing was cut.
func serveSlow(c *gin.Context, app appInfo) {
	sleep, err := parseSlow(c.DefaultQuery("ms", "0"))
	if err != nil {
		c.JSON(http.StatusBadRequest, gin.H{"error": err.Error()})
		return
	}
	var n int64
	if c.Request.Method == http.MethodPost {
		if n, err = io.Copy(io.Discard, c.Request.Body); err != nil {
			c.JSON(http.StatusBadRequest, gin.H{"error": "read body: " + err.Error()})
			return
		}
	}
	select {
	case <-time.After(sleep):
	case <-c.Request.Context().Done():
		return // the client left
	}
	c.JSON(http.StatusOK, gin.H{
		"service": app.Service, "generation": app.Generation, "pid": app.PID, "version": app.Version,
		"slept_ms": sleep.Milliseconds(), "bytes": n,
	})
}

// parseSlow reads the ms parameter of /slow, capped at maxSlow.
func parseSlow(ms string) (time.Duration, error) {
	n, err := strconv.Atoi(ms)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("ms=%q: want a number of milliseconds >= 0", ms)
	}
	return min(time.Duration(n)*time.Millisecond, maxSlow), nil
}

func logRequests(c *gin.Context) {
	start := time.Now()
	c.Next()
	slog.Info("request", "method", c.Request.Method, "path", c.Request.URL.Path,
		"status", c.Writer.Status(), "took", time.Since(start))
}
