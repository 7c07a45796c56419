package config

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/handoffd/handoffd/api"
)

// Diff compares the running config cur with next and returns what
// a reload to next would change, or every reason why next cannot be
// applied while handoffd runs, on one line. stopping holds the removed
// services that have not finished stopping. next must be valid.
//
// A changed service's new fd_store_max and state_timeout apply at once
// (a lower fd_store_max refuses new fds but keeps the stored ones); the
// rest applies from its next generation on (see StateHandoffTurnedOn).
func Diff(cur, next *Config, stopping map[string]*ServiceConfig) (api.ConfigChanges, error) {
	var errs []error
	fixed := func(field, was, now string) {
		if was != now {
			errs = append(errs, fmt.Errorf("%s: cannot change while handoffd runs (%q, now %q): restart handoffd to apply it", field, was, now))
		}
	}
	fixed("control", cur.Control, next.Control)
	fixed("metrics", cur.Metrics, next.Metrics)
	fixed("mode", string(cur.Mode), string(next.Mode))
	fixed("state_dir", cur.StateDir, next.StateDir)
	fixed("bpf_dir", cur.BPFDir, next.BPFDir)
	fixed("group", cur.Group, next.Group)
	fixed("read_group", cur.ReadGroup, next.ReadGroup)

	var ch api.ConfigChanges
	running := map[string]*ServiceConfig{}
	for i := range cur.Services {
		running[cur.Services[i].Name] = &cur.Services[i]
	}
	// Addresses held by running and stopping services: an added service
	// may take only an address whose service was removed and has stopped.
	held := map[string]string{}
	hold := func(sc *ServiceConfig) {
		for _, l := range sc.Listeners {
			held[l.Address] = sc.Name
		}
	}
	for i := range cur.Services {
		hold(&cur.Services[i])
	}
	for _, sc := range stopping {
		hold(sc)
	}
	for i := range next.Services {
		sc := &next.Services[i]
		old, ok := running[sc.Name]
		switch {
		case !ok && stopping[sc.Name] != nil:
			errs = append(errs, fmt.Errorf("services[%d] (%s): the service of that name is still stopping: reload again once it has stopped", i, sc.Name))
		case !ok:
			for _, l := range sc.Listeners {
				if other, taken := held[l.Address]; taken {
					errs = append(errs, fmt.Errorf("services[%d] (%s): listener %s: address %s is still held by service %s (a removed service releases it once stopped: reload again then)", i, sc.Name, l.Name, l.Address, other))
				}
			}
			ch.Added = append(ch.Added, sc.Name)
		case !reflect.DeepEqual(old.Listeners, sc.Listeners):
			errs = append(errs, fmt.Errorf("services[%d] (%s): listeners cannot change while the service runs: remove the service, reload, then add it back", i, sc.Name))
		case !reflect.DeepEqual(*old, *sc):
			ch.Changed = append(ch.Changed, sc.Name)
		}
	}
	for _, sc := range cur.Services {
		if !slices.ContainsFunc(next.Services, func(n ServiceConfig) bool { return n.Name == sc.Name }) {
			ch.Removed = append(ch.Removed, sc.Name)
		}
	}
	if err := joinErrors(errs...); err != nil {
		return api.ConfigChanges{}, err
	}
	return ch, nil
}

// StateHandoffTurnedOn reports whether a reload from cur to next turns
// state_handoff on: it takes effect at the next swap, which starts cold,
// since the running generation was started without a state channel.
func StateHandoffTurnedOn(cur, next *ServiceConfig) bool {
	return !cur.StateHandoff && next.StateHandoff
}
