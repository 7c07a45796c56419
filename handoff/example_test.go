package handoff_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
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

// A counter that survives swaps: the old generation hands its value to
// the new one before the new one takes traffic, and after its drain the
// increments it served since its snapshot, which the new one adds.
func ExampleHandleState() {
	var (
		mu      sync.Mutex
		counter int // what this generation counts
		since   int // increments since the snapshot
	)
	handoff.HandleState(handoff.StateHandler{
		Snapshot: func(w io.Writer) error {
			mu.Lock()
			defer mu.Unlock()
			since = 0 // from here on, increments go into the final
			return json.NewEncoder(w).Encode(counter)
		},
		Restore: func(r io.Reader) error {
			mu.Lock()
			defer mu.Unlock()
			return json.NewDecoder(r).Decode(&counter)
		},
		Final: func(w io.Writer) error {
			mu.Lock()
			defer mu.Unlock()
			return json.NewEncoder(w).Encode(since)
		},
		Merge: func(from int, r io.Reader) error {
			var delta int
			if err := json.NewDecoder(r).Decode(&delta); err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			counter += delta
			since += delta
			return nil
		},
	})
	http.HandleFunc("POST /counter", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		counter++
		since++
		n := counter
		mu.Unlock()
		fmt.Fprintln(w, n)
	})
	ln, err := handoff.Listen("http", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	// Ready (inside) restores before the first request; the drain ends
	// with the final.
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second}
	if err := handoff.ServeAndDrain(context.Background(), srv, ln, 30*time.Second); err != nil {
		log.Fatal(err)
	}
}

// A file kept in the service's fd store outlives this generation: the
// next ones find it, after a swap as after a crash.
func ExampleStored() {
	if files := handoff.Stored("cache"); len(files) > 0 {
		log.Printf("reusing the cache of an earlier generation: %s", files[0].Name())
		return
	}
	f, err := os.CreateTemp("", "cache")
	if err != nil {
		log.Fatal(err)
	}
	os.Remove(f.Name()) // the store holds it open
	if err := handoff.Store("cache", f); err != nil {
		log.Fatal(err)
	}
}
