//go:build !linux

package bwcli

import "syscall"

// sysProcAttr puts a bw child in its own process group, so that a timeout
// kills everything it started.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
