package handoff

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/handoffd/handoffd/internal/joinproto"
)

// Ready tells handoffd (or systemd) that the app serves: it sends READY=1
// to NOTIFY_SOCKET. Call it once the listeners are open and the app can
// answer requests; connections that arrive before it is accepted wait in
// the listen queue. Without NOTIFY_SOCKET it does nothing. Listeners
// from handoffd accept nothing before Ready succeeds (see gate.go).
//
// A process that joined from outside handoffd (see Listen) says READY=1
// on its join connection instead, and Ready returns once handoffd made it
// the active generation, or with handoffd's reason why not.
func Ready() error {
	joinedNow, err := readyJoined()
	if !joinedNow {
		state := "READY=1"
		if handlesReloads() {
			state += "\n" + joinproto.Reloads
		}
		err = Notify(state)
	}
	if err == nil {
		openGate()
	}
	return err
}

// Notify sends state, newline-separated VAR=value assignments of the
// sd_notify protocol such as "READY=1" or "STOPPING=1", as one datagram to
// the unixgram socket named by NOTIFY_SOCKET: a path, or an abstract name
// written with a leading '@'. Without NOTIFY_SOCKET it does nothing and
// returns nil.
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return fmt.Errorf("handoff: NOTIFY_SOCKET=%q is neither a path nor an abstract name (@name)", addr)
	}
	// net turns a leading '@' into the abstract namespace's NUL byte.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("handoff: notify %s: %w", addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("handoff: notify %s: %w", addr, err)
	}
	return nil
}
