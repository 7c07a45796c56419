// Package health checks whether a generation answers, through connections
// that its caller dials: in ebpf mode handoffd dials them so that the
// steering program sends them to the generation's own listening socket,
// before any client connection goes there (loader.Steering.DialProbe).
//
// A check is an HTTP GET whose answer must be 2xx, or a TCP connect alone.
// WaitHealthy gates an activation on a run of passes; Watch follows a
// generation that takes traffic and returns at a run of failures. The
// package decides nothing about generations: the lifecycle does.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Spec is one service's health check.
type Spec struct {
	// HTTPPath is the path that a GET asks for; a 2xx answer passes.
	// Empty: a check passes when a connection is established.
	HTTPPath string
	// Host is the Host header of HTTP checks: the listener's address.
	Host string
	// Interval is the time from the start of one check to the next.
	Interval time.Duration
	// Timeout bounds one check, connection included.
	Timeout time.Duration
	// Healthy is how many checks in a row must pass before WaitHealthy
	// returns.
	Healthy int
	// Unhealthy is how many checks in a row must fail before Watch
	// returns.
	Unhealthy int
}

// Dial opens one connection to the generation under check.
type Dial func(ctx context.Context) (net.Conn, error)

// Checker runs the checks of one Spec over one Dial. It is safe for use
// by one goroutine at a time.
type Checker struct {
	spec   Spec
	dial   Dial
	client *http.Client
}

// NewChecker returns a Checker; it fails on a Spec that cannot work.
func NewChecker(spec Spec, dial Dial) (*Checker, error) {
	switch {
	case spec.Interval <= 0, spec.Timeout <= 0:
		return nil, fmt.Errorf("health check: interval %v and timeout %v must be above 0", spec.Interval, spec.Timeout)
	case spec.Healthy < 1, spec.Unhealthy < 1:
		return nil, fmt.Errorf("health check: healthy %d and unhealthy %d must be 1 or more", spec.Healthy, spec.Unhealthy)
	case spec.HTTPPath != "" && !strings.HasPrefix(spec.HTTPPath, "/"):
		return nil, fmt.Errorf("health check: http path %q must start with /", spec.HTTPPath)
	}
	c := &Checker{spec: spec, dial: dial}
	if spec.HTTPPath != "" {
		c.client = &http.Client{
			Transport: &http.Transport{
				// Every check is a new connection: one the steering
				// program sees, to the socket being checked.
				DisableKeepAlives: true,
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return dial(ctx)
				},
				ResponseHeaderTimeout: spec.Timeout,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c, nil
}

// Probe runs one check and returns nil when it passed, or an error that
// says what was answered.
func (c *Checker) Probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.spec.Timeout)
	defer cancel()
	if c.client == nil {
		conn, err := c.dial(ctx)
		if err != nil {
			return fmt.Errorf("tcp connect: %w", err)
		}
		conn.Close()
		return nil
	}
	host := c.spec.Host
	if host == "" {
		host = "localhost"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+c.spec.HTTPPath, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", c.spec.HTTPPath, err)
	}
	req.Header.Set("User-Agent", "handoffd-health")
	resp, err := c.client.Do(req)
	if err != nil {
		var uerr interface{ Unwrap() error }
		if errors.As(err, &uerr) {
			err = uerr.Unwrap() // the url.Error repeats method and URL
		}
		return fmt.Errorf("GET %s: %w", c.spec.HTTPPath, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: %s%s", c.spec.HTTPPath, resp.Status, excerpt(body))
	}
	return nil
}

// excerpt returns the start of a body as one short line to quote after a
// status, or "".
func excerpt(body []byte) string {
	s := strings.Join(strings.Fields(string(body)), " ")
	if s == "" {
		return ""
	}
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return ": " + s
}

// WaitHealthy checks every Interval until Healthy checks in a row passed,
// and returns nil then. When ctx ends first it returns an error that
// quotes the last check's failure.
func (c *Checker) WaitHealthy(ctx context.Context) error {
	passes, last := 0, error(nil)
	return c.every(ctx, func(err error) bool {
		if err != nil {
			passes, last = 0, err
			return false
		}
		passes++
		return passes >= c.spec.Healthy
	}, func() error {
		if last == nil {
			return fmt.Errorf("not healthy yet (%d of %d checks in a row passed): %w", passes, c.spec.Healthy, ctx.Err())
		}
		return fmt.Errorf("not healthy: last check: %w", last)
	})
}

// Watch checks every Interval until Unhealthy checks in a row failed, and
// returns an error that says so with the last failure. When ctx ends first
// it returns ctx's error.
func (c *Checker) Watch(ctx context.Context) error {
	fails := 0
	var last error
	err := c.every(ctx, func(err error) bool {
		if err == nil {
			fails = 0
			return false
		}
		fails++
		last = err
		return fails >= c.spec.Unhealthy
	}, ctx.Err)
	if err != nil {
		return err
	}
	return fmt.Errorf("%d health checks in a row failed, the last: %w", fails, last)
}

// every runs a check at once and then every Interval, handing each result
// to done until done says so (every returns nil) or ctx ends (every
// returns ended()).
func (c *Checker) every(ctx context.Context, done func(error) bool, ended func() error) error {
	t := time.NewTicker(c.spec.Interval)
	defer t.Stop()
	for {
		err := c.Probe(ctx)
		if ctx.Err() != nil {
			return ended()
		}
		if done(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ended()
		case <-t.C:
		}
	}
}
