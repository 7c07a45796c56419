package kernel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// SendFiles writes payload on c with files attached as SCM_RIGHTS, in
// their order.
func SendFiles(c *net.UnixConn, payload []byte, files []*os.File) error {
	_, _, err := c.WriteMsgUnix(payload, rights(files), nil)
	runtime.KeepAlive(files)
	return err
}

// rights returns the SCM_RIGHTS control message that passes files, or nil
// for none. The caller keeps files alive until the message is sent.
func rights(files []*os.File) []byte {
	if len(files) == 0 {
		return nil
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	return unix.UnixRights(fds...)
}

// SendDatagram sends payload as one datagram to the UNIX datagram socket
// at addr (a path, or an abstract name written with a leading '@'), with
// files attached as SCM_RIGHTS, from an unconnected socket of its own
// (net refuses ancillary data on a connected datagram socket). With
// untilRead > 0 it then waits, at most that long, until the receiver has
// taken the datagram off its socket: the kernel charges a datagram to
// its sender until then (SIOCOUTQ).
func SendDatagram(addr string, payload []byte, files []*os.File, untilRead time.Duration) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket(AF_UNIX, SOCK_DGRAM): %w", err)
	}
	defer unix.Close(fd)
	err = unix.Sendmsg(fd, payload, rights(files), &unix.SockaddrUnix{Name: addr}, 0)
	runtime.KeepAlive(files)
	if err != nil {
		return fmt.Errorf("sendmsg to %s: %w", addr, err)
	}
	deadline := time.Now().Add(untilRead)
	for time.Now().Before(deadline) {
		if n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ); err != nil || n == 0 {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// ReadMsgNow reads one message from the socket fd into buf, and its
// control messages into oob, without waiting (MSG_DONTWAIT); the fds it
// carries are close-on-exec (MSG_CMSG_CLOEXEC). queued is false, with no
// error, when no message waits. As with recvmsg(2), flags has MSG_TRUNC
// or MSG_CTRUNC set when buf or oob was too small.
func ReadMsgNow(fd int, buf, oob []byte) (n, oobn, flags int, queued bool, err error) {
	for {
		n, oobn, flags, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, 0, 0, false, nil
		case err != nil:
			return 0, 0, 0, false, fmt.Errorf("recvmsg on socket %d: %w", fd, err)
		}
		return n, oobn, flags, true, nil
	}
}

// RightsSpace is the size of the control-message buffer that receives up
// to n fds.
func RightsSpace(n int) int { return unix.CmsgSpace(n * 4) }

// ParseRights returns the fds passed in the control messages oob. An
// error says what could not be parsed; the fds found are returned with it
// so that the caller can close them. truncated (MSG_CTRUNC was set) means
// that the kernel dropped fds that did not fit.
func ParseRights(oob []byte, flags int) (fds []int, err error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err == nil {
			fds = append(fds, got...)
		}
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return fds, errors.New("more fds than expected: the control message was truncated")
	}
	return fds, nil
}

// CloseFDs closes raw fds.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// PassCred sets SO_PASSCRED on c, so that every datagram it reads carries
// the sender's credentials (see SenderPID).
func PassCred(c *net.UnixConn) error {
	var opErr error
	err := control(c, func(fd int) { opErr = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err = errors.Join(err, opErr); err != nil {
		return fmt.Errorf("set SO_PASSCRED: %w", err)
	}
	return nil
}

// CredSpace is the size of the control-message buffer that receives the
// sender's credentials.
func CredSpace() int { return unix.CmsgSpace(unix.SizeofUcred) }

// SenderPID returns the pid of a datagram's sender from its control
// messages, read on a socket with PassCred; -1 if they do not say.
func SenderPID(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1
	}
	for _, m := range msgs {
		if cred, err := unix.ParseUnixCredentials(&m); err == nil {
			return int(cred.Pid)
		}
	}
	return -1
}
