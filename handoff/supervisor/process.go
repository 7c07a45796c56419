package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Process is a running generation as the supervisor sees it.
type Process interface {
	Pid() int
	// Ready is closed when the process said READY=1.
	Ready() <-chan struct{}
	// Done is closed when the process has exited and was reaped.
	Done() <-chan struct{}
	// ExitStatus says how the process ended; valid once Done is closed.
	ExitStatus() string
	Signal(sig syscall.Signal) error
}

// Launcher starts generations.
type Launcher interface {
	Start(spec LaunchSpec) (Process, error)
}

// LaunchSpec is what a generation is started with.
type LaunchSpec struct {
	Service    string
	Generation int
	Config     *ServiceConfig
	// Files are the listening sockets, in the order of Config.Listeners;
	// the child gets them as fds 3, 4, ...
	Files   []*os.File
	Control string
}

// ExecArg is the first argument with which handoffd re-executes itself to
// start a generation; see ExecGeneration.
const ExecArg = "__handoffd_exec_generation"

// ExecLauncher starts generations as child processes of handoffd.
//
// It runs the command through handoffd itself (ExecArg): the child sets
// LISTEN_PID to its own pid, which os/exec cannot know before the fork,
// then execs the command in the same process.
type ExecLauncher struct {
	// Self is the handoffd binary; /proc/self/exe works even after the
	// file was replaced by an upgrade.
	Self           string
	Stdout, Stderr io.Writer
}

// Start starts one generation and returns once the process runs.
func (l *ExecLauncher) Start(spec LaunchSpec) (Process, error) {
	notify, err := listenNotify(spec.Service, spec.Generation)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(l.Self, append([]string{ExecArg}, spec.Config.Command...)...)
	cmd.Args[0] = spec.Config.Command[0]
	cmd.Dir = spec.Config.Dir
	cmd.Env = childEnv(spec, notify.LocalAddr().String())
	cmd.ExtraFiles = spec.Files
	cmd.Stdout, cmd.Stderr = l.Stdout, l.Stderr
	// Its own process group: a Ctrl-C meant for handoffd must not reach
	// the generations, which handoffd stops in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if spec.Config.User != "" {
		cred, err := lookupCredential(spec.Config.User)
		if err != nil {
			notify.Close()
			return nil, err
		}
		cmd.SysProcAttr.Credential = cred
	}
	if err := cmd.Start(); err != nil {
		notify.Close()
		return nil, fmt.Errorf("start %s: %w", spec.Config.Command[0], err)
	}
	p := &execProcess{cmd: cmd, ready: make(chan struct{}), done: make(chan struct{})}
	go p.readNotify(notify)
	go p.wait(notify)
	return p, nil
}

func childEnv(spec LaunchSpec, notifySocket string) []string {
	var env []string
	for _, e := range os.Environ() {
		name, _, _ := strings.Cut(e, "=")
		if strings.HasPrefix(name, "LISTEN_") || strings.HasPrefix(name, "HANDOFF_") || name == "NOTIFY_SOCKET" {
			continue
		}
		env = append(env, e)
	}
	names := make([]string, len(spec.Config.Listeners))
	for i, l := range spec.Config.Listeners {
		names[i] = l.Name
	}
	env = append(env, spec.Config.Env...)
	return append(env,
		"LISTEN_FDS="+strconv.Itoa(len(spec.Files)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		"NOTIFY_SOCKET="+notifySocket,
		"HANDOFF_SERVICE="+spec.Service,
		"HANDOFF_GENERATION="+strconv.Itoa(spec.Generation),
		"HANDOFF_CONTROL="+spec.Control,
	)
}

func lookupCredential(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("user %q: %w", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			g, _ := strconv.ParseUint(id, 10, 32)
			groups = append(groups, uint32(g))
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}, nil
}

// listenNotify opens the generation's NOTIFY_SOCKET: an abstract unixgram
// socket, with SO_PASSCRED so that the kernel tells who sent each message.
func listenNotify(service string, gen int) (*net.UnixConn, error) {
	name := fmt.Sprintf("@handoffd/%d/%s/%d", os.Getpid(), service, gen)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("open notify socket: %w", err)
	}
	raw, err := c.SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		})
		err = errors.Join(cerr, err)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("set SO_PASSCRED on notify socket: %w", err)
	}
	return c, nil
}

type execProcess struct {
	cmd       *exec.Cmd
	ready     chan struct{}
	readyOnce sync.Once
	done      chan struct{}
}

func (p *execProcess) Pid() int               { return p.cmd.Process.Pid }
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
	notify.Close() // ends readNotify
	close(p.done)
}

// readNotify reads sd_notify datagrams until the socket is closed. Only
// the generation's own process may say it is ready.
func (p *execProcess) readNotify(c *net.UnixConn) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		if senderPid(oob[:oobn]) != p.Pid() {
			continue
		}
		for _, line := range bytes.Split(buf[:n], []byte("\n")) {
			if string(line) == "READY=1" {
				p.readyOnce.Do(func() { close(p.ready) })
			}
		}
	}
}

func senderPid(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1
	}
	for _, m := range msgs {
		if cred, err := unix.ParseUnixCredentials(&m); err == nil {
			return int(cred.Pid)
		}
	}
	return -1
}

// ExecGeneration is run by handoffd re-executed with ExecArg: it sets
// LISTEN_PID to this process's pid and replaces itself with argv. It only
// returns an error.
func ExecGeneration(argv []string) error {
	if len(argv) == 0 {
		return errors.New("no command to run")
	}
	path := argv[0]
	if !strings.Contains(path, "/") {
		var err error
		if path, err = exec.LookPath(path); err != nil {
			return err
		}
	}
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	if err := unix.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", filepath.Clean(path), err)
	}
	return nil
}
