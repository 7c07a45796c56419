package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/host"
	"github.com/handoffd/handoffd/internal/joinproto"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

// A join makes a process started outside handoffd the next generation of
// a service: over POST /v1/services/{name}/join, upgraded to the
// handoff-join protocol (see package joinproto), handoffd sends it the
// listening sockets a swap prepares with SCM_RIGHTS, waits for its
// READY=1 on the same connection, and swaps to it with lifecycle.Service.SwapTo.

// errJoinHungUp is why a generation fails whose process closed the join
// connection before READY=1.
var errJoinHungUp = errors.New("the joining process closed the control connection before READY=1")

// join serves POST /v1/services/{name}/join. Its answers after the 101
// are lines: ACTIVE, or FAILED with the reason.
func (a *API) join(w http.ResponseWriter, r *http.Request) {
	svc, err := a.sup.Service(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), joinproto.Protocol) {
		w.Header().Set("Upgrade", joinproto.Protocol)
		writeJSON(w, http.StatusUpgradeRequired, api.ErrorBody{Error: fmt.Sprintf(
			"join %s: send Connection: Upgrade and Upgrade: %s", svc.Name(), joinproto.Protocol)})
		return
	}
	cred, _ := peerCredFrom(r.Context()) // authorize let only known peers through
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, fmt.Errorf("join %s: %w", svc.Name(), err))
		return
	}
	defer conn.Close()
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return // the control API serves a UNIX socket only
	}
	conn.SetDeadline(time.Time{}) // the server's read deadline no longer applies
	conn.SetWriteDeadline(time.Now().Add(apiSlack))
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + joinproto.Protocol + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		return
	}

	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	j := &joiner{conn: uc, r: brw.Reader, cred: cred, hungUp: cancel}
	a.log.Info("process joins", "service", svc.Name(), "pid", cred.PID, "uid", cred.UID)
	res, err := svc.SwapTo(ctx, j.start)
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, errJoinHungUp) {
		err = fmt.Errorf("%w (%w)", cause, err)
	}
	conn.SetWriteDeadline(time.Now().Add(apiSlack))
	if err != nil {
		io.WriteString(conn, joinproto.Failed(fmt.Errorf("join %s: %w", svc.Name(), err)))
	} else {
		io.WriteString(conn, joinproto.Active+"\n")
		a.log.Info("joined process is active", "service", svc.Name(), "generation", res.Generation, "pid", res.PID)
	}
	conn.Close() // ends readReady if it still waits
	j.readers.Wait()
}

// joiner is one join under way: the connection, and the peer who asked.
type joiner struct {
	conn    *net.UnixConn
	r       *bufio.Reader
	cred    *kernel.PeerCred
	hungUp  context.CancelCauseFunc
	readers sync.WaitGroup
}

// start is the lifecycle.StartFunc of a join: it sends the generation's sockets to
// the peer and returns the peer as the generation's process.
func (j *joiner) start(spec lifecycle.LaunchSpec) (lifecycle.Process, error) {
	pidfd, err := kernel.PeerPidfd(j.conn, int(j.cred.PID))
	if err != nil {
		return nil, fmt.Errorf("pidfd of the joining process %d: %w", j.cred.PID, err)
	}
	offer := joinproto.Offer{Generation: spec.Generation}
	for _, l := range spec.Config.Listeners {
		offer.Listeners = append(offer.Listeners, l.Name)
		offer.Addresses = append(offer.Addresses, l.Address)
	}
	if err := joinproto.SendOffer(j.conn, offer, spec.Files); err != nil {
		pidfd.Close()
		return nil, fmt.Errorf("send the listeners to pid %d: %w", j.cred.PID, err)
	}
	p := host.NewPidfdProcess(pidfd)
	j.readers.Add(1)
	go j.readReady(p)
	return p, nil
}

// readReady reads the peer's lines until READY=1; it ends then, or when
// the connection closes (the join handler closes it once the swap is over).
func (j *joiner) readReady(p *host.PidfdProcess) {
	defer j.readers.Done()
	for {
		line, err := joinproto.ReadLine(j.r)
		if err != nil {
			j.hungUp(errJoinHungUp)
			return
		}
		switch line {
		case joinproto.Reloads:
			p.SetReloads()
		case joinproto.Ready:
			p.SetReady()
			return
		}
	}
}

// joinPath returns the service named by a join request's path.
func joinPath(r *http.Request) (string, bool) {
	if r.Method != http.MethodPost {
		return "", false
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/services/")
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, "/join")
	return name, ok && name != "" && !strings.Contains(name, "/")
}

// maxAncestors bounds the walk up a joining process's parents.
const maxAncestors = 64

// joinRefusal says why peer c may not join service name, or returns nil
// when it may. Joining is a service's choice (join: true); then root,
// handoffd's own uid, members of group, and processes that run as the
// service would (its user, with its group or the user's primary group)
// may join. A process that is, or descends from, a live generation of
// another service may not, whatever its uid: two services that run as
// one user must not take each other's place. An unknown service is left
// to the handler to answer.
func (a *API) joinRefusal(c *kernel.PeerCred, name string) error {
	svc, err := a.sup.Service(name)
	if err != nil {
		if a.policy.of(c) == accessAll {
			return nil
		}
		return fmt.Errorf("permission denied: uid %d may not join service %s", c.UID, name)
	}
	cfg := svc.Config()
	if !cfg.Join {
		return fmt.Errorf("service %s does not accept joins: set join: true in its config to let a process started outside handoffd become its next generation", name)
	}
	for pid, i := int(c.PID), 0; pid > 1 && i < maxAncestors; pid, i = kernel.ParentPID(pid), i+1 {
		if other, gen, ok := a.sup.GenerationOf(pid); ok && other != name {
			return fmt.Errorf("permission denied: pid %d is generation %d of service %s or runs under it, and may not join service %s", c.PID, gen, other, name)
		}
	}
	if a.policy.of(c) == accessAll {
		return nil
	}
	who := a.policy.who(accessAll)
	if cfg.User != "" {
		uid, gid, err := serviceIDs(cfg)
		if err != nil {
			return fmt.Errorf("permission denied: service %s's user: %w", name, err)
		}
		if c.UID == uid && c.GID == gid {
			return nil
		}
		who += fmt.Sprintf(" or processes that run as service %s's user %s (gid %d)", name, cfg.User, gid)
	}
	return fmt.Errorf("permission denied: uid %d (gid %d) may not join service %s; only %s may", c.UID, c.GID, name, who)
}

// serviceIDs returns the uid and primary gid that cfg's generations run
// with: its user's, and its group's gid when it names one.
func serviceIDs(cfg *config.ServiceConfig) (uid, gid uint32, err error) {
	u, err := config.LookupUser(cfg.User)
	if err != nil {
		return 0, 0, err
	}
	uid64, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, 0, err
	}
	gid64, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return 0, 0, err
	}
	gid = uint32(gid64)
	if cfg.Group != "" {
		if gid, err = config.LookupGroup(cfg.Group); err != nil {
			return 0, 0, err
		}
	}
	return uint32(uid64), gid, nil
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
