package main

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// hardenProcess makes everything the broker writes owner-only, disables core
// dumps (a dump would hold every cached secret) and marks the process
// non-dumpable so that other processes of the same uid cannot ptrace it or
// read its memory through /proc.
func hardenProcess(log *slog.Logger) {
	unix.Umask(0o077)
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		log.Warn("could not disable core dumps", "err", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		log.Warn("could not mark the process non-dumpable", "err", err)
	}
}
