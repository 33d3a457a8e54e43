// Package peercred reports the credentials of the process at the other end
// of a Unix domain socket connection, as the kernel recorded them.
//
// On Linux they come from SO_PEERCRED and on FreeBSD from LOCAL_PEERCRED;
// both are taken when the peer called connect(2) (or socketpair(2)), so a
// peer that later changes its uid or hands the socket to another process is
// still reported as its connecting identity. FreeBSD's struct xucred as
// exposed by golang.org/x/sys carries no pid, so PID is -1 there. On other
// systems Get returns an error; callers must then fail closed.
package peercred

import (
	"errors"
	"fmt"
	"net"
	"runtime"
)

// Cred is a peer's credentials. PID is -1 when the system does not report it.
type Cred struct {
	UID, GID uint32
	PID      int32
}

// errUnsupported is returned on systems without an implementation.
var errUnsupported = errors.New("peer credentials are not supported on " + runtime.GOOS)

// Get returns the credentials of c's peer. c must be a *net.UnixConn.
func Get(c net.Conn) (Cred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Cred{}, fmt.Errorf("peercred: connection is a %T, not a Unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peercred: %w", err)
	}
	var cred Cred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = get(fd) }); err != nil {
		return Cred{}, fmt.Errorf("peercred: %w", err)
	}
	if credErr != nil {
		return Cred{}, fmt.Errorf("peercred: %w", credErr)
	}
	return cred, nil
}
