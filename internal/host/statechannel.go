package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/internal/stateproto"
	"github.com/handoffd/handoffd/kernel"
)

// stateChannel is handoffd's end of a generation's state channel: one
// end of a SOCK_SEQPACKET socket pair, whose other end the generation
// gets as the fd in stateproto.EnvFD. A seqpacket socket keeps each
// message whole and tells handoffd when the generation is gone.
type stateChannel struct {
	c *net.UnixConn
}

// sendTimeout bounds one Send: a generation that reads nothing fills its
// socket's buffer, and handoffd must not wait on it.
const sendTimeout = time.Second

// newStateChannel returns handoffd's end of a new channel, and the
// generation's end to pass to it.
func newStateChannel() (*stateChannel, *os.File, error) {
	conn, theirs, err := kernel.SeqpacketPair("state channel (generation's end)")
	if err != nil {
		return nil, nil, fmt.Errorf("state channel: %w", err)
	}
	return &stateChannel{c: conn}, theirs, nil
}

// Send implements lifecycle.StateChannel.
func (s *stateChannel) Send(m stateproto.Message, f *os.File) error {
	b := m.Encode()
	if len(b) > stateproto.MaxMessage {
		return fmt.Errorf("message of %d bytes, over %d", len(b), stateproto.MaxMessage)
	}
	s.c.SetWriteDeadline(time.Now().Add(sendTimeout))
	var err error
	if f == nil {
		_, err = s.c.Write(b)
	} else {
		err = kernel.SendFiles(s.c, b, []*os.File{f})
	}
	if err != nil {
		return fmt.Errorf("state channel: %w", err)
	}
	return nil
}

// Receive implements lifecycle.StateChannel. Fds the generation attached
// are closed: none is expected on this side.
func (s *stateChannel) Receive(ctx context.Context) (stateproto.Message, error) {
	deadline, _ := ctx.Deadline()
	s.c.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { s.c.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, stateproto.MaxMessage+1)
	oob := make([]byte, kernel.RightsSpace(stateproto.MaxFDs))
	n, oobn, flags, _, err := s.c.ReadMsgUnix(buf, oob)
	fds, _ := kernel.ParseRights(oob[:oobn], flags)
	kernel.CloseFDs(fds)
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		return nil, fmt.Errorf("state channel: %w", err)
	case n == 0:
		return nil, fmt.Errorf("state channel: %w", io.EOF) // the generation's end is closed
	case n > stateproto.MaxMessage || flags&unix.MSG_TRUNC != 0:
		return nil, errors.New("state channel: a message over 4096 bytes")
	}
	return stateproto.Parse(buf[:n]), nil
}

// close releases handoffd's end.
func (s *stateChannel) close() error { return s.c.Close() }
