package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/state"
)

const maxNoteLen = 200

func runToken(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 {
		return usageErr("token needs a subcommand: mint, list or revoke")
	}
	switch args[0] {
	case "mint":
		return runTokenMint(c, args[1:])
	case "list":
		return runTokenList(c, args[1:])
	case "revoke":
		return runTokenRevoke(c, args[1:])
	}
	return usageErr("unknown token subcommand %q; want mint, list or revoke", args[0])
}

func (c *cli) stateDirFlag(fs *flag.FlagSet, dir *string) {
	fs.StringVar(dir, "state-dir", c.getenv("BROKER_STATE_DIR"), "state `DIR`, mode 0700 (env BROKER_STATE_DIR)")
}

func runTokenMint(c *cli, args []string) error {
	fs := c.newFlagSet("token mint", "--state-dir DIR --tenant T [--tenant T2...] [--key GLOB...] [--ttl DUR] [--note TEXT]")
	var dir, note string
	var tenants, keys stringList
	var ttl time.Duration
	c.stateDirFlag(fs, &dir)
	fs.Var(&tenants, "tenant", "a `TENANT` the token may read (repeatable; at least one)")
	fs.Var(&keys, "key", "a key `GLOB` the token may read, e.g. 'DB_*' (repeatable; default: every key)")
	fs.DurationVar(&ttl, "ttl", 0, "lifetime, e.g. 720h (default: no expiry)")
	fs.StringVar(&note, "note", "", "a `TEXT` shown by 'token list', e.g. who holds the token")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	if dir == "" {
		return usageErr("--state-dir is required (or set BROKER_STATE_DIR)")
	}
	if len(tenants) == 0 {
		return usageErr("at least one --tenant is required")
	}
	seen := map[string]bool{}
	for _, t := range tenants {
		if !scope.ValidTenantName(t) {
			return usageErr("--tenant %q: tenant names match ^[a-z0-9][a-z0-9_-]{0,62}$", t)
		}
		if seen[t] {
			return usageErr("--tenant %q given twice", t)
		}
		seen[t] = true
	}
	for _, k := range keys {
		if !scope.ValidKeyGlob(k) {
			return usageErr("--key %q: want an env name or a glob of one (letters, digits, _, and * ? [...])", k)
		}
	}
	if ttl < 0 {
		return usageErr("--ttl must be positive")
	}
	if len(note) > maxNoteLen || strings.ContainsFunc(note, unicode.IsControl) {
		return usageErr("--note must be at most %d characters with no control characters", maxNoteLen)
	}
	if scope.LooksLikeToken(note) {
		return usageErr("--note looks like a caller token; never put a token in a note")
	}
	if err := state.EnsureStateDir(dir); err != nil {
		return err
	}
	tok, id, err := mintToken(dir, tenants, keys, ttl, note)
	if err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, tok.Reveal())
	c.infof("minted token %s for %s; it is shown once, store it now", id, strings.Join(tenants, ","))
	return nil
}

// mintToken mints a token and stores its hash and scope in dir's token store.
func mintToken(dir string, tenants, keys []string, ttl time.Duration, note string) (scope.Token, string, error) {
	tok, id, hash, err := scope.MintToken(rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("failed to mint a token: %v", err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	rec := scope.TokenRecord{ID: id, Hash: hash, Tenants: tenants, Keys: keys, Note: note, Created: now}
	if ttl > 0 {
		rec.Expires = now.Add(ttl)
	}
	if err := state.OpenTokenFile(dir).Update(func(s *scope.TokenStore) error { return s.Add(rec) }); err != nil {
		return "", "", fmt.Errorf("failed to store the token: %v", err)
	}
	return tok, id, nil
}

func runTokenList(c *cli, args []string) error {
	fs := c.newFlagSet("token list", "--state-dir DIR")
	var dir string
	c.stateDirFlag(fs, &dir)
	if err := parse(fs, args, false); err != nil {
		return err
	}
	if dir == "" {
		return usageErr("--state-dir is required (or set BROKER_STATE_DIR)")
	}
	if err := state.CheckPrivateDir(dir); err != nil {
		return err
	}
	store, err := state.OpenTokenFile(dir).Load()
	if err != nil {
		return err
	}
	for _, r := range store.Tokens {
		keys := "*"
		if len(r.Keys) > 0 {
			keys = strings.Join(r.Keys, ",")
		}
		exp := "never"
		if !r.Expires.IsZero() {
			exp = r.Expires.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(c.stdout, "%s\t%s\t%s\t%s\t%s\n", r.ID, strings.Join(r.Tenants, ","), keys, exp, r.Note)
	}
	return nil
}

func runTokenRevoke(c *cli, args []string) error {
	fs := c.newFlagSet("token revoke", "--state-dir DIR ID")
	var dir string
	c.stateDirFlag(fs, &dir)
	if err := parse(fs, args, true); err != nil {
		return err
	}
	// Accept flags after the id too (token revoke ID --state-dir DIR).
	rest := fs.Args()
	if len(rest) > 1 {
		if err := parse(fs, rest[1:], false); err != nil {
			return err
		}
		rest = rest[:1]
	}
	if len(rest) != 1 {
		return usageErr("token revoke takes exactly one token id (see 'broker token list')")
	}
	if dir == "" {
		return usageErr("--state-dir is required (or set BROKER_STATE_DIR)")
	}
	id := rest[0]
	if scope.LooksLikeToken(id) {
		return withCode(exitUsage, fmt.Errorf("that is a caller token, not a token id"),
			"pass the id from 'broker token list'; and since the token was pasted, treat it as exposed")
	}
	found := false
	err := state.OpenTokenFile(dir).Update(func(s *scope.TokenStore) error {
		found = s.Remove(id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("failed to update the token store: %v", err)
	}
	if !found {
		return withCode(exitFailure, fmt.Errorf("no token with id %q", id), "see 'broker token list'")
	}
	c.infof("revoked token %s; a running broker refuses it within a second", id)
	return nil
}
