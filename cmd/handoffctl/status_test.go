package main

import (
	"testing"

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
