package main

import (
	"context"
	"errors"
)

func runMigrate(ctx context.Context, c *cli, args []string) error {
	return withCode(exitFailure, errors.New("migrate is not available in this build yet"),
		"see docs/MIGRATION.md once it lands; until then keep the tenant on the bwcli backend")
}
