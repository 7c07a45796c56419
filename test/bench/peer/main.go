// Command peer is the server the benchmark runs for the strategies that
// are not handoffd: a plain net/http server with the demo's handler
// (POST /slow?ms=N answering JSON with its generation and pid), listening
// the way each strategy's documentation says, and stopping with the usual
// http.Server.Shutdown.
//
// It prints "ready GEN PID" on stdout once it serves, which is how the
// benchmark times readiness. Its generation comes from BENCH_GEN.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/fvbock/endless"
	"golang.org/x/sys/unix"
)

// shutdownLimit bounds a Shutdown, as every example of these libraries does.
const shutdownLimit = 30 * time.Second

func main() {
	strategy := flag.String("strategy", "plain", "plain, reuseport, tableflip or endless")
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	flag.Parse()
	gen, _ := strconv.Atoi(os.Getenv("BENCH_GEN"))
	if gen == 0 {
		gen = 1
	}
	log.SetPrefix(fmt.Sprintf("peer gen %d pid %d: ", gen, os.Getpid()))
	srv := &http.Server{Handler: handler(gen), ReadHeaderTimeout: 10 * time.Second}
	var err error
	switch *strategy {
	case "plain":
		err = serve(srv, gen, *addr, net.Listen)
	case "reuseport":
		lc := net.ListenConfig{Control: reusePort}
		err = serve(srv, gen, *addr, func(network, address string) (net.Listener, error) {
			return lc.Listen(context.Background(), network, address)
		})
	case "tableflip":
		err = serveTableflip(srv, gen, *addr)
	case "endless":
		err = serveEndless(srv.Handler, gen, *addr)
	default:
		err = fmt.Errorf("unknown strategy %q", *strategy)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// handler answers POST /slow?ms=N after N ms with the generation and pid.
func handler(gen int) http.Handler {
	answer := map[string]int{"generation": gen, "pid": os.Getpid()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /slow", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 || ms > 60000 {
			http.Error(w, "ms: want 0..60000", http.StatusBadRequest)
			return
		}
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(answer)
	})
	return mux
}

// serve listens, says ready, and shuts down on SIGTERM or SIGINT.
func serve(srv *http.Server, gen int, addr string, listen func(network, address string) (net.Listener, error)) error {
	stop, unwatch := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer unwatch()
	ln, err := listen("tcp", addr)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Printf("ready %d %d\n", gen, os.Getpid())
	select {
	case <-stop.Done():
	case err := <-served:
		return err
	}
	return shutdown(srv)
}

func shutdown(srv *http.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownLimit)
	defer cancel()
	return srv.Shutdown(ctx)
}

func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	return errors.Join(err, serr)
}

// serveTableflip is tableflip's README and its http.Server example: an
// upgrade on SIGHUP, Shutdown once the new process is ready.
func serveTableflip(srv *http.Server, gen int, addr string) error {
	upg, err := tableflip.New(tableflip.Options{})
	if err != nil {
		return err
	}
	defer upg.Stop()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP)
		for range sig {
			// The child reads its generation from the environment it inherits.
			os.Setenv("BENCH_GEN", strconv.Itoa(gen+1))
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()
	ln, err := upg.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		if err := srv.Serve(ln); err != http.ErrServerClosed {
			log.Println("serve:", err)
		}
	}()
	if err := upg.Ready(); err != nil {
		return err
	}
	fmt.Printf("ready %d %d\n", gen, os.Getpid())
	<-upg.Exit()
	time.AfterFunc(shutdownLimit, func() {
		log.Println("graceful shutdown timed out")
		os.Exit(1)
	})
	return srv.Shutdown(context.Background())
}

// serveEndless is endless's README: endless.ListenAndServe, a SIGHUP forks
// the child, which takes the listener and sends SIGTERM to its parent; the
// parent then closes its listener, turns keep-alives off and exits once
// its connections are done (or after the 60 s hammer time).
func serveEndless(h http.Handler, gen int, addr string) error {
	srv := endless.NewServer(addr, h)
	// The child reads its generation from the environment it inherits.
	srv.RegisterSignalHook(endless.PRE_SIGNAL, syscall.SIGHUP, func() {
		os.Setenv("BENCH_GEN", strconv.Itoa(gen+1))
	})
	// BeforeBegin runs once the listener is open (and, in a child, after
	// the parent was told to stop), just before Serve.
	srv.BeforeBegin = func(string) { fmt.Printf("ready %d %d\n", gen, os.Getpid()) }
	err := srv.ListenAndServe()
	if errors.Is(err, net.ErrClosed) || err != nil && strings.Contains(err.Error(), "use of closed network connection") {
		return nil
	}
	return err
}
