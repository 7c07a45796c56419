package handoff_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/handoffd/handoffd/handoff"
)

// An app run by handoffd: the listener comes from handoffd (or from
// net.Listen when run on its own), and SIGTERM drains it without failing
// a request.
func ExampleServeAndDrain() {
	ln, err := handoff.Listen("http", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "generation %d\n", handoff.Generation())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := handoff.ServeAndDrain(context.Background(), srv, ln, 30*time.Second); err != nil {
		log.Fatal(err)
	}
}

// The pieces of ServeAndDrain, for an app that does more around them.
func ExampleDrainer() {
	ln, err := handoff.Listen("http", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	d := handoff.NewDrainer(&http.Server{Handler: http.NotFoundHandler()})
	go d.Serve(ln)
	if err := handoff.Ready(); err != nil {
		log.Fatal(err)
	}
	// ... wait for SIGTERM ...
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Drain(ctx); err != nil {
		log.Printf("drain: closed %d connections: %v", d.Closed(), err)
	}
}

// A long-lived response ends by its protocol when the drain says so: here
// a stream of server-sent events, with a retry hint for the reconnect.
func ExampleDraining() {
	http.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				fmt.Fprintf(w, "data: %d\n\n", handoff.Generation())
				http.NewResponseController(w).Flush()
			case <-handoff.Draining(r.Context()):
				fmt.Fprint(w, "retry: 100\n\n") // reconnect soon, to the next generation
				return
			case <-r.Context().Done():
				return
			}
		}
	})
}
