// Command brokerload drives `broker serve` over its Unix socket with
// concurrent callers and reports req/s, latency percentiles and errors; with
// --serve-ceiling it is instead the bare net/http server the broker is
// compared with. `make bench` runs it; see BENCHMARKS.md.
//
// The caller token comes from BROKER_TOKEN or --token-file, never a flag
// value.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "brokerload: error: %v\n", err)
		os.Exit(exitCode(err))
	}
}
