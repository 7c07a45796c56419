package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// bpffsRoot is where bpffs is mounted by convention; LoadSteering mounts
// it there when a pin directory under it needs it.
const bpffsRoot = "/sys/fs/bpf"

// makePinDir creates dir, mounting bpffs at bpffsRoot first if dir is
// under it and nothing is mounted there, and checks that dir is on bpffs:
// pinning anywhere else fails with a less helpful error.
func makePinDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if abs == bpffsRoot || strings.HasPrefix(abs, bpffsRoot+"/") {
		if err := mountBPFFS(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return err
	}
	ok, err := onBPFFS(abs)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s is not on a bpf filesystem", abs)
	}
	return nil
}

func mountBPFFS() error {
	ok, err := onBPFFS(bpffsRoot)
	if err != nil || ok {
		return err
	}
	if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
		if errors.Is(err, unix.EPERM) {
			err = fmt.Errorf("%w: %w", ErrPermission, err)
		}
		return fmt.Errorf("mount bpffs at %s: %w", bpffsRoot, err)
	}
	return nil
}

func onBPFFS(path string) (bool, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return uint32(fs.Type) == unix.BPF_FS_MAGIC, nil
}
