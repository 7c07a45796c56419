package kernel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// SendFiles writes payload on c with files attached as SCM_RIGHTS, in
// their order.
func SendFiles(c *net.UnixConn, payload []byte, files []*os.File) error {
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	_, _, err := c.WriteMsgUnix(payload, unix.UnixRights(fds...), nil)
	runtime.KeepAlive(files)
	return err
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
