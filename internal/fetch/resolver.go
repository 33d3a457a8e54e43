package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/sync/singleflight"
)

// Sources of a resolved env, as reported in responses, audit lines and metrics.
const (
	SourceCache = "cache"
	SourceStale = "stale"
	// SourceSM and SourceBWCLI are the backend names BackendSM and BackendBWCLI.
)

// ResolverConfig configures a Resolver. The zero value of each field selects
// the default documented on it.
type ResolverConfig struct {
	// TTL is how long a fetched env is served from the cache. Zero disables
	// caching (every request goes upstream, still collapsed by singleflight).
	TTL time.Duration
	// StaleIfError is how long past its TTL a cached env may still be served
	// when the upstream fails. Zero disables it.
	StaleIfError time.Duration
	// MaxTenants bounds the number of cached envs (default 1024).
	MaxTenants int
	// FetchTimeout bounds one upstream fetch, which runs detached from any
	// single caller so that one impatient caller does not fail the others
	// waiting on the same flight (default 60s).
	FetchTimeout time.Duration
	// Now is the clock (default time.Now); tests set it.
	Now func() time.Time
}

// Result is a resolved env and where it came from.
type Result struct {
	Env       Env
	Source    string    // SourceCache, SourceStale, BackendSM or BackendBWCLI
	FetchedAt time.Time // when the env was fetched upstream
}

// Stale reports whether the result is a stale answer served because the
// upstream failed.
func (r Result) Stale() bool { return r.Source == SourceStale }

type cacheEntry struct {
	env       Env
	fetchedAt time.Time
}

// Resolver answers "give me tenant T's env": from its cache when fresh,
// otherwise from T's backend, collapsing concurrent misses for one tenant
// into one upstream fetch. It never authorizes: callers must decide first
// (see internal/scope) and only then call Resolve.
//
// A Resolver is safe for concurrent use.
type Resolver struct {
	cfg      ResolverConfig
	backends map[string]Backend
	base     context.Context
	cache    *expirable.LRU[string, cacheEntry] // nil when caching is off
	flights  singleflight.Group
	keys     sync.Map // tenant name → memoKey
	hits     atomic.Int64
	misses   atomic.Int64
}

// NewResolver returns a Resolver over the backends, keyed by backend name
// (BackendSM, BackendBWCLI). Fetches it starts run under base (cancel it at
// shutdown) and FetchTimeout.
func NewResolver(base context.Context, cfg ResolverConfig, backends map[string]Backend) *Resolver {
	if cfg.MaxTenants <= 0 {
		cfg.MaxTenants = 1024
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 60 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Resolver{cfg: cfg, backends: backends, base: base}
	if keep := cfg.TTL + cfg.StaleIfError; keep > 0 {
		r.cache = expirable.NewLRU[string, cacheEntry](cfg.MaxTenants, nil, keep)
	}
	return r
}

// cacheKey identifies a tenant's env under one configuration: a policy or
// credential change gives the tenant a new key, so nothing fetched under the
// old configuration is served under the new one.
func cacheKey(t Tenant) string {
	h := sha256.New()
	for _, s := range []string{t.Name, t.Backend, t.OrganizationID, strings.Join(t.ProjectIDs, ","),
		t.AccessToken.Reveal(), t.Collection, t.ClientID.Reveal(), t.ClientSecret.Reveal(), t.Password.Reveal()} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	return t.Name + "/" + hex.EncodeToString(h.Sum(nil)[:16])
}

// keyOf returns cacheKey(t), memoized per tenant name: the hash is
// recomputed only when the tenant's configuration differs in any field from
// the one it was computed for (the comparison is cheaper than the hash).
func (r *Resolver) keyOf(t Tenant) string {
	if m, ok := r.keys.Load(t.Name); ok {
		if mk := m.(memoKey); sameTenant(mk.t, t) {
			return mk.key
		}
	}
	k := cacheKey(t)
	t.ProjectIDs = slices.Clone(t.ProjectIDs) // the memo must not alias the caller's slice
	r.keys.Store(t.Name, memoKey{t: t, key: k})
	return k
}

type memoKey struct {
	t   Tenant
	key string
}

// sameTenant reports whether a and b have the same configuration, field by
// field (everything cacheKey hashes).
func sameTenant(a, b Tenant) bool {
	return a.Name == b.Name && a.Backend == b.Backend && a.OrganizationID == b.OrganizationID &&
		slices.Equal(a.ProjectIDs, b.ProjectIDs) && a.AccessToken == b.AccessToken &&
		a.Collection == b.Collection && a.ClientID == b.ClientID &&
		a.ClientSecret == b.ClientSecret && a.Password == b.Password
}

// Resolve returns tenant t's env. The caller waits at most until ctx is done;
// the upstream fetch itself may go on for the next caller.
func (r *Resolver) Resolve(ctx context.Context, t Tenant) (Result, error) {
	key := r.keyOf(t)
	now := r.cfg.Now()
	var stale *cacheEntry
	if r.cache != nil {
		if e, ok := r.cache.Get(key); ok {
			age := now.Sub(e.fetchedAt)
			if age < r.cfg.TTL {
				r.hits.Add(1)
				return Result{Env: e.env, Source: SourceCache, FetchedAt: e.fetchedAt}, nil
			}
			if age < r.cfg.TTL+r.cfg.StaleIfError {
				stale = &e
			}
		}
	}
	r.misses.Add(1)
	b, ok := r.backends[t.Backend]
	if !ok {
		return Result{}, NewError(KindConfig, t.Name,
			fmt.Sprintf("backend %q is not available in this broker", t.Backend), nil)
	}
	ch := r.flights.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(r.base, r.cfg.FetchTimeout)
		defer cancel()
		env, err := b.Fetch(fctx, t)
		if err != nil {
			return nil, err
		}
		e := cacheEntry{env: env, fetchedAt: r.cfg.Now()}
		if r.cache != nil {
			r.cache.Add(key, e)
		}
		return e, nil
	})
	select {
	case <-ctx.Done():
		k := KindTimeout
		msg := "the upstream did not answer before the request deadline; retry later"
		if errors.Is(ctx.Err(), context.Canceled) {
			k, msg = KindCanceled, "the request was canceled"
		}
		return Result{}, NewError(k, t.Name, msg, ctx.Err())
	case res := <-ch:
		if res.Err != nil {
			if stale != nil && staleable(res.Err) {
				return Result{Env: stale.env, Source: SourceStale, FetchedAt: stale.fetchedAt}, nil
			}
			return Result{}, res.Err
		}
		e := res.Val.(cacheEntry)
		return Result{Env: e.env, Source: t.Backend, FetchedAt: e.fetchedAt}, nil
	}
}

// staleable reports whether a failure may be papered over with a stale env:
// upstream trouble yes; a revoked credential or invalid data no, since those
// are answers, not outages.
func staleable(err error) bool {
	switch KindOf(err) {
	case KindUpstream, KindUnavailable, KindTimeout:
		return true
	}
	return false
}

// Backends returns the backends the resolver fetches through.
func (r *Resolver) Backends() map[string]Backend { return r.backends }

// Purge drops every cached env (after a policy reload, for instance).
func (r *Resolver) Purge() {
	if r.cache != nil {
		r.cache.Purge()
	}
}

// CacheStats reports cache hits, misses and the number of cached envs.
func (r *Resolver) CacheStats() (hits, misses int64, size int) {
	if r.cache != nil {
		size = r.cache.Len()
	}
	return r.hits.Load(), r.misses.Load(), size
}
