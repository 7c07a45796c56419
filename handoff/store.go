package handoff

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
)

// Store keeps files in the service's fd store under name, with systemd's
// protocol (FDSTORE=1 and FDNAME=name on NOTIFY_SOCKET, the files attached
// as SCM_RIGHTS). handoffd holds a copy of each file for the service, not
// for this generation: every later generation, after a swap, a crash or a
// rollback, finds them with Stored. Storing the same file twice keeps one
// copy. The caller keeps its own files open or closes them, as it likes.
//
// handoffd bounds the store (fd_store_max) and refuses, with a log line,
// what goes over it; the notify protocol has no answer, so Store cannot
// say so. name is 1 to 255 printable ASCII characters without ':';
// handoff.state and handoff.final are reserved for the state handoff.
// Without NOTIFY_SOCKET, Store does nothing and returns nil.
func Store(name string, files ...*os.File) error {
	if err := checkStoreName(name); err != nil {
		return err
	}
	if len(files) == 0 || len(files) > stateproto.MaxFDs {
		return fmt.Errorf("handoff: store %q: %d files, want 1 to %d", name, len(files), stateproto.MaxFDs)
	}
	msg := stateproto.Message{stateproto.FDStore: "1", stateproto.FDName: name}
	if err := notifyFiles(msg.Encode(), files, 0); err != nil {
		return fmt.Errorf("handoff: store %q: %w", name, err)
	}
	return nil
}

// Unstore removes every file stored under name from the service's fd
// store (FDSTOREREMOVE=1 and FDNAME=name). The files this process got
// from Stored stay open. Without NOTIFY_SOCKET it does nothing.
func Unstore(name string) error {
	if err := checkStoreName(name); err != nil {
		return err
	}
	msg := stateproto.Message{stateproto.FDStoreRemove: "1", stateproto.FDName: name}
	if err := notifyFiles(msg.Encode(), nil, 0); err != nil {
		return fmt.Errorf("handoff: unstore %q: %w", name, err)
	}
	return nil
}

// Stored returns the files stored under name in the service's fd store,
// in the order they were stored, as handoffd passed them to this
// generation: in LISTEN_FDS after the listeners, named in LISTEN_FDNAMES
// (so a program written for systemd's fd store finds them the same way).
// Each file is returned once: a second call returns nil, and so does a
// process that handoffd did not start or that inherited nothing under
// name. The files are close-on-exec; the caller owns them.
//
// What a generation stores is passed to the generations started after
// it, not to itself.
func Stored(name string) []*os.File {
	inherited.once.Do(readInherited)
	inherited.mu.Lock()
	defer inherited.mu.Unlock()
	var files []*os.File
	for i, s := range inherited.stored {
		if s.name != name || s.fd < 0 {
			continue
		}
		files = append(files, os.NewFile(uintptr(s.fd), "LISTEN_FDS:"+name))
		inherited.stored[i].fd = -1
	}
	return files
}

func checkStoreName(name string) error {
	if err := stateproto.ValidFDName(name); err != nil {
		return fmt.Errorf("handoff: store: %w", err)
	}
	if name == stateproto.StateName || name == stateproto.FinalName {
		return fmt.Errorf("handoff: store: FDNAME %q is reserved for the state handoff (see HandleState)", name)
	}
	return nil
}

// notifyFiles sends payload, an sd_notify message, as one datagram to
// NOTIFY_SOCKET with files attached as SCM_RIGHTS. Without NOTIFY_SOCKET
// it does nothing and returns nil. With untilRead, it then waits at most
// that long for the receiver to take the datagram off its socket.
func notifyFiles(payload []byte, files []*os.File, untilRead time.Duration) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return fmt.Errorf("NOTIFY_SOCKET=%q is neither a path nor an abstract name (@name)", addr)
	}
	if len(payload) > stateproto.MaxMessage {
		return fmt.Errorf("message of %d bytes, over %d", len(payload), stateproto.MaxMessage)
	}
	// untilRead: the caller goes on (a final: exits) only once handoffd
	// has taken the message off NOTIFY_SOCKET, or untilRead passed.
	if err := kernel.SendDatagram(addr, payload, files, untilRead); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// errNoNotify says that a message that needs handoffd could not go out.
var errNoNotify = errors.New("NOTIFY_SOCKET is unset")

// notifyState sends msg with file to NOTIFY_SOCKET, which must be set:
// a message for handoffd's state handoff; see notifyFiles for untilRead.
func notifyState(msg stateproto.Message, file *os.File, untilRead time.Duration) error {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return errNoNotify
	}
	var files []*os.File
	if file != nil {
		files = []*os.File{file}
	}
	return notifyFiles(msg.Encode(), files, untilRead)
}
