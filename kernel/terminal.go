package kernel

import (
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// IsTerminal reports whether f is a terminal: whether it answers TCGETS,
// the ioctl that reads a terminal's settings.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	runtime.KeepAlive(f)
	return err == nil
}
