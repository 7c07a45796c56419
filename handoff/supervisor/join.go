package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/handoff"
)

// A join makes a process started outside handoffd the next generation of
// a service: over POST /v1/services/{name}/join, upgraded to the
// handoff-join protocol (see handoff.JoinProtocol), handoffd sends it the
// listening sockets a swap prepares with SCM_RIGHTS, waits for its
// READY=1 on the same connection, and swaps to it with Service.SwapTo.

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
	if !headerHasToken(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), handoff.JoinProtocol) {
		w.Header().Set("Upgrade", handoff.JoinProtocol)
		writeJSON(w, http.StatusUpgradeRequired, apiError{Error: fmt.Sprintf(
			"join %s: send Connection: Upgrade and Upgrade: %s", svc.Name(), handoff.JoinProtocol)})
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
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + handoff.JoinProtocol + "\r\n\r\n")
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
		io.WriteString(conn, "FAILED "+strings.Join(strings.Fields(fmt.Sprintf("join %s: %v", svc.Name(), err)), " ")+"\n")
	} else {
		io.WriteString(conn, "ACTIVE\n")
		a.log.Info("joined process is active", "service", svc.Name(), "generation", res.Generation, "pid", res.PID)
	}
	conn.Close() // ends readReady if it still waits
	j.readers.Wait()
}

// joiner is one join under way: the connection, and the peer who asked.
type joiner struct {
	conn    *net.UnixConn
	r       *bufio.Reader
	cred    *PeerCred
	hungUp  context.CancelCauseFunc
	readers sync.WaitGroup
}

// start is the StartFunc of a join: it sends the generation's sockets to
// the peer and returns the peer as the generation's process.
func (j *joiner) start(spec LaunchSpec) (Process, error) {
	pidfd, err := peerPidfd(j.conn, int(j.cred.PID))
	if err != nil {
		return nil, err
	}
	offer := handoff.JoinOffer{Generation: spec.Generation}
	fds := make([]int, len(spec.Files))
	for i, f := range spec.Files {
		fds[i] = int(f.Fd())
		offer.Listeners = append(offer.Listeners, spec.Config.Listeners[i].Name)
		offer.Addresses = append(offer.Addresses, spec.Config.Listeners[i].Address)
	}
	payload, _ := json.Marshal(offer)
	_, _, err = j.conn.WriteMsgUnix(append(payload, '\n'), unix.UnixRights(fds...), nil)
	runtime.KeepAlive(spec.Files)
	if err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("send the listeners to pid %d: %w", j.cred.PID, err)
	}
	p := newPidfdProcess(int(j.cred.PID), pidfd)
	j.readers.Add(1)
	go j.readReady(p)
	return p, nil
}

// readReady reads the peer's lines until READY=1; it ends then, or when
// the connection closes (the join handler closes it once the swap is over).
func (j *joiner) readReady(p *pidfdProcess) {
	defer j.readers.Done()
	for {
		line, err := j.r.ReadSlice('\n')
		if err != nil {
			j.hungUp(errJoinHungUp)
			return
		}
		if strings.TrimSuffix(string(line), "\n") == "READY=1" {
			p.readyOnce.Do(func() { close(p.ready) })
			return
		}
	}
}

// soPeerPidfd is SO_PEERPIDFD (Linux 6.5): a pidfd of the peer as it was
// at connect, immune to pid reuse.
const soPeerPidfd = 77

// peerPidfd returns a pidfd of the peer of c: SO_PEERPIDFD where the
// kernel has it, else pidfd_open of the pid SO_PEERCRED gave.
func peerPidfd(c *net.UnixConn, pid int) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	pidfd, opErr := -1, error(nil)
	if err := raw.Control(func(fd uintptr) {
		pidfd, opErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, soPeerPidfd)
	}); err != nil {
		return -1, err
	}
	if opErr == nil {
		unix.CloseOnExec(pidfd)
		return pidfd, nil
	}
	pidfd, err = unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open of the joining process %d: %w", pid, err)
	}
	unix.CloseOnExec(pidfd)
	return pidfd, nil
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

// joinUser returns the uid that may join service name besides those the
// access policy admits: the service's user, if it has one.
func (a *API) joinUser(name string) (uint32, string, bool) {
	svc, err := a.sup.Service(name)
	user := ""
	if err == nil {
		user = svc.config().User
	}
	if user == "" {
		return 0, "", false
	}
	u, err := lookupUser(user)
	if err != nil {
		return 0, "", false
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(uid), user, err == nil
}

// mayJoin says whether c may join the service that r names as its user.
func (a *API) mayJoin(c *PeerCred, r *http.Request) bool {
	name, ok := joinPath(r)
	if !ok {
		return false
	}
	uid, _, ok := a.joinUser(name)
	return ok && c.UID == uid
}

// joinersNote adds the service's user to the message of a denied join.
func (a *API) joinersNote(r *http.Request) string {
	name, ok := joinPath(r)
	if !ok {
		return ""
	}
	if _, user, ok := a.joinUser(name); ok {
		return fmt.Sprintf(" or service %s's user %s", name, user)
	}
	return ""
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
