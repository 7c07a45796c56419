// Package bpf holds handoffd's eBPF programs and their generated Go
// bindings.
//
// steer.c is the SK_REUSEPORT program that sends new connections of one
// SO_REUSEPORT group to the active generation's listening socket and
// migrates the queued requests of a closing listener to it. A canary split
// shares new connections by weight between the active slot and one more,
// by flow or by client address, and handoffd's health probes, known by
// their source address and port, reach the slot of the generation they
// check.
//
// steer_quic.c is the SK_REUSEPORT program of a QUIC listener's UDP
// group: it steers every datagram by the cookie in its destination
// connection ID (package internal/quicid has the layout) to the
// generation that minted it, and places the datagrams that start a
// connection as steer.c places new connections, keeping each handshake on
// the generation its first datagram reached.
//
// count.c is the task_file iterator that counts, when asked, the
// connections one process holds on given ports: nothing of handoffd runs
// for a connection but the steering program's choice of its listener.
//
// The compiled objects and their bindings (*_bpfel.o, *_bpfel.go) are
// committed, so building handoffd needs no clang; run go generate after
// editing a .c or .h file. Loading, pinning and attaching live in package
// loader.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -strip llvm-strip -target bpfel -type slot_counters -type probe_key -type split_counts Steer steer.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -strip llvm-strip -target bpfel -type port_count Count count.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -strip llvm-strip -target bpfel -type quic_counters -type quic_misses -type flow_key SteerQuic steer_quic.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
