package host

import (
	"bytes"
	"sync"

	"github.com/handoffd/handoffd/internal/joinproto"
)

// reportedConns holds what a generation last reported on NOTIFY_SOCKET of
// the connections it holds on each QUIC listener (joinproto.Connections).
// Its zero value is ready.
type reportedConns struct {
	mu     sync.Mutex
	counts map[string]int64
}

// note reads a datagram and keeps the counts it reports.
func (r *reportedConns) note(msg []byte) {
	prefix := []byte(joinproto.Connections + "=")
	for line := range bytes.SplitSeq(msg, []byte("\n")) {
		value, ok := bytes.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		r.mu.Lock()
		if r.counts == nil {
			r.counts = map[string]int64{}
		}
		for name, n := range joinproto.ParseConnections(string(value)) {
			r.counts[name] = n
		}
		r.mu.Unlock()
	}
}

// ReportedConnections implements lifecycle.ConnectionReporter.
func (r *reportedConns) ReportedConnections(listener string) (int64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.counts[listener]
	return n, ok
}
