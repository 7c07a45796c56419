package host

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/joinproto"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
)

// ExecArg is the first argument with which handoffd re-executes itself to
// start a generation; see ExecGeneration.
const ExecArg = "__handoffd_exec_generation"

// ExecLauncher starts generations as child processes of handoffd.
//
// It runs the command through handoffd itself (ExecArg): the child sets
// LISTEN_PID to its own pid, which os/exec cannot know before the fork,
// then execs the command in the same process. Before the exec the child
// waits on a pipe (its gate) until handoffd has recorded it
// (LaunchSpec.Started): a handoffd that dies before leaves no command
// running that the next one would not know of.
type ExecLauncher struct {
	// Self is the handoffd binary; /proc/self/exe works even after the
	// file was replaced by an upgrade.
	Self           string
	Stdout, Stderr io.Writer
	// LogDir, if set, holds each generation's stderr file (see
	// stderrLog); its last lines then explain a failed start. Without
	// it, generations write to Stderr directly.
	LogDir string
	// NotifyDir holds each generation's NOTIFY_SOCKET, a socket file in
	// a directory of its own that only root and the generation's user
	// may enter (see PrepareStateDir). It is never abstract: anyone may
	// bind an abstract name first.
	NotifyDir string

	logs logFollower // follows the stderr files in LogDir
}

// Start starts one generation and returns once the process runs.
func (l *ExecLauncher) Start(spec lifecycle.LaunchSpec) (lifecycle.Process, error) {
	var cred *syscall.Credential
	if spec.Config.User != "" || spec.Config.Group != "" {
		var err error
		if cred, err = lookupCredential(spec.Config.User, spec.Config.Group); err != nil {
			return nil, err
		}
		if cred.Uid != 0 && !traversableByAll(l.NotifyDir) {
			return nil, fmt.Errorf("notify directory %s: a directory on the way is not searchable by others (o+x), so user %q could not reach its NOTIFY_SOCKET: open it, or choose another state_dir", l.NotifyDir, spec.Config.User)
		}
	}
	notify, err := listenNotify(l.NotifyDir, spec.Service, spec.Generation, cred)
	if err != nil {
		return nil, err
	}
	var channel *stateChannel
	var channelEnd *os.File // the generation's
	if spec.StateChannel {
		if channel, channelEnd, err = newStateChannel(); err != nil {
			closeNotify(notify)
			return nil, err
		}
		defer channelEnd.Close() // the child has its own copy
	}
	release := func() {
		closeNotify(notify)
		if channel != nil {
			channel.close()
		}
	}
	gate, gateW, err := os.Pipe()
	if err != nil {
		release()
		return nil, fmt.Errorf("gate of the generation: %w", err)
	}
	defer gate.Close() // the child has its own copy
	defer gateW.Close()
	cmd := exec.Command(l.Self, append([]string{ExecArg, ""}, spec.Config.Command...)...)
	cmd.Args[0] = spec.Config.Command[0]
	cmd.Dir = spec.Config.Dir
	cmd.Env = childEnv(spec, notify.LocalAddr().String())
	cmd.ExtraFiles = slices.Clone(spec.Files)
	for _, sf := range spec.Stored {
		cmd.ExtraFiles = append(cmd.ExtraFiles, sf.File)
	}
	if channelEnd != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, channelEnd)
	}
	// The gate comes last, after what the command keeps.
	cmd.ExtraFiles = append(cmd.ExtraFiles, gate)
	cmd.Args[2] = strconv.Itoa(listenFDsStart + len(cmd.ExtraFiles) - 1)
	cmd.Stdout, cmd.Stderr = l.Stdout, l.Stderr
	var errLog *stderrLog
	if l.LogDir != "" {
		if errLog, err = openStderrLog(l.LogDir, spec.Service, spec.Generation); err != nil {
			release()
			return nil, err
		}
		defer errLog.child.Close() // the child has its own copy
		cmd.Stderr = errLog.child
	}
	// Its own process group: a Ctrl-C meant for handoffd must not reach
	// the generations, which handoffd stops in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		release()
		if errLog != nil {
			os.Remove(errLog.path)
		}
		return nil, fmt.Errorf("start %s: %w", spec.Config.Command[0], err)
	}
	if spec.Started != nil {
		if err := spec.Started(cmd.Process.Pid); err != nil {
			// The gate closes unopened: the child exits without
			// running the command.
			gateW.Close()
			cmd.Process.Kill()
			cmd.Wait()
			release()
			if errLog != nil {
				os.Remove(errLog.path)
			}
			return nil, err
		}
	}
	// A child that died already is reaped by wait, which says how.
	gateW.Write([]byte{1})
	p := &execProcess{cmd: cmd, ready: make(chan struct{}), done: make(chan struct{}), notifyRead: make(chan struct{}), stderr: errLog, channel: channel}
	if errLog != nil {
		errLog.follow(&l.logs, l.Stderr, false)
	}
	go p.readNotify(notify, spec.Notice)
	go p.wait(notify)
	return p, nil
}

