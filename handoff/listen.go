package handoff

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
)

// listenFDsStart is the first inherited fd (SD_LISTEN_FDS_START); tests
// move it to fds they own.
var listenFDsStart = 3

// inherited holds what handoffd passed in LISTEN_FDS, read once from the
// environment: the listening sockets, and after them the fds of the
// service's fd store (see Stored).
var inherited struct {
	once   sync.Once
	mu     sync.Mutex
	set    bool           // LISTEN_FDS was meant for this process
	names  []string       // listener names in fd order, for error messages
	fds    map[string]int // listener name to fd; -1 once taken by Listen
	stored []storedFD     // the fds after the listeners, in order
	err    error
}

// storedFD is an inherited fd of the fd store; fd is -1 once Stored took it.
type storedFD struct {
	name string
	fd   int
}

// Listen returns the listening socket named name.
//
// When handoffd (or systemd) passed sockets to this process (LISTEN_FDS is
// set and LISTEN_PID is this process), Listen returns the inherited socket
// named name in LISTEN_FDNAMES; if LISTEN_FDNAMES is unset and there is one
// socket, any name matches it. Each inherited socket can be taken once. It
// is an error if there is no socket of that name or it is not a listening
// stream socket. The fds of the service's fd store, which follow the
// listeners (HANDOFF_LISTEN_FDS says how many listeners there are), are
// never returned: Stored gives them.
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
		return nil, explainNoListener(name)
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
	listenFDs, hasListenFDs := os.LookupEnv(stateproto.EnvListenFDs)
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDNAMES")
	os.Unsetenv(stateproto.EnvListenFDs)
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
	for i := range list {
		kernel.CloseOnExec(listenFDsStart + i)
	}
	var listeners int
	if hasListenFDs {
		listeners, err = strconv.Atoi(listenFDs)
		if err != nil || listeners < 0 || listeners > n {
			inherited.err = fmt.Errorf("handoff: %s=%q is not a number of fds from 0 to LISTEN_FDS=%d", stateproto.EnvListenFDs, listenFDs, n)
			return
		}
	} else {
		listeners = countListeners(list)
	}
	inherited.names = list[:listeners]
	inherited.fds = make(map[string]int, listeners)
	for i, name := range inherited.names {
		if _, dup := inherited.fds[name]; dup {
			inherited.err = fmt.Errorf("handoff: LISTEN_FDNAMES=%q names the listener %q twice", names, name)
			return
		}
		inherited.fds[name] = listenFDsStart + i
	}
	for i, name := range list[listeners:] {
		inherited.stored = append(inherited.stored, storedFD{name: name, fd: listenFDsStart + listeners + i})
	}
}

// countListeners returns how many of the inherited fds, named list, are
// listeners when handoffd did not say (EnvListenFDs): the leading
// listening stream sockets (or bound UDP ones) with distinct names. The fds of the fd store
// follow them; a stored fd is rarely a listening socket, and one that is
// is told apart by a name that repeats a listener's.
func countListeners(list []string) int {
	seen := map[string]bool{}
	for i, name := range list {
		if seen[name] {
			return i
		}
		if _, err := kernel.CheckListening(listenFDsStart + i); err != nil {
			if _, err := kernel.CheckUDP(listenFDsStart + i); err != nil {
				return i // a QUIC listener's socket is bound UDP
			}
		}
		seen[name] = true
	}
	return len(list)
}

// explainNoListener explains why there is no listener named name: no fd of that
// name, or one that is no listener but a stored fd, or not a listening
// socket at all. Callers hold inherited.mu.
func explainNoListener(name string) error {
	for _, s := range inherited.stored {
		if s.name != name {
			continue
		}
		if s.fd >= 0 {
			if _, err := kernel.CheckListening(s.fd); err != nil {
				return fmt.Errorf("handoff: inherited fd %d named %q: %w", s.fd, name, err)
			}
		}
		return fmt.Errorf("handoff: the inherited fd named %q is in the fd store, not a listener (see Stored)", name)
	}
	return fmt.Errorf("handoff: no inherited listener named %q (LISTEN_FDNAMES has %s)",
		name, describeNames(inherited.names))
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
