package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/bpf"
)

// ConnCounter counts, on demand, the TCP connections that processes hold
// on given local ports: ESTABLISHED or CLOSE_WAIT sockets in their fd
// tables, each counted once however many fds and processes hold it, and
// the accept queues of the listening sockets among those fds, which hold
// the connections no process has accepted yet.
//
// It is a task_file iterator (bpf/count.c) run once per process, when
// Count is called: nothing runs on a connection's path, and a count costs
// one program call per open file of the processes counted. The iterator
// is restricted to one process by bpf_iter_link_info.task.pid (Linux >=
// 6.1), which cilium/ebpf's link.IterOptions does not carry: the link is
// created with a raw BPF_LINK_CREATE. The kernel may visit one fd table
// once per thread that shares it (every thread on Linux 6.1; on later
// releases, when the process's first thread has exited): the program
// counts each table of a process once. A ConnCounter pins nothing and
// keeps nothing between counts. Its methods may be called from several
// goroutines; counts run one at a time.
type ConnCounter struct {
	mu    sync.Mutex
	prog  *ebpf.Program
	ports *ebpf.Map
	// parents lists the host's processes with their parents.
	parents     *ebpf.Program
	parentsIter *link.Iter
	// written is how many sockets the last Count had the program write
	// out rather than count itself: listeners, and connections that
	// more than one fd may hold.
	written uint64
}

// PortHeld is what Count found on one port.
type PortHeld struct {
	// Connections is the number of ESTABLISHED or CLOSE_WAIT sockets
	// that the processes hold.
	Connections int64
	// Queued is the number of connections in the accept queues of the
	// listening sockets the processes hold.
	Queued int64
	// Listeners is the number of those listening sockets.
	Listeners int
}

// LoadConnCounter loads the counting program and checks that the kernel
// restricts a task_file iterator to one process, which it does from Linux
// 6.1: before, the pid is ignored and the iterator walks every process of
// the host. It fails, wrapping ErrNotSupported or ErrPermission when that
// is the cause, when the kernel cannot run it.
func LoadConnCounter() (*ConnCounter, error) {
	liftMemlock()
	// The program's variables stay the kernel's: no mapping of them.
	var objs struct {
		bpf.CountPrograms
		bpf.CountMaps
	}
	if err := bpf.LoadCountObjects(&objs, nil); err != nil {
		return nil, explainCounterLoad(err)
	}
	c := &ConnCounter{prog: objs.Count, ports: objs.Ports, parents: objs.Parents}
	if err := c.checkPidFilter(); err != nil {
		c.Close()
		return nil, err
	}
	it, err := link.AttachIter(link.IterOptions{Program: objs.Parents})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("load connection counter: attach the process iterator: %w", err)
	}
	c.parentsIter = it
	return c, nil
}

