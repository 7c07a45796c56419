package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// API serves the control API over HTTP/JSON:
//
//	GET  /v1/status[?service=NAME]    Status
//	POST /v1/services/{name}/swap     SwapResult once the new generation is active
//	POST /v1/services/{name}/stop     stop the service's generations
//	POST /v1/stop                     stop every service, then handoffd
type API struct {
	sup *Supervisor
	// shutdown is called after POST /v1/stop stopped the services.
	shutdown func()
}

// NewAPI returns the control API of sup. shutdown is called once every
// service was stopped through POST /v1/stop.
func NewAPI(sup *Supervisor, shutdown func()) *API { return &API{sup: sup, shutdown: shutdown} }

// Handler returns the API's routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", a.status)
	mux.HandleFunc("POST /v1/services/{name}/swap", a.swap)
	mux.HandleFunc("POST /v1/services/{name}/stop", a.stopService)
	mux.HandleFunc("POST /v1/stop", a.stopAll)
	return mux
}

type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrUnknownService):
		code = http.StatusNotFound
	case errors.Is(err, ErrSwapInProgress):
		code = http.StatusConflict
	case errors.Is(err, ErrStopped):
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, apiError{Error: err.Error()})
}

func (a *API) status(w http.ResponseWriter, r *http.Request) {
	st, err := a.sup.Status(r.URL.Query().Get("service"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) swap(w http.ResponseWriter, r *http.Request) {
	svc, err := a.sup.Service(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	res, err := svc.Swap(r.Context())
	if err != nil {
		writeError(w, fmt.Errorf("swap %s: %w", svc.Name(), err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *API) stopService(w http.ResponseWriter, r *http.Request) {
	svc, err := a.sup.Service(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	if err := svc.Stop(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (a *API) stopAll(w http.ResponseWriter, r *http.Request) {
	if err := a.sup.Stop(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
	if a.shutdown != nil {
		a.shutdown()
	}
}

// ListenControl opens the control socket at path, mode 0660. A socket
// file left by a handoffd that is gone is replaced; one that a running
// handoffd answers on is an error.
func ListenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: another handoffd is running there (stop it, or set --control)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod control socket: %w", err)
	}
	return ln, nil
}

// Client talks to handoffd's control API.
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

// Status returns the status of every service, or of the named one.
func (c *Client) Status(ctx context.Context, service string) (Status, error) {
	var st Status
	q := ""
	if service != "" {
		q = "?service=" + service
	}
	return st, c.call(ctx, http.MethodGet, "/v1/status"+q, &st)
}

// Swap swaps the service and returns once the new generation is active.
func (c *Client) Swap(ctx context.Context, service string) (SwapResult, error) {
	var res SwapResult
	return res, c.call(ctx, http.MethodPost, "/v1/services/"+service+"/swap", &res)
}

// Stop stops the named service, or every service and handoffd when
// service is empty.
func (c *Client) Stop(ctx context.Context, service string) error {
	p := "/v1/stop"
	if service != "" {
		p = "/v1/services/" + service + "/stop"
	}
	return c.call(ctx, http.MethodPost, p, nil)
}

func (c *Client) call(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://handoffd"+path, nil)
	if err != nil {
		return err
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
		var e apiError
		if json.NewDecoder(resp.Body).Decode(&e) != nil || e.Error == "" {
			e.Error = resp.Status
		}
		return errors.New(e.Error)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
