// Package kernel holds the Linux facts that handoffd needs beyond eBPF
// (which is package loader's): the kernel's socket table through sock_diag,
// process file descriptors (pidfd_open, pidfd_getfd, pidfd_send_signal),
// the credentials of a UNIX-socket peer, POSIX ACLs, listening sockets
// made and inspected by hand, fds passed with SCM_RIGHTS on stream,
// seqpacket and datagram sockets, sealed memfds, the few process settings
// a generation is started with and the exec that starts it, and whether a
// file is a terminal.
//
// Every raw system call and netlink message of handoffd lives here or in
// loader, each behind a small typed function that says in its error what
// it attempted; the rest of handoffd calls these, and takes only
// constants and types from x/sys and syscall (TestNoRawCallsOutsideKernel
// checks it). It imports only the standard library and golang.org/x/sys,
// so the SDK in package handoff and handoffctl may use it too. Each
// function has a test on the real kernel.
package kernel
