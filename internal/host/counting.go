package host

import (
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/kernel"
	"github.com/handoffd/handoffd/loader"
)

// ProcessCounter counts the connections that processes hold on ports;
// *loader.ConnCounter implements it with a task_file iterator.
type ProcessCounter interface {
	Count(pids []int, ports []uint16) (map[uint16]loader.PortHeld, error)
	// Parents returns the parent of every process of the host, by pid.
	Parents() (map[int]int, error)
}

// Counter is the lifecycle.Counter of the real kernel: TCP_INFO for accept
// queues, and for connections, at status and scrape time only:
//
//   - a generation of steered listeners (ebpf mode) holds what its
//     processes (the generation's process and its descendants) hold on
//     the listeners' ports, and what waits in the accept queues of its
//     own listening sockets; Procs counts both in the kernel;
//   - on a listening socket that generations share (fdpass mode, and ebpf
//     mode without Procs), one sock_diag dump per status lists the
//     connections of every service's ports, filtered by the kernel; when
//     one generation is live it holds them all, queued ones included;
//     when several are, each but the one that receives new connections
//     holds those its processes hold (Procs, or /proc/PID/fd), and that
//     one holds the rest.
type Counter struct {
	// Procs counts the connections of processes from the kernel; nil
	// where it could not load: /proc then.
	Procs ProcessCounter
	Log   *slog.Logger
}

// AcceptQueue implements lifecycle.Counter.
func (*Counter) AcceptQueue(f *os.File) (uint32, bool) {
	n, _, err := kernel.AcceptQueue(int(f.Fd()))
	return n, err == nil
}

// listener is what counting needs of one configured listener: where
// kernel.ListenTCP binds its socket.
type listener struct {
	tcp     bool
	steered bool
	port    uint16
	family  int        // the socket's, unix.AF_INET or AF_INET6; 0: either (a host name)
	addr    netip.Addr // the zero Addr: any address of family
}

func listenersOf(svc *config.ServiceConfig, mode api.Mode) []listener {
	out := make([]listener, len(svc.Listeners))
	for i, l := range svc.Listeners {
		network, hostport, err := config.ParseAddress(l.Address)
		if err != nil || network == "unix" || l.QUIC() {
			continue
		}
		host, port, ok := cutPort(hostport)
		if !ok {
			continue
		}
		out[i] = listener{tcp: true, port: port, steered: config.ListenerMode(l, mode) == api.ModeEBPF}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		addr, err := netip.ParseAddr(host)
		switch {
		case host == "" && network == "tcp6":
			out[i].family = unix.AF_INET6
		case host == "":
			out[i].family = unix.AF_INET
		case err != nil:
			// A host name: the port on any address of the network's
			// family, or of both.
			switch network {
			case "tcp4":
				out[i].family = unix.AF_INET
			case "tcp6":
				out[i].family = unix.AF_INET6
			}
		case addr.Unmap().Is4():
			// An IPv4-mapped address too: ListenTCP binds it as IPv4.
			out[i].family, out[i].addr = unix.AF_INET, addr.Unmap()
		default:
			out[i].family, out[i].addr = unix.AF_INET6, addr
		}
		if out[i].addr.IsUnspecified() {
			out[i].addr = netip.Addr{}
		}
	}
	return out
}

// holds reports whether a connection is on the socket of l.
func (l listener) holds(c kernel.Conn) bool {
	return l.tcp && l.port == c.Port && (l.family == 0 || l.family == c.Family) &&
		(!l.addr.IsValid() || l.addr == c.Addr)
}

func cutPort(hostport string) (string, uint16, bool) {
	for i := len(hostport) - 1; i >= 0; i-- {
		if hostport[i] == ':' {
			p, err := strconv.ParseUint(hostport[i+1:], 10, 16)
			return hostport[:i], uint16(p), err == nil
		}
	}
	return "", 0, false
}

// ports returns the distinct ports of the TCP listeners ls.
func ports(ls []listener) []uint16 {
	var out []uint16
	seen := map[uint16]bool{}
	for _, l := range ls {
		if l.tcp && !seen[l.port] {
			seen[l.port] = true
			out = append(out, l.port)
		}
	}
	return out
}

// Count implements lifecycle.Counter.
func (c *Counter) Count(gens []*lifecycle.Counted) {
	if len(gens) == 0 {
		return
	}
	tree := c.processTree()
	var shared []*lifecycle.Counted
	for _, g := range gens {
		if !c.countSteered(g, tree) {
			shared = append(shared, g)
		}
	}
	if len(shared) > 0 {
		c.countShared(shared, tree)
	}
}

// processTree finds the descendants of a process: from one listing of
// the host's processes by Procs, or from /proc.
type processTree map[int][]int // children by parent; nil: read /proc

func (c *Counter) processTree() processTree {
	if c.Procs == nil {
		return nil
	}
	parents, err := c.Procs.Parents()
	if err != nil {
		return nil
	}
	tree := processTree{}
	for pid, ppid := range parents {
		tree[ppid] = append(tree[ppid], pid)
	}
	return tree
}

