package kernel

import (
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"
)

// ErrNoACLs is returned by AllowGroup where the filesystem has no POSIX ACLs.
var ErrNoACLs = errors.New("the filesystem has no POSIX ACLs")

// AllowGroup lets members of gid read and write path besides its owner
// and group, with a POSIX access ACL (the system.posix_acl_access xattr,
// in the kernel's binary format: a version, then tag, permission and id
// per entry).
func AllowGroup(path string, gid uint32) error {
	const undefined = 0xffffffff
	const rw = 6
	entries := []struct {
		tag  uint16
		perm uint16
		id   uint32
	}{
		{0x01, rw, undefined}, // ACL_USER_OBJ
		{0x04, rw, undefined}, // ACL_GROUP_OBJ
		{0x08, rw, gid},       // ACL_GROUP
		{0x10, rw, undefined}, // ACL_MASK
		{0x20, 0, undefined},  // ACL_OTHER
	}
	acl := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range entries {
		acl = binary.LittleEndian.AppendUint16(acl, e.tag)
		acl = binary.LittleEndian.AppendUint16(acl, e.perm)
		acl = binary.LittleEndian.AppendUint32(acl, e.id)
	}
	err := unix.Setxattr(path, "system.posix_acl_access", acl, 0)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return ErrNoACLs
	}
	return err
}
