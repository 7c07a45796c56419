// Package joinproto is the wire format of joining a service from outside
// handoffd: a process started by someone else asks, over handoffd's
// control socket, to become the next generation of a service, and
// receives its listening sockets with SCM_RIGHTS. The SDK (package
// handoff) speaks the joining side, handoffd's control server the other.
//
// The exchange, on one connection to HANDOFF_CONTROL:
//
//	app:      POST /v1/services/NAME/join HTTP/1.1, Connection: Upgrade, Upgrade: handoff-join
//	handoffd: HTTP/1.1 101 Switching Protocols (or an error answer with a JSON body)
//	handoffd: {"generation":N,"listeners":["http"],"addresses":["tcp://..."]}\n, with the
//	          listening sockets as SCM_RIGHTS, in listener order; or FAILED reason\n
//	app:      HANDOFF_RELOAD=1\n (optional: it reloads its config on SIGHUP)
//	app:      READY=1\n
//	handoffd: ACTIVE\n once the generation is active, or FAILED reason\n
//
// Closing the connection before READY=1 fails the generation; the active
// one stays.
package joinproto

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/handoffd/handoffd/kernel"
)

// Protocol is the Upgrade token of the join request.
const Protocol = "handoff-join"

// The lines of the exchange after the offer.
const (
	Ready = "READY=1"
	// Reloads says that the process reloads its config on SIGHUP; it is
	// also the sd_notify assignment that says so on NOTIFY_SOCKET.
	Reloads = "HANDOFF_RELOAD=1"
	Active  = "ACTIVE"
	// FailedPrefix starts a line that carries the reason of a failure.
	FailedPrefix = "FAILED "
)

// Connections is the sd_notify variable with which a generation reports,
// on NOTIFY_SOCKET, the connections it holds on listeners whose
// connections have no socket of their own (QUIC):
// HANDOFF_CONNECTIONS=LISTENER:N[,LISTENER:N...]. Each report holds the
// listener's count now, not a change.
const Connections = "HANDOFF_CONNECTIONS"

// FormatConnections is the assignment that reports n connections held on
// listener.
func FormatConnections(listener string, n int64) string {
	return Connections + "=" + listener + ":" + strconv.FormatInt(n, 10)
}

// ParseConnections reads the value of a HANDOFF_CONNECTIONS assignment;
// malformed entries are left out.
func ParseConnections(value string) map[string]int64 {
	counts := map[string]int64{}
	for entry := range strings.SplitSeq(value, ",") {
		name, num, ok := strings.Cut(entry, ":")
		n, err := strconv.ParseInt(num, 10, 64)
		if ok && name != "" && err == nil && n >= 0 {
			counts[name] = n
		}
	}
	return counts
}

// MaxFDs bounds the listeners one join may carry.
const MaxFDs = 64

// Offer is what handoffd sends with the listeners of a joining process.
type Offer struct {
	Generation int      `json:"generation"`
	Listeners  []string `json:"listeners"`
	// Addresses are the listeners' configured addresses (tcp://HOST:PORT,
	// tcp4://, tcp6://, unix://PATH), in the same order.
	Addresses []string `json:"addresses"`
}

// SendOffer writes o as one line on c, with files (the listeners, in
// o.Listeners' order) attached as SCM_RIGHTS.
func SendOffer(c *net.UnixConn, o Offer, files []*os.File) error {
	payload, err := json.Marshal(o)
	if err != nil {
		return err
	}
	return kernel.SendFiles(c, append(payload, '\n'), files)
}

// Failed returns the line that reports a failure, err on one line.
func Failed(err error) string {
	return FailedPrefix + strings.Join(strings.Fields(err.Error()), " ") + "\n"
}

// ReadLine reads one line of at most r's buffer, without its newline.
func ReadLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = errors.New("line too long")
		}
		return "", err
	}
	return strings.TrimSuffix(string(line), "\n"), nil
}

// RightsReader reads a UNIX stream socket and keeps every fd that comes
// with the data: a read without room for them would close them.
type RightsReader struct {
	C *net.UnixConn
	// FDs are the fds received so far; the reader's owner closes them.
	FDs []int
	// Err is the first problem with the control messages.
	Err error
}

func (r *RightsReader) Read(p []byte) (int, error) {
	oob := make([]byte, kernel.RightsSpace(MaxFDs))
	n, oobn, flags, _, err := r.C.ReadMsgUnix(p, oob)
	if oobn > 0 {
		fds, perr := kernel.ParseRights(oob[:oobn], flags)
		r.FDs = append(r.FDs, fds...)
		if perr != nil && r.Err == nil {
			r.Err = fmt.Errorf("SCM_RIGHTS (at most %d fds): %w", MaxFDs, perr)
		}
	}
	return n, err
}
