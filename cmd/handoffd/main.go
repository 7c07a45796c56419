// Command handoffd supervises services as numbered generations and swaps
// them without losing a connection. See the README for a tour.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/handoff"
	"github.com/handoffd/handoffd/internal/cliapp"
	"github.com/handoffd/handoffd/internal/config"
	"github.com/handoffd/handoffd/internal/control"
	"github.com/handoffd/handoffd/internal/host"
	"github.com/handoffd/handoffd/internal/lifecycle"
	"github.com/handoffd/handoffd/loader"
	"github.com/handoffd/handoffd/observe"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == host.ExecArg {
		err := host.ExecGeneration(os.Args[2:])
		fmt.Fprintf(os.Stderr, "handoffd: start generation: %v\n", err)
		os.Exit(127)
	}
	app := &cli.App{
		Name:  "handoffd",
		Usage: "zero-downtime generation swaps for TCP services",
		Description: "handoffd runs the services of its config file as numbered generations and swaps them " +
			"without failing a request (handoffctl swap). SIGHUP reloads the config; SIGTERM ends handoffd " +
			"and leaves the services serving, for a new handoffd to re-adopt from state_dir/state.json; " +
			"SIGINT stops every service, then handoffd. Under systemd: handoffd.service. The config " +
			"file's keys: handoff.yaml(5).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Value: config.DefaultConfigPath, Usage: "config file"},
			&cli.StringFlag{Name: "control", Usage: "control socket (overrides the config)"},
			&cli.StringFlag{Name: "metrics", Usage: "Prometheus listen address (overrides the config)"},
			&cli.StringFlag{Name: "mode", Usage: "auto, ebpf or fdpass (overrides the config)"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
		},
		Action:          run,
		Commands:        []*cli.Command{configReferenceCommand()},
		HideHelpCommand: true,
	}
	cliapp.Setup(app)
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "handoffd:", err)
		os.Exit(1)
	}
}

func run(c *cli.Context) error {
	// Caught before anything starts: a signal during the setup or the
	// start of the services waits in the channel instead of killing
	// handoffd half way.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	log, err := newLogger(c.String("log-format"))
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	// Before anything else writes there: the modes of state_dir are
	// deliberate, not those of whichever writer came first.
	if err := host.PrepareStateDir(cfg.StateDir, log); err != nil {
		return err
	}
	mode, err := resolveMode(cfg, log)
	if err != nil {
		return err
	}
	swaps := observe.NewSwaps()
	counter := &host.Counter{Log: log}
	opts := lifecycle.Options{
		Mode: mode,
		Launcher: &host.ExecLauncher{Self: "/proc/self/exe", Stdout: os.Stdout, Stderr: os.Stderr,
			LogDir: host.LogDir(cfg.StateDir), NotifyDir: host.NotifyDir(cfg.StateDir)},
		Counter:    counter,
		Observer:   swaps,
		Logger:     log,
		LoadConfig: func() (*config.Config, error) { return loadConfig(c) },
		NewRouter:  host.NewRouter(mode, 0, nil),
	}
	if mode == api.ModeEBPF {
		k := loader.LoadKernel(cfg.BPFDir, log)
		defer k.Close()
		if c := k.Counter(); c != nil {
			counter.Procs = c
		}
		opts.NewRouter = host.NewRouterWithQUIC(mode, loader.Slots, func(service, listener string, reuse bool) (host.Steering, error) {
			return k.Steering(service, listener, reuse)
		}, func(service, listener string, reuse bool) (host.QUICSteering, error) {
			return k.QUICSteering(service, listener, reuse)
		})
	} else if c, err := loader.LoadConnCounter(); err == nil {
		// Where eBPF works, it finds what a draining generation holds
		// on a shared socket faster than /proc does.
		defer c.Close()
		counter.Procs = c
	} else {
		log.Debug("connection counter unavailable; counting connections from /proc", "reason", err)
	}
	sup, err := lifecycle.New(cfg, opts)
	if err != nil {
		return err
	}
	if err := serveMetrics(cfg, sup, mode, swaps, log); err != nil {
		return err
	}
	stopped := make(chan struct{})
	ctl := control.NewAPI(sup, func() { close(stopped) })
	ln, err := ctl.Listen()
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Control)
	srv := ctl.Server()
	go srv.Serve(ln)
	defer srv.Close()

	log.Info("handoffd starting", "control", cfg.Control, "mode", mode, "services", len(cfg.Services))
	return serve(sup, sigs, stopped, log)
}

