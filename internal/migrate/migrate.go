// Package migrate moves one tenant's env from its current backend (the bw
// CLI fallback, which needs the master password) into a Bitwarden Secrets
// Manager project, and proves parity before anything depends on it. It backs
// `broker migrate`; the policy rewrite lives in policy.go.
//
// # Steps
//
//  1. Read the tenant's env through its current backend (Source).
//  2. Refuse values Secrets Manager cannot store (an empty value) unless
//     the operator explicitly leaves them out (Options.SkipEmpty); the
//     report then names them, and parity is checked without them.
//  3. Write each key into the project with the migration access token
//     (Target.Upsert): created, updated only when the value differs, or left
//     unchanged. A re-run writes nothing.
//  4. Fetch the project through Secrets Manager with the tenant's own read
//     token and compare byte for byte. A key that is missing or differs, or
//     a key the project holds and the source lacks (unless pruned), is a
//     parity failure (*ParityError): the caller must not touch the policy.
//
// A dry run does step 1 and plans step 3 against the project's current
// content (read with the migration token) without writing anything.
//
// Reports and errors carry key names only, never values or tokens.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hostd/broker/internal/fetch"
)

// Source reads a tenant's env from its current backend; *bwcli.Backend
// (and any fetch.Backend) is one.
type Source interface {
	Fetch(ctx context.Context, t fetch.Tenant) (fetch.Env, error)
}

// Target is the Secrets Manager side; *fetch.SM is one.
type Target interface {
	// Fetch returns the secrets of t.ProjectIDs visible to t.AccessToken.
	Fetch(ctx context.Context, t fetch.Tenant) (fetch.Env, error)
	// Upsert makes projectID hold env (see fetch.SM.Upsert).
	Upsert(ctx context.Context, accessToken fetch.Secret, orgID, projectID string, env fetch.Env, prune bool) (created, updated, unchanged, deleted []string, err error)
}

// Options describe one migration.
type Options struct {
	// From is the tenant as its current backend serves it (credentials
	// filled in).
	From fetch.Tenant
	// OrganizationID and ProjectID name the Secrets Manager project.
	OrganizationID, ProjectID string
	// MigrationToken is an access token that may write to the project.
	MigrationToken fetch.Secret
	// ReadToken is the tenant's own access token (read access to the
	// project), used to verify parity as the broker will fetch. Required
	// unless DryRun.
	ReadToken fetch.Secret
	// DryRun plans without writing anything upstream.
	DryRun bool
	// Prune deletes keys of the project that the source lacks.
	Prune bool
	// SkipEmpty leaves keys with an empty value out (Secrets Manager cannot
	// store them) instead of refusing the migration.
	SkipEmpty bool
	// AfterCopy, when set, runs between the copy and the verification. It
	// is a seam for tests (a value changed upstream in between); an error
	// from it stops the migration.
	AfterCopy func(ctx context.Context) error
}

// Report is what a migration did (or, for a dry run, would do). Every list
// holds key names, sorted.
type Report struct {
	Tenant, OrganizationID, ProjectID string
	DryRun                            bool
	// Keys is the number of keys the source holds.
	Keys int
	// Created, Updated and Unchanged partition the migrated keys.
	Created, Updated, Unchanged []string
	// Deleted lists keys removed from the project (Prune).
	Deleted []string
	// Extra lists keys the project holds that the source lacks and that
	// were left alone (no Prune).
	Extra []string
	// SkippedEmpty lists keys left out because their value is empty.
	SkippedEmpty []string
	// Verified reports whether the parity check ran and passed.
	Verified bool
}

// ParityError says that what Secrets Manager serves differs from the source.
type ParityError struct {
	Missing   []string // in the source, not served by Secrets Manager
	Different []string // served with another value
	Extra     []string // served, but not in the source
}

func (e *ParityError) Error() string {
	var parts []string
	if len(e.Missing) > 0 {
		parts = append(parts, "missing from Secrets Manager: "+strings.Join(e.Missing, ", "))
	}
	if len(e.Different) > 0 {
		parts = append(parts, "different value in Secrets Manager: "+strings.Join(e.Different, ", "))
	}
	if len(e.Extra) > 0 {
		parts = append(parts, "only in Secrets Manager (the tenant would receive them): "+strings.Join(e.Extra, ", "))
	}
	return "parity check failed: " + strings.Join(parts, "; ")
}

// EmptyValueError lists keys whose value is empty: Secrets Manager refuses an
// empty value, so they cannot be migrated as they are.
type EmptyValueError struct{ Keys []string }