// descendants returns pid and every process that descends from it, each
// once. The listing is no snapshot: a pid reused while it ran can make a
// process its own ancestor.
func (t processTree) descendants(pid int) []int {
	if t == nil {
		return kernel.Descendants(pid)
	}
	out := []int{pid}
	seen := map[int]bool{pid: true}
	for i := 0; i < len(out); i++ {
		for _, child := range t[out[i]] {
			if !seen[child] {
				seen[child] = true
				out = append(out, child)
			}
		}
	}
	return out
}

// countSteered counts a generation whose TCP listeners are all steered,
// with Procs; false when it cannot.
func (c *Counter) countSteered(g *lifecycle.Counted, tree processTree) bool {
	if c.Procs == nil {
		return false
	}
	ls := listenersOf(g.Service, g.Mode)
	for _, l := range ls {
		if l.tcp && !l.steered {
			return false
		}
	}
	held, err := c.Procs.Count(tree.descendants(g.PID), ports(ls))
	if err != nil {
		c.log().Warn("count connections", "service", g.Service.Name, "generation", g.ID, "err", err)
		return false
	}
	var total int64
	g.Listeners = make([]*int64, len(ls))
	counted := map[uint16]bool{}
	for i, l := range ls {
		if !l.tcp {
			continue
		}
		// Listeners on one port (tcp4 and tcp6) are told apart by
		// nothing here: the first one shows the port's count.
		var n int64
		if !counted[l.port] {
			counted[l.port] = true
			n = held[l.port].Connections + held[l.port].Queued
		}
		total += n
		g.Listeners[i] = &n
	}
	g.Total, g.Source = &total, api.SourceEBPF
	return true
}

// countShared counts generations from one sock_diag dump of all their
// services' ports.
func (c *Counter) countShared(gens []*lifecycle.Counted, tree processTree) {
	var all []uint16
	seen := map[uint16]bool{}
	services := map[string][]*lifecycle.Counted{}
	var order []string
	for _, g := range gens {
		for _, p := range ports(listenersOf(g.Service, g.Mode)) {
			if !seen[p] {
				seen[p] = true
				all = append(all, p)
			}
		}
		if services[g.Service.Name] == nil {
			order = append(order, g.Service.Name)
		}
		services[g.Service.Name] = append(services[g.Service.Name], g)
	}
	conns, err := kernel.Connections(all)
	if err != nil {
		c.log().Warn("count connections", "err", err)
		return
	}
	for _, name := range order {
		c.countService(services[name], conns, tree)
	}
}

// countService attributes the connections of one service's listeners to
// its live generations gens.
func (c *Counter) countService(gens []*lifecycle.Counted, conns []kernel.Conn, tree processTree) {
	ls := listenersOf(gens[0].Service, gens[0].Mode)
	// Per listener, the connections on it, by inode.
	byInode := map[uint64]int{}
	perListener := make([]int64, len(ls))
	for _, conn := range conns {
		for i, l := range ls {
			if l.holds(conn) {
				perListener[i]++
				if conn.Inode != 0 {
					byInode[conn.Inode] = i
				}
				break
			}
		}
	}
	var primary *lifecycle.Counted
	others := make([]int64, len(ls))
	for _, g := range gens {
		if g.Primary {
			primary = g
			continue
		}
		held, ok := c.heldByProcesses(g, ls, byInode, tree)
		if !ok {
			continue
		}
		setCounts(g, ls, held)
		for i, n := range held {
			others[i] += n
		}
	}
	if primary != nil {
		held := make([]int64, len(ls))
		for i := range ls {
			held[i] = max(0, perListener[i]-others[i])
		}
		setCounts(primary, ls, held)
	}
}

// heldByProcesses counts, per listener, the connections that the
// processes of g hold among those listed.
func (c *Counter) heldByProcesses(g *lifecycle.Counted, ls []listener, byInode map[uint64]int, tree processTree) ([]int64, bool) {
	pids := tree.descendants(g.PID)
	held := make([]int64, len(ls))
	if c.Procs != nil {
		// Every connection on the service's ports that the processes
		// hold is one of the service's; the queue of the shared
		// listener is not theirs.
		n, err := c.Procs.Count(pids, ports(ls))
		if err == nil {
			counted := map[uint16]bool{}
			for i, l := range ls {
				if l.tcp && !counted[l.port] {
					counted[l.port] = true
					held[i] = n[l.port].Connections
				}
			}
			return held, true
		}
		c.log().Warn("count connections", "service", g.Service.Name, "generation", g.ID, "err", err)
	}
	seen := map[uint64]bool{}
	found := false
	for _, pid := range pids {
		inodes, err := kernel.SocketInodes(pid)
		if err != nil {
			continue
		}
		found = true
		for _, ino := range inodes {
			if i, ok := byInode[ino]; ok && !seen[ino] {
				seen[ino] = true
				held[i]++
			}
		}
	}
	return held, found
}

func setCounts(g *lifecycle.Counted, ls []listener, held []int64) {
	var total int64
	g.Listeners = make([]*int64, len(ls))
	for i, l := range ls {
		if l.tcp {
			n := held[i]
			g.Listeners[i] = &n
			total += n
		}
	}
	g.Total, g.Source = &total, api.SourceProc
}

func (c *Counter) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.Default()
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
	now.Selected -= min(now.Selected, base.Selected)
	now.Migrated -= min(now.Migrated, base.Migrated)
	return now
}

func (b *slotBaselines) forget(gen int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.base, gen)
}
