package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
)

// Client talks to handoffd's control API over its UNIX socket. Its methods
// are safe for concurrent use. Each returns an *Error when handoffd
// answered with one, so callers can tell a refused swap (409 Conflict)
// from an unknown service (404).
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client of the control socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{path: path, hc: &http.Client{Transport: tr}}
}

// Error is an answer of handoffd other than 200 OK.
type Error struct {
	// StatusCode is the HTTP status: 404 for an unknown service, 409 for
	// a swap refused because another is under way, 403 for a peer that
	// may not do it.
	StatusCode int
	// Message is handoffd's one-line reason.
	Message string
}

func (e *Error) Error() string { return e.Message }

// Status returns the status of every service, or of the named one.
func (c *Client) Status(ctx context.Context, service string) (Status, error) {
	var st Status
	q := ""
	if service != "" {
		q = "?service=" + url.QueryEscape(service)
	}
	return st, c.call(ctx, http.MethodGet, "/v1/status"+q, &st)
}

// Swap swaps the service and returns once the new generation is active.
func (c *Client) Swap(ctx context.Context, service string) (SwapResult, error) {
	var res SwapResult
	return res, c.call(ctx, http.MethodPost, servicePath(service, "swap"), &res)
}

// SwapCanary starts the service's next generation as a canary that
// receives percent (above 0, at most 100) of new connections beside the
// active generation, split by client address when sticky. It returns once
// the canary receives them.
func (c *Client) SwapCanary(ctx context.Context, service string, percent float64, sticky bool) (SwapResult, error) {
	var res SwapResult
	req := SwapRequest{Canary: &percent, Sticky: sticky}
	return res, c.callWith(ctx, http.MethodPost, servicePath(service, "swap"), req, &res)
}

// SetCanary changes the share of new connections, in percent from 0 to
// 100, that the service's canary receives: one map update per listener.
func (c *Client) SetCanary(ctx context.Context, service string, percent float64) (CanaryResult, error) {
	var res CanaryResult
	return res, c.callWith(ctx, http.MethodPost, servicePath(service, "canary"), CanaryRequest{Weight: percent}, &res)
}

// Promote makes the service's canary the active generation; the one it
// replaces drains (or waits in standby during probation).
func (c *Client) Promote(ctx context.Context, service string) (SwapResult, error) {
	var res SwapResult
	return res, c.call(ctx, http.MethodPost, servicePath(service, "promote"), &res)
}

// Rollback takes the service back to the generation before: a canary's
// share goes to 0 and the canary drains, or, within probation, the
// standby generation is active again.
func (c *Client) Rollback(ctx context.Context, service string) (SwapResult, error) {
	var res SwapResult
	return res, c.call(ctx, http.MethodPost, servicePath(service, "rollback"), &res)
}

// DrainStandby ends the service's probation: its standby generation drains.
func (c *Client) DrainStandby(ctx context.Context, service string) (DrainResult, error) {
	var res DrainResult
	return res, c.call(ctx, http.MethodPost, servicePath(service, "drain"), &res)
}

// Stop stops the named service, or every service and handoffd when
// service is empty.
func (c *Client) Stop(ctx context.Context, service string) error {
	p := "/v1/stop"
	if service != "" {
		p = servicePath(service, "stop")
	}
	return c.call(ctx, http.MethodPost, p, nil)
}

// Reload sends SIGHUP to the service's active generation.
func (c *Client) Reload(ctx context.Context, service string) (ReloadResult, error) {
	var res ReloadResult
	return res, c.call(ctx, http.MethodPost, servicePath(service, "reload"), &res)
}

// ReloadConfig makes handoffd read its config file again and apply it.
func (c *Client) ReloadConfig(ctx context.Context) (ConfigChanges, error) {
	var ch ConfigChanges
	return ch, c.call(ctx, http.MethodPost, "/v1/reload-config", &ch)
}

func servicePath(service, verb string) string {
	return "/v1/services/" + url.PathEscape(service) + "/" + verb
}

func (c *Client) call(ctx context.Context, method, path string, out any) error {
	return c.callWith(ctx, method, path, nil, out)
}

// callWith is call with a JSON request body when in is not nil.
func (c *Client) callWith(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://handoffd"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("cannot reach handoffd at %s (is it running? set --control): %w", c.path, op.Err)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e ErrorBody
		if json.NewDecoder(resp.Body).Decode(&e) != nil || e.Error == "" {
			e.Error = resp.Status
		}
		return &Error{StatusCode: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
