package loader

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cgroup2Fallback is where the cgroup2 filesystem is mounted, for the time
// of an attach, on a host that has it mounted nowhere.
const cgroup2Fallback = "/run/handoff/cgroup2"

// ownCgroup returns the cgroup v2 of the calling process, as a path in the
// hierarchy ("/system.slice/handoffd.service"), from /proc/self/cgroup.
func ownCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("find own cgroup: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			if !strings.HasPrefix(path, "/") {
				return "", fmt.Errorf("find own cgroup: unexpected path %q in /proc/self/cgroup", path)
			}
			return path, nil
		}
	}
	return "", fmt.Errorf("find own cgroup: %w: no cgroup v2 line (0::) in /proc/self/cgroup", ErrNotSupported)
}

// inCgroupDir calls fn with the directory of cgroup (a path in the cgroup
// v2 hierarchy) in a cgroup2 mount. If cgroup2 is mounted nowhere, it
// mounts it at cgroup2Fallback for the time of the call.
func inCgroupDir(cgroup string, fn func(dir string) error) error {
	dir, err := cgroupDir(cgroup)
	if err != nil {
		return err
	}
	if dir != "" {
		return fn(dir)
	}
	if err := os.MkdirAll(cgroup2Fallback, 0o700); err != nil {
		return fmt.Errorf("mount cgroup2: %w", err)
	}
	if err := unix.Mount("cgroup2", cgroup2Fallback, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		if errors.Is(err, unix.EPERM) {
			err = fmt.Errorf("%w: %w", ErrPermission, err)
		}
		return fmt.Errorf("mount cgroup2 at %s: %w", cgroup2Fallback, err)
	}
	// What is attached holds the cgroup, not the mount.
	defer unix.Unmount(cgroup2Fallback, unix.MNT_DETACH)
	return fn(filepath.Join(cgroup2Fallback, cgroup))
}

// cgroupDir returns the directory of cgroup in the first cgroup2 mount of
// /proc/self/mountinfo that shows it, or "" if cgroup2 is mounted nowhere.
func cgroupDir(cgroup string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	dir, err := cgroupDirIn(f, cgroup)
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return dir, nil
}

// cgroupDirIn is cgroupDir over mountinfo.
func cgroupDirIn(mountinfo io.Reader, cgroup string) (string, error) {
	sc := bufio.NewScanner(mountinfo)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields := strings.Fields(pre)
		if !ok || len(fields) < 5 || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		// A mount of a subtree (a cgroup namespace's, a bind mount)
		// shows the cgroups under its root only.
		root, mountpoint := unescapeMountinfo(fields[3]), unescapeMountinfo(fields[4])
		if root == "/" {
			return filepath.Join(mountpoint, cgroup), nil
		}
		if cgroup == root || strings.HasPrefix(cgroup, root+"/") {
			return filepath.Join(mountpoint, cgroup[len(root):]), nil
		}
	}
	return "", sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of a path
// in /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupID returns the id of the cgroup whose directory is dir: its inode
// number in cgroup2, which bpf_link info reports as the link's cgroup.
func cgroupID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", dir, err)
	}
	return st.Ino, nil
}

// LeaveRootCgroup moves the calling process, if it is in the root cgroup
// v2, into the child cgroup name (created if needed), and returns the
// cgroup it is in afterwards. The connection counter is attached to
// handoffd's cgroup and runs for every socket of it: in the root cgroup
// that is every TCP socket of the host, clients included; in a cgroup of
// its own, only those of handoffd and of its generations. A process that
// is already in a cgroup of its own (a systemd service) is left there.
func LeaveRootCgroup(name string) (string, error) {
	cg, err := ownCgroup()
	if err != nil || cg != "/" {
		return cg, err
	}
	err = inCgroupDir("/", func(dir string) error {
		child := filepath.Join(dir, name)
		if err := os.Mkdir(child, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		return os.WriteFile(filepath.Join(child, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
	})
	if err != nil {
		return cg, fmt.Errorf("move out of the root cgroup into %s: %w", name, err)
	}
	return ownCgroup()
}
