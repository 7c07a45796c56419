package handoff

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// JoinProtocol is the Upgrade token of handoffd's join request: a process
// started outside handoffd asks, over the control socket, to become the
// next generation of a service, and receives its listeners with
// SCM_RIGHTS.
//
// The exchange, on one connection to HANDOFF_CONTROL:
//
//	app:      POST /v1/services/NAME/join HTTP/1.1, Connection: Upgrade, Upgrade: handoff-join
//	handoffd: HTTP/1.1 101 Switching Protocols (or an error answer with a JSON body)
//	handoffd: {"generation":N,"listeners":["http"],"addresses":["tcp://..."]}\n, with the
//	          listening sockets as SCM_RIGHTS, in listener order; or FAILED reason\n
//	app:      READY=1\n
//	handoffd: ACTIVE\n once the generation is active, or FAILED reason\n
//
// Closing the connection before READY=1 fails the generation; the
// active one stays.
const JoinProtocol = "handoff-join"

// JoinOffer is what handoffd sends with the listeners of a joining process.
type JoinOffer struct {
	Generation int      `json:"generation"`
	Listeners  []string `json:"listeners"`
	// Addresses are the listeners' configured addresses (tcp://HOST:PORT,
	// tcp4://, tcp6://, unix://PATH), in the same order.
	Addresses []string `json:"addresses"`
}

// maxJoinFDs bounds the listeners one join may carry.
const maxJoinFDs = 64

// joinReadyTimeout bounds how long Ready waits for handoffd's answer; the
// service's ready_timeout is shorter in any sane config.
const joinReadyTimeout = 2 * time.Minute

// joined is the join connection of this process, kept from Listen to Ready.
var joined struct {
	mu   sync.Mutex
	conn *net.UnixConn
	r    *bufio.Reader
	gen  int
}

// joinControl joins service through handoffd's control socket at control
// and records the listeners it received as this process's inherited ones.
// Callers hold inherited.mu (through inherited.once).
func joinControl(control, service string) {
	inherited.set = true
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: control, Net: "unix"})
	if err != nil {
		inherited.err = fmt.Errorf("handoff: join service %s: connect to handoffd at HANDOFF_CONTROL=%s: %w", service, control, err)
		return
	}
	offer, fds, r, err := join(c, service)
	if err != nil {
		c.Close()
		inherited.err = fmt.Errorf("handoff: join service %s at %s: %w", service, control, err)
		return
	}
	inherited.names = offer.Listeners
	inherited.fds = make(map[string]int, len(fds))
	for i, name := range offer.Listeners {
		inherited.fds[name] = fds[i]
	}
	generation.Store(int64(offer.Generation))
	joined.mu.Lock()
	joined.conn, joined.r, joined.gen = c, r, offer.Generation
	joined.mu.Unlock()
}

// join asks handoffd on c for the listeners of service and checks each
// one: a listening stream socket of the configured address family. On
// any error every fd received is closed.
func join(c *net.UnixConn, service string) (offer JoinOffer, fds []int, r *bufio.Reader, err error) {
	c.SetDeadline(time.Now().Add(joinReadyTimeout))
	defer c.SetDeadline(time.Time{})
	req := "POST /v1/services/" + url.PathEscape(service) + "/join HTTP/1.1\r\nHost: handoffd\r\n" +
		"Connection: Upgrade\r\nUpgrade: " + JoinProtocol + "\r\nContent-Length: 0\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return offer, nil, nil, fmt.Errorf("send join request: %w", err)
	}
	rr := &rightsReader{c: c}
	defer func() {
		if err != nil {
			closeFDs(rr.fds)
		}
	}()
	r = bufio.NewReader(rr)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return offer, nil, nil, fmt.Errorf("read handoffd's answer: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return offer, nil, nil, fmt.Errorf("handoffd refused: %s", answerError(resp))
	}
	line, err := readLine(r)
	if err != nil {
		return offer, nil, nil, fmt.Errorf("read the listeners: %w", err)
	}
	if reason, ok := strings.CutPrefix(line, "FAILED "); ok {
		return offer, nil, nil, fmt.Errorf("handoffd could not start a generation: %s", reason)
	}
	if err := json.Unmarshal([]byte(line), &offer); err != nil {
		return offer, nil, nil, fmt.Errorf("read the listeners: %q: %w", line, err)
	}
	if rr.err != nil {
		return offer, nil, nil, rr.err
	}
	n := len(offer.Listeners)
	if len(rr.fds) != n || len(offer.Addresses) != n {
		return offer, nil, nil, fmt.Errorf("handoffd sent %d fds for %d listeners and %d addresses", len(rr.fds), n, len(offer.Addresses))
	}
	seen := map[string]bool{}
	for i, fd := range rr.fds {
		name := offer.Listeners[i]
		if seen[name] {
			return offer, nil, nil, fmt.Errorf("listener %q sent twice", name)
		}
		seen[name] = true
		if err := checkListening(fd); err != nil {
			return offer, nil, nil, fmt.Errorf("listener %q: %w", name, err)
		}
		if err := checkFamily(fd, offer.Addresses[i]); err != nil {
			return offer, nil, nil, fmt.Errorf("listener %q: %w", name, err)
		}
	}
	return offer, rr.fds, r, nil
}

