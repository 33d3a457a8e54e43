//go:build linux

package peercred

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// get reads SO_PEERCRED from the socket fd.
func get(fd uintptr) (Cred, error) {
	u, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Cred{}, fmt.Errorf("getsockopt SO_PEERCRED: %w", err)
	}
	return Cred{UID: u.Uid, GID: u.Gid, PID: u.Pid}, nil
}
