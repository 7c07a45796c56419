package host

import (
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
)

// Counter is the lifecycle.Counter of the real kernel: TCP_INFO for
// accept queues, and sock_diag with /proc for connections (see
// kernel.ConnCounter).
type Counter struct{}

// AcceptQueue implements lifecycle.Counter.
func (Counter) AcceptQueue(f *os.File) (uint32, bool) {
	n, _, err := kernel.AcceptQueue(int(f.Fd()))
	return n, err == nil
}

// Connections implements lifecycle.Counter.
func (Counter) Connections(svc *config.ServiceConfig) (lifecycle.Held, error) {
	return kernel.NewConnCounter(tcpPorts(svc))
}

// tcpPorts returns the TCP ports of a service's listeners.
func tcpPorts(svc *config.ServiceConfig) map[int]bool {
	ports := map[int]bool{}
	for _, l := range svc.Listeners {
		network, hostport, err := config.ParseAddress(l.Address)
		if err != nil || network == "unix" {
			continue
		}
		if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
			if p, err := strconv.Atoi(hostport[i+1:]); err == nil {
				ports[p] = true
			}
		}
	}
	return ports
}

// slotBaselines remembers, per generation, the cumulative slot counters at
// the time the generation got its slot, since a slot is reused every
// Slots generations.
type slotBaselines struct {
	mu   sync.Mutex
	base map[int]lifecycle.SlotStats
}

func (b *slotBaselines) set(gen int, s lifecycle.SlotStats) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.base == nil {
		b.base = map[int]lifecycle.SlotStats{}
	}
	b.base[gen] = s
}

func (b *slotBaselines) since(gen int, now lifecycle.SlotStats) lifecycle.SlotStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	base := b.base[gen]
	now.Accepted -= min(now.Accepted, base.Accepted)
	now.Selected -= min(now.Selected, base.Selected)
	now.Migrated -= min(now.Migrated, base.Migrated)
	return now
}

func (b *slotBaselines) forget(gen int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.base, gen)
}
