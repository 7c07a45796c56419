// Command handoffctl drives handoffd over its control socket: status,
// swap (whole, or as a canary), promote, rollback, stop, reload.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/handoffd/handoffd/api"
	"github.com/handoffd/handoffd/internal/cliapp"
	"github.com/handoffd/handoffd/kernel"
)

func main() {
	app := &cli.App{
		Name:  "handoffctl",
		Usage: "control handoffd",
		Description: "handoffctl drives handoffd over its control socket (--control, HANDOFF_CONTROL): " +
			"status, swap, canary, promote, rollback, drain, stop, reload, reload-config. It exits non-zero with one line that says why " +
			"when handoffd refuses or cannot be reached.\n" +
			"A swap waits until the new generation is ready: it said READY=1 (ready: notify, the default)\n" +
			"and, with a health: check, passed it on its own listening socket before any client reaches it;\n" +
			"ready: health takes the check alone, for apps without sd_notify. A canary (swap --canary P%)\n" +
			"gets P% of new connections beside the active generation until promote or rollback; one that\n" +
			"crashes or fails its health check is rolled back by handoffd.",
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
				Name: "swap", Usage: "start the next generation and make it active, or a canary beside the active one", ArgsUsage: "SERVICE",
				Description: "Without --canary the new generation gets every new connection once it is ready (and healthy,\n" +
					"with a health: check) and the old one drains. With --canary P% it gets P% of new connections\n" +
					"beside the active generation (ebpf mode only): by connection, or by client address with\n" +
					"--sticky, so that a client stays on one generation. Then use canary, promote or rollback.",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "wait", Usage: "follow the drain of the old generation to its end (with --canary: both generations' connections, until promote or rollback)"},
					&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "give up after this long"},
					&cli.StringFlag{Name: "canary", Usage: "make the new generation a canary that gets `P%` of new connections"},
					&cli.BoolFlag{Name: "sticky", Usage: "with --canary: split by client address instead of by connection"},
				},
				Action: swap,
			},
			{
				Name: "canary", Usage: "change the share of new connections the canary gets", ArgsUsage: "SERVICE P%",
				Action: canary,
			},
			{
				Name: "promote", Usage: "make the canary the active generation; the old one drains", ArgsUsage: "SERVICE",
				Action: promote,
			},
			{
				Name: "rollback", Usage: "take the canary's share back to 0% and drain it, or make the standby generation active again (within probation)", ArgsUsage: "SERVICE",
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
	cliapp.Setup(app)
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
	fmt.Fprintln(w, "SERVICE\tMODE\tGEN\tPID\tSTATE\tWEIGHT\tAGE\tCONNECTIONS\tEXIT")
	for _, s := range st.Services {
		for _, g := range s.Generations {
			conns := "-"
			if g.Connections != nil {
				conns = fmt.Sprint(*g.Connections)
			}
			age := (time.Duration(g.AgeSeconds*1e3) * time.Millisecond).String()
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Mode, g.ID, g.PID, g.State, weight(g), age, conns, g.Exit)
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	now := time.Now()
	for _, s := range st.Services {
		if line := serviceLine(s, now); line != "" {
			fmt.Println(line)
		}
		if line := fdStoreLine(s); line != "" {
			fmt.Println(line)
		}
	}
	return nil
}

// serviceLine says, on one line, what is wrong with a service that does
// not run: "demo: failed since 15:04:05 (3 failed starts): REASON; next
// retry in 8s"; "" for a running one.
func serviceLine(s api.ServiceStatus, now time.Time) string {
	switch s.State {
	case api.ServiceFailed:
		line := s.Name + ": failed"
		f := s.Failure
		if f == nil {
			return line
		}
		line += fmt.Sprintf(" since %s (%d failed %s): %s", f.Since.Local().Format(time.TimeOnly), f.Attempts, plural(f.Attempts, "start"), f.Reason)
		switch {
		case f.NextRetry == nil:
		case f.NextRetry.After(now):
			line += fmt.Sprintf("; next retry in %s", f.NextRetry.Sub(now).Round(time.Second))
		default:
			line += "; retrying now"
		}
		return line
	case api.ServiceStarting:
		return s.Name + ": starting: no generation serves it yet"
	case api.ServiceStopped:
		return s.Name + ": stopped"
	}
	return ""
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// fdStoreLine shows a service's fd store on one line, names sorted:
// "demo: fd store: cache 2, stored 1"; "" when it is empty.
func fdStoreLine(s api.ServiceStatus) string {
	if len(s.FDStore) == 0 {
		return ""
	}
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(s.FDStore)) {
		parts = append(parts, fmt.Sprintf("%s %d", name, s.FDStore[name]))
	}
	return s.Name + ": fd store: " + strings.Join(parts, ", ")
}

// weight shows a generation's share of new connections: "-" for one
// that has none to show, "5%" or "5% sticky".
func weight(g api.GenerationStatus) string {
	if g.Weight == nil {
		return "-"
	}
	w := strconv.FormatFloat(*g.Weight*100, 'f', -1, 64) + "%"
	if g.Sticky {
		w += " sticky"
	}
	return w
}

// parsePercent reads "5%" or "5" as 5; 0 is allowed with zeroOK.
func parsePercent(s string, zeroOK bool) (float64, error) {
	p, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "%"), 64)
	if err != nil || p > 100 || p < 0 || p == 0 && !zeroOK {
		low := "above 0"
		if zeroOK {
			low = "from 0"
		}
		return 0, fmt.Errorf("%q: give a share %s to 100%%, e.g. 5%%", s, low)
	}
	return p, nil
}

