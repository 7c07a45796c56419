package kernel

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// AcceptQueue returns the number of connections waiting in the accept
// queue of the listening TCP socket fd, and the queue's limit (the backlog
// given to listen(2), capped by net.core.somaxconn). For a listener the
// kernel's TCP_INFO puts them in tcpi_unacked and tcpi_sacked.
func AcceptQueue(fd int) (length, max uint32, err error) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, 0, fmt.Errorf("read accept queue of socket %d: %w", fd, err)
	}
	if info.State != tcpListen {
		return 0, 0, fmt.Errorf("read accept queue of socket %d: not a listening socket", fd)
	}
	return info.Unacked, info.Sacked, nil
}

// tcpListen is TCP_LISTEN of include/net/tcp_states.h.
const tcpListen = 10
