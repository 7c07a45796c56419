package supervisor

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PeerCred is who is at the other end of a control connection, as the
// kernel recorded it when the peer connected (SO_PEERCRED, SO_PEERGROUPS).
type PeerCred struct {
	PID    int32
	UID    uint32
	GID    uint32
	Groups []uint32
}

func (c *PeerCred) inGroup(gid uint32) bool {
	return c.GID == gid || slices.Contains(c.Groups, gid)
}

type peerKey struct{}

// WithPeerCred returns ctx carrying cred; requests without one are denied.
func WithPeerCred(ctx context.Context, cred *PeerCred) context.Context {
	return context.WithValue(ctx, peerKey{}, cred)
}

func peerCredFrom(ctx context.Context) (*PeerCred, bool) {
	c, ok := ctx.Value(peerKey{}).(*PeerCred)
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
	cred, err := readPeerCred(uc)
	if err != nil {
		slog.Error("read control peer credentials", "err", err)
		return ctx
	}
	return WithPeerCred(ctx, cred)
}

func readPeerCred(c *net.UnixConn) (*PeerCred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *PeerCred
	var opErr error
	err = raw.Control(func(fd uintptr) {
		var uc *unix.Ucred
		uc, opErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if opErr != nil {
			opErr = fmt.Errorf("SO_PEERCRED: %w", opErr)
			return
		}
		cred = &PeerCred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}
		cred.Groups, opErr = peerGroups(int(fd))
	})
	if err = errors.Join(err, opErr); err != nil {
		return nil, err
	}
	return cred, nil
}

// peerGroups returns the supplementary groups of the peer of fd
// (SO_PEERGROUPS, Linux 4.13).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for range 4 {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case errno == unix.ERANGE && int(n/4) > len(buf):
			buf = make([]uint32, n/4)
		case errno != 0:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", errno)
		default:
			return buf[:n/4], nil
		}
	}
	return nil, errors.New("SO_PEERGROUPS: the peer's groups keep growing")
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

func newAccessPolicy(cfg *Config, log *slog.Logger) accessPolicy {
	p := accessPolicy{self: uint32(os.Geteuid()), groupName: cfg.Group, readName: cfg.ReadGroup}
	var err error
	if cfg.Group != "" {
		if p.group, err = lookupGroup(cfg.Group); err != nil {
			log.Error("control API: only root may use it", "group", cfg.Group, "err", err)
		}
		p.hasGroup = err == nil
	}
	if cfg.ReadGroup != "" {
		if p.readGroup, err = lookupGroup(cfg.ReadGroup); err != nil {
			log.Error("control API: read_group ignored", "read_group", cfg.ReadGroup, "err", err)
		}
		p.hasReader = err == nil
	}
	return p
}

func (p accessPolicy) of(c *PeerCred) access {
	switch {
	case c.UID == 0 || c.UID == p.self || p.hasGroup && c.inGroup(p.group):
		return accessAll
	case p.hasReader && c.inGroup(p.readGroup):
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
		if ok && (a.policy.of(cred) >= need || a.mayJoin(cred, r)) {
			next.ServeHTTP(w, r)
			return
		}
		if !ok {
			a.log.Warn("control API request denied: peer credentials unknown", "method", r.Method, "path", r.URL.Path)
			writeJSON(w, http.StatusForbidden, apiError{Error: "permission denied: the peer's credentials are unknown"})
			return
		}
		a.log.Warn("control API request denied", "uid", cred.UID, "gid", cred.GID, "pid", cred.PID,
			"method", r.Method, "path", r.URL.Path)
		writeJSON(w, http.StatusForbidden, apiError{Error: fmt.Sprintf(
			"permission denied: uid %d may not %s %s; only %s%s may", cred.UID, r.Method, r.URL.Path, a.policy.who(need), a.joinersNote(r))})
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

// allowGroup lets members of gid read and write path besides its owner
// and group, with a POSIX access ACL (the system.posix_acl_access xattr).
// Where the filesystem has no ACLs, it opens path to everybody (0666).
func allowGroup(path string, gid uint32) error {
	const undefined = 0xffffffff
	const rw = 6
	entries := []struct {
		tag  uint16
		perm uint16
		id   uint32
	}{
		{0x01, rw, undefined}, // ACL_USER_OBJ
		{0x04, rw, undefined}, // ACL_GROUP_OBJ
		{0x08, rw, gid},       // ACL_GROUP
		{0x10, rw, undefined}, // ACL_MASK
		{0x20, 0, undefined},  // ACL_OTHER
	}
	acl := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range entries {
		acl = binary.LittleEndian.AppendUint16(acl, e.tag)
		acl = binary.LittleEndian.AppendUint16(acl, e.perm)
		acl = binary.LittleEndian.AppendUint32(acl, e.id)
	}
	err := unix.Setxattr(path, "system.posix_acl_access", acl, 0)
	if errors.Is(err, unix.EOPNOTSUPP) {
		slog.Warn("no ACLs on the control socket's filesystem: the socket is 0666 and each request's peer is checked", "path", path)
		return os.Chmod(path, 0o666)
	}
	return err
}
