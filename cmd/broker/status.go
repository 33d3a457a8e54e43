package main

import (
	"context"
	"fmt"
	"sort"

	"github.com/hostd/broker/internal/state"
)

func runStatus(ctx context.Context, c *cli, args []string) error {
	fs := c.newFlagSet("status", "--policy FILE --env-file FILE --state-dir DIR")
	var ff fileFlags
	c.addFileFlags(fs, &ff)
	if err := parse(fs, args, false); err != nil {
		return err
	}
	if err := ff.require(true, true); err != nil {
		return err
	}
	pol, err := state.LoadPolicy(ff.policy)
	if err != nil {
		return err
	}
	envVars, err := state.LoadEnvFile(ff.envFile)
	if err != nil {
		return err
	}
	names := pol.TenantNames()
	sort.Strings(names)
	mp := 0
	for _, n := range names {
		t := pol.Tenants[n]
		creds := "present"
		for _, v := range t.CredentialEnvNames() {
			if envVars[v] == "" {
				creds = "missing " + v
				break
			}
		}
		master := "no"
		if pol.UsesMasterPassword(n) {
			master = "yes"
			mp++
		}
		fmt.Fprintf(c.stdout, "%s\tbackend=%s\tmaster_password=%s\tcredentials=%s\n", n, t.Backend, master, creds)
	}
	fmt.Fprintf(c.stdout, "%d of %d tenants still use the master password\n", mp, len(names))
	return nil
}
