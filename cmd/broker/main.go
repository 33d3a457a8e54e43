// Command broker serves each tenant's secrets from Bitwarden to local callers
// over a Unix socket: Secrets Manager through per-tenant access tokens, or the
// bw CLI fallback with unlock-per-call. See README.md for the contract.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
