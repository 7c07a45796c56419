// Package host is what the lifecycle asks of the operating system, done
// for real: it starts generations (re-executing handoffd so that the child
// sets LISTEN_PID itself), reads their sd_notify socket and follows their
// stderr, re-adopts the processes an earlier handoffd left running
// through pidfds, creates and routes the listening sockets of each
// listener (a SO_REUSEPORT socket per generation under a loader.Steering
// in ebpf mode, one shared socket in fdpass mode), and counts accept
// queues and the connections each generation holds (Counter), once per
// status for every service.
//
// Raw system calls stay in package kernel and eBPF in package loader;
// this package puts them together behind the interfaces of package
// lifecycle.
package host
