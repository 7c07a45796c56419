// Package kernel holds the Linux facts that handoffd needs beyond eBPF
// (which is package loader's): the kernel's socket table through sock_diag,
// process file descriptors (pidfd_open, pidfd_getfd, pidfd_send_signal),
// the credentials of a UNIX-socket peer, POSIX ACLs, listening sockets
// made and inspected by hand, and the few process settings a generation is
// started with.
//
// Every raw system call and netlink message of handoffd lives here or in
// loader, each behind a small typed function that says in its error what
// it attempted; the rest of handoffd calls these. It imports only the
// standard library and golang.org/x/sys, so the SDK in package handoff may
// use it too. Each function has a test on the real kernel.
package kernel
