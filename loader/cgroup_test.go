package loader

import (
	"strings"
	"testing"
)

func TestCgroupDirIn(t *testing.T) {
	const (
		v1      = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
		hybrid  = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
		unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
		subtree = "50 23 0:26 /system.slice /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n"
	)
	tests := []struct {
		name, mountinfo, cgroup, want string
	}{
		{"hybrid root", v1 + hybrid, "/", "/sys/fs/cgroup/unified"},
		{"hybrid", v1 + hybrid, "/system.slice/handoffd.service", "/sys/fs/cgroup/unified/system.slice/handoffd.service"},
		{"unified", unified, "/system.slice/handoffd.service", "/sys/fs/cgroup/system.slice/handoffd.service"},
		{"subtree mount", subtree, "/system.slice/handoffd.service", "/mnt/my cg/handoffd.service"},
		{"subtree mount, its root", subtree, "/system.slice", "/mnt/my cg"},
		{"subtree mount elsewhere", subtree + unified, "/user.slice", "/sys/fs/cgroup/user.slice"},
		{"prefix is not a parent", subtree, "/system.slicer", ""},
		{"no cgroup2", v1, "/", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cgroupDirIn(strings.NewReader(tt.mountinfo), tt.cgroup)
			if err != nil || got != tt.want {
				t.Errorf("cgroupDirIn(%q) = %q, %v; want %q", tt.cgroup, got, err, tt.want)
			}
		})
	}
}