// readyJoined says READY=1 on the join connection and waits for handoffd
// to make this process the active generation.
func readyJoined() (bool, error) {
	joined.mu.Lock()
	defer joined.mu.Unlock()
	if joined.conn == nil {
		return false, nil
	}
	c, gen := joined.conn, joined.gen
	joined.conn = nil
	defer c.Close()
	c.SetDeadline(time.Now().Add(joinReadyTimeout))
	if _, err := io.WriteString(c, "READY=1\n"); err != nil {
		return true, fmt.Errorf("handoff: ready as generation %d: %w", gen, err)
	}
	line, err := readLine(joined.r)
	switch {
	case err != nil:
		return true, fmt.Errorf("handoff: ready as generation %d: no answer from handoffd: %w", gen, err)
	case line == "ACTIVE":
		return true, nil
	}
	reason, _ := strings.CutPrefix(line, "FAILED ")
	return true, fmt.Errorf("handoff: handoffd did not make generation %d active: %s", gen, reason)
}

// readLine reads one line of at most the reader's buffer.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = errors.New("line too long")
		}
		return "", err
	}
	return strings.TrimSuffix(string(line), "\n"), nil
}

func answerError(resp *http.Response) string {
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e) == nil && e.Error != "" {
		return e.Error
	}
	return resp.Status
}

// rightsReader reads a unix stream socket and keeps every fd that comes
// with the data: a read without room for them would close them.
type rightsReader struct {
	c   *net.UnixConn
	fds []int
	err error
}

func (r *rightsReader) Read(p []byte) (int, error) {
	oob := make([]byte, unix.CmsgSpace(maxJoinFDs*4))
	n, oobn, flags, _, err := r.c.ReadMsgUnix(p, oob)
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil && r.err == nil {
			r.err = fmt.Errorf("parse SCM_RIGHTS: %w", perr)
		}
		for _, m := range msgs {
			if fds, err := unix.ParseUnixRights(&m); err == nil {
				r.fds = append(r.fds, fds...)
			}
		}
	}
	if flags&unix.MSG_CTRUNC != 0 && r.err == nil {
		r.err = fmt.Errorf("handoffd sent more than %d fds", maxJoinFDs)
	}
	return n, err
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// checkFamily checks that the socket fd has the family of the configured
// address: AF_UNIX for unix://, AF_INET or AF_INET6 for tcp as its host says.
func checkFamily(fd int, address string) error {
	want, err := addressFamilies(address)
	if err != nil {
		return err
	}
	got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("read SO_DOMAIN: %w", err)
	}
	for _, f := range want {
		if got == f {
			return nil
		}
	}
	return fmt.Errorf("socket of family %s, but the listener is configured as %s", familyName(got), address)
}

func addressFamilies(address string) ([]int, error) {
	scheme, rest, _ := strings.Cut(address, "://")
	switch scheme {
	case "unix":
		return []int{unix.AF_UNIX}, nil
	case "tcp4":
		return []int{unix.AF_INET}, nil
	case "tcp6":
		return []int{unix.AF_INET6}, nil
	case "tcp":
		host, _, err := net.SplitHostPort(rest)
		if err != nil {
			return nil, fmt.Errorf("configured address %q: %w", address, err)
		}
		ip := net.ParseIP(host)
		switch {
		case host == "" || ip != nil && ip.To4() != nil:
			return []int{unix.AF_INET}, nil
		case ip != nil:
			return []int{unix.AF_INET6}, nil
		}
		return []int{unix.AF_INET, unix.AF_INET6}, nil // a name: either
	}
	return nil, fmt.Errorf("configured address %q: unknown scheme", address)
}

func familyName(f int) string {
	switch f {
	case unix.AF_INET:
		return "AF_INET"
	case unix.AF_INET6:
		return "AF_INET6"
	case unix.AF_UNIX:
		return "AF_UNIX"
	}
	return fmt.Sprintf("%d", f)
}
