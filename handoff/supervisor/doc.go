// Package supervisor runs services as numbered generations and swaps them
// without losing a connection.
//
// A Service owns its generations and the state machine of State. A swap
// starts the next generation on listening sockets that handoffd creates,
// waits for it to say READY=1 (the sd_notify protocol), moves new
// connections to it in one step through a Steering handle, then tells the
// old generation to drain and exit. The kernel is reached only through the
// Steering interface, which cmd/handoffd fills with package loader; the
// state machine here is plain Go and is tested without root.
//
// The package also serves the control API (HTTP/JSON on a UNIX socket) and
// holds its client, which handoffctl uses.
package supervisor
