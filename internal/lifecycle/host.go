package lifecycle

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/stateproto"
)

// What the lifecycle needs from the operating system and the kernel, as
// small interfaces: package host implements them for real, the unit tests
// with fakes that hand out real files.

// Process is a running generation as the lifecycle sees it.
type Process interface {
	Pid() int
	// Ready is closed when the process said READY=1.
	Ready() <-chan struct{}
	// Done is closed when the process has exited and was reaped.
	Done() <-chan struct{}
	// ExitStatus says how the process ended; valid once Done is closed.
	ExitStatus() string
	Signal(sig syscall.Signal) error
	// Reloads reports whether the process said that it reloads its
	// config on SIGHUP (HANDOFF_RELOAD=1, sent by handoff.OnReload).
	Reloads() bool
}

// LaunchSpec is what a generation is started with.
type LaunchSpec struct {
	Service    string
	Generation int
	Config     *config.ServiceConfig
	// Files are the listening sockets, in the order of Config.Listeners;
	// the child gets them as fds 3, 4, ...
	Files   []*os.File
	Control string
	// Stored are the fds of the service's fd store, in the order they
	// were stored: the child gets them after the listeners, named in
	// LISTEN_FDNAMES. They are the store's own: the launcher must not
	// close them, and the store closes none while Start runs.
	Stored []StoredFile
	// StateChannel gives the generation a state channel (the service
	// has state_handoff); the Process then implements Stateful.
	StateChannel bool
	// Notice, if set, receives in order what the process sends on
	// NOTIFY_SOCKET for the fd store and the state handoff. It owns the
	// files of each Notice; it must not block for long.
	Notice func(Notice)
	// Started, if set, is called by a launcher that can hold a new
	// process back: once the process exists (its pid known) and before
	// it runs the command, from Start's own goroutine, before Start
	// returns. The command runs only if Started returns nil;
	// otherwise the launcher ends the process and Start fails with that
	// error. The lifecycle records the process in StateFile there, so
	// that whenever handoffd can die, every process it started is in the
	// file for the next handoffd to find. A process that runs already
	// (one that joined) is recorded once Start returns.
	Started func(pid int) error
}

// StoredFile is one fd of a service's fd store.
type StoredFile struct {
	Name string
	File *os.File
}

// Notice is one message that a generation sent on NOTIFY_SOCKET about
// the fd store or its state (stateproto): FDSTORE=1, FDSTOREREMOVE=1,
// HANDOFF_STATE, HANDOFF_FINAL, or fds attached to anything else.
type Notice struct {
	Msg stateproto.Message
	// Files are the fds that came with it, now handoffd's.
	Files []*os.File
	// Sealed: there are Files, and every one is a memfd sealed against
	// change (kernel.CheckSealed), as snapshots and finals must be.
	Sealed bool
	// Oversize: the message was over stateproto.MaxMessage bytes, or the
	// kernel cut off its fds; Refused counts the fds, already closed, and
	// Msg holds what the first MaxMessage bytes say.
	Oversize bool
	Refused  int
}

// StateChannel is handoffd's end of a generation's state channel.
type StateChannel interface {
	// Send writes one message, with f attached unless it is nil.
	Send(m stateproto.Message, f *os.File) error
	// Receive returns the next message from the generation; it gives up
	// when ctx ends, and fails once the generation's end is closed.
	Receive(ctx context.Context) (stateproto.Message, error)
}

// Stateful is a Process started with a state channel.
type Stateful interface {
	Channel() StateChannel
}

// channelOf returns p's state channel, or nil when it has none (started
// without state_handoff, joined from outside, re-adopted after a restart
// of handoffd and not re-attached yet).
func channelOf(p Process) StateChannel {
	if st, ok := p.(Stateful); ok {
		return st.Channel()
	}
	return nil
}

// Renotifier is a re-adopted Process whose NOTIFY_SOCKET, closed with
// the handoffd that started it, can be bound again.
type Renotifier interface {
	// Renotify binds the process's NOTIFY_SOCKET again at its address
	// and reads it as Start does: notice receives what concerns the fd
	// store and the state handoff, as LaunchSpec.Notice.
	Renotify(notice func(Notice)) error
}

// ChannelAttacher is a Process that takes a state channel from the
// generation itself (stateproto.NotifyChannel): a re-adopted one, whose
// channel died with the previous handoffd.
type ChannelAttacher interface {
	// AttachChannel makes f the process's state channel, or fails when
	// it has one already or f is not a SOCK_SEQPACKET socket. It closes
	// f (handoffd keeps a copy of its own when it attaches it).
	AttachChannel(f *os.File) error
}

// FileID names an open file by its st_dev and st_ino.
type FileID struct{ Dev, Ino uint64 }

// ConnectionReporter is a Process that reports the connections it holds
// on listeners whose connections have no socket the kernel can count:
// QUIC ones (joinproto.Connections, sent by handoff/handoffquic).
type ConnectionReporter interface {
	// ReportedConnections returns what the process last reported for
	// listener, and false when it reported nothing.
	ReportedConnections(listener string) (int64, bool)
}

