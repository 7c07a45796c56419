package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

// API serves the control API over HTTP/JSON:
//
//	GET  /v1/status[?service=NAME]    api.Status
//	POST /v1/services/{name}/swap     api.SwapResult once the new generation is active;
//	                                  optional body {"timeout":"30s"}, and
//	                                  {"canary":5,"sticky":true} for a 5% canary
//	POST /v1/services/{name}/canary   api.CanaryResult: body {"weight":25}, the canary's new share
//	POST /v1/services/{name}/promote  api.SwapResult: the canary is active, the old one drains
//	POST /v1/services/{name}/rollback api.SwapResult: the canary, or within probation the
//	                                  new generation, gives way to the one before
//	POST /v1/services/{name}/stop     stop the service's generations
//	POST /v1/services/{name}/join     Upgrade: handoff-join; the caller becomes the
//	                                  next generation (see join.go)
//	POST /v1/services/{name}/reload   api.ReloadResult: SIGHUP sent to the active generation
//	POST /v1/reload-config            api.ConfigChanges: the config file read again and applied
//	POST /v1/stop                     stop every service, then handoffd
//
// Every request is checked against the peer's credentials (see Server):
// root and members of the config's group may do everything, members of
// read_group may read status. Every answer, errors included, is JSON.
type API struct {
	sup *lifecycle.Supervisor
	// shutdown is called after POST /v1/stop stopped the services.
	shutdown func()
	policy   accessPolicy
	log      *slog.Logger
}

// maxRequestBody bounds request bodies: none needs more than a few bytes.
const maxRequestBody = 64 << 10

// NewAPI returns the control API of sup. shutdown is called once every
// service was stopped through POST /v1/stop.
func NewAPI(sup *lifecycle.Supervisor, shutdown func()) *API {
	return &API{sup: sup, shutdown: shutdown, log: sup.Logger(), policy: newAccessPolicy(sup.Config(), sup.Logger())}
}

// Handler returns the API's routes, behind the access check.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", a.status)
	mux.HandleFunc("POST /v1/services/{name}/swap", a.swap)
	mux.HandleFunc("POST /v1/services/{name}/rollback", a.rollback)
	mux.HandleFunc("POST /v1/services/{name}/canary", a.canary)
	mux.HandleFunc("POST /v1/services/{name}/promote", a.promote)
	mux.HandleFunc("POST /v1/services/{name}/drain", a.drainStandby)
	mux.HandleFunc("POST /v1/services/{name}/stop", a.stopService)
	mux.HandleFunc("POST /v1/services/{name}/join", a.join)
	mux.HandleFunc("POST /v1/services/{name}/reload", a.reloadService)
	mux.HandleFunc("POST /v1/reload-config", a.reloadConfig)
	mux.HandleFunc("POST /v1/stop", a.stopAll)
	return a.authorize(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
		if _, pattern := mux.Handler(r); pattern == "" {
			// The mux answers 404 or 405 in plain text: make it JSON.
			w = &jsonErrorWriter{ResponseWriter: w, r: r}
		}
		mux.ServeHTTP(w, r)
	}))
}

// Server returns an http.Server for the API that records each peer's
// credentials (it must serve a UNIX socket: see Listen) and bounds how
// long a client may take to send a request. It sets no WriteTimeout: a
// swap answers only once the new generation is active, which may take
// the service's ready_timeout; each handler sets its own write deadline.
func (a *API) Server() *http.Server {
	return &http.Server{
		Handler:           a.Handler(),
		ConnContext:       connContext,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
}

// Listen opens the API's control socket; see ListenControl.
func (a *API) Listen() (net.Listener, error) {
	gid, readGID := -1, -1
	if a.policy.hasGroup {
		gid = int(a.policy.group)
	}
	if a.policy.hasReader {
		readGID = int(a.policy.readGroup)
	}
	return ListenControl(a.sup.Config().Control, gid, readGID)
}

// writeJSON answers with v, its length given, so that a flush sends the
// whole answer (POST /v1/stop flushes it before handoffd exits).
func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, fmt.Sprintf("encode answer: %v", err), http.StatusInternalServerError)
		return
	}
	body = append(body, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write(body)
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, lifecycle.ErrUnknownService):
		code = http.StatusNotFound
	case errors.Is(err, lifecycle.ErrSwapInProgress), errors.Is(err, lifecycle.ErrNoStandby), errors.Is(err, lifecycle.ErrNoActive),
		errors.Is(err, lifecycle.ErrNoReload), errors.Is(err, lifecycle.ErrNoCanary), errors.Is(err, lifecycle.ErrCanaryRunning):
		code = http.StatusConflict
	case errors.Is(err, lifecycle.ErrConfigRefused), errors.Is(err, lifecycle.ErrCanaryRefused):
		code = http.StatusUnprocessableEntity
	case errors.Is(err, lifecycle.ErrStopped):
		code = http.StatusServiceUnavailable
	case errors.As(err, &tooBig):
		code = http.StatusRequestEntityTooLarge
	case errors.Is(err, errBadRequest):
		code = http.StatusBadRequest
	}
	writeJSON(w, code, api.ErrorBody{Error: err.Error()})
}

