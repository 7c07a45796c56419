package kernel

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// SealsFrozen are the seals of a memfd whose contents can no longer
// change: no write, no shrink, no growth, and no change to the seals.
const SealsFrozen = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// SealedMemfd returns a memfd named name (for /proc, not unique) that
// holds what write wrote, sealed with SealsFrozen and read from its
// start: a snapshot that whoever receives it can trust not to change.
func SealedMemfd(name string, write func(io.Writer) error) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if err := write(f); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, SealsFrozen); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal memfd %s: %w", name, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("rewind memfd %s: %w", name, err)
	}
	return f, nil
}

// ErrNotSealed is returned by CheckSealed for a file that is not a memfd
// sealed with at least SealsFrozen &^ F_SEAL_SEAL.
var ErrNotSealed = errors.New("not a sealed memfd (want memfd_create with F_SEAL_WRITE, F_SEAL_SHRINK and F_SEAL_GROW)")

// CheckSealed returns nil if fd is a memfd whose contents can no longer
// change (sealed against write, shrink and growth), else ErrNotSealed.
func CheckSealed(fd int) error {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		// EINVAL: not a file that supports seals.
		return ErrNotSealed
	}
	const need = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW
	if seals&need != need {
		return ErrNotSealed
	}
	return nil
}
