package main

import (
	"context"
	"fmt"
	"runtime/debug"
)

// Version is set at link time (-ldflags "-X main.Version=v1.2.3"); otherwise
// it comes from the module's build info.
var Version = ""

func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

func runVersion(ctx context.Context, c *cli, args []string) error {
	fs := c.newFlagSet("version", "")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "broker %s (%s)\n", version(), sdkInfo())
	return nil
}