// DefaultPath is the PATH of a generation whose env does not set one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// childEnv is the whole environment of a generation: PATH, the service's
// env, and the variables of socket activation and of handoff. Nothing of
// handoffd's own environment leaks into it. LISTEN_PID is added by
// ExecGeneration, in the child.
func childEnv(spec lifecycle.LaunchSpec, notifySocket string) []string {
	var env []string
	hasPath := false
	for _, e := range spec.Config.Env {
		name, _, _ := strings.Cut(e, "=")
		if config.ReservedEnv(name) {
			continue
		}
		hasPath = hasPath || name == "PATH"
		env = append(env, e)
	}
	if !hasPath {
		env = append([]string{"PATH=" + DefaultPath}, env...)
	}
	names := make([]string, 0, len(spec.Config.Listeners)+len(spec.Stored))
	for _, l := range spec.Config.Listeners {
		names = append(names, l.Name)
	}
	for _, sf := range spec.Stored {
		names = append(names, sf.Name)
	}
	fds := len(spec.Files) + len(spec.Stored)
	env = append(env,
		"LISTEN_FDS="+strconv.Itoa(fds),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		stateproto.EnvListenFDs+"="+strconv.Itoa(len(spec.Files)),
		"NOTIFY_SOCKET="+notifySocket,
		"HANDOFF_SERVICE="+spec.Service,
		"HANDOFF_GENERATION="+strconv.Itoa(spec.Generation),
		"HANDOFF_CONTROL="+spec.Control,
		// How long the generation has from its stop signal to SIGKILL.
		"HANDOFF_DRAIN_TIMEOUT_MS="+strconv.FormatInt((spec.Config.DrainTimeout-spec.Config.StopDelay).Std().Milliseconds(), 10),
	)
	if spec.StateChannel {
		// The channel's fd comes right after the LISTEN_FDS.
		env = append(env,
			stateproto.EnvFD+"="+strconv.Itoa(listenFDsStart+fds),
			stateproto.EnvTimeout+"="+strconv.FormatInt(spec.Config.StateTimeout.Std().Milliseconds(), 10))
	}
	return env
}

// listenFDsStart is the first fd of LISTEN_FDS, as in systemd.
const listenFDsStart = 3

// lookupCredential returns the credential a generation runs with: the
// user's uid, primary gid and supplementary groups, and the group's gid as
// primary gid when group is set. An empty user keeps uid 0. A non-zero uid
// set this way leaves the process no capabilities: the kernel clears them
// when all uids leave 0.
func lookupCredential(userName, groupName string) (*syscall.Credential, error) {
	cred := &syscall.Credential{Groups: []uint32{}}
	if userName != "" {
		u, err := config.LookupUser(userName)
		if err != nil {
			return nil, fmt.Errorf("user: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred.Uid, cred.Gid = uint32(uid), uint32(gid)
		ids, err := u.GroupIds()
		if err != nil {
			return nil, fmt.Errorf("user %q: supplementary groups: %w", userName, err)
		}
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(g))
			}
		}
	}
	if groupName != "" {
		gid, err := config.LookupGroup(groupName)
		if err != nil {
			return nil, fmt.Errorf("group: %w", err)
		}
		cred.Gid = gid
	}
	return cred, nil
}

// notifySocketName is the name of a NOTIFY_SOCKET in the directory of its
// generation.
const notifySocketName = "sock"

// maxSocketPath is the longest path a socket address holds (sun_path, less
// its NUL).
const maxSocketPath = 107

