// Package lifecycle runs services as numbered generations and swaps them
// without losing a connection: services, generations and their state
// machine (api.State), swaps, rollback and probation, reloads, re-adoption
// after a restart of handoffd, and the state file that makes it possible.
//
// A Service owns its generations. A swap starts the next generation on
// listening sockets its Router prepares, waits for it to say READY=1,
// moves new connections to it in one step (Router.Activate), then tells
// the old generation to drain and exit. Everything the lifecycle needs
// from the operating system and the kernel comes through small interfaces
// (Launcher and Process, Router, Counter), which package host implements
// and cmd/handoffd wires in; the state machine here is plain Go, tested
// without root against fakes that hand out real files. An invalid move of
// the state machine is an error (TransitionError), returned or, where
// nobody waits for an answer, kept for Service.Invariants.
//
// It is not the control API (package control serves it) nor its client
// (package api).
package lifecycle
