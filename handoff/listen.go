package handoff

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/handoffd/handoffd/kernel"
)

// listenFDsStart is the first inherited fd (SD_LISTEN_FDS_START); tests
// move it to fds they own.
var listenFDsStart = 3

// inherited holds the listening sockets passed by handoffd, read once from
// the environment.
var inherited struct {
	once  sync.Once
	mu    sync.Mutex
	set   bool           // LISTEN_FDS was meant for this process
	names []string       // in fd order, for error messages
	fds   map[string]int // name to fd; removed once taken by Listen
	err   error
}

// Listen returns the listening socket named name.
//
// When handoffd (or systemd) passed sockets to this process (LISTEN_FDS is
// set and LISTEN_PID is this process), Listen returns the inherited socket
// named name in LISTEN_FDNAMES; if LISTEN_FDNAMES is unset and there is one
// socket, any name matches it. Each inherited socket can be taken once. It
// is an error if there is no socket of that name or it is not a listening
// stream socket.
//
// A process started outside handoffd, with HANDOFF_CONTROL and
// HANDOFF_SERVICE in its environment but no LISTEN_FDS, joins the service
// instead: the first Listen asks handoffd over its control socket for the
// service's listening sockets (see internal/joinproto) and checks that each is a
// listening stream socket of the configured address family; Ready then
// makes the process the service's next generation.
//
// Otherwise Listen returns net.Listen("tcp", addr), so the app also runs
// on its own.
//
// The first call reads LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES and
// removes them from the environment, as sd_listen_fds(1) does, so that
// programs the app starts do not take them for their own; it also marks
// the inherited fds close-on-exec. Later calls use what it read.
func Listen(name, addr string) (net.Listener, error) {
	inherited.once.Do(readInherited)
	inherited.mu.Lock()
	defer inherited.mu.Unlock()
	if inherited.err != nil {
		return nil, inherited.err
	}
	if !inherited.set {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("handoff: listen %s on %s: %w", name, addr, err)
		}
		return ln, nil
	}
	fd, ok := inherited.fds[name]
	if !ok && len(inherited.names) == 1 && inherited.names[0] == "" {
		name, fd, ok = "", inherited.fds[""], true
	}
	if !ok {
		return nil, fmt.Errorf("handoff: no inherited listener named %q (LISTEN_FDNAMES has %s)",
			name, describeNames(inherited.names))
	}
	if fd < 0 {
		return nil, fmt.Errorf("handoff: inherited listener %q was already taken by an earlier Listen", name)
	}
	ln, err := fileListener(fd, name)
	if err != nil {
		return nil, err
	}
	inherited.fds[name] = -1
	return gated(ln), nil
}

func readInherited() {
	fds, pid, names := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDNAMES")
	_, hasNames := os.LookupEnv("LISTEN_FDNAMES")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDNAMES")
	if fds == "" {
		control, svc := os.Getenv("HANDOFF_CONTROL"), os.Getenv("HANDOFF_SERVICE")
		if control != "" && svc != "" {
			joinControl(control, svc) // started outside handoffd: ask it
		}
		return
	}
	if pid != strconv.Itoa(os.Getpid()) {
		return // not for this process: serve on our own sockets
	}
	inherited.set = true
	n, err := strconv.Atoi(fds)
	if err != nil || n < 1 {
		inherited.err = fmt.Errorf("handoff: LISTEN_FDS=%q is not a positive number", fds)
		return
	}
	var list []string
	if hasNames {
		list = strings.Split(names, ":")
	}
	if hasNames && len(list) != n {
		inherited.err = fmt.Errorf("handoff: LISTEN_FDNAMES=%q names %d sockets but LISTEN_FDS=%d", names, len(list), n)
		return
	}
	if !hasNames {
		if n > 1 {
			inherited.err = fmt.Errorf("handoff: LISTEN_FDS=%d but LISTEN_FDNAMES is unset: cannot tell the sockets apart", n)
			return
		}
		list = []string{""} // one unnamed socket: any name matches
	}
	inherited.names = list
	inherited.fds = make(map[string]int, n)
	for i, name := range list {
		fd := listenFDsStart + i
		if _, dup := inherited.fds[name]; dup {
			inherited.err = fmt.Errorf("handoff: LISTEN_FDNAMES=%q names %q twice", names, name)
			return
		}
		kernel.CloseOnExec(fd)
		inherited.fds[name] = fd
	}
}

// fileListener turns an inherited fd into a net.Listener. It closes fd:
// net.FileListener works on a dup, and a leftover fd would keep the socket
// open after the app closes its listener, so the kernel would neither stop
// steering to it nor migrate its queued connections.
func fileListener(fd int, name string) (net.Listener, error) {
	if _, err := kernel.CheckListening(fd); err != nil {
		return nil, fmt.Errorf("handoff: inherited listener %q (fd %d): %w", name, fd, err)
	}
	f := os.NewFile(uintptr(fd), "LISTEN_FDS:"+name)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("handoff: inherited listener %q (fd %d): %w", name, fd, err)
	}
	return ln, nil
}

func describeNames(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}
