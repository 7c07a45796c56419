package api

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportGraph keeps the rooms of docs/ARCHITECTURE.md apart: what a
// package must never link, directly or through another package.
func TestImportGraph(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	const mod = "github.com/handoffd/handoffd/"
	heavy := []string{"go.yaml.in/yaml", "github.com/fsnotify/fsnotify", "github.com/cilium/ebpf",
		"github.com/prometheus/client_golang", mod + "internal/lifecycle", mod + "internal/host",
		mod + "internal/control", mod + "internal/config", mod + "loader"}
	for pkg, banned := range map[string][]string{
		"./api":                        append(heavy, "golang.org/x/sys"),
		"./cmd/handoffctl":             heavy,
		"./observe":                    append(heavy[:3:3], heavy[4:]...),
		"./handoff":                    append(heavy, "google.golang.org/grpc", "github.com/quic-go"),
		"./handoff/internal/undrained": append(heavy, "google.golang.org/grpc", "github.com/quic-go"),
		"./handoff/handoffquic":        append(heavy, "google.golang.org/grpc"),
		"./handoff/handoffgrpc":        append(heavy, "github.com/quic-go"),
		"./internal/quicid":            append(heavy, "golang.org/x/sys"),
		"./kernel":                     heavy,
		// The lifecycle reaches the OS through its interfaces only
		// (fsnotify, for watched files, is the exception).
		"./internal/lifecycle": {"github.com/cilium/ebpf", "github.com/prometheus/client_golang", mod + "loader",
			mod + "kernel", mod + "internal/host", mod + "internal/control"},
	} {
		out, err := exec.Command("go", "list", "-deps", "../"+strings.TrimPrefix(pkg, "./")).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		for dep := range strings.FieldsSeq(string(out)) {
			for _, b := range banned {
				if dep == b || strings.HasPrefix(dep, b+"/") {
					t.Errorf("%s links %s", pkg, dep)
				}
			}
		}
	}
}

// TestHandoffctlLinks keeps the CLI thin: besides the standard library it
// links api, cliapp, kernel (the standard library and x/sys only),
// urfave/cli with what that links, and x/sys; nothing else.
func TestHandoffctlLinks(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	const mod = "github.com/handoffd/handoffd/"
	allowed := map[string]bool{mod + "cmd/handoffctl": true, mod + "api": true, mod + "internal/cliapp": true, mod + "kernel": true}
	for _, p := range nonStandardDeps(t, "github.com/urfave/cli/v2") {
		allowed[p] = true
	}
	for _, p := range nonStandardDeps(t, "../cmd/handoffctl") {
		if !allowed[p] && p != "golang.org/x/sys" && !strings.HasPrefix(p, "golang.org/x/sys/") {
			t.Errorf("cmd/handoffctl links %s", p)
		}
	}
}

// nonStandardDeps returns what pkg links, itself included, outside the
// standard library.
func nonStandardDeps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatalf("go list -deps %s: nothing outside the standard library, not even itself", pkg)
	}
	return deps
}
