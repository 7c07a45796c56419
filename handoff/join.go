package handoff

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/handoffd/handoffd/internal/joinproto"
	"github.com/handoffd/handoffd/kernel"
)

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
func join(c *net.UnixConn, service string) (offer joinproto.Offer, fds []int, r *bufio.Reader, err error) {
	c.SetDeadline(time.Now().Add(joinReadyTimeout))
	defer c.SetDeadline(time.Time{})
	req := "POST /v1/services/" + url.PathEscape(service) + "/join HTTP/1.1\r\nHost: handoffd\r\n" +
		"Connection: Upgrade\r\nUpgrade: " + joinproto.Protocol + "\r\nContent-Length: 0\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return offer, nil, nil, fmt.Errorf("send join request: %w", err)
	}
	rr := &joinproto.RightsReader{C: c}
	defer func() {
		if err != nil {
			kernel.CloseFDs(rr.FDs)
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
	line, err := joinproto.ReadLine(r)
	if err != nil {
		return offer, nil, nil, fmt.Errorf("read the listeners: %w", err)
	}
	if reason, ok := strings.CutPrefix(line, joinproto.FailedPrefix); ok {
		return offer, nil, nil, fmt.Errorf("handoffd could not start a generation: %s", reason)
	}
	if err := json.Unmarshal([]byte(line), &offer); err != nil {
		return offer, nil, nil, fmt.Errorf("read the listeners: %q: %w", line, err)
	}
	if rr.Err != nil {
		return offer, nil, nil, rr.Err
	}
	n := len(offer.Listeners)
	if len(rr.FDs) != n || len(offer.Addresses) != n {
		return offer, nil, nil, fmt.Errorf("handoffd sent %d fds for %d listeners and %d addresses", len(rr.FDs), n, len(offer.Addresses))
	}
	seen := map[string]bool{}
	for i, fd := range rr.FDs {
		name := offer.Listeners[i]
		if seen[name] {
			return offer, nil, nil, fmt.Errorf("listener %q sent twice", name)
		}
		seen[name] = true
		if err := checkListener(fd, offer.Addresses[i]); err != nil {
			return offer, nil, nil, fmt.Errorf("listener %q: %w", name, err)
		}
	}
	return offer, rr.FDs, r, nil
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
	ready := joinproto.Ready + "\n"
	if handlesReloads() {
		ready = joinproto.Reloads + "\n" + ready
	}
	if _, err := io.WriteString(c, ready); err != nil {
		return true, fmt.Errorf("handoff: ready as generation %d: %w", gen, err)
	}
	line, err := joinproto.ReadLine(joined.r)
	switch {
	case err != nil:
		return true, fmt.Errorf("handoff: ready as generation %d: no answer from handoffd: %w", gen, err)
	case line == joinproto.Active:
		return true, nil
	}
	reason, _ := strings.CutPrefix(line, joinproto.FailedPrefix)
	return true, fmt.Errorf("handoff: handoffd did not make generation %d active: %s", gen, reason)
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

// checkListener checks that the socket fd is a listening stream socket
// (a bound UDP socket for a QUIC listener's udp://) of the family of the
// configured address: AF_UNIX for unix://, AF_INET or AF_INET6 for tcp
// and udp as its host says.
func checkListener(fd int, address string) error {
	want, err := addressFamilies(address)
	if err != nil {
		return err
	}
	check := kernel.CheckListening
	if strings.HasPrefix(address, "udp") {
		check = kernel.CheckUDP
	}
	got, err := check(fd)
	if err != nil {
		return err
	}
	if !slices.Contains(want, got) {
		return fmt.Errorf("socket of family %s, but the listener is configured as %s", got, address)
	}
	return nil
}

func addressFamilies(address string) ([]kernel.Family, error) {
	scheme, rest, _ := strings.Cut(address, "://")
	// A QUIC listener's UDP socket is bound as a TCP one would be.
	if s, ok := strings.CutPrefix(scheme, "udp"); ok {
		scheme = "tcp" + s
	}
	switch scheme {
	case "unix":
		return []kernel.Family{kernel.FamilyUnix}, nil
	case "tcp4":
		return []kernel.Family{kernel.FamilyInet}, nil
	case "tcp6":
		return []kernel.Family{kernel.FamilyInet6}, nil
	case "tcp":
		host, _, err := net.SplitHostPort(rest)
		if err != nil {
			return nil, fmt.Errorf("configured address %q: %w", address, err)
		}
		ip := net.ParseIP(host)
		switch {
		case host == "" || ip != nil && ip.To4() != nil:
			return []kernel.Family{kernel.FamilyInet}, nil
		case ip != nil:
			return []kernel.Family{kernel.FamilyInet6}, nil
		}
		return []kernel.Family{kernel.FamilyInet, kernel.FamilyInet6}, nil // a name: either
	}
	return nil, fmt.Errorf("configured address %q: unknown scheme", address)
}
