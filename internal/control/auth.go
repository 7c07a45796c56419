package control

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/kernel"
	"golang.org/x/sys/unix"
)

type peerKey struct{}

// WithPeerCred returns ctx carrying cred; requests without one are denied.
func WithPeerCred(ctx context.Context, cred *kernel.PeerCred) context.Context {
	return context.WithValue(ctx, peerKey{}, cred)
}

func peerCredFrom(ctx context.Context) (*kernel.PeerCred, bool) {
	c, ok := ctx.Value(peerKey{}).(*kernel.PeerCred)
	return c, ok && c != nil
}

// connContext stores the peer's credentials in the context of every
// request on c, for http.Server.ConnContext. They are read once, at
// connection time: what the kernel saw at connect is what counts, not
// what the peer became later.
func connContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	cred, err := kernel.ReadPeerCred(uc)
	if err != nil {
		slog.Error("read control peer credentials", "err", err)
		return ctx
	}
	return WithPeerCred(ctx, cred)
}

// access is what a peer may do through the control API.
type access int

const (
	accessNone access = iota
	accessRead        // GET: status
	accessAll         // everything, swaps and stops included
)

// accessPolicy decides who may use the control API: root and handoffd's
// own uid may do everything, so may members of group; members of
// readGroup may read.
type accessPolicy struct {
	self                uint32
	group, readGroup    uint32
	hasGroup, hasReader bool
	groupName, readName string
}

func newAccessPolicy(cfg *config.Config, log *slog.Logger) accessPolicy {
	p := accessPolicy{self: uint32(os.Geteuid()), groupName: cfg.Group, readName: cfg.ReadGroup}
	var err error
	if cfg.Group != "" {
		if p.group, err = config.LookupGroup(cfg.Group); err != nil {
			log.Error("control API: only root may use it", "group", cfg.Group, "err", err)
		}
		p.hasGroup = err == nil
	}
	if cfg.ReadGroup != "" {
		if p.readGroup, err = config.LookupGroup(cfg.ReadGroup); err != nil {
			log.Error("control API: read_group ignored", "read_group", cfg.ReadGroup, "err", err)
		}
		p.hasReader = err == nil
	}
	return p
}

func (p accessPolicy) of(c *kernel.PeerCred) access {
	switch {
	case c.UID == 0 || c.UID == p.self || p.hasGroup && c.InGroup(p.group):
		return accessAll
	case p.hasReader && c.InGroup(p.readGroup):
		return accessRead
	}
	return accessNone
}

// who says who may do what needs, for the message of a denial.
func (p accessPolicy) who(need access) string {
	s := "root"
	if p.hasGroup {
		s += " and members of group " + p.groupName
	}
	if need == accessRead && p.hasReader {
		s += " or of read_group " + p.readName
	}
	return s
}

// authorize answers 403 to a peer that may not make the request, and
// logs the denial.
func (a *API) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		need := accessAll
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			need = accessRead
		}
		cred, ok := peerCredFrom(r.Context())
		if name, join := joinPath(r); ok && join {
			if err := a.joinRefusal(cred, name); err != nil {
				a.log.Warn("join refused", "service", name, "uid", cred.UID, "gid", cred.GID, "pid", cred.PID, "err", err)
				writeJSON(w, http.StatusForbidden, api.ErrorBody{Error: err.Error()})
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if ok && a.policy.of(cred) >= need {
			next.ServeHTTP(w, r)
			return
		}
		if !ok {
			a.log.Warn("control API request denied: peer credentials unknown", "method", r.Method, "path", r.URL.Path)
			writeJSON(w, http.StatusForbidden, api.ErrorBody{Error: "permission denied: the peer's credentials are unknown"})
			return
		}
		a.log.Warn("control API request denied", "uid", cred.UID, "gid", cred.GID, "pid", cred.PID,
			"method", r.Method, "path", r.URL.Path)
		writeJSON(w, http.StatusForbidden, api.ErrorBody{Error: fmt.Sprintf(
			"permission denied: uid %d may not %s %s; only %s may", cred.UID, r.Method, r.URL.Path, a.policy.who(need))})
	})
}

// checkSocketDir refuses a control socket directory that others could
// tamper with: one not owned by root or handoffd's uid, or any directory
// on the way there that everybody may write without the sticky bit.
func checkSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*unix.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("directory %s is owned by uid %d, not root: choose another control path", dir, st.Uid)
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if m := fi.Mode(); m.Perm()&0o002 != 0 && m&os.ModeSticky == 0 {
			return fmt.Errorf("directory %s is world-writable without the sticky bit: anyone could replace the control socket (chmod o-w %s, or choose another control path)", d, d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