// FileFinder is a Process whose open files handoffd can copy: a
// re-adopted one (pidfd_getfd).
type FileFinder interface {
	// FindListeners returns copies of the process's listening sockets
	// bound where listeners bind, in their order; it fails when one is
	// missing.
	FindListeners(listeners []config.ListenerConfig) ([]*os.File, error)
	// FindFiles returns copies of the process's open files whose FileID
	// is in want, found in one pass over its fds: a file it does not
	// hold is absent from the map. ErrGone when the process is gone.
	FindFiles(want map[FileID]bool) (map[FileID]*os.File, error)
}

// ErrGone is returned by Launcher.Adopt for a process that is gone (it
// exited, even if nobody has reaped it yet), or that is another process
// now under the same pid.
var ErrGone = errors.New("the process is gone")

// Launcher starts the processes of generations, and finds again those
// that an earlier handoffd started.
type Launcher interface {
	Start(spec LaunchSpec) (Process, error)
	// Adopt returns a handle on the process of generation gen of service
	// that an earlier handoffd started, if pid still is the process that
	// started at startTicks and has not exited; else ErrGone. Its files
	// are found through FileFinder.
	Adopt(service string, gen, pid int, startTicks uint64) (Process, error)
	// StartTicks returns when process pid started, in clock ticks since
	// boot, or 0 when it is gone (exited, even if not reaped yet): with
	// the pid, it names one process.
	StartTicks(pid int) uint64
}

// SlotStats is what the steering program counted for one generation on
// one steered listener.
type SlotStats struct {
	// Selected counts new connections the steering program sent to it.
	Selected uint64
	// Migrated counts requests moved to it from a closing listener.
	Migrated uint64
}

// Router gives generations their listening sockets and moves new
// connections to the active one.
type Router interface {
	// Prepare returns handoffd's copies of the sockets of generation gen,
	// in the order of the service's listeners. Closing them is the
	// caller's job and never affects another generation.
	Prepare(gen int) ([]*os.File, error)
	// Activate makes gen the generation that receives new connections.
	Activate(gen int) error
	// Stats returns what the kernel counted for generation gen on the
	// i-th listener; false when that listener is not counted.
	Stats(gen, i int) (SlotStats, bool)
	// Migrated returns the requests migrated on all listeners since load.
	Migrated() uint64
	// Forget drops what the router remembers of an exited generation.
	Forget(gen int)
	// Adopt takes the sockets of a re-adopted generation (handoffd's new
	// copies, in listener order), where the router shares one socket
	// between generations; the caller keeps its copies.
	Adopt(gen int, files []*os.File) error
	// Release closes the listening sockets the router holds itself (the
	// shared ones), so that nothing takes new connections into a queue
	// while no generation serves; the next Prepare makes them again.
	// Steering stays.
	Release() error
	// Close releases what the router holds for the service.
	Close() error
	// SetSplit sends share (0 to 1) of new connections to generation gen
	// and the rest to the active one, by flow or, sticky, by client
	// address: one map update per listener. It fails on a service whose
	// listeners are not all steered.
	SetSplit(gen int, share float64, sticky bool) error
	// Promote makes gen, a canary, the active generation and ends the
	// split.
	Promote(gen int) error
	// DialProbe connects to the i-th listener as a health check of
	// generation gen: in ebpf mode to gen's own socket, whatever the
	// split says and while clients go elsewhere.
	DialProbe(ctx context.Context, gen, i int) (net.Conn, error)
	// Slots is how many generations may hold sockets at once: generation
	// g takes slot g % Slots, and a slot is never given to a generation
	// while another one that had it is live. 0: no limit.
	Slots() int
}

// NewRouter builds the Router of a service's listeners. With adopting,
// the router is for generations that an earlier handoffd started: their
// steering is reopened from its pins, and shared sockets come from the
// active generation (Router.Adopt) instead of being created.
type NewRouter func(svc *config.ServiceConfig, adopting bool) (Router, error)

// Counter counts what the steering program does not: accept queues, and
// the connections generations hold.
type Counter interface {
	// AcceptQueue returns the length of a listening socket's accept queue.
	AcceptQueue(f *os.File) (uint32, bool)
	// Count counts, in one pass over all of them, the connections that
	// the generations of gens hold, and fills in their results. A
	// generation it cannot count keeps a nil Total.
	Count(gens []*Counted)
}

// Counted is one live generation whose connections a status asks for,
// and, once Counter.Count returned, what was found.
type Counted struct {
	Service *config.ServiceConfig
	// Mode is handoffd's mode; each listener's is config.ListenerMode.
	Mode api.Mode
	ID   int
	PID  int
	// Primary marks the generation that receives new connections. On a
	// listening socket that generations share (fdpass), it holds the
	// connections that no other live generation of the service holds,
	// those still queued included; a Count that has a primary generation
	// of a service has all its live generations.
	Primary bool

	// Total is what the generation holds (nil: not counted), from Source
	// (api.SourceEBPF or api.SourceProc); Listeners splits it by the
	// service's listeners (nil where a listener is not counted).
	Total     *int64
	Source    string
	Listeners []*int64

	index int // in the status's generations
}