// jsonErrorWriter turns the mux's plain-text 404 and 405 answers into
// JSON errors that handoffctl prints; other answers (a redirect to a
// cleaned path) pass through.
type jsonErrorWriter struct {
	http.ResponseWriter
	r                     *http.Request
	wroteHeader, replaced bool
}

func (w *jsonErrorWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	if code < 400 {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.replaced = true
	msg := fmt.Sprintf("no endpoint %s", w.r.URL.Path)
	if code == http.StatusMethodNotAllowed {
		msg = fmt.Sprintf("method %s not allowed on %s (allowed: %s)", w.r.Method, w.r.URL.Path, w.Header().Get("Allow"))
	}
	w.Header().Del("X-Content-Type-lifecycle.Options")
	writeJSON(w.ResponseWriter, code, api.ErrorBody{Error: msg})
}

func (w *jsonErrorWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.replaced {
		return len(b), nil // the plain-text body was replaced
	}
	return w.ResponseWriter.Write(b)
}

var errBadRequest = errors.New("bad request")

// decodeBody decodes the optional JSON object in r's body into v,
// rejecting unknown fields and trailing data. An empty body leaves v as is.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	} else if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			err = errors.New("data after the JSON object")
		}
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return fmt.Errorf("request body: %w", err)
	}
	if err != nil {
		return fmt.Errorf("%w: request body: %v", errBadRequest, err)
	}
	return nil
}

// writeDeadline lets the answer to r be written for d from now; the
// server has no WriteTimeout of its own.
func writeDeadline(w http.ResponseWriter, d time.Duration) {
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d))
}

// apiSlack is what a handler may take beyond the waits its request asks for.
const apiSlack = 30 * time.Second

