package host

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
)

// The layout of state_dir, which PrepareStateDir makes before anything
// else of handoffd uses it. Who may pass where:
//
//	state_dir/                 0755, handoffd's: anyone may pass, for the control socket and the notify sockets
//	state_dir/handoffd.sock    0660 root:group, ACL read_group (the default control socket; control.ListenControl)
//	state_dir/state.json       0600: re-adoption state, handoffd's alone
//	state_dir/logs/            0700: the generations' stderr, handoffd's alone
//	state_dir/notify/          0711: anyone may pass, only handoffd may list or create
//	state_dir/notify/S.G/      0700, plus search for generation G's user (ACL): its own directory
//	state_dir/notify/S.G/sock  generation G of service S's NOTIFY_SOCKET
//
// Only handoffd can create a name in notify/, so no one can bind a
// generation's socket before it, or in its stead while handoffd restarts;
// only the generation's user (and root) can reach its socket.
const (
	stateDirMode  = 0o755
	logsDirMode   = 0o700
	notifyDirMode = 0o711
)

// LogDir and NotifyDir are the directories of the generations' stderr
// logs and notify sockets in stateDir.
func LogDir(stateDir string) string    { return filepath.Join(stateDir, "logs") }
func NotifyDir(stateDir string) string { return filepath.Join(stateDir, "notify") }

// PrepareStateDir makes stateDir and its subdirectories with the modes of
// the layout above, and fixes the modes of ones an older handoffd made
// otherwise (0700 for all, or 0755 for notify/). A missing stateDir is
// made 0755 with its missing parents; an existing one must be handoffd's
// (its uid), keeps its mode but gets the search bits (0111) that the
// control socket's groups and the generations need, and loses write bits
// for group and others, which would let them replace what is in it (said
// in a warning). The subdirectories must be directories of handoffd's,
// not links.
func PrepareStateDir(stateDir string, log *slog.Logger) error {
	if err := makeDirs(stateDir, stateDirMode); err != nil {
		return fmt.Errorf("state_dir %s: %w", stateDir, err)
	}
	fi, err := os.Stat(stateDir)
	if err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	if err := ownDir(stateDir, fi); err != nil {
		return fmt.Errorf("state_dir %s: %w", stateDir, err)
	}
	mode := fi.Mode().Perm()
	if mode&0o022 != 0 {
		log.Warn("state_dir was writable by group or others; handoffd removes those bits", "path", stateDir, "mode", mode)
	}
	if want := (mode | 0o111) &^ 0o022; want != mode {
		if err := os.Chmod(stateDir, want); err != nil {
			return fmt.Errorf("state_dir: %w", err)
		}
	}
	for _, d := range []struct {
		path string
		mode fs.FileMode
	}{{LogDir(stateDir), logsDirMode}, {NotifyDir(stateDir), notifyDirMode}} {
		if err := prepareSubdir(d.path, d.mode); err != nil {
			return fmt.Errorf("state_dir: %w", err)
		}
	}
	return nil
}

// makeDirs makes dir and its missing parents with mode, whatever the
// umask.
func makeDirs(dir string, mode fs.FileMode) error {
	if _, err := os.Stat(dir); err == nil || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := makeDirs(parent, mode); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return os.Chmod(dir, mode)
}

// prepareSubdir makes dir with mode, or gives an existing one mode.
func prepareSubdir(dir string, mode fs.FileMode) error {
	err := os.Mkdir(dir, mode)
	if err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is a %s, not a directory: remove it", dir, fi.Mode().Type())
	}
	if err := ownDir(dir, fi); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	return os.Chmod(dir, mode)
}

// ownDir refuses a directory that is not handoffd's own.
func ownDir(dir string, fi fs.FileInfo) error {
	if !fi.IsDir() {
		return errors.New("not a directory")
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Geteuid() {
		return fmt.Errorf("belongs to uid %d, not to handoffd's uid %d: chown it, or choose another state_dir", uid, os.Geteuid())
	}
	return nil
}
