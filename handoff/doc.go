// Package handoff is the SDK for apps run by handoffd: it takes the
// listening sockets handoffd hands over, says when the app is ready, and
// drains an *http.Server without failing a request when the next
// generation takes over.
//
// handoffd starts each generation with its listeners as inherited fds
// (systemd socket activation: LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES) and a
// NOTIFY_SOCKET for readiness (the sd_notify protocol). Once the next
// generation says READY=1 and new connections go to it, the old one gets
// SIGTERM, finishes what it has and exits. An app does this in a few lines:
//
//	ln, err := handoff.Listen("http", "127.0.0.1:8080")
//	if err != nil {
//		log.Fatal(err)
//	}
//	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
//	// Serves, sends READY=1, waits for SIGTERM or SIGINT, then drains
//	// for at most 30s.
//	if err := handoff.ServeAndDrain(context.Background(), srv, ln, 30*time.Second); err != nil {
//		log.Fatal(err)
//	}
//
// Apps that need more control use the pieces: Listen, Ready (or Notify),
// and a Drainer whose Serve and Drain replace http.Server's Serve and
// Shutdown. Run without handoffd, Listen falls back to net.Listen and
// Ready does nothing, so the same binary also runs on its own.
//
// Why not http.Server.Shutdown: it closes idle keep-alive connections at
// once, racing with a client that is just sending its next request on one,
// and it drops requests read after it began (golang/go#65802). A client
// that does not retry (a POST) then sees a failure. A Drainer instead
// answers every request it reads, asks clients to close with
// "Connection: close", and closes a connection only after it has been idle
// for Drainer.IdleGrace.
//
// Long-lived requests (WebSockets, server-sent events) end by their
// protocol when Draining tells them to, spread over Drainer.Spread so that
// clients do not all reconnect at once; a hijacked connection counts for
// the drain while its handler runs, or until the release of Hold.
// Drainer.ServeTLS serves TLS with HTTP/2, whose connections the drain
// ends with the two GOAWAYs of RFC 9113 (no stream refused). Package
// handoffgrpc does the same for a *grpc.Server.
//
// State outlives a generation two ways. Store keeps fds (a memfd, a
// socket) in the service's fd store, systemd's protocol, and Stored finds
// them in every later generation. In a service with state_handoff, a
// StateHandler (see HandleState) hands the app's state over in each swap:
// a snapshot from the old generation, read by the new one before Ready
// returns, and a final delta after the old one's drain.
//
// The package does not steer connections, talk to the kernel beyond plain
// socket calls and sealed memfds, or export metrics: that is handoffd's
// job.
package handoff
