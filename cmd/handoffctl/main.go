// Command handoffctl drives handoffd over its control socket: status,
// swap, stop, reload.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoffd/api"
)

func main() {
	app := &cli.App{
		Name:  "handoffctl",
		Usage: "control handoffd",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "control", Value: "/run/handoff/handoffd.sock", EnvVars: []string{"HANDOFF_CONTROL"}, Usage: "handoffd's control socket"},
		},
		Commands: []*cli.Command{
			{
				Name: "status", Usage: "show services and their generations", ArgsUsage: "[SERVICE]",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: status,
			},
			{
				Name: "swap", Usage: "start the next generation and make it active", ArgsUsage: "SERVICE",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "wait", Usage: "follow the drain of the old generation to its end"},
					&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "give up after this long"},
				},
				Action: swap,
			},
			{
				Name: "rollback", Usage: "make the generation in standby active again (within probation)", ArgsUsage: "SERVICE",
				Action: rollback,
			},
			{
				Name: "drain", Usage: "end the probation now: the standby generation drains", ArgsUsage: "SERVICE",
				Action: drainStandby,
			},
			{
				Name: "stop", Usage: "stop a service, or every service and handoffd", ArgsUsage: "[SERVICE]",
				Action: stop,
			},
			{
				Name: "reload", Usage: "make the active generation re-read its config (SIGHUP, only if it said HANDOFF_RELOAD=1), without a swap", ArgsUsage: "SERVICE",
				Action: reload,
			},
			{
				Name: "reload-config", Usage: "make handoffd re-read its config file and apply it",
				Action: reloadConfig,
			},
		},
		HideHelpCommand: true,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "handoffctl:", err)
		os.Exit(1)
	}
}

func client(c *cli.Context) *api.Client { return api.NewClient(c.String("control")) }

func oneService(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("%s: name one service, e.g. handoffctl %s demo", c.Command.Name, c.Command.Name)
	}
	return c.Args().First(), nil
}

func status(c *cli.Context) error {
	st, err := client(c).Status(c.Context, c.Args().First())
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SERVICE\tMODE\tGEN\tPID\tSTATE\tAGE\tCONNECTIONS\tEXIT")
	for _, s := range st.Services {
		for _, g := range s.Generations {
			conns := "-"
			if g.Connections != nil {
				conns = fmt.Sprint(*g.Connections)
			}
			age := (time.Duration(g.AgeSeconds*1e3) * time.Millisecond).String()
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", s.Name, s.Mode, g.ID, g.PID, g.State, age, conns, g.Exit)
		}
	}
	return w.Flush()
}

func swap(c *cli.Context) error {
	name, err := oneService(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	cl := client(c)
	res, err := cl.Swap(ctx, name)
	if err != nil {
		return err
	}
	fmt.Printf("%s: generation %d active (pid %d), ready in %s, activated in %s\n", res.Service, res.Generation, res.PID,
		seconds(res.StartToReady), seconds(res.ReadyToActive))
	if res.Previous == 0 || !c.Bool("wait") {
		return nil
	}
	return followDrain(ctx, cl, name, res.Previous)
}

// followDrain shows the old generation's drain until it has exited: a
// live line on a terminal, a line per change otherwise, then a summary.
func followDrain(ctx context.Context, cl *api.Client, service string, gen int) error {
	start := time.Now()
	tty := isTerminal(os.Stdout)
	last := ""
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := cl.Status(ctx, service)
		if err != nil {
			return err
		}
		g, ok := findGeneration(st, gen)
		if !ok || !g.State.Live() {
			if tty {
				fmt.Print("\r\033[K")
			}
			fmt.Println(drainSummary(service, gen, g, ok, time.Since(start)))
			return nil
		}
		line := drainProgress(service, gen, g)
		// Without a terminal, a line when the state or the count changes,
		// not every time the deadline moves by a second.
		key := fmt.Sprint(g.State, deref(g.Connections))
		switch {
		case tty:
			fmt.Printf("\r\033[K%s, %s elapsed", line, time.Since(start).Round(100*time.Millisecond))
		case key != last:
			fmt.Printf("%s (%s)\n", line, time.Since(start).Round(time.Millisecond))
		}
		last = key
		select {
		case <-ctx.Done():
			fmt.Println()
			return fmt.Errorf("generation %d still draining: %w", gen, ctx.Err())
		case <-tick.C:
		}
	}
}

