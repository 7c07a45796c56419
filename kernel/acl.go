package kernel

import (
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"
)

// ErrNoACLs is returned by AllowGroup where the filesystem has no POSIX ACLs.
var ErrNoACLs = errors.New("the filesystem has no POSIX ACLs")

// AllowGroup lets members of gid read and write path besides its owner
// and group, with a POSIX access ACL.
func AllowGroup(path string, gid uint32) error {
	const rw = 6
	return setACL(path, []aclEntry{
		{aclUserObj, rw, aclUndefined},
		{aclGroupObj, rw, aclUndefined},
		{aclGroup, rw, gid},
		{aclMask, rw, aclUndefined},
		{aclOther, 0, aclUndefined},
	})
}

// AllowUser gives user uid the permissions perm (4 read, 2 write, 1
// search or execute) on path besides its owner, and nobody else any: a
// POSIX access ACL with the owner's rwx, uid's perm, and nothing for the
// owning group and others. The mode's group bits become perm (the ACL's
// mask).
func AllowUser(path string, uid uint32, perm uint16) error {
	return setACL(path, []aclEntry{
		{aclUserObj, 7, aclUndefined},
		{aclUser, perm, uid},
		{aclGroupObj, 0, aclUndefined},
		{aclMask, perm, aclUndefined},
		{aclOther, 0, aclUndefined},
	})
}

// The tags of the kernel's ACL entries, in the order an ACL lists them.
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20

	aclUndefined = 0xffffffff
)

type aclEntry struct {
	tag  uint16
	perm uint16
	id   uint32
}

// setACL sets the access ACL of path (the system.posix_acl_access xattr,
// in the kernel's binary format: a version, then tag, permission and id
// per entry).
func setACL(path string, entries []aclEntry) error {
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