// notifyPath is the file of generation gen's NOTIFY_SOCKET in dir, the
// notify directory: sock in a directory of the generation's own.
func notifyPath(dir, service string, gen int) (string, error) {
	if dir == "" {
		return "", errors.New("no notify directory")
	}
	path := filepath.Join(dir, fmt.Sprintf("%s.%d", service, gen), notifySocketName)
	if len(path) > maxSocketPath {
		return "", fmt.Errorf("notify socket %s is %d bytes long, more than a socket address holds (%d): choose a shorter state_dir", path, len(path), maxSocketPath)
	}
	return path, nil
}

// legacyNotifyPath is where a handoffd older than the directory per
// generation put the NOTIFY_SOCKET of a generation: a file in dir itself.
// A restarted handoffd binds it again for a generation that such a
// handoffd started (only handoffd can create a name in dir).
func legacyNotifyPath(dir, service string, gen int) string {
	return filepath.Join(dir, fmt.Sprintf("%s.%d.sock", service, gen))
}

// listenNotify opens the NOTIFY_SOCKET of generation gen: a unixgram
// socket with SO_PASSCRED, so that the kernel tells who sent each
// message, bound in a fresh directory of the generation's own in dir.
// The directory is 0700 while the socket is bound, then opened to the
// user of cred, if it is not root: with an ACL entry that lets that user
// alone search it, or, where the filesystem has no ACLs, as 0710 for the
// generation's group.
func listenNotify(dir, service string, gen int, cred *syscall.Credential) (*net.UnixConn, error) {
	path, err := notifyPath(dir, service, gen)
	if err != nil {
		return nil, err
	}
	genDir := filepath.Dir(path)
	// One left there is a generation's whose handoffd died: only handoffd
	// can create a name in dir.
	if err := os.RemoveAll(genDir); err != nil {
		return nil, fmt.Errorf("notify socket directory: %w", err)
	}
	if err := os.Mkdir(genDir, 0o700); err != nil {
		return nil, fmt.Errorf("notify socket directory: %w", err)
	}
	c, err := bindNotify(path)
	if err == nil {
		err = openNotifyDir(genDir, cred)
	}
	if err != nil {
		if c != nil {
			closeNotify(c)
		}
		os.RemoveAll(genDir)
		return nil, err
	}
	return c, nil
}

// openNotifyDir lets the user of cred search genDir, and nobody else but
// handoffd enter it.
func openNotifyDir(genDir string, cred *syscall.Credential) error {
	if err := os.Chmod(genDir, 0o700); err != nil {
		return fmt.Errorf("notify socket directory: %w", err)
	}
	if cred == nil || cred.Uid == 0 {
		return nil
	}
	err := kernel.AllowUser(genDir, cred.Uid, 1)
	if errors.Is(err, kernel.ErrNoACLs) {
		if err = os.Chown(genDir, -1, int(cred.Gid)); err == nil {
			err = os.Chmod(genDir, 0o710)
		}
	}
	if err != nil {
		return fmt.Errorf("open notify socket directory to uid %d: %w", cred.Uid, err)
	}
	return nil
}