// serve starts the services and handles signals until handoffd is to
// exit, starting included: SIGINT (like POST /v1/stop, which closes
// stopped) stops every service, then handoffd;
// SIGTERM leaves them serving for a restarted handoffd; SIGHUP reloads the
// config in the background (after the start), so that a reload waiting
// for a swap never holds up the other two.
func serve(sup *lifecycle.Supervisor, sigs <-chan os.Signal, stopped <-chan struct{}, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A service that does not start is failed and retried: handoffd
	// runs whatever becomes of its services.
	started := make(chan struct{})
	go func() { sup.Start(ctx); close(started) }()
	starting, reloadPending := true, false
	reloads := make(chan struct{}, 1)
	defer close(reloads)
	go func() {
		for range reloads {
			if _, err := sup.ReloadConfig(ctx); err != nil {
				log.Error("SIGHUP: config reload", "err", err)
			}
		}
	}()
	reload := func() {
		select {
		case reloads <- struct{}{}:
		default: // one is queued already: it reads the newest file
		}
	}
	for {
		select {
		case <-started:
			starting, started = false, nil
			log.Info("handoffd running")
			// Under systemd (Type=notify), the unit is started once its services are.
			if err := handoff.Notify("READY=1"); err != nil {
				log.Warn("tell systemd handoffd is ready", "err", err)
			}
			if reloadPending {
				reload()
			}
		case <-stopped:
			log.Info("handoffd stopped by request")
			return nil
		case sig := <-sigs:
			switch sig {
			case syscall.SIGINT:
				log.Info("SIGINT: stopping every service, then handoffd")
				cancel()
				return stopAll(sup)
			case syscall.SIGTERM:
				handoff.Notify("STOPPING=1")
				cancel()
				if starting {
					<-started // the generation being started is failed, not left behind
				}
				sup.Detach()
				log.Info("SIGTERM: handoffd exits; the services keep running, and a restarted handoffd re-adopts them")
				return nil
			case syscall.SIGHUP:
				if starting {
					reloadPending = true
				} else {
					reload()
				}
			}
		}
	}
}

// serveMetrics serves /metrics on cfg.Metrics, if set.
func serveMetrics(cfg *config.Config, sup *lifecycle.Supervisor, mode api.Mode, swaps *observe.Swaps, log *slog.Logger) error {
	if cfg.Metrics == "" {
		return nil
	}
	for _, s := range cfg.Services {
		swaps.Known(s.Name)
	}
	h, err := observe.Handler(log, swaps, observe.NewCollector(sup, mode, log))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Metrics)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	// It lives as long as handoffd.
	go srv.Serve(ln)
	log.Info("serving metrics", "addr", ln.Addr().String())
	return nil
}

func stopAll(sup *lifecycle.Supervisor) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return sup.Stop(ctx)
}

func newLogger(format string) (*slog.Logger, error) {
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, nil)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, nil)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

func loadConfig(c *cli.Context) (*config.Config, error) {
	cfg, err := config.LoadConfig(c.String("config"))
	if err != nil {
		return nil, err
	}
	if v := c.String("control"); v != "" {
		cfg.Control = v
	}
	if v := c.String("metrics"); v != "" {
		cfg.Metrics = v
	}
	if v := c.String("mode"); v != "" {
		cfg.Mode = api.Mode(v)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", c.String("config"), err)
	}
	return cfg, nil
}

// resolveMode probes the kernel for what ebpf mode needs. mode: auto
// falls back to fdpass, unless a QUIC listener needs ebpf mode.
func resolveMode(cfg *config.Config, log *slog.Logger) (api.Mode, error) {
	mode := cfg.Mode
	if mode == api.ModeFDPass {
		return mode, nil
	}
	err := loader.Probe()
	if err == nil {
		return api.ModeEBPF, nil
	}
	if mode == api.ModeEBPF {
		return "", fmt.Errorf("mode ebpf: %w", err)
	}
	if quic := cfg.QUICListeners(); len(quic) > 0 {
		return "", fmt.Errorf("mode auto: eBPF steering is unavailable (%w), and listener %s is QUIC: %w",
			err, quic[0], config.ErrQUICNeedsEBPF)
	}
	log.Warn("eBPF steering unavailable; using fdpass", "reason", err)
	return api.ModeFDPass, nil
}
