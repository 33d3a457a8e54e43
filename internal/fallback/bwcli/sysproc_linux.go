package bwcli

import "syscall"

// sysProcAttr puts a bw child in its own process group (so that a timeout
// kills everything it started) and kills it if the broker dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