// bindNotify binds a NOTIFY_SOCKET at path. A stale file there, of a
// handoffd that died, is removed first. The file is writable by all, like
// systemd's: its directory decides who reaches it, and only the
// generation's pid is believed.
func bindNotify(path string) (*net.UnixConn, error) {
	os.Remove(path)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("open notify socket: %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		closeNotify(c)
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	if err := kernel.PassCred(c); err != nil {
		closeNotify(c)
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	return c, nil
}

// traversableByAll reports whether every existing directory on the way
// to dir lets any user through (o+x).
func traversableByAll(dir string) bool {
	if dir == "" {
		return false
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// closeNotify closes a notify socket and removes its file, and the
// generation's directory it was in.
func closeNotify(c *net.UnixConn) {
	c.Close()
	name := c.LocalAddr().String()
	if !strings.HasPrefix(name, "/") {
		return
	}
	os.Remove(name)
	if filepath.Base(name) == notifySocketName {
		os.Remove(filepath.Dir(name))
	}
}

// closeNotifyRead closes the NOTIFY_SOCKET c of a process that exited
// (its exited flag set), once its reader, which closes read as it
// returns, took what is still queued. The deadline wakes a read that
// waits.
func closeNotifyRead(c *net.UnixConn, read <-chan struct{}) {
	c.SetReadDeadline(time.Now())
	<-read
	closeNotify(c)
}

type execProcess struct {
	cmd       *exec.Cmd
	ready     chan struct{}
	readyOnce sync.Once
	reloads   atomic.Bool
	done      chan struct{}
	// notifyRead is closed when readNotify has returned.
	notifyRead chan struct{}
	// exited is set once the process was reaped.
	exited atomic.Bool
	stderr *stderrLog // nil without a log directory
	// channel is handoffd's end of the state channel, nil without one.
	channel *stateChannel
	reportedConns
}

// Channel implements lifecycle.Stateful.
func (p *execProcess) Channel() lifecycle.StateChannel {
	if p.channel == nil {
		return nil
	}
	return p.channel
}

// StderrTail returns the last lines the process wrote to stderr, on one
// line; complete once Done is closed.
func (p *execProcess) StderrTail() string {
	if p.stderr == nil {
		return ""
	}
	return p.stderr.tail(3)
}

func (p *execProcess) Pid() int               { return p.cmd.Process.Pid }
func (p *execProcess) Reloads() bool          { return p.reloads.Load() }
func (p *execProcess) Ready() <-chan struct{} { return p.ready }
func (p *execProcess) Done() <-chan struct{}  { return p.done }

func (p *execProcess) ExitStatus() string {
	<-p.done
	return p.cmd.ProcessState.String()
}

// Signal signals the process; os.Process uses a pidfd where the kernel has
// them, so a reused pid is never hit.
func (p *execProcess) Signal(sig syscall.Signal) error {
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

func (p *execProcess) wait(notify *net.UnixConn) {
	p.cmd.Wait()
	// The lifecycle hears of all the process sent (a final delta, just
	// before it exited) before it hears of the exit.
	p.exited.Store(true)
	closeNotifyRead(notify, p.notifyRead)
	if p.channel != nil {
		p.channel.close()
	}
	if p.stderr != nil {
		p.stderr.finish()
	}
	close(p.done)
}

// readNotify reads the generation's NOTIFY_SOCKET until it is closed,
// or, once the process exited, until none is left.
func (p *execProcess) readNotify(c *net.UnixConn, notice func(lifecycle.Notice)) {
	defer close(p.notifyRead)
	readNotify(c, p.Pid(), &p.exited, notice, func(ready, reloads bool) {
		if reloads {
			p.reloads.Store(true)
		}
		if ready {
			p.readyOnce.Do(func() { close(p.ready) })
		}
	}, &p.reportedConns)
}

// readNotify reads sd_notify datagrams on c until it is closed, or, once
// the process exited (exited is set, and a read deadline wakes a read
// that waits), until none is left. Only the generation's own process,
// pid, is believed: it alone may say it is ready (status
// hears of READY=1 and HANDOFF_RELOAD=1), and store fds. What concerns
// the fd store and the state handoff goes to notice, with the fds
// attached (nil: they are closed). A datagram over stateproto.MaxMessage
// bytes, or whose fds the kernel cut off, is refused whole, its fds
// closed. conns keeps the QUIC connections the process reports.
func readNotify(c *net.UnixConn, pid int, exited *atomic.Bool, notice func(lifecycle.Notice), status func(ready, reloads bool), conns *reportedConns) {
	buf := make([]byte, stateproto.MaxMessage+1)
	oob := make([]byte, kernel.CredSpace()+kernel.RightsSpace(stateproto.MaxFDs))
	queued := func() bool { n, ok := kernel.Unread(c); return ok && n > 0 }
	for {
		if exited.Load() && !queued() {
			return
		}
		n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
		if errors.Is(err, os.ErrDeadlineExceeded) && queued() {
			c.SetReadDeadline(time.Time{}) // the process exited: read what it left
			continue
		}
		if err != nil {
			return
		}
		fds, rightsErr := kernel.ParseRights(oob[:oobn], flags)
		if kernel.SenderPID(oob[:oobn]) != pid {
			kernel.CloseFDs(fds)
			continue
		}
		if rightsErr != nil || n > stateproto.MaxMessage || flags&unix.MSG_TRUNC != 0 {
			kernel.CloseFDs(fds)
			if notice != nil { // what was read names the fds, for the log
				notice(lifecycle.Notice{Msg: stateproto.Parse(buf[:min(n, stateproto.MaxMessage)]), Oversize: true, Refused: len(fds)})
			}
			continue
		}
		status(parseNotify(buf[:n]))
		conns.note(buf[:n])
		m, ok := parseStoreNotice(buf[:n])
		if !ok && len(fds) == 0 {
			continue
		}
		if notice == nil {
			kernel.CloseFDs(fds)
			continue
		}
		files := make([]*os.File, len(fds))
		sealed := len(fds) > 0
		for i, fd := range fds {
			files[i] = os.NewFile(uintptr(fd), "stored fd")
			sealed = sealed && kernel.CheckSealed(fd) == nil
		}
		notice(lifecycle.Notice{Msg: m, Files: files, Sealed: sealed})
	}
}

// parseStoreNotice parses a datagram and says whether it concerns the
// fd store or the state handoff: FDSTORE=1, FDSTOREREMOVE=1,
// HANDOFF_STATE, HANDOFF_FINAL or HANDOFF_STATE_CHANNEL.
func parseStoreNotice(msg []byte) (stateproto.Message, bool) {
	m := stateproto.Parse(msg)
	_, state := m[stateproto.NotifyState]
	_, final := m[stateproto.NotifyFinal]
	_, channel := m[stateproto.NotifyChannel]
	return m, m[stateproto.FDStore] == "1" || m[stateproto.FDStoreRemove] == "1" || state || final || channel
}

// parseNotify reads one sd_notify datagram, newline-separated VAR=value
// assignments, and says whether it holds READY=1, and HANDOFF_RELOAD=1
// (the process reloads its config on SIGHUP; see handoff.OnReload).
func parseNotify(msg []byte) (ready, reloads bool) {
	for line := range bytes.SplitSeq(msg, []byte("\n")) {
		switch string(line) {
		case "READY=1":
			ready = true
		case joinproto.Reloads:
			reloads = true
		}
	}
	return ready, reloads
}

// ExecGeneration is run by handoffd re-executed with ExecArg, its gate's
// fd and the command: it waits until handoffd opens the gate (one byte;
// end of file means handoffd could not record this process, or died),
// sets no_new_privs, lets no fd through but stdio, the LISTEN_FDS and the
// state channel, sets LISTEN_PID to this process's pid and replaces
// itself with the command. It only returns an error.
func ExecGeneration(args []string) error {
	if len(args) < 2 {
		return errors.New("no command to run")
	}
	if err := awaitGate(args[0]); err != nil {
		return err
	}
	argv := args[1:]
	path := argv[0]
	if !strings.Contains(path, "/") {
		var err error
		if path, err = exec.LookPath(path); err != nil {
			return err
		}
	}
	// No exec from here on may gain privileges (setuid bits, file
	// capabilities): a generation has at most what it starts with. The
	// setting is per thread, so the exec must run on this one.
	runtime.LockOSThread()
	if err := kernel.NoNewPrivs(); err != nil {
		return err
	}
	if err := keepOnlyListeners(); err != nil {
		return err
	}
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	return kernel.Exec(path, argv, os.Environ())
}

// awaitGate reads the gate, fd number fd, until handoffd opens it, and
// closes it.
func awaitGate(fd string) error {
	n, err := strconv.Atoi(fd)
	if err != nil || n < listenFDsStart {
		return fmt.Errorf("gate fd %q", fd)
	}
	gate := os.NewFile(uintptr(n), "gate")
	defer gate.Close()
	if _, err := io.ReadFull(gate, make([]byte, 1)); err != nil {
		return fmt.Errorf("handoffd did not let the command run (it could not record the process, or it died): %w", err)
	}
	return nil
}

// keepOnlyListeners marks close-on-exec every fd above stdio, the
// LISTEN_FDS (listeners and stored fds) and the state channel right after
// them: what handoffd itself inherited without close-on-exec from
// whoever started it must not reach the command.
func keepOnlyListeners() error {
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	first := listenFDsStart + max(n, 0)
	if os.Getenv(stateproto.EnvFD) == strconv.Itoa(first) {
		first++
	}
	return kernel.CloseOnExecFrom(first)
}
