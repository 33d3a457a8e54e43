package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hostd/broker/internal/fallback/bwcli"
	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/lastfetch"
	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/server"
	"github.com/hostd/broker/internal/state"
)

// statusCheckTimeout bounds one tenant's upstream check.
const statusCheckTimeout = 90 * time.Second

// Values of tenantStatus.Upstream and .Resolves.
const (
	checkOK        = "ok"
	checkFailed    = "failed"
	checkUnchecked = "unchecked"
)

// tenantStatus is one row of broker status (and one object of --json).
type tenantStatus struct {
	Tenant         string `json:"tenant"`
	Backend        string `json:"backend"`
	MasterPassword bool   `json:"master_password"`
	// Credentials is "present" or "missing".
	Credentials string `json:"credentials"`
	// MissingVariable names the first absent credential variable.
	MissingVariable string `json:"missing_variable,omitempty"`
	// Upstream is ok, failed or unchecked: the credentials were accepted by
	// a login or unlock check that reads no values.
	Upstream string `json:"upstream"`
	// Resolves is ok, failed or unchecked: the check resolved the tenant's
	// Secrets Manager projects or bw collection (without reading values).
	// It is unchecked with --offline, or when the upstream check failed
	// before it got that far.
	Resolves string `json:"resolves"`
	// Keys is the number of keys found by --deep.
	Keys *int `json:"keys,omitempty"`
	// Error is the sanitized reason of a failed check.
	Error string `json:"error,omitempty"`
	// LastFetch is what the running broker last served for the tenant.
	LastFetch *lastFetchStatus `json:"last_fetch,omitempty"`
}

type lastFetchStatus struct {
	Outcome    string    `json:"outcome"`
	Source     string    `json:"source,omitempty"`
	At         time.Time `json:"at"`
	AgeSeconds int64     `json:"age_seconds"`
}

type statusSummary struct {
	Tenants        int `json:"tenants"`
	MasterPassword int `json:"master_password"`
	Unhealthy      int `json:"unhealthy"`
}

type statusReport struct {
	Tenants []tenantStatus `json:"tenants"`
	Summary statusSummary  `json:"summary"`
	Advice  []string       `json:"advice"`
}

func (t *tenantStatus) healthy() bool {
	return t.Credentials == "present" && t.Upstream != checkFailed && t.Resolves != checkFailed
}

func runStatus(ctx context.Context, c *cli, args []string) error {
	fs := c.newFlagSet("status", "--policy FILE --env-file FILE --state-dir DIR [--json] [--offline] [--deep]")
	var ff fileFlags
	c.addFileFlags(fs, &ff)
	var asJSON, offline, deep bool
	fs.BoolVar(&asJSON, "json", false, "print one JSON object (for machines)")
	fs.BoolVar(&offline, "offline", false, "do not contact the upstreams (no credential check)")
	fs.BoolVar(&deep, "deep", false, "also fetch each tenant's env and count its keys "+
		"(values are read into memory and discarded; only the key count is shown)")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	if err := ff.require(true, true); err != nil {
		return err
	}
	if offline && deep {
		return usageErr("--offline and --deep exclude each other")
	}
	if err := state.CheckPrivateDir(ff.stateDir); err != nil {
		return err
	}
	pol, envVars, err := ff.load()
	if err != nil {
		return err
	}
	last, err := lastfetch.Load(ff.stateDir)
	if err != nil && !os.IsNotExist(err) {
		c.warnf("last fetch outcomes unavailable: %v", err)
	}

	rep := statusReport{Advice: []string{}}
	tenants, missing := server.BuildTenants(pol, envVars)
	for _, n := range pol.TenantNames() {
		pt := pol.Tenants[n]
		ts := tenantStatus{Tenant: n, Backend: pt.Backend, MasterPassword: pol.UsesMasterPassword(n),
			Credentials: "present", Upstream: checkUnchecked, Resolves: checkUnchecked}
		if v, ok := missing[n]; ok {
			ts.Credentials, ts.MissingVariable = "missing", v
		}
		if e, ok := last[n]; ok {
			ts.LastFetch = &lastFetchStatus{Outcome: e.Outcome, Source: e.Source, At: e.At,
				AgeSeconds: int64(time.Since(e.At).Seconds())}
		}
		rep.Tenants = append(rep.Tenants, ts)
	}
	if !offline {
		if err := checkTenants(ctx, c, pol, ff.stateDir, tenants, rep.Tenants, deep); err != nil {
			return err
		}
	}
	for i := range rep.Tenants {
		t := &rep.Tenants[i]
		rep.Summary.Tenants++
		if t.MasterPassword {
			rep.Summary.MasterPassword++
		}
		if !t.healthy() {
			rep.Summary.Unhealthy++
		}
	}
	rep.Advice = statusAdvice(pol, envVars, ff.envFile, rep.Summary.MasterPassword)

	if asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printStatus(c.stdout, &rep)
	}
	if rep.Summary.Unhealthy > 0 {
		return withCode(exitFailure, fmt.Errorf("%d of %d tenants are not healthy", rep.Summary.Unhealthy, rep.Summary.Tenants),
			"see the credentials, upstream and resolves columns")
	}
	return nil
}

