package host

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPrepareStateDir lays state_dir out from nothing, over what an older
// handoffd left (everything 0700, notify/ 0755), and over a state_dir that
// others could write to; it refuses a subdirectory that is a link.
func TestPrepareStateDir(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	modes := func(t *testing.T, dir string, want map[string]os.FileMode) {
		t.Helper()
		for name, mode := range want {
			fi, err := os.Lstat(filepath.Join(dir, name))
			if err != nil || !fi.IsDir() || fi.Mode().Perm() != mode {
				t.Errorf("%s: %v, %v; want a directory %s", name, fi, err, mode)
			}
		}
	}
	t.Run("fresh", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "run", "handoff")
		if err := PrepareStateDir(dir, quiet); err != nil {
			t.Fatal(err)
		}
		modes(t, dir, map[string]os.FileMode{"..": 0o755, ".": 0o755, "logs": 0o700, "notify": 0o711})
	})
	t.Run("older", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "handoff")
		for _, d := range []struct {
			name string
			mode os.FileMode
		}{{".", 0o700}, {"logs", 0o755}, {"notify", 0o755}} {
			os.Mkdir(filepath.Join(dir, d.name), d.mode)
			os.Chmod(filepath.Join(dir, d.name), d.mode)
		}
		if err := PrepareStateDir(dir, quiet); err != nil {
			t.Fatal(err)
		}
		modes(t, dir, map[string]os.FileMode{".": 0o711, "logs": 0o700, "notify": 0o711})
	})
	t.Run("writable-by-others", func(t *testing.T) {
		dir := t.TempDir()
		os.Chmod(dir, 0o777)
		if err := PrepareStateDir(dir, quiet); err != nil {
			t.Fatal(err)
		}
		modes(t, dir, map[string]os.FileMode{".": 0o755})
	})
	t.Run("link", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Symlink(t.TempDir(), filepath.Join(dir, "notify")); err != nil {
			t.Fatal(err)
		}
		err := PrepareStateDir(dir, quiet)
		if err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("notify/ a symbolic link: %v, want a refusal", err)
		}
	})
}
