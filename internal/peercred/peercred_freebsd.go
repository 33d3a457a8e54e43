//go:build freebsd

package peercred

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// xucredVersion is XUCRED_VERSION from FreeBSD's <sys/ucred.h>.
const xucredVersion = 0

// get reads LOCAL_PEERCRED from the socket fd. The group list's first entry
// is the effective gid; x/sys does not expose the pid, so PID is -1.
func get(fd uintptr) (Cred, error) {
	x, err := unix.GetsockoptXucred(int(fd), unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return Cred{}, fmt.Errorf("getsockopt LOCAL_PEERCRED: %w", err)
	}
	if x.Version != xucredVersion {
		return Cred{}, fmt.Errorf("getsockopt LOCAL_PEERCRED: unknown xucred version %d", x.Version)
	}
	if x.Ngroups < 1 {
		return Cred{}, fmt.Errorf("getsockopt LOCAL_PEERCRED: no groups reported")
	}
	return Cred{UID: x.Uid, GID: x.Groups[0], PID: -1}, nil
}
