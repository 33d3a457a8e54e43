package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hostd/broker/internal/fallback/bwcli"
	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/migrate"
	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/server"
	"github.com/hostd/broker/internal/state"
)

// envMigrationToken names the access token that may write to the target
// project: from the environment, else from the provider env file.
const envMigrationToken = "BROKER_MIGRATION_TOKEN"

// cliStateSubdir is where migrate and status keep their own bw data dirs
// and SDK state files, apart from serve's: a bw data dir must never be
// driven by two processes at once.
const cliStateSubdir = "cli"

// migrateAfterCopy is the migrate.Options.AfterCopy seam (tests only).
var migrateAfterCopy func(ctx context.Context) error

func runMigrate(ctx context.Context, c *cli, args []string) error {
	fs := c.newFlagSet("migrate", "--policy FILE --env-file FILE --state-dir DIR --tenant T --project ID [--dry-run] [--write-policy] [--prune]")
	var ff fileFlags
	c.addFileFlags(fs, &ff)
	var tenant, project, org, tokenEnv string
	var dryRun, writePolicy, prune, skipEmpty bool
	var timeout time.Duration
	fs.StringVar(&tenant, "tenant", "", "the fallback `TENANT` to migrate (required)")
	fs.StringVar(&project, "project", "", "the Secrets Manager project `ID` to copy into (required)")
	fs.StringVar(&org, "organization", "", "the Secrets Manager organization `ID` (default: the tenant's organization_id)")
	fs.StringVar(&tokenEnv, "access-token-env", "", "provider env file `NAME` of the tenant's own read token (default BROKER_SM_TOKEN_<TENANT>)")
	fs.BoolVar(&dryRun, "dry-run", false, "print the plan; write nothing upstream or on disk")
	fs.BoolVar(&writePolicy, "write-policy", false, "after a verified copy, switch the tenant to sm in the policy (a backup is kept beside it)")
	fs.BoolVar(&prune, "prune", false, "delete keys of the project that the tenant's collection lacks")
	fs.BoolVar(&skipEmpty, "skip-empty", false, "leave keys with an empty value out (Secrets Manager cannot store them) instead of refusing")
	fs.DurationVar(&timeout, "timeout", 5*time.Minute, "give up after this long")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	if err := ff.require(true, true); err != nil {
		return err
	}
	switch {
	case tenant == "":
		return usageErr("--tenant is required")
	case !scope.ValidTenantName(tenant):
		return usageErr("--tenant %q: tenant names match ^[a-z0-9][a-z0-9_-]{0,62}$", tenant)
	case project == "":
		return usageErr("--project is required (the Secrets Manager project id)")
	case !scope.ValidUUID(project):
		return usageErr("--project %q: want the project's UUID as Secrets Manager shows it", project)
	case dryRun && writePolicy:
		return usageErr("--dry-run and --write-policy exclude each other")
	}
	if tokenEnv == "" {
		tokenEnv = defaultTokenEnv(tenant)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	if err := state.EnsureStateDir(ff.stateDir); err != nil {
		return err
	}
	rawPolicy, err := migrate.ReadPolicyBytes(ff.policy)
	if err != nil {
		return err
	}
	pol, envVars, err := ff.load()
	if err != nil {
		return err
	}
	pt, ok := pol.Tenants[tenant]
	if !ok {
		return fmt.Errorf("tenant %q is not in the policy %s", tenant, ff.policy)
	}
	if pt.Backend == scope.BackendSM {
		if len(pt.ProjectIDs) == 1 && strings.EqualFold(pt.ProjectIDs[0], project) {
			c.infof("tenant %q already uses Secrets Manager project %s; nothing to migrate", tenant, pt.ProjectIDs[0])
			return nil
		}
		return withCode(exitFailure, fmt.Errorf("tenant %q already uses backend sm with other projects", tenant),
			"migrate moves fallback (bwcli) tenants; edit the policy to change an sm tenant's projects")
	}
	if org == "" {
		org = pt.OrganizationID
	}
	if pol.Upstream.SM.APIURL == "" {
		return withCode(exitFailure, errors.New("the policy has no upstream.sm"),
			"add upstream.sm.api_url and identity_url to the policy before migrating (a running broker picks them up on reload)")
	}
	tenants, missing := server.BuildTenants(pol, envVars)
	if v, ok := missing[tenant]; ok {
		return withCode(exitFailure, fmt.Errorf("tenant %q: %s is not in the provider env file", tenant, v),
			"the fallback credentials are needed to read the tenant's collection")
	}
	from := tenants[tenant]

	migTok, migFrom := c.getenv(envMigrationToken), "the environment"
	if migTok == "" {
		migTok, migFrom = envVars[envMigrationToken], "the provider env file"
	}
	if migTok == "" {
		return withCode(exitFailure, fmt.Errorf("no %s in the environment or the provider env file", envMigrationToken),
			"create an access token for a migration machine account with write access to the project (see docs/MIGRATION.md) and export it as "+envMigrationToken)
	}
	readTok := envVars[tokenEnv]
	if readTok == "" && !dryRun {
		return withCode(exitFailure, fmt.Errorf("the tenant's access token %s is not in the provider env file", tokenEnv),
			"create a machine account for the tenant with read access to the project, add its access token to the env file as "+tokenEnv+" (or name another with --access-token-env)")
	}
	// Parity is checked with the tenant's own read token; checked with the
	// migration token it would prove nothing about the tenant's scope.
	if !dryRun && readTok == migTok {
		return withCode(exitFailure, fmt.Errorf("%s holds the migration token", tokenEnv),
			"give the tenant its own machine account with read access to its project only; the migration token must not stay on the host")
	}
	var newPolicy []byte
	if writePolicy {
		// Check the policy change before anything is written upstream.
		if _, newPolicy, err = migrate.SwitchTenant(pol, tenant, org, project, tokenEnv); err != nil {
			return fmt.Errorf("the switched policy would not load: %v", err)
		}
	}

	unlock, err := lockCLIState(ff.stateDir)
	if err != nil {
		return err
	}
	defer unlock()
	logger := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	hardenProcess(logger) // it holds the master password and the migration token
	src, closeSrc, err := openFallback(pol, ff.stateDir, logger)
	if err != nil {
		return err
	}
	defer closeSrc()
	sm, err := openCLISM(pol, ff.stateDir, logger)
	if err != nil {
		return err
	}
	defer sm.Close()

	c.infof("reading tenant %q through bwcli; migration token from %s", tenant, migFrom)
	rep, err := migrate.Run(ctx, src, sm, migrate.Options{
		From:           from,
		OrganizationID: org,
		ProjectID:      project,
		MigrationToken: fetch.Secret(migTok),
		ReadToken:      fetch.Secret(readTok),
		DryRun:         dryRun,
		Prune:          prune,
		SkipEmpty:      skipEmpty,
		AfterCopy:      migrateAfterCopy,
	})
	printReport(c.stdout, rep, tokenEnv, prune)
	if err != nil {
		return migrateError(err)
	}
	if !writePolicy {
		if !dryRun {
			fmt.Fprintf(c.stdout, "policy     unchanged; run again with --write-policy to switch the tenant\n")
		}
		return nil
	}
	pw, err := migrate.WritePolicy(ff.policy, rawPolicy, newPolicy, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "policy     tenant %s now uses sm (project %s, access_token_env %s); backup %s\n",
		tenant, project, tokenEnv, pw.Backup)
	if pw.Linked {
		c.warnf("the policy is a symbolic link: wrote its target %s; update your configuration management too", pw.Path)
	}
	c.infof("a running broker picks the new policy up on its own (or send it SIGHUP); then check with 'broker status'")
	return nil
}

// defaultTokenEnv is BROKER_SM_TOKEN_<TENANT> with '-' as '_'.
func defaultTokenEnv(tenant string) string {
	return "BROKER_SM_TOKEN_" + strings.ToUpper(strings.ReplaceAll(tenant, "-", "_"))
}

// migrateError gives a migration failure its exit code and hint.
func migrateError(err error) error {
	var pe *migrate.ParityError
	var ee *migrate.EmptyValueError
	switch {
	case errors.As(err, &pe):
		hint := "the policy was not changed; "
		if len(pe.Different)+len(pe.Missing) > 0 {
			hint += "a value changed upstream during the migration (or Secrets Manager did not keep it as given): run broker migrate again"
		} else {
			hint += "pass --prune to delete the extra keys from the project, or remove them there"
		}
		return withCode(exitFailure, err, hint)
	case errors.As(err, &ee):
		return withCode(exitFailure, fmt.Errorf("%v; nothing was written", err),
			"give the item a value in the collection, delete it there, or pass --skip-empty to migrate without it (the tenant's env then lacks it)")
	}
	switch fetch.KindOf(err) {
	case fetch.KindUnavailable, fetch.KindTimeout:
		return withCode(exitUnavailable, err, "retry later")
	}
	return err
}

// printReport writes the migration report: key names and counts, never
// values.
func printReport(w io.Writer, r *migrate.Report, tokenEnv string, prune bool) {
	if r == nil {
		return
	}
	verb := ""
	if r.DryRun {
		verb = "would be "
	}
	head := fmt.Sprintf("tenant %s -> Secrets Manager project %s (organization %s)", r.Tenant, r.ProjectID, r.OrganizationID)
	if r.DryRun {
		head += " [dry run: nothing written]"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintf(w, "%-10s %d keys through bwcli\n", "source", r.Keys)
	row := func(name string, keys []string, note string) {
		fmt.Fprintf(w, "%-10s %d", name, len(keys))
		if len(keys) > 0 {
			fmt.Fprintf(w, "  %s", strings.Join(keys, " "))
			if note != "" {
				fmt.Fprintf(w, "  (%s)", note)
			}
		}
		fmt.Fprintln(w)
	}
	row("created", r.Created, verb+"created")
	row("updated", r.Updated, verb+"updated: the value differed")
	row("unchanged", r.Unchanged, "")
	if prune || len(r.Deleted) > 0 {
		row("deleted", r.Deleted, verb+"deleted from the project: not in the collection")
	}
	row("extra", r.Extra, "in the project, not in the collection; left alone, pass --prune to delete")
	row("skipped", r.SkippedEmpty, "empty value: Secrets Manager cannot store it; not migrated")
	switch {
	case r.DryRun:
		fmt.Fprintf(w, "%-10s not checked (dry run)\n", "parity")
	case r.Verified:
		n := r.Keys - len(r.SkippedEmpty)
		note := ""
		if len(r.SkippedEmpty) > 0 {
			note = fmt.Sprintf("; %d skipped key(s) will be missing", len(r.SkippedEmpty))
		}
		fmt.Fprintf(w, "%-10s ok: %d keys identical byte for byte, fetched with %s%s\n", "parity", n, tokenEnv, note)
	}
}

// openFallback builds the bw CLI backend for a CLI command, on its own data
// dirs (state-dir/cli/bw/...).
func openFallback(pol *scope.Policy, stateDir string, logger *slog.Logger) (*bwcli.Backend, func(), error) {
	if pol.Upstream.BW.ServerURL == "" {
		return nil, nil, errors.New("the policy has no upstream.bw.server_url")
	}
	dir, err := cliStateDir(stateDir)
	if err != nil {
		return nil, nil, err
	}
	b, err := bwcli.New(bwcli.Config{
		ServerURL: pol.Upstream.BW.ServerURL,
		CAFile:    pol.Upstream.BW.CAFile,
		Mode:      pol.Upstream.BW.Mode,
		StateDir:  dir,
		Logger:    logger,
	})
	if err != nil {
		var nf *bwcli.NotFoundError
		if errors.As(err, &nf) {
			return nil, nil, withCode(exitFailure, err, "run 'make tools' or set BROKER_BW")
		}
		return nil, nil, fmt.Errorf("bw fallback backend: %v", err)
	}
	return b, func() {
		if err := b.Close(); err != nil {
			logger.Error("closing the bw fallback", "err", err)
		}
	}, nil
}

// openCLISM builds the Secrets Manager backend for a CLI command, with its
// SDK state files in state-dir/cli/sm.
func openCLISM(pol *scope.Policy, stateDir string, logger *slog.Logger) (*fetch.SM, error) {
	dir, err := cliStateDir(stateDir)
	if err != nil {
		return nil, err
	}
	sm, err := fetch.NewSM(fetch.SMConfig{
		APIURL:      pol.Upstream.SM.APIURL,
		IdentityURL: pol.Upstream.SM.IdentityURL,
		StateDir:    filepath.Join(dir, "sm"),
		Client:      pol.Upstream.SM.Client,
		Logger:      logger,
	})
	if err != nil {
		return nil, fmt.Errorf("secrets manager backend: %v", err)
	}
	return sm, nil
}

// cliStateDir returns state-dir/cli (absolute), created 0700.
func cliStateDir(stateDir string) (string, error) {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return "", fmt.Errorf("state dir: %v", err)
	}
	dir := filepath.Join(abs, cliStateSubdir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("state dir: %v", err)
	}
	if err := state.CheckPrivateDir(dir); err != nil {
		return "", err
	}
	return dir, nil
}

// lockCLIState takes an exclusive lock on state-dir/cli/lock, so that two
// CLI commands never drive the same bw data dir at once. It waits for a
// running one.
func lockCLIState(stateDir string) (func(), error) {
	dir, err := cliStateDir(stateDir)
	if err != nil {
		return nil, err
	}
	return state.LockExclusive(dir, "lock", true)
}