func (a *API) status(w http.ResponseWriter, r *http.Request) {
	writeDeadline(w, apiSlack)
	st, err := a.sup.Status(r.URL.Query().Get("service"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) swap(w http.ResponseWriter, r *http.Request) {
	var req api.SwapRequest
	svc, ok := a.target(w, r, &req)
	if !ok {
		return
	}
	ctx := r.Context()
	limit := svc.Config().ReadyTimeout.Std()
	if req.Timeout != "" {
		d, err := time.ParseDuration(req.Timeout)
		if err != nil || d <= 0 {
			writeError(w, fmt.Errorf("%w: timeout %q: give a positive duration such as 30s", errBadRequest, req.Timeout))
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
		limit = min(limit, d)
	}
	writeDeadline(w, limit+apiSlack)
	var res api.SwapResult
	var err error
	switch {
	case req.Canary != nil:
		if p := *req.Canary; !(p > 0 && p <= 100) {
			writeError(w, fmt.Errorf("%w: canary %g%%: give a share above 0 and at most 100", errBadRequest, p))
			return
		}
		res, err = svc.SwapCanary(ctx, lifecycle.Split{Share: *req.Canary / 100, Sticky: req.Sticky})
	case req.Sticky:
		writeError(w, fmt.Errorf("%w: sticky applies to a canary: give canary too", errBadRequest))
		return
	default:
		res, err = svc.Swap(ctx)
	}
	if err != nil {
		writeError(w, fmt.Errorf("swap %s: %w", svc.Name(), err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// target decodes the request's body into body and returns the service its
// path names; it answers the request itself when either fails.
func (a *API) target(w http.ResponseWriter, r *http.Request, body any) (*lifecycle.Service, bool) {
	if err := decodeBody(r, body); err != nil {
		writeError(w, err)
		return nil, false
	}
	svc, err := a.sup.Service(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return nil, false
	}
	return svc, true
}

func (a *API) canary(w http.ResponseWriter, r *http.Request) {
	var req api.CanaryRequest
	svc, ok := a.target(w, r, &req)
	if !ok {
		return
	}
	if !(req.Weight >= 0 && req.Weight <= 100) {
		writeError(w, fmt.Errorf("%w: weight %g%%: give a share from 0 to 100", errBadRequest, req.Weight))
		return
	}
	res, err := svc.SetCanaryShare(req.Weight / 100)
	if err != nil {
		writeError(w, fmt.Errorf("canary %s: %w", svc.Name(), err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *API) promote(w http.ResponseWriter, r *http.Request) {
	svc, ok := a.target(w, r, &struct{}{})
	if !ok {
		return
	}
	res, err := svc.Promote()
	if err != nil {
		writeError(w, fmt.Errorf("promote %s: %w", svc.Name(), err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *API) rollback(w http.ResponseWriter, r *http.Request) {
	svc, ok := a.target(w, r, &struct{}{})
	if !ok {
		return
	}
	res, err := svc.Rollback()
	if err != nil {
		writeError(w, fmt.Errorf("rollback %s: %w", svc.Name(), err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *API) drainStandby(w http.ResponseWriter, r *http.Request) {
	svc, ok := a.target(w, r, &struct{}{})
	if !ok {
		return
	}
	id, err := svc.DrainStandby()
	if err != nil {
		writeError(w, fmt.Errorf("drain %s: %w", svc.Name(), err))
		return
	}
	writeJSON(w, http.StatusOK, api.DrainResult{Service: svc.Name(), Generation: id})
}

func (a *API) stopService(w http.ResponseWriter, r *http.Request) {
	svc, ok := a.target(w, r, &struct{}{})
	if !ok {
		return
	}
	writeDeadline(w, svc.Config().DrainTimeout.Std()+apiSlack)
	if err := svc.Stop(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (a *API) stopAll(w http.ResponseWriter, r *http.Request) {
	if err := decodeBody(r, &struct{}{}); err != nil {
		writeError(w, err)
		return
	}
	var longest time.Duration
	for _, sc := range a.sup.Config().Services {
		longest = max(longest, sc.DrainTimeout.Std())
	}
	writeDeadline(w, longest+apiSlack)
	if err := a.sup.Stop(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
	// The answer goes out before handoffd closes its server and exits.
	http.NewResponseController(w).Flush()
	if a.shutdown != nil {
		a.shutdown()
	}
}

func (a *API) reloadService(w http.ResponseWriter, r *http.Request) {
	writeDeadline(w, apiSlack)
	svc, ok := a.target(w, r, &struct{}{})
	if !ok {
		return
	}
	res, err := svc.Reload()
	if err != nil {
		writeError(w, fmt.Errorf("reload %s: %w", svc.Name(), err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *API) reloadConfig(w http.ResponseWriter, r *http.Request) {
	if err := decodeBody(r, &struct{}{}); err != nil {
		writeError(w, err)
		return
	}
	cfg, err := a.sup.LoadConfig()
	if err != nil {
		a.log.Warn("config reload", "err", err)
		writeError(w, err)
		return
	}
	// Added services are started before the answer.
	var longest time.Duration
	for _, sc := range cfg.Services {
		longest = max(longest, sc.ReadyTimeout.Std())
	}
	writeDeadline(w, longest+apiSlack)
	ch, err := a.sup.Reload(r.Context(), cfg)
	if err != nil {
		a.log.Warn("config reload", "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ch)
}

// ListenControl opens the control socket at path: mode 0660, owned by
// root and by group gid (-1: root's group), in a directory created 0755
// if missing. Group readGID (-1: none) may connect too, through an ACL
// entry; where the filesystem has no ACLs, the socket is 0666 instead and
// the check of each request's peer is the only gate. It refuses a directory that others could tamper with. A
// socket file left by a handoffd that is gone is replaced; one that a
// running handoffd answers on is an error.
func ListenControl(path string, gid, readGID int) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w", err)
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
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
	// Every request is checked by its peer's credentials anyway; the
	// mode keeps everybody else from even connecting.
	if err := os.Chown(path, -1, gid); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chown control socket to gid %d: %w", gid, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod control socket: %w", err)
	}
	if readGID >= 0 && readGID != gid {
		err := kernel.AllowGroup(path, uint32(readGID))
		if errors.Is(err, kernel.ErrNoACLs) {
			slog.Warn("no ACLs on the control socket's filesystem: the socket is 0666 and each request's peer is checked", "path", path)
			err = os.Chmod(path, 0o666)
		}
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("let read_group connect to the control socket: %w", err)
		}
	}
	return ln, nil
}
