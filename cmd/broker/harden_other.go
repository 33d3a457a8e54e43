//go:build !linux

package main

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// hardenProcess makes everything the broker writes owner-only and disables
// core dumps. (FreeBSD: run with procctl/`sysctl kern.coredump=0` or the rc.d
// script's limits for stronger isolation.)
func hardenProcess(log *slog.Logger) {
	unix.Umask(0o077)
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		log.Warn("could not disable core dumps", "err", err)
	}
}