func (e *EmptyValueError) Error() string {
	return fmt.Sprintf("key %s has an empty value, which Secrets Manager cannot store", strings.Join(e.Keys, ", "))
}

// Run migrates (or plans, with DryRun) as opts says. On a parity failure it
// returns the report with a *ParityError; the report's lists then tell what
// was written.
func Run(ctx context.Context, src Source, dst Target, opts Options) (*Report, error) {
	rep := &Report{Tenant: opts.From.Name, OrganizationID: opts.OrganizationID, ProjectID: opts.ProjectID, DryRun: opts.DryRun}
	if opts.MigrationToken == "" {
		return rep, errors.New("no migration access token")
	}
	if !opts.DryRun && opts.ReadToken == "" {
		return rep, errors.New("no read access token for the tenant: parity cannot be verified")
	}
	env, err := src.Fetch(ctx, opts.From)
	if err != nil {
		return rep, fmt.Errorf("read tenant %q through its %s backend: %w", opts.From.Name, opts.From.Backend, err)
	}
	rep.Keys = len(env)
	want := make(fetch.Env, len(env))
	for _, k := range env.Keys() {
		if env[k] == "" {
			rep.SkippedEmpty = append(rep.SkippedEmpty, k)
			continue
		}
		want[k] = env[k]
	}
	if len(rep.SkippedEmpty) > 0 && !opts.SkipEmpty {
		return rep, &EmptyValueError{Keys: rep.SkippedEmpty}
	}

	if opts.DryRun {
		cur, err := dst.Fetch(ctx, smTenant(opts.From.Name, opts.OrganizationID, opts.ProjectID, opts.MigrationToken))
		if err != nil {
			return rep, fmt.Errorf("read project %s with the migration token: %w", opts.ProjectID, err)
		}
		for _, k := range want.Keys() {
			v, ok := cur[k]
			switch {
			case !ok:
				rep.Created = append(rep.Created, k)
			case v != want[k]:
				rep.Updated = append(rep.Updated, k)
			default:
				rep.Unchanged = append(rep.Unchanged, k)
			}
		}
		for _, k := range cur.Keys() {
			if _, ok := want[k]; !ok {
				if opts.Prune {
					rep.Deleted = append(rep.Deleted, k)
				} else {
					rep.Extra = append(rep.Extra, k)
				}
			}
		}
		return rep, nil
	}

	rep.Created, rep.Updated, rep.Unchanged, rep.Deleted, err = dst.Upsert(ctx, opts.MigrationToken, opts.OrganizationID, opts.ProjectID, want, opts.Prune)
	sortAll(rep)
	if err != nil {
		return rep, fmt.Errorf("write project %s with the migration token: %w", opts.ProjectID, err)
	}
	if opts.AfterCopy != nil {
		if err := opts.AfterCopy(ctx); err != nil {
			return rep, err
		}
	}
	got, err := dst.Fetch(ctx, smTenant(opts.From.Name, opts.OrganizationID, opts.ProjectID, opts.ReadToken))
	if err != nil {
		return rep, fmt.Errorf("verify: fetch project %s with the tenant's access token: %w", opts.ProjectID, err)
	}
	pe := compare(want, got)
	rep.Extra = pe.Extra
	if len(pe.Missing)+len(pe.Different)+len(pe.Extra) > 0 {
		return rep, pe
	}
	rep.Verified = true
	return rep, nil
}

// smTenant is the Secrets Manager tenant that reads project with token.
func smTenant(name, org, project string, token fetch.Secret) fetch.Tenant {
	return fetch.Tenant{Name: name, Backend: fetch.BackendSM, OrganizationID: org,
		ProjectIDs: []string{project}, AccessToken: token}
}

// compare checks got against want byte for byte.
func compare(want, got fetch.Env) *ParityError {
	pe := &ParityError{}
	for _, k := range want.Keys() {
		v, ok := got[k]
		switch {
		case !ok:
			pe.Missing = append(pe.Missing, k)
		case v != want[k]:
			pe.Different = append(pe.Different, k)
		}
	}
	for _, k := range got.Keys() {
		if _, ok := want[k]; !ok {
			pe.Extra = append(pe.Extra, k)
		}
	}
	return pe
}

func sortAll(r *Report) {
	for _, l := range [][]string{r.Created, r.Updated, r.Unchanged, r.Deleted} {
		sort.Strings(l)
	}
}
