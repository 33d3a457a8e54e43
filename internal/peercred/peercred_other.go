//go:build !linux && !freebsd

package peercred

// get is not implemented on this system.
func get(uintptr) (Cred, error) { return Cred{}, errUnsupported }
