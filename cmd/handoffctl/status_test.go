package main

import (
	"testing"
	"time"

	"github.com/handoffd/handoffd/api"
)

func TestFDStoreLine(t *testing.T) {
	for _, tc := range []struct {
		store map[string]int
		want  string
	}{
		{nil, ""},
		{map[string]int{}, ""},
		{map[string]int{"stored": 1, "cache": 2}, "demo: fd store: cache 2, stored 1"},
	} {
		if got := fdStoreLine(api.ServiceStatus{Name: "demo", FDStore: tc.store}); got != tc.want {
			t.Errorf("fdStoreLine(%v) = %q, want %q", tc.store, got, tc.want)
		}
	}
}

func TestServiceLine(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.Local)
	next, past := now.Add(7400*time.Millisecond), now.Add(-time.Second)
	for _, tc := range []struct {
		st   api.ServiceStatus
		want string
	}{
		{api.ServiceStatus{Name: "demo", State: api.ServiceRunning}, ""},
		{api.ServiceStatus{Name: "demo", State: api.ServiceStarting}, "demo: starting: no generation serves it yet"},
		{api.ServiceStatus{Name: "demo", State: api.ServiceStopped}, "demo: stopped"},
		{api.ServiceStatus{Name: "demo", State: api.ServiceFailed, Failure: &api.ServiceFailure{Reason: "generation 4: exited before it was ready: exit status 3",
			Since: now.Add(-time.Minute), Attempts: 3, NextRetry: &next}},
			"demo: failed since 15:03:05 (3 failed starts): generation 4: exited before it was ready: exit status 3; next retry in 7s"},
		{api.ServiceStatus{Name: "demo", State: api.ServiceFailed, Failure: &api.ServiceFailure{Reason: "re-adopt generation 1: gone",
			Since: now, Attempts: 1, NextRetry: &past}},
			"demo: failed since 15:04:05 (1 failed start): re-adopt generation 1: gone; retrying now"},
	} {
		if got := serviceLine(tc.st, now); got != tc.want {
			t.Errorf("serviceLine(%+v)\n got %q\nwant %q", tc.st, got, tc.want)
		}
	}
}