// drainProgress is one line on a draining generation: what it still holds
// and how long drain_timeout leaves it.
func drainProgress(service string, gen int, g api.GenerationStatus) string {
	line := fmt.Sprintf("%s: generation %d %s", service, gen, g.State)
	if g.Connections != nil {
		line += fmt.Sprintf(": %d connections left", *g.Connections)
	}
	if g.DrainDeadline != nil {
		line += fmt.Sprintf(", deadline in %s", time.Until(*g.DrainDeadline).Round(time.Second))
	}
	return line
}

func deref(n *int64) any {
	if n == nil {
		return "?"
	}
	return *n
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// drainSummary says how the drain of gen ended, timed by handoffd's own
// stamps rather than by this command's polling.
func drainSummary(service string, gen int, g api.GenerationStatus, found bool, waited time.Duration) string {
	if !found {
		return fmt.Sprintf("%s: generation %d is gone (waited %s)", service, gen, waited.Round(time.Millisecond))
	}
	took := waited
	if g.DrainingAt != nil && g.ExitedAt != nil {
		took = g.ExitedAt.Sub(*g.DrainingAt)
	}
	s := fmt.Sprintf("%s: generation %d drained in %s (%s)", service, gen, took.Round(time.Millisecond), g.Exit)
	if g.KilledConnections != nil {
		s += fmt.Sprintf("; drain_timeout cut %d connections", *g.KilledConnections)
	}
	return s
}

func findGeneration(st api.Status, id int) (api.GenerationStatus, bool) {
	for _, s := range st.Services {
		for _, g := range s.Generations {
			if g.ID == id {
				return g, true
			}
		}
	}
	return api.GenerationStatus{}, false
}

func rollback(c *cli.Context) error {
	name, err := oneService(c)
	if err != nil {
		return err
	}
	res, err := client(c).Rollback(c.Context, name)
	if err != nil {
		return err
	}
	fmt.Printf("%s: rolled back to generation %d (pid %d); generation %d drains\n", res.Service, res.Generation, res.PID, res.Previous)
	return nil
}

func drainStandby(c *cli.Context) error {
	name, err := oneService(c)
	if err != nil {
		return err
	}
	res, err := client(c).DrainStandby(c.Context, name)
	if err != nil {
		return err
	}
	fmt.Printf("%s: generation %d drains; no rollback is left\n", res.Service, res.Generation)
	return nil
}

func stop(c *cli.Context) error {
	name := c.Args().First()
	if err := client(c).Stop(c.Context, name); err != nil {
		return err
	}
	what := "every service and handoffd"
	if name != "" {
		what = name
	}
	fmt.Println("stopped", strings.TrimSpace(what))
	return nil
}

func reload(c *cli.Context) error {
	name, err := oneService(c)
	if err != nil {
		return err
	}
	res, err := client(c).Reload(c.Context, name)
	if err != nil {
		return err
	}
	fmt.Printf("%s: generation %d (pid %d) told to reload (SIGHUP)\n", res.Service, res.Generation, res.PID)
	return nil
}

func reloadConfig(c *cli.Context) error {
	if c.NArg() != 0 {
		return fmt.Errorf("reload-config takes no argument: handoffd reads the file it was started with")
	}
	ch, err := client(c).ReloadConfig(c.Context)
	if err != nil {
		return err
	}
	if ch.Empty() {
		fmt.Println("config reloaded: nothing changed")
		return nil
	}
	show := func(what string, names []string) {
		if len(names) > 0 {
			fmt.Printf("%s: %s\n", what, strings.Join(names, ", "))
		}
	}
	fmt.Println("config reloaded")
	show("changed (from the next generation on)", ch.Changed)
	show("added (generation 1 active)", ch.Added)
	show("removed (draining)", ch.Removed)
	return nil
}

func seconds(s float64) time.Duration {
	d := time.Duration(s * float64(time.Second))
	if d < time.Millisecond {
		return d.Round(time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