// checkTenants runs each tenant's upstream check and fills rows in place.
// The backends use state-dir/cli, apart from a running broker's.
func checkTenants(ctx context.Context, c *cli, pol *scope.Policy, stateDir string, tenants map[string]fetch.Tenant, rows []tenantStatus, deep bool) error {
	need := map[string]bool{}
	for _, r := range rows {
		if _, ok := tenants[r.Tenant]; ok {
			need[r.Backend] = true
		}
	}
	if len(need) == 0 {
		return nil
	}
	unlock, err := lockCLIState(stateDir)
	if err != nil {
		return err
	}
	defer unlock()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	hardenProcess(slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	backends := map[string]interface {
		Check(context.Context, fetch.Tenant) error
		Fetch(context.Context, fetch.Tenant) (fetch.Env, error)
	}{}
	unavailable := map[string]string{}
	if need[fetch.BackendSM] {
		if sm, err := openCLISM(pol, stateDir, logger); err != nil {
			unavailable[fetch.BackendSM] = err.Error()
		} else {
			defer sm.Close()
			backends[fetch.BackendSM] = sm
		}
	}
	if need[fetch.BackendBWCLI] {
		if bw, closeBW, err := openFallback(pol, stateDir, logger); err != nil {
			var nf *bwcli.NotFoundError
			if errors.As(err, &nf) {
				c.warnf("bw CLI not found: fallback tenants are not checked; run 'make tools' or set BROKER_BW")
			}
			unavailable[fetch.BackendBWCLI] = err.Error()
		} else {
			defer closeBW()
			backends[fetch.BackendBWCLI] = bw
		}
	}
	for i := range rows {
		r := &rows[i]
		t, ok := tenants[r.Tenant]
		if !ok {
			continue
		}
		b, ok := backends[r.Backend]
		if !ok {
			r.Error = "cannot check: " + unavailable[r.Backend]
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, statusCheckTimeout)
		if err := b.Check(cctx, t); errors.Is(err, fetch.ErrNotResolved) {
			// The credentials were accepted; the project or collection
			// does not resolve.
			r.Upstream, r.Resolves, r.Error = checkOK, checkFailed, checkError(err)
		} else if err != nil {
			r.Upstream, r.Error = checkFailed, checkError(err)
		} else {
			r.Upstream, r.Resolves = checkOK, checkOK
			if deep {
				env, err := b.Fetch(cctx, t)
				if err != nil {
					r.Resolves, r.Error = checkFailed, checkError(err)
				} else {
					n := len(env)
					r.Resolves, r.Keys = checkOK, &n
				}
			}
		}
		cancel()
	}
	return nil
}

// checkError is the public part of a fetch error (never a value).
func checkError(err error) string {
	var fe *fetch.Error
	if errors.As(err, &fe) {
		return fe.Kind.String() + ": " + fe.Msg
	}
	return err.Error()
}

// statusAdvice says which bootstrap credentials can go.
func statusAdvice(pol *scope.Policy, envVars map[string]string, envFile string, masterPassword int) []string {
	used := map[string]bool{}
	for _, n := range pol.TenantNames() {
		for _, v := range pol.Tenants[n].CredentialEnvNames() {
			used[v] = true
		}
	}
	var stale []string
	for k := range envVars {
		if strings.HasSuffix(k, scope.EnvBWPassword) && !used[k] {
			stale = append(stale, k)
		}
	}
	sort.Strings(stale)
	var advice []string
	if masterPassword == 0 && len(stale) > 0 {
		advice = append(advice, fmt.Sprintf("no tenant uses the master password any more: delete %s (and the matching BW_CLIENTID, BW_CLIENTSECRET) from %s, then rotate the master password",
			strings.Join(stale, ", "), envFile))
	} else if len(stale) > 0 {
		advice = append(advice, fmt.Sprintf("%s is used by no tenant: delete it from %s", strings.Join(stale, ", "), envFile))
	}
	if _, ok := envVars[envMigrationToken]; ok && masterPassword == 0 {
		advice = append(advice, fmt.Sprintf("no tenant is left to migrate: delete %s from %s and revoke that access token", envMigrationToken, envFile))
	}
	return advice
}

func printStatus(w io.Writer, rep *statusReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tBACKEND\tMASTER_PASSWORD\tCREDENTIALS\tUPSTREAM\tRESOLVES\tLAST_FETCH")
	for _, t := range rep.Tenants {
		mp := "no"
		if t.MasterPassword {
			mp = "yes"
		}
		creds := t.Credentials
		if t.MissingVariable != "" {
			creds = "missing " + t.MissingVariable
		}
		res := t.Resolves
		if t.Keys != nil {
			res = fmt.Sprintf("ok (%d keys)", *t.Keys)
		}
		lf := "never"
		if t.LastFetch != nil {
			lf = t.LastFetch.Outcome
			if t.LastFetch.Source != "" {
				lf += "/" + t.LastFetch.Source
			}
			lf += " " + (time.Duration(t.LastFetch.AgeSeconds) * time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Tenant, t.Backend, mp, creds, t.Upstream, res, lf)
	}
	tw.Flush()
	for _, t := range rep.Tenants {
		if t.Error != "" {
			fmt.Fprintf(w, "%s: %s\n", t.Tenant, t.Error)
		}
	}
	fmt.Fprintf(w, "%d of %d tenants still use the master password\n", rep.Summary.MasterPassword, rep.Summary.Tenants)
	for _, a := range rep.Advice {
		fmt.Fprintf(w, "advice: %s\n", a)
	}
}
