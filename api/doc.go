// Package api is the supported way to drive handoffd from Go: the types of
// its control API (status, swap, rollback, drain, reload) and a Client
// that speaks it over handoffd's UNIX control socket.
//
// It imports the standard library only, so a program that drives handoffd
// links neither eBPF, Prometheus, YAML nor handoffd's own lifecycle code.
// handoffctl and the Prometheus collector in observe are built on it.
//
//	c := api.NewClient("/run/handoff/handoffd.sock")
//	res, err := c.Swap(ctx, "demo")
//	if err != nil {
//		return err // one line that says why: the old generation still serves
//	}
//	fmt.Println("generation", res.Generation, "is active")
//
// The JSON shapes are the contract of handoffd's control API; fields are
// added, never renamed.
package api
