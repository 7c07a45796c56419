package handoff

import (
	"fmt"
	"os"

	"github.com/handoffd/handoffd/internal/joinproto"
)

// Ready tells handoffd (or systemd) that the app serves: it sends READY=1
// to NOTIFY_SOCKET. Call it once the listeners are open and the app can
// answer requests; connections that arrive before it is accepted wait in
// the listen queue. Without NOTIFY_SOCKET it does nothing. Listeners
// from handoffd accept nothing before Ready succeeds (see gate.go).
//
// In a service with state_handoff (HANDOFF_STATE_FD is set), Ready then
// waits for the previous generation's snapshot, at most the service's
// state_timeout (HANDOFF_STATE_TIMEOUT_MS) and a second, runs the
// StateHandler's Restore on it (see HandleState), tells handoffd whether
// it loaded, and only then lets the listeners accept. A generation that
// gets no snapshot starts cold; that is no error.
//
// A process that joined from outside handoffd (see Listen) says READY=1
// on its join connection instead, and Ready returns once handoffd made it
// the active generation, or with handoffd's reason why not.
func Ready() error {
	joinedNow, err := readyJoined()
	if !joinedNow {
		ch := stateChan()
		state := "READY=1"
		if handlesReloads() {
			state += "\n" + joinproto.Reloads
		}
		err = Notify(state)
		if err == nil && ch != nil && os.Getenv("NOTIFY_SOCKET") != "" {
			ch.awaitState()
		}
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
	if err := notifyFiles([]byte(state), nil, 0); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	return nil
}
