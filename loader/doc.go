// Package loader is handoffd's only way into the kernel's eBPF machinery.
// It loads the programs of package bpf, pins their maps in bpffs, attaches
// them to sockets, probes whether the host allows all that, and hands out
// small typed handles over the result.
//
// Steering is the handle of one listener: an SK_REUSEPORT program, attached
// with BPF_SK_REUSEPORT_SELECT_OR_MIGRATE to the SO_REUSEPORT group of the
// listener, that sends every new connection to the listening socket in the
// active slot and moves the queued requests of a closing listener there
// too. Generation g owns slot uint32(g % Slots); a swap is Activate, one
// map update. A canary is a Split beside the active slot: SetSplit starts
// one, changes its share, or rolls it back, and Promote makes the canary
// active, each with one update that decides (the split is one word, read
// whole by the program and written with one atomic store). DialProbe connects to the
// listener as a health check of the generation in a given slot, steered
// there while every client connection goes by the active slot and split.
//
// ConnCounter counts connections on demand: a task_file iterator run over
// the open files of one process at a time, when status or a scrape asks,
// so nothing runs on a connection's path but the steering program. Kernel
// bundles the Steerings and the ConnCounter of one handoffd, and removes
// the sock_ops counter that an older handoffd pinned.
//
// The package does not create the listening sockets, decide which
// generation is active, or export metrics: the supervisor and package
// observe do that over these handles. It never changes sysctls; migration
// works with net.ipv4.tcp_migrate_req at 0 because of the attach type.
package loader