func swap(c *cli.Context) error {
	name, err := oneService(c)
	if err != nil {
		return err
	}
	if c.Bool("sticky") && !c.IsSet("canary") {
		return fmt.Errorf("swap: --sticky splits a canary: give --canary P%% too")
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	cl := client(c)
	if c.IsSet("canary") {
		return swapCanary(ctx, c, cl, name)
	}
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
	tty := kernel.IsTerminal(os.Stdout)
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

func swapCanary(ctx context.Context, c *cli.Context, cl *api.Client, name string) error {
	p, err := parsePercent(c.String("canary"), false)
	if err != nil {
		return fmt.Errorf("swap --canary %w", err)
	}
	res, err := cl.SwapCanary(ctx, name, p, c.Bool("sticky"))
	if err != nil {
		return err
	}
	fmt.Printf("%s: generation %d is a canary (pid %d) with %s of new connections%s, ready in %s; generation %d keeps the rest\n",
		res.Service, res.Generation, res.PID, percent(p), stickyNote(res.Canary), seconds(res.StartToReady), res.Previous)
	if !c.Bool("wait") {
		return nil
	}
	return followCanary(ctx, cl, name, res.Generation, res.Previous)
}

func percent(p float64) string { return strconv.FormatFloat(p, 'f', -1, 64) + "%" }

func stickyNote(r *api.CanaryResult) string {
	if r != nil && r.Sticky {
		return " by client address"
	}
	return ""
}

// followCanary shows the connections of the canary and of the active
// generation until the canary is promoted, rolled back or gone.
func followCanary(ctx context.Context, cl *api.Client, service string, canaryGen, activeGen int) error {
	tty := kernel.IsTerminal(os.Stdout)
	last := ""
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := cl.Status(ctx, service)
		if err != nil {
			return err
		}
		cg, ok := findGeneration(st, canaryGen)
		if !ok || cg.State != api.StateCanary {
			if tty {
				fmt.Print("\r\033[K")
			}
			state := "gone"
			if ok {
				state = cg.State.String()
			}
			fmt.Printf("%s: canary %d is %s now\n", service, canaryGen, state)
			return nil
		}
		ag, _ := findGeneration(st, activeGen)
		line := fmt.Sprintf("%s: canary %d %s: %v connections; active %d %s: %v connections", service,
			canaryGen, weight(cg), deref(cg.Connections), activeGen, weight(ag), deref(ag.Connections))
		switch {
		case tty:
			fmt.Printf("\r\033[K%s", line)
		case line != last:
			fmt.Println(line)
		}
		last = line
		select {
		case <-ctx.Done():
			fmt.Println()
			return fmt.Errorf("canary %d still running: %w", canaryGen, ctx.Err())
		case <-tick.C:
		}
	}
}

func canary(c *cli.Context) error {
	if c.NArg() != 2 {
		return fmt.Errorf("canary: name a service and a share, e.g. handoffctl canary demo 25%%")
	}
	p, err := parsePercent(c.Args().Get(1), true)
	if err != nil {
		return fmt.Errorf("canary %w", err)
	}
	res, err := client(c).SetCanary(c.Context, c.Args().First(), p)
	if err != nil {
		return err
	}
	fmt.Printf("%s: canary %d gets %s of new connections%s; generation %d the rest\n", res.Service, res.Generation,
		percent(res.Weight*100), stickyNote(&res), res.Active)
	return nil
}

func promote(c *cli.Context) error {
	name, err := oneService(c)
	if err != nil {
		return err
	}
	res, err := client(c).Promote(c.Context, name)
	if err != nil {
		return err
	}
	fmt.Printf("%s: generation %d active (pid %d); generation %d drains\n", res.Service, res.Generation, res.PID, res.Previous)
	return nil
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
