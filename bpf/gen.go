// Package bpf holds handoffd's eBPF programs and their generated Go
// bindings.
//
// steer.c is the SK_REUSEPORT program that sends new connections of one
// SO_REUSEPORT group to the active generation's listening socket and
// migrates the queued requests of a closing listener to it. The compiled
// object and its bindings (steer_bpfel.o, steer_bpfel.go) are committed,
// so building handoffd needs no clang; run go generate after editing
// steer.c. Loading, pinning and attaching live in package loader.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -strip llvm-strip -target bpfel -type slot_counters Steer steer.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
