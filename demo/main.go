// Command demo is a small Gin service run by handoffd in `make demo`: it
// takes its listener from handoffd through package handoff, says when it is
// ready, and drains on SIGTERM without failing a request. Run on its own
// it listens on --addr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/handoffd/handoffd/handoff"
	"github.com/handoffd/handoffd/handoff/handoffquic"
	"github.com/quic-go/quic-go/http3"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil {
		slog.Error("demo failed", "err", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address when not started by handoffd")
	fs.StringVar(&version, "version", version, "version reported by GET /")
	drainTimeout := fs.Duration("drain-timeout", 30*time.Second, "longest drain before open connections are cut")
	accessLog := fs.Bool("access-log", false, "log every request (slows load tests)")
	idleGrace := fs.Duration("idle-grace", handoff.DefaultIdleGrace, "while draining, close a connection idle for this long")
	configPath := fs.String("config", "", "config file (greeting: ...); SIGHUP reads it again")
	notify := fs.Bool("notify", true, "use the SDK and say READY=1 once serving; false plays an app without it, which accepts at once and never says READY=1 (for ready: health)")
	spread := fs.Duration("spread", handoff.DefaultSpread, "while draining, tell WebSockets and event streams to end spread over this window")
	useTLS := fs.Bool("tls", false, "serve HTTPS with HTTP/2 (self-signed certificate unless --tls-cert and --tls-key)")
	h3Name := fs.String("http3", "", "with --tls, also serve HTTP/3 on the QUIC listener of this name (protocol: quic; on its own, on --addr's port over UDP), announced by Alt-Svc")
	certFile := fs.String("tls-cert", "", "PEM certificate for --tls")
	keyFile := fs.String("tls-key", "", "PEM private key for --tls")
	counterFinal := fs.Bool("counter-final", true, "with state_handoff, send the counter's final delta after the drain; false hands over the snapshot only")
	faultSpec := fs.String("fault", "", "play a failure on purpose, for tests: KIND@GEN[:DELAY] (see faults.go)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Getenv("GIN_MODE") == "" {
		gin.SetMode(gin.ReleaseMode)
	}

	flt, err := parseFault(*faultSpec, handoff.Generation())
	if err != nil {
		return err
	}
	listen := handoff.Listen
	if !*notify {
		listen = listenWithoutSDK
	}
	ln, err := listen("http", *addr)
	if err != nil {
		return err
	}
	app := appInfo{Service: handoff.Service(), Generation: handoff.Generation(), PID: os.Getpid(), Version: version}
	conf, err := newLiveSettings(*configPath)
	if err != nil {
		return err
	}
	hc := &health{}
	count := &counter{generation: app.Generation}
	// Before Ready, which restores the previous generation's counter;
	// the drain (d.Drain) ends with the final.
	handoff.HandleState(count.handler(*counterFinal))
	engine := newEngine(app, conf.greeting, hc.ok, count, *accessLog)
	srv := &http.Server{Handler: engine, ReadHeaderTimeout: 10 * time.Second}
	if *useTLS {
		if srv.TLSConfig, err = tlsConfig(*certFile, *keyFile); err != nil {
			ln.Close()
			return err
		}
	}
	var h3 *handoffquic.Server
	if *h3Name != "" {
		if h3, err = listenHTTP3(*h3Name, *addr, srv, engine); err != nil {
			ln.Close()
			return err
		}
		go func() {
			if err := h3.Serve(); !errors.Is(err, http.ErrServerClosed) {
				slog.Error("HTTP/3 serve", "err", err)
			}
		}()
	}
	d := handoff.NewDrainer(srv)
	d.IdleGrace, d.Spread = *idleGrace, *spread
	served := make(chan error, 1)
	go func() {
		if *useTLS {
			served <- d.ServeTLS(ln, "", "")
		} else {
			served <- d.Serve(ln)
		}
	}()
	slog.Info("serving", "service", app.Service, "generation", app.Generation, "pid", app.PID,
		"addr", ln.Addr().String(), "tls", *useTLS, "version", app.Version)

	handoff.OnReload(conf.reload) // before Ready; the drain ends it
	stop, unwatch := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer unwatch() // not before the drain ends: a second SIGTERM must not cut requests
	var cause error
	flt.beforeReady()
	if err := ready(*notify); err != nil {
		cause = err
	} else {
		flt.afterReady(hc)
		select {
		case <-stop.Done():
		case err := <-served:
			cause = fmt.Errorf("serve: %w", err)
		}
	}
	if h3 == nil {
		return errors.Join(cause, drain(d, *drainTimeout))
	}
	// Both at once: HTTP/3 clients get GOAWAY while HTTP/1 and HTTP/2
	// ones drain.
	h3Drained := make(chan error, 1)
	go func() { h3Drained <- drainHTTP3(h3, *drainTimeout) }()
	err = drain(d, *drainTimeout)
	return errors.Join(cause, err, <-h3Drained)
}

// listenHTTP3 serves engine over HTTP/3 on the QUIC listener name with
// srv's TLS config, and makes srv's answers announce it (Alt-Svc).
func listenHTTP3(name, addr string, srv *http.Server, engine http.Handler) (*handoffquic.Server, error) {
	if srv.TLSConfig == nil {
		return nil, errors.New("--http3 needs --tls: HTTP/3 is always encrypted")
	}
	h3, err := handoffquic.Listen(name, addr, &http3.Server{TLSConfig: srv.TLSConfig.Clone(), Handler: engine}, nil)
	if err != nil {
		return nil, err
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h3.SetQUICHeaders(w.Header())
		engine.ServeHTTP(w, r)
	})
	slog.Info("serving HTTP/3", "listener", name, "addr", h3.Addr().String())
	return h3, nil
}

func drainHTTP3(h3 *handoffquic.Server, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	held := h3.Conns()
	err := h3.Drain(ctx)
	slog.Info("HTTP/3 drain end", "generation", handoff.Generation(), "conns", held, "clean", err == nil)
	return err
}

// listenWithoutSDK takes the first inherited socket (LISTEN_FDS, fd 3) as
// an app that knows nothing of handoffd or sd_notify does: it accepts at
// once, where handoff.Listen waits for Ready. Without LISTEN_FDS it
// listens on addr.
func listenWithoutSDK(_, addr string) (net.Listener, error) {
	if os.Getenv("LISTEN_FDS") == "" {
		return net.Listen("tcp", addr)
	}
	f := os.NewFile(3, "LISTEN_FDS")
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listen on inherited fd 3: %w", err)
	}
	return ln, nil
}

// ready says READY=1, unless the demo plays an app that cannot.
func ready(notify bool) error {
	if !notify {
		slog.Info("not saying READY=1 (--notify=false)")
		return nil
	}
	return handoff.Ready()
}

func drain(d *handoff.Drainer, timeout time.Duration) error {
	start := time.Now()
	slog.Info("drain start", "generation", handoff.Generation(), "conns", d.Conns(), "timeout", timeout)
	handoff.Notify("STOPPING=1") // informative: handoffd already knows
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := d.Drain(ctx)
	slog.Info("drain end", "generation", handoff.Generation(), "closed", d.Closed(),
		"took", time.Since(start).Round(time.Millisecond), "clean", err == nil)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}