func explainCounterLoad(err error) error {
	const what = "load connection counter (iter/task_file with bpf_sock_from_file)"
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: %w: needs CAP_BPF and CAP_PERFMON (or root): %w", what, ErrPermission, err)
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%s: %w: needs BTF and Linux >= 6.1: %w", what, ErrNotSupported, err)
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("%s: %w: the kernel's verifier refused it (needs Linux >= 6.1): %w", what, ErrNotSupported, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// checkPidFilter creates an iterator link for the calling process and
// reads back the pid the kernel restricted it to (bpf_link_info reports
// it from Linux 6.1, the release that honours it).
func (c *ConnCounter) checkPidFilter() error {
	pid := os.Getpid()
	fd, err := c.attach(pid)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// struct bpf_link_info: type, id, prog_id, then the union at 16; in
	// it, iter.target_name (u64), target_name_len, map_id, then task.tid
	// and task.pid at 16 and 20.
	var info [128]byte
	attr := objInfoAttr{fd: uint32(fd), infoLen: uint32(len(info)), info: uint64(uintptr(unsafe.Pointer(&info[0])))}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(&info)
	if errno != 0 {
		return fmt.Errorf("load connection counter: read iterator link info: %w", errno)
	}
	if got := binary.NativeEndian.Uint32(info[16+20:]); got != uint32(pid) {
		return fmt.Errorf("load connection counter: %w: the kernel does not restrict a task_file iterator to one process (needs Linux >= 6.1)", ErrNotSupported)
	}
	return nil
}

type objInfoAttr struct {
	fd      uint32
	infoLen uint32
	info    uint64
}

// linkCreateAttr is the BPF_LINK_CREATE part of union bpf_attr for an
// iterator.
type linkCreateAttr struct {
	progFd      uint32
	targetFd    uint32
	attachType  uint32
	flags       uint32
	iterInfo    uint64
	iterInfoLen uint32
	_           uint32
}

// attach creates an iterator link of the program restricted to the
// process pid (union bpf_iter_link_info: task.pid at offset 4 of 16).
func (c *ConnCounter) attach(pid int) (int, error) {
	var info [16]byte
	binary.NativeEndian.PutUint32(info[4:], uint32(pid))
	attr := linkCreateAttr{
		progFd:      uint32(c.prog.FD()),
		attachType:  uint32(ebpf.AttachTraceIter),
		iterInfo:    uint64(uintptr(unsafe.Pointer(&info[0]))),
		iterInfoLen: uint32(len(info)),
	}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_LINK_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(&info)
	if errno != 0 {
		if errno == unix.ESRCH || errno == unix.ENOENT {
			return -1, fmt.Errorf("attach connection counter to process %d: %w", pid, os.ErrProcessDone)
		}
		return -1, fmt.Errorf("attach connection counter to process %d: %w", pid, errno)
	}
	return int(fd), nil
}

// sockOut is struct sock_out of count.c.
const sockOutSize = 16

// notListening is NOT_LISTENING of count.c.
const notListening = 0xffffffff

// Count counts the connections that the processes pids hold on ports. A
// process that is gone counts nothing. A socket held by several of the
// processes (a worker's connection its parent still has, a dup) counts
// once.
func (c *ConnCounter) Count(pids []int, ports []uint16) (map[uint16]PortHeld, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.setPorts(ports); err != nil {
		return nil, err
	}
	defer c.clearPorts(ports)
	shared := map[uint64]sockOut{}
	for _, pid := range pids {
		if err := c.run(pid, shared); err != nil {
			if errors.Is(err, os.ErrProcessDone) {
				continue
			}
			return nil, err
		}
	}
	out := make(map[uint16]PortHeld, len(ports))
	c.written = 0
	for _, p := range ports {
		var pc bpf.CountPortCount
		if err := c.ports.Lookup(uint32(p), &pc); err != nil {
			return nil, fmt.Errorf("read connections on port %d: %w", p, err)
		}
		out[p] = PortHeld{Connections: int64(pc.Held)}
		c.written += pc.Out
	}
	for _, s := range shared {
		h := out[s.port]
		if s.backlog == notListening {
			h.Connections++
		} else {
			h.Queued += int64(s.backlog)
			h.Listeners++
		}
		out[s.port] = h
	}
	return out, nil
}

type sockOut struct {
	port    uint16
	backlog uint32
}

func (c *ConnCounter) setPorts(ports []uint16) error {
	for _, p := range ports {
		if err := c.ports.Update(uint32(p), bpf.CountPortCount{}, ebpf.UpdateAny); err != nil {
			c.clearPorts(ports)
			return fmt.Errorf("count connections on port %d: %w", p, err)
		}
	}
	return nil
}

func (c *ConnCounter) clearPorts(ports []uint16) {
	for _, p := range ports {
		c.ports.Delete(uint32(p))
	}
}

// run runs the iterator over the fds of pid, adding the sockets it writes
// out to shared by inode.
func (c *ConnCounter) run(pid int, shared map[uint64]sockOut) error {
	link, err := c.attach(pid)
	if err != nil {
		return err
	}
	defer unix.Close(link)
	attr := [2]uint32{uint32(link), 0} // link_fd, flags
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_ITER_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return fmt.Errorf("count connections of process %d: create iterator: %w", pid, errno)
	}
	f := os.NewFile(fd, "bpf_iter")
	defer f.Close()
	buf := make([]byte, 64<<10)
	var rest []byte
	for {
		n, err := f.Read(buf)
		data := append(rest, buf[:n]...)
		for len(data) >= sockOutSize {
			ino := binary.NativeEndian.Uint64(data)
			port := uint16(binary.NativeEndian.Uint32(data[8:]))
			shared[ino] = sockOut{port: port, backlog: binary.NativeEndian.Uint32(data[12:])}
			data = data[sockOutSize:]
		}
		rest = append(rest[:0], data...)
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return nil
		}
		if errors.Is(err, unix.EAGAIN) {
			// The kernel visited 1,000,000 files in this read
			// without one to write out; the next read goes on.
			continue
		}
		if err != nil {
			return fmt.Errorf("count connections of process %d: %w", pid, err)
		}
	}
}

// Stats returns how many times the counting program ran and for how long
// in total, while the kernel counts (EnableStats): one run per open file
// of each process counted.
func (c *ConnCounter) Stats() (runs uint64, runtime time.Duration, err error) {
	s, err := c.prog.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("read connection counter stats: %w", err)
	}
	return s.RunCount, s.Runtime, nil
}

// EnableStats makes the kernel count the runs and run time of every eBPF
// program on the host (ConnCounter.Stats, the steering program's) until
// the returned Closer is closed. It uses BPF_ENABLE_STATS (Linux >= 5.8)
// rather than the kernel.bpf_stats_enabled sysctl, so statistics stop when
// the process dies, whatever state it dies in. Counting costs a little on
// every run of every program: enable it for measurements, not for good.
func EnableStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable eBPF run time statistics: %w", err)
	}
	return c, nil
}

// Parents returns the parent of every process of the host, by pid, from
// one run of a task iterator: a generation's descendants for Count, at
// the cost of one program call per thread of the host instead of a file
// of /proc per thread of the generation. The pids are those of the pid
// namespace the kernel's task structure holds first (the host's): where
// handoffd's own pid is not among them with its parent, Parents fails.
func (c *ConnCounter) Parents() (map[int]int, error) {
	r, err := c.parentsIter.Open()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	parents := make(map[int]int, len(data)/8)
	for ; len(data) >= 8; data = data[8:] {
		parents[int(binary.NativeEndian.Uint32(data))] = int(binary.NativeEndian.Uint32(data[4:]))
	}
	if ppid, ok := parents[os.Getpid()]; !ok || ppid != os.Getppid() {
		return nil, fmt.Errorf("list processes: %w: the iterator's pids are not those of handoffd's pid namespace", ErrNotSupported)
	}
	return parents, nil
}

// Close releases the programs, the map and the process iterator.
func (c *ConnCounter) Close() error {
	var errs []error
	if c.parentsIter != nil {
		errs = append(errs, c.parentsIter.Close())
	}
	return errors.Join(append(errs, c.prog.Close(), c.ports.Close(), c.parents.Close())...)
}
