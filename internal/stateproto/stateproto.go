// Package stateproto is the wire format of the fd store and of the state
// handoff between a generation and handoffd. The SDK (package handoff)
// speaks the generation's side, package host handoffd's.
//
// The fd store is systemd's: a generation sends fds on NOTIFY_SOCKET with
//
//	FDSTORE=1
//	FDNAME=name          (optional; "stored" by default)
//
// attached as SCM_RIGHTS, removes them with FDSTOREREMOVE=1 and FDNAME=name,
// and finds what is stored in LISTEN_FDS after its listeners, named in
// LISTEN_FDNAMES. FDPOLL=0 is accepted and changes nothing: handoffd never
// drops a stored fd by itself.
//
// The state handoff adds a channel per generation when the service has
// state_handoff: a SOCK_SEQPACKET socket whose fd is in EnvFD. Each
// message on it is sd_notify-like, newline-separated KEY=value lines, with
// fds attached as SCM_RIGHTS when it says so. In a swap, once the new
// generation said READY=1:
//
//	handoffd -> old: HANDOVER=1
//	old -> NOTIFY_SOCKET: FDSTORE=1, FDNAME=handoff.state, HANDOFF_STATE=1
//	                      with a sealed memfd (or HANDOFF_STATE=0 and
//	                      STATUS=reason when it has nothing to hand over)
//	handoffd -> new: STATE=1 with the memfd, or STATE=0 and REASON=why
//	                 it starts cold (no previous generation, a failure,
//	                 state_timeout)
//	new -> handoffd: LOADED=1, or LOADED=0 and ERROR=reason
//
// and then handoffd activates the new generation. Every generation gets a
// STATE message after its READY=1, even the first one (STATE=0). Once the
// old generation has drained, it may send a final delta, what changed
// since its snapshot:
//
//	old -> NOTIFY_SOCKET: FDSTORE=1, FDNAME=handoff.final, HANDOFF_FINAL=1
//	                      with a sealed memfd
//	handoffd -> the generation active then: FINAL=<old's generation> with
//	                                        the memfd
//
// Snapshots and finals are never kept in the fd store: handoffd passes
// them on and closes its copies.
//
// A handoffd that restarts binds each re-adopted generation's
// NOTIFY_SOCKET again, at the same address, but the channel died with the
// previous handoffd: the generation sees its end closed, makes a new
// socket pair and sends one end on NOTIFY_SOCKET, retrying until a
// handoffd reads it:
//
//	generation -> NOTIFY_SOCKET: HANDOFF_STATE_CHANNEL=1 with a
//	                             SOCK_SEQPACKET socket
//	handoffd -> generation: ATTACHED=1 on that channel, which is the
//	                        generation's from then on
//
// handoffd refuses it (and closes it, without ATTACHED=1) when the
// generation has a channel already or the service has no state_handoff.
package stateproto

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
)

// Environment of a generation of a service with state_handoff.
const (
	// EnvFD is the fd number of the generation's end of its channel.
	EnvFD = "HANDOFF_STATE_FD"
	// EnvTimeout is the service's state_timeout in milliseconds: how
	// long the SDK waits for the STATE message after READY=1, plus a
	// margin.
	EnvTimeout = "HANDOFF_STATE_TIMEOUT_MS"
)

// EnvListenFDs, when handoffd sets it, is how many of the first
// LISTEN_FDS are the service's listeners; the stored fds follow them.
// Without it (systemd, or a handoffd that does not set it) the SDK takes
// the leading listening sockets with distinct names as the listeners.
const EnvListenFDs = "HANDOFF_LISTEN_FDS"

// FD store assignments on NOTIFY_SOCKET (systemd's, and handoffd's own).
const (
	FDStore       = "FDSTORE"
	FDStoreRemove = "FDSTOREREMOVE"
	FDName        = "FDNAME"
	FDPoll        = "FDPOLL"
	// DefaultFDName is the name of a stored fd sent without FDNAME.
	DefaultFDName = "stored"
	// NotifyState answers HANDOVER: 1 with the snapshot attached, 0 when
	// there is none (STATUS says why).
	NotifyState = "HANDOFF_STATE"
	// NotifyFinal marks the final delta of a drained generation.
	NotifyFinal = "HANDOFF_FINAL"
	// NotifyChannel, with a SOCK_SEQPACKET socket attached, is a new
	// state channel from a generation whose channel was closed.
	NotifyChannel = "HANDOFF_STATE_CHANNEL"
	Status        = "STATUS"
)

// The reserved FDNAMEs of snapshots and finals.
const (
	StateName = "handoff.state"
	FinalName = "handoff.final"
)

// Channel message keys.
const (
	Handover = "HANDOVER" // handoffd -> old generation: snapshot now
	State    = "STATE"    // handoffd -> new generation: 1 with the snapshot, 0 cold
	Reason   = "REASON"   // why STATE=0
	Final    = "FINAL"    // handoffd -> active generation: an older one's final delta
	Loaded   = "LOADED"   // new generation -> handoffd: 1 loaded, 0 failed
	Error    = "ERROR"    // why LOADED=0
	Attached = "ATTACHED" // handoffd -> generation: the channel it sent is attached
)

// MaxMessage bounds one message on NOTIFY_SOCKET or on the channel, as
// systemd bounds notify messages; a longer one is refused.
const MaxMessage = 4096

// MaxFDName is the longest FDNAME, as in systemd.
const MaxFDName = 255

// MaxFDs bounds the fds of one message (the kernel's SCM_MAX_FD).
const MaxFDs = 253

// Message is one message: KEY=value assignments.
type Message map[string]string

// Parse reads newline-separated KEY=value lines; lines without '=' are
// ignored, and a repeated key keeps its last value.
func Parse(b []byte) Message {
	m := Message{}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		k, v, ok := strings.Cut(string(line), "=")
		if ok && k != "" {
			m[k] = v
		}
	}
	return m
}

// Encode writes m as KEY=value lines, keys sorted.
func (m Message) Encode() []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		b.WriteString(k + "=" + m[k] + "\n")
	}
	return b.Bytes()
}

// ValidFDName returns nil if name may name a stored fd: 1 to MaxFDName
// printable ASCII characters, no ':' (LISTEN_FDNAMES separates names with
// it), as systemd requires.
func ValidFDName(name string) error {
	if name == "" {
		return fmt.Errorf("FDNAME is empty")
	}
	if len(name) > MaxFDName {
		return fmt.Errorf("FDNAME is %d bytes long, over %d", len(name), MaxFDName)
	}
	for _, c := range []byte(name) {
		if c < 0x20 || c > 0x7e || c == ':' {
			return fmt.Errorf("FDNAME %q holds %q: use printable ASCII without ':'", name, c)
		}
	}
	return nil
}
