package fetch

// This file is the Secrets Manager backend in pure Go: the client pool, the
// upstream limiter, retries and error mapping. The upstream is reached only
// through the narrow smClient interface, implemented twice: by the SDK
// adapter in sm_sdk.go (cgo; absent in builds without cgo, see sm_nosdk.go)
// and by the pure-Go client in sm_native.go. SMConfig.Client picks one.

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// Defaults for SMConfig.
const (
	DefaultSMMaxClients    = 64
	DefaultSMRatePerSec    = 5
	DefaultSMBurst         = 5
	DefaultSMMaxConcurrent = 4
)

const (
	smBackoffBase   = 200 * time.Millisecond // first retry waits about this long
	smBackoffCap    = 5 * time.Second        // no single backoff is longer
	smMaxAttempts   = 5                      // attempts per operation, whatever the deadline
	smMaxRetryAfter = 30 * time.Second       // a larger Retry-After is not waited for
	// smMinAttempt is the least time left before the deadline for which a
	// retry is still started: an attempt that cannot finish is not made.
	smMinAttempt = 50 * time.Millisecond

	// smSyncSkew is taken off the time recorded for a sync, so that a clock
	// of ours running ahead of the upstream's cannot hide a change made
	// just before a sync. Within this window after a change a refresh
	// fetches the full set again: still one request.
	smSyncSkew = time.Minute

	smStateFilePrefix = "sm-"
	smStateFileSuffix = ".state"

	// Limits the SDK enforces on Create/Update (it counts characters).
	smMaxValueChars = 25000
	smMaxKeyChars   = 500

	// smCallLimit is how long one client call may run before it is
	// abandoned: its concurrency slot is released and its client replaced
	// (closed when, if ever, the call returns). The SDK's reqwest client
	// has no overall timeout, so an upstream that accepts a connection and
	// never answers would otherwise pin a slot forever, and MaxConcurrent
	// such calls would stop every Secrets Manager tenant. 90 s is above
	// the resolver's default FetchTimeout (60 s), so no caller with the
	// default deadline still waits for a call that is abandoned, and above
	// the native client's bound on one HTTP exchange (60 s); it is below
	// two fetch timeouts, so a hung upstream costs at most one failed
	// refresh round before the slots are free again.
	smCallLimit = 90 * time.Second
	// smMaxHung bounds the abandoned calls that have not returned yet.
	// Each one keeps an OS thread, a socket and (SDK) a tokio runtime;
	// past this many, an abandoned call keeps its slot until it returns,
	// so that a permanently hanging upstream cannot exhaust threads.
	smMaxHung = 64
)

// SMConfig configures the Secrets Manager backend. Both URLs are required:
// the SDK silently talks to bitwarden.com when one is missing.
type SMConfig struct {
	// APIURL and IdentityURL are the Secrets Manager endpoints, for example
	// https://api.bitwarden.com and https://identity.bitwarden.com. A
	// trailing slash is removed (the SDK appends "/path").
	APIURL, IdentityURL string
	// StateDir holds one SDK state file per access token (the JWT and the
	// organization key, encrypted under the token's key), so that a client
	// re-created after eviction or a restart does not log in again. It is
	// created 0700 and must not be accessible by other users. Empty means
	// no state files (every new client logs in).
	StateDir string
	// MaxClients bounds the live SDK clients (each owns a thread pool);
	// the least recently used one is closed when more are needed.
	// Default DefaultSMMaxClients.
	MaxClients int
	// RatePerSec and Burst shape every SDK call that can reach the
	// upstream, across all tenants: API calls (sync, list, writes) share
	// one limiter, and logins, which go to the separate identity service,
	// another with the same shape. Bitwarden rate-limits the two services
	// apart; one shared budget would make a cold start (a login and a sync
	// per tenant) twice as slow as the API's own limit requires.
	// Defaults DefaultSMRatePerSec and DefaultSMBurst.
	RatePerSec float64
	Burst      int
	// MaxConcurrent bounds upstream calls in flight. Default
	// DefaultSMMaxConcurrent.
	MaxConcurrent int
	// Logger receives operational events (never tokens or values).
	// Default slog.Default().
	Logger *slog.Logger
	// Client picks the Secrets Manager client: SMClientSDK (sdk-go, cgo),
	// SMClientNative (pure Go), or "" for SMClientDefault(). Both keep the
	// same state files, limiter, retries and error kinds.
	Client string
}

// Secrets Manager clients (SMConfig.Client, policy upstream.sm.client).
const (
	SMClientSDK    = "sdk"
	SMClientNative = "native"
)

// SMClientDefault returns the client an empty SMConfig.Client means:
// SMClientSDK when this build includes the SDK, SMClientNative otherwise.
func SMClientDefault() string {
	if smNewSDKClient != nil {
		return SMClientSDK
	}
	return SMClientNative
}

// SMStats are counters for metrics. All counts are since NewSM.
type SMStats struct {
	// Logins counts AccessTokenLogin calls. A login that the SDK satisfies
	// from a valid state file makes no identity request but is counted.
	Logins int64
	// Requests counts SDK calls that can reach the upstream (logins
	// included). An unchanged tenant costs one request per refresh.
	Requests int64
	// Retries counts attempts repeated after a 429, 5xx or connection error.
	Retries int64
	// LiveClients is the number of SDK clients created and not yet closed.
	LiveClients int64
	// Evictions counts clients pushed out of the pool because it was full.
	Evictions int64
	// Dropped counts clients discarded because the upstream refused their
	// access token.
	Dropped int64
	// Abandoned counts calls that had not returned after the call limit
	// (smCallLimit): each one's client was replaced and, unless too many
	// were still hanging, its concurrency slot released.
	Abandoned int64
}

// SM is the Secrets Manager backend. It implements Backend and is safe for
// concurrent use. It keeps one SDK client per access token, logged in once,
// and refreshes a tenant with one Sync request when nothing changed.
//
// The SDK's calls cannot be cancelled: a caller waits on its own context, and
// a call it abandons finishes in the background; its result still updates the
// client's state and its client is never closed while the call runs. A call
// still running after the call limit (smCallLimit) is given up: its
// concurrency slot is released, its client leaves the pool (the next call for
// the token gets a new one) and is closed when the call returns, if ever.
type SM struct {
	apiURL, identityURL string
	stateDir            string
	log                 *slog.Logger
	newClient           func(apiURL, identityURL string) (smClient, error) // nil: no client (tests only)
	clientKind          string                                             // SMClientSDK or SMClientNative ("" in tests)
	limiter             *rate.Limiter                                      // API calls
	loginLimiter        *rate.Limiter                                      // identity logins
	sem                 chan struct{}
	pool                *smPool
	stats               smCounters
	syncSkew            time.Duration // smSyncSkew; tests set 0
	callLimit           time.Duration // smCallLimit; tests shorten it
	maxHung             int64         // smMaxHung; tests lower it
	hung                atomic.Int64  // abandoned calls not yet returned
}

type smCounters struct {
	logins, requests, retries, live, evictions, dropped, abandoned atomic.Int64
}

// smClient is what the backend calls on one SDK client. Errors are the SDK's
// raw strings, which may hold response bodies, JWTs or values: they are
// classified at once (classifySDKError) and never kept, logged or returned.
type smClient interface {
	Login(accessToken, stateFile string) error
	// Sync returns every visible secret of org with its value when changed
	// is true; when lastSynced is non-nil and nothing changed since, it
	// returns changed=false and no secrets.
	Sync(orgID string, lastSynced *time.Time) (changed bool, secrets []smSecret, err error)
	// List returns the visible secrets of org, without values.
	List(orgID string) ([]smSecretID, error)
	// ProjectExists reports whether the project with this id is visible to
	// the logged-in account (GET {api}/projects/{id}); it reads no secret.
	// A 404 (the account cannot read it, or it does not exist) is false
	// with a nil error.
	ProjectExists(projectID string) (bool, error)
	Create(orgID, projectID, key, value, note string) (smSecret, error)
	Update(id, orgID, projectID, key, value, note string) (smSecret, error)
	Delete(ids []string) error
	// Close frees the client; it is called once, when no call is running.
	Close()
}

// smSecret is one secret as the SDK returns it. ProjectID is the first
// project the secret belongs to ("" if none).
type smSecret struct {
	ID, OrganizationID, ProjectID, Key, Value, Note string
}

// smSecretID is a secret without its value (List).
type smSecretID struct {
	ID, OrganizationID, Key string
}

// SMSupported reports whether this build includes the Secrets Manager SDK
// (cgo on linux or darwin, amd64 or arm64). The native client is in every
// build; see SMClientDefault.
func SMSupported() bool { return smNewSDKClient != nil }

// NewSM returns a Secrets Manager backend using the client cfg.Client names
// (see SMClientDefault). It refuses empty or malformed URLs, an unknown
// client, and SMClientSDK in a build without the SDK; it creates StateDir,
// removes RUST_LOG from the environment (at debug level the SDK prints
// client secrets) and, when a proxy variable is set, adds loopback upstream
// hosts to NO_PROXY (reqwest proxies even 127.0.0.1).
func NewSM(cfg SMConfig) (*SM, error) {
	kind := cfg.Client
	if kind == "" {
		kind = SMClientDefault()
	}
	var newClient func(apiURL, identityURL string) (smClient, error)
	switch kind {
	case SMClientSDK:
		if smNewSDKClient == nil {
			return nil, fmt.Errorf("secrets manager client %q is not in this build: sdk-go needs cgo on linux or darwin, amd64 or arm64 (build with CGO_ENABLED=1 and a C compiler); or set upstream.sm.client to %q, the pure-Go client", SMClientSDK, SMClientNative)
		}
		newClient = smNewSDKClient
	case SMClientNative:
		newClient = smNewNativeClient
	default:
		return nil, fmt.Errorf("secrets manager client %q is unknown: use %q, %q or leave it empty", cfg.Client, SMClientSDK, SMClientNative)
	}
	s, err := newSM(cfg, newClient)
	if err != nil {
		return nil, err
	}
	s.clientKind = kind
	return s, nil
}

// Client returns the client this backend uses: SMClientSDK or SMClientNative.
func (s *SM) Client() string { return s.clientKind }

func newSM(cfg SMConfig, newClient func(apiURL, identityURL string) (smClient, error)) (*SM, error) {
	apiURL, err := checkSMURL("api", cfg.APIURL)
	if err != nil {
		return nil, err
	}
	identityURL, err := checkSMURL("identity", cfg.IdentityURL)
	if err != nil {
		return nil, err
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = DefaultSMMaxClients
	}
	if cfg.RatePerSec <= 0 {
		cfg.RatePerSec = DefaultSMRatePerSec
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultSMBurst
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultSMMaxConcurrent
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StateDir != "" {
		if err := ensurePrivateDir(cfg.StateDir); err != nil {
			return nil, err
		}
	}

	// The SDK reads these when a client is created: never let it inherit
	// RUST_LOG, and keep loopback upstreams away from any proxy.
	os.Unsetenv("RUST_LOG")
	for _, u := range []string{apiURL, identityURL} {
		ensureNoProxy(u)
		if pu, err := url.Parse(u); err == nil && pu.Scheme == "http" && !isLoopbackHost(pu.Hostname()) {
			cfg.Logger.Warn("sm: upstream URL uses plain http to a non-loopback host; access tokens travel in clear", "url", u)
		}
	}

	s := &SM{
		apiURL:       apiURL,
		identityURL:  identityURL,
		stateDir:     cfg.StateDir,
		log:          cfg.Logger,
		newClient:    newClient,
		limiter:      rate.NewLimiter(rate.Limit(cfg.RatePerSec), cfg.Burst),
		loginLimiter: rate.NewLimiter(rate.Limit(cfg.RatePerSec), cfg.Burst),
		sem:          make(chan struct{}, cfg.MaxConcurrent),
		syncSkew:     smSyncSkew,
		callLimit:    smCallLimit,
		maxHung:      smMaxHung,
	}
	s.pool, err = newSMPool(cfg.MaxClients, s)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// checkSMURL validates one upstream URL and removes a trailing slash.
func checkSMURL(name, raw string) (string, error) {
	if raw == "" {
		return "", fmt.Errorf("secrets manager %s url is empty: set upstream.sm.%s_url in the policy (an unset url would send tokens to bitwarden.com)", name, name)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("secrets manager %s url %q is not an http(s) url without query or credentials", name, raw)
	}
	return strings.TrimRight(raw, "/"), nil
}

// ensurePrivateDir creates dir 0700, or checks that an existing one is a
// directory that other users cannot reach.
func ensurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("secrets manager state dir: %v", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("secrets manager state dir: %v", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("secrets manager state dir %q is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("secrets manager state dir %q is accessible by other users (mode %04o); run chmod 700 %q", dir, fi.Mode().Perm(), dir)
	}
	return nil
}

var proxyVars = []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"}

// ensureNoProxy makes NO_PROXY and no_proxy cover rawURL's host when it is a
// loopback host and a proxy variable is set.
func ensureNoProxy(rawURL string) {
	u, err := url.Parse(rawURL)
	if err != nil || !isLoopbackHost(u.Hostname()) {
		return
	}
	proxied := false
	for _, v := range proxyVars {
		if os.Getenv(v) != "" {
			proxied = true
		}
	}
	if !proxied {
		return
	}
	host := u.Hostname()
	for _, name := range []string{"NO_PROXY", "no_proxy"} {
		cur := os.Getenv(name)
		if name == "NO_PROXY" && cur == "" {
			cur = os.Getenv("no_proxy")
		}
		if noProxyCovers(cur, host) {
			continue
		}
		if cur != "" {
			cur += ","
		}
		os.Setenv(name, cur+host)
	}
}

func noProxyCovers(list, host string) bool {
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if e == "*" || strings.EqualFold(e, host) || strings.EqualFold(strings.Trim(e, "[]"), host) {
			return true
		}
	}
	return false
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Stats returns the current counters.
func (s *SM) Stats() SMStats {
	return SMStats{
		Logins:      s.stats.logins.Load(),
		Requests:    s.stats.requests.Load(),
		Retries:     s.stats.retries.Load(),
		LiveClients: s.stats.live.Load(),
		Evictions:   s.stats.evictions.Load(),
		Dropped:     s.stats.dropped.Load(),
		Abandoned:   s.stats.abandoned.Load(),
	}
}

// Close closes every idle client; a client still running a call is closed
// when the call returns. Later calls fail.
func (s *SM) Close() { s.pool.close() }

// Fetch returns the tenant's env: every secret visible to its access token
// whose first project is one of t.ProjectIDs. The first fetch for a token
// logs in (or restores the state file) and syncs everything; later fetches
// cost one Sync request, answered from the kept set when nothing changed.
func (s *SM) Fetch(ctx context.Context, t Tenant) (Env, error) {
	tok, err := s.checkTenant(t)
	if err != nil {
		return nil, err
	}
	hint := tokenHint(t)
	e, err := s.pool.acquire(tok)
	if err != nil {
		return nil, NewError(KindUnavailable, t.Name, "the Secrets Manager backend is shut down", err)
	}
	defer s.pool.release(e)

	if err := s.ensureLogin(ctx, e, t.AccessToken); err != nil {
		return nil, s.mapErr(t.Name, hint, err)
	}
	org := strings.ToLower(t.OrganizationID)
	var (
		secrets []smSecret
		changed bool
	)
	err = s.do(ctx, e, s.limiter, opRead, nil, func(c smClient) error {
		st := e.orgs[org]
		var last *time.Time
		if st != nil {
			l := st.synced
			last = &l
		}
		// Taken before the request (and a margin for clock skew): a change
		// racing the request is seen next time.
		start := time.Now().Add(-s.syncSkew)
		ch, got, err := c.Sync(org, last)
		if err != nil {
			return err
		}
		changed = st == nil || ch
		if changed {
			st = &smOrgState{secrets: got}
			e.orgs[org] = st
		}
		st.synced = start
		secrets = st.secrets
		return nil
	})
	if err != nil {
		return nil, s.mapErr(t.Name, hint, err)
	}
	s.log.Debug("sm: synced", "tenant", t.Name, "changed", changed)
	return buildSMEnv(t, secrets)
}

// buildSMEnv keeps the secrets whose project is one of the tenant's.
func buildSMEnv(t Tenant, secrets []smSecret) (Env, error) {
	projects := make(map[string]bool, len(t.ProjectIDs))
	for _, p := range t.ProjectIDs {
		projects[strings.ToLower(p)] = true
	}
	b := EnvBuilder{Tenant: t.Name}
	for _, sec := range secrets {
		if !projects[strings.ToLower(sec.ProjectID)] {
			continue
		}
		if err := b.Add(sec.Key, sec.Value); err != nil {
			return nil, err
		}
	}
	return b.Env(), nil
}

// ErrNotResolved is the cause of the KindConfig error a backend's Check
// returns when the tenant's credentials were accepted but its project
// (Secrets Manager) or collection (bw fallback) does not resolve: it does not
// exist or the account cannot see it. Test with errors.Is.
var ErrNotResolved = errors.New("does not resolve")

// Check logs in with the tenant's access token, lists its organization's
// secrets and checks that each of t.ProjectIDs is visible to the token's
// machine account, without reading any value: it tells whether the tenant
// would work. A project that does not resolve is a KindConfig error naming
// it, with cause ErrNotResolved.
func (s *SM) Check(ctx context.Context, t Tenant) error {
	tok, err := s.checkTenant(t)
	if err != nil {
		return err
	}
	hint := tokenHint(t)
	e, err := s.pool.acquire(tok)
	if err != nil {
		return NewError(KindUnavailable, t.Name, "the Secrets Manager backend is shut down", err)
	}
	defer s.pool.release(e)
	if err := s.ensureLogin(ctx, e, t.AccessToken); err != nil {
		return s.mapErr(t.Name, hint, err)
	}
	org := strings.ToLower(t.OrganizationID)
	err = s.do(ctx, e, s.limiter, opRead, nil, func(c smClient) error {
		_, err := c.List(org)
		return err
	})
	if err != nil {
		return s.mapErr(t.Name, hint, err)
	}
	for _, p := range t.ProjectIDs {
		var ok bool
		err := s.do(ctx, e, s.limiter, opRead, nil, func(c smClient) error {
			var err error
			ok, err = c.ProjectExists(strings.ToLower(p))
			return err
		})
		if err != nil {
			return s.mapErr(t.Name, hint, err)
		}
		if !ok {
			return NewError(KindConfig, t.Name, fmt.Sprintf("project %s is not visible to tenant %s's machine account; grant it read access or fix tenants.%s.project_ids", p, t.Name, t.Name), ErrNotResolved)
		}
	}
	return nil
}

// Upsert makes project projectID of organization orgID hold env, using an
// access token that may write there (for broker migrate). A secret whose
// value already matches is left alone; one that differs is updated (its note
// kept); a missing one is created. With prune, secrets of the project whose
// key is not in env are deleted. The lists hold key names, sorted. On error
// they tell what was done before it (a write cut by ctx's deadline finishes
// in the background and is not listed). Values must be 1 to 25000
// characters (the SDK refuses empty values). An updated secret ends up in
// projectID only: the SDK reports one project per secret.
func (s *SM) Upsert(ctx context.Context, accessToken Secret, orgID, projectID string, env Env, prune bool) (created, updated, unchanged, deleted []string, err error) {
	const hint = "the access token given to the migration"
	if s.newClient == nil {
		return nil, nil, nil, nil, errNoSDK("")
	}
	tok, reason := parseAccessToken(accessToken.Reveal())
	if reason != "" {
		return nil, nil, nil, nil, NewError(KindConfig, "", "the access token given to the migration is not a Secrets Manager access token (0.<id>.<secret>:<key>)", errors.New(reason))
	}
	if !isUUID(orgID) || !isUUID(projectID) {
		return nil, nil, nil, nil, NewError(KindConfig, "", "the organization and project ids must be UUIDs", nil)
	}
	org, project := strings.ToLower(orgID), strings.ToLower(projectID)
	keys := env.Keys()
	for _, k := range keys {
		v := env[k]
		switch n := utf8.RuneCountInString(v); {
		case !ValidKey(k) || len(k) > smMaxKeyChars:
			return nil, nil, nil, nil, NewError(KindData, "", fmt.Sprintf("key %s is not a valid environment name", quoteKey(k)), nil)
		case n == 0:
			return nil, nil, nil, nil, NewError(KindData, "", fmt.Sprintf("the value of %s is empty, which Secrets Manager cannot store; set a value or leave the key out", quoteKey(k)), nil)
		case n > smMaxValueChars || !utf8.ValidString(v):
			return nil, nil, nil, nil, NewError(KindData, "", fmt.Sprintf("the value of %s is longer than %d characters or not UTF-8, which Secrets Manager cannot store", quoteKey(k), smMaxValueChars), nil)
		}
	}

	e, perr := s.pool.acquire(tok)
	if perr != nil {
		return nil, nil, nil, nil, NewError(KindUnavailable, "", "the Secrets Manager backend is shut down", perr)
	}
	defer s.pool.release(e)
	if err := s.ensureLogin(ctx, e, accessToken); err != nil {
		return nil, nil, nil, nil, s.mapErr("", hint, err)
	}

	// Read the current state: one request returns every visible secret.
	var all []smSecret
	err = s.do(ctx, e, s.limiter, opRead, nil, func(c smClient) error {
		start := time.Now().Add(-s.syncSkew)
		_, got, err := c.Sync(org, nil)
		if err == nil {
			all = got
			e.orgs[org] = &smOrgState{synced: start, secrets: got}
		}
		return err
	})
	if err != nil {
		return nil, nil, nil, nil, s.mapErr("", hint, err)
	}
	current := make(map[string]smSecret)
	for _, sec := range all {
		if !strings.EqualFold(sec.ProjectID, project) {
			continue
		}
		if _, dup := current[sec.Key]; dup {
			return nil, nil, nil, nil, NewError(KindData, "", fmt.Sprintf("the project holds key %s more than once; remove the duplicate in Secrets Manager first", quoteKey(sec.Key)), nil)
		}
		current[sec.Key] = sec
	}

	// Writes invalidate the kept sync state of the organization.
	write := func(kind smOpKind, op func(c smClient) error) error {
		return s.do(ctx, e, s.limiter, kind, nil, func(c smClient) error {
			delete(e.orgs, org)
			return op(c)
		})
	}
	for _, k := range keys {
		v := env[k]
		cur, ok := current[k]
		switch {
		case !ok:
			err = write(opCreate, func(c smClient) error {
				_, err := c.Create(org, project, k, v, "")
				return err
			})
			if err != nil {
				return created, updated, unchanged, deleted, s.mapErr("", hint, err)
			}
			created = append(created, k)
		case cur.Value != v:
			err = write(opWrite, func(c smClient) error {
				_, err := c.Update(cur.ID, org, project, k, v, cur.Note)
				return err
			})
			if err != nil {
				return created, updated, unchanged, deleted, s.mapErr("", hint, err)
			}
			updated = append(updated, k)
		default:
			unchanged = append(unchanged, k)
		}
	}
	if prune {
		var ids, gone []string
		for k, sec := range current {
			if _, keep := env[k]; !keep {
				ids = append(ids, sec.ID)
				gone = append(gone, k)
			}
		}
		if len(ids) > 0 {
			sort.Strings(gone)
			err = write(opWrite, func(c smClient) error { return c.Delete(ids) })
			if err != nil {
				return created, updated, unchanged, deleted, s.mapErr("", hint, err)
			}
			deleted = gone
		}
	}
	return created, updated, unchanged, deleted, nil
}

// smToken is a parsed, well-formed access token.
type smToken struct {
	id   string   // the access-token id (lowercase)
	hash [32]byte // sha256 of raw: the pool key
}

// checkTenant validates what Fetch and Check need before any SDK call.
func (s *SM) checkTenant(t Tenant) (smToken, error) {
	if s.newClient == nil {
		return smToken{}, errNoSDK(t.Name)
	}
	if t.Backend != "" && t.Backend != BackendSM {
		return smToken{}, NewError(KindConfig, t.Name, fmt.Sprintf("tenant uses backend %q, not %q", t.Backend, BackendSM), nil)
	}
	if !isUUID(t.OrganizationID) {
		return smToken{}, NewError(KindConfig, t.Name, fmt.Sprintf("tenants.%s.organization_id must be a UUID", t.Name), nil)
	}
	if len(t.ProjectIDs) == 0 {
		return smToken{}, NewError(KindConfig, t.Name, fmt.Sprintf("tenants.%s.project_ids is empty; list the tenant's Secrets Manager projects", t.Name), nil)
	}
	for i, p := range t.ProjectIDs {
		if !isUUID(p) {
			return smToken{}, NewError(KindConfig, t.Name, fmt.Sprintf("tenants.%s.project_ids[%d] must be a UUID", t.Name, i), nil)
		}
	}
	if t.AccessToken == "" {
		return smToken{}, NewError(KindConfig, t.Name, fmt.Sprintf("no access token: set %s in the provider env file", tokenVar(t)), nil)
	}
	tok, reason := parseAccessToken(t.AccessToken.Reveal())
	if reason != "" {
		return smToken{}, NewError(KindConfig, t.Name,
			fmt.Sprintf("%s does not hold a Secrets Manager access token (0.<id>.<secret>:<key>); copy the whole token as Secrets Manager showed it", tokenVar(t)),
			errors.New(reason))
	}
	return tok, nil
}

// errNoSDK is the error of every SM call in a build without the SDK.
func errNoSDK(tenant string) *Error {
	return NewError(KindConfig, tenant,
		"this broker was built without the Secrets Manager SDK (it needs cgo on linux or darwin, amd64 or arm64); "+
			"set upstream.sm.client to \"native\", rebuild with CGO_ENABLED=1 and a C compiler, or move the tenant to backend \"bwcli\"", nil)
}

// tokenVar names the variable a tenant's access token came from.
func tokenVar(t Tenant) string {
	if t.CredentialsFrom != "" {
		return t.CredentialsFrom
	}
	return fmt.Sprintf("the variable named by tenants.%s.access_token_env", t.Name)
}

func tokenHint(t Tenant) string {
	if t.CredentialsFrom != "" {
		return "the access token in " + t.CredentialsFrom
	}
	return fmt.Sprintf("the access token named by tenants.%s.access_token_env", t.Name)
}

// parseAccessToken checks the format the SDK requires (protocol §2) so that a
// malformed token never reaches the SDK. The reason names the failing part,
// never its content; it is "" for a well-formed token.
func parseAccessToken(tok string) (smToken, string) {
	left, key, ok := strings.Cut(tok, ":")
	if !ok {
		return smToken{}, "no decryption key after ':'"
	}
	parts := strings.Split(left, ".")
	if len(parts) != 3 {
		return smToken{}, "wrong number of '.'-separated parts"
	}
	if parts[0] != "0" {
		return smToken{}, "unsupported version (want 0)"
	}
	if !isUUID(parts[1]) {
		return smToken{}, "the id is not a UUID"
	}
	if parts[2] == "" || strings.ContainsFunc(parts[2], func(r rune) bool { return r <= ' ' || r == 0x7f || r >= 0x80 }) {
		return smToken{}, "the client secret is empty or has invalid characters"
	}
	enc := base64.StdEncoding
	if len(key)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	b, err := enc.Strict().DecodeString(key)
	if err != nil {
		return smToken{}, "the decryption key is not base64"
	}
	if len(b) != 16 {
		return smToken{}, "the decryption key is not 16 bytes"
	}
	return smToken{id: strings.ToLower(parts[1]), hash: sha256.Sum256([]byte(tok))}, ""
}

// isUUID reports whether s is a UUID, hyphenated (8-4-4-4-12) or 32 hex digits.
func isUUID(s string) bool {
	switch len(s) {
	case 36:
		for i := 0; i < 36; i++ {
			c := s[i]
			if i == 8 || i == 13 || i == 18 || i == 23 {
				if c != '-' {
					return false
				}
			} else if !isHex(c) {
				return false
			}
		}
		return true
	case 32:
		for i := 0; i < 32; i++ {
			if !isHex(s[i]) {
				return false
			}
		}
		return true
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// statePath returns the state file of a token ("" without a state dir). Its
// name hashes the token id, so it reveals nothing of the token.
func (s *SM) statePath(tok smToken) string {
	if s.stateDir == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(tok.id))
	return filepath.Join(s.stateDir, smStateFilePrefix+hex.EncodeToString(sum[:16])+smStateFileSuffix)
}

// prepareStateFile pre-creates path 0600 (without truncating it) so that the
// SDK's write keeps that mode.
func prepareStateFile(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("state file: %v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("state file: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		if err := f.Chmod(0o600); err != nil {
			return fmt.Errorf("state file: %v", err)
		}
	}
	return nil
}

// ensureLogin logs e's client in once. When it is logged in already, it
// costs nothing (no limiter token, no request).
func (s *SM) ensureLogin(ctx context.Context, e *smEntry, token Secret) error {
	loggedIn := func() bool { return e.loggedIn }
	return s.do(ctx, e, s.loginLimiter, opRead, loggedIn, func(c smClient) error {
		state := s.statePath(e.tok)
		if state != "" {
			if err := prepareStateFile(state); err != nil {
				// The login still works; it just is not kept.
				s.log.Warn("sm: cannot prepare the state file; logging in without it", "err", err)
				state = ""
			}
		}
		s.stats.logins.Add(1)
		if err := c.Login(token.Reveal(), state); err != nil {
			return err
		}
		e.loggedIn = true
		return nil
	})
}

// smOpKind says which failures may be retried.
type smOpKind int

const (
	opRead   smOpKind = iota // idempotent: retry 429, 5xx, connection errors
	opWrite                  // idempotent write (update, delete): same
	opCreate                 // not idempotent: retry only 429 (refused before any effect)
)

// do runs op on e's client, retrying 429, 5xx and (for idempotent ops)
// connection failures with exponential backoff and jitter, or the
// Retry-After the upstream gave (the native client reads the header; the
// SDK drops headers, so only a Retry-After repeated in an error body counts). It never starts an attempt it cannot
// wait for before ctx's deadline. It returns nil, an *smFailure (classified
// upstream failure) or an *Error (deadline, cancel, local).
func (s *SM) do(ctx context.Context, e *smEntry, lim *rate.Limiter, kind smOpKind, skip func() bool, op func(c smClient) error) error {
	for attempt := 1; ; attempt++ {
		err := s.call(ctx, e, lim, skip, op)
		f, ok := err.(*smFailure)
		if !ok {
			return err
		}
		if !f.retryable(kind) || attempt >= smMaxAttempts {
			return f
		}
		wait := backoff(attempt)
		if f.retryAfter > 0 {
			wait = f.retryAfter
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait+smMinAttempt {
			return f
		}
		s.stats.retries.Add(1)
		s.log.Info("sm: retrying", "cause", f.cause, "attempt", attempt+1, "wait", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctxError(ctx)
		}
	}
}

// backoff returns the wait before attempt+1: exponential from smBackoffBase,
// capped at smBackoffCap, with "equal jitter" (half fixed, half random).
func backoff(attempt int) time.Duration {
	d := smBackoffBase << (attempt - 1)
	if d > smBackoffCap || d <= 0 {
		d = smBackoffCap
	}
	return d/2 + rand.N(d/2+1)
}

// call runs op once. It takes, each honouring ctx, e's lock (calls on one
// client are serialized), then, unless skip (called with the lock held)
// reports true, a limiter token and a concurrency slot; then op
// runs in its own goroutine, which holds the lock, the slot and a reference
// to e until the SDK returns, whether or not the caller still waits.
func (s *SM) call(ctx context.Context, e *smEntry, lim *rate.Limiter, skip func() bool, op func(c smClient) error) error {
	select {
	case e.lock <- struct{}{}:
	case <-e.hung:
		return errCallHung()
	case <-ctx.Done():
		return ctxError(ctx)
	}
	handedOff := false
	defer func() {
		if !handedOff {
			<-e.lock
		}
	}()
	select {
	case <-e.hung:
		// The lock came free because the hung call returned; its client
		// is out of the pool and is closed once its users leave.
		return errCallHung()
	default:
	}
	if skip != nil && skip() {
		return nil
	}
	if err := lim.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return ctxError(ctx)
		}
		return NewError(KindTimeout, "", "the upstream rate limit leaves no room before the caller's deadline; retry later", errors.New("local rate limit"))
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctxError(ctx)
	}
	s.pool.retain(e)
	handedOff = true
	done := make(chan error, 1)
	go func() {
		w := s.watch(e)
		var err error
		// The slot, the lock and the reference are given back before
		// the result, so a caller that got it sees them released.
		defer func() { done <- err }()
		defer s.pool.release(e)
		defer func() { w.returned(); <-e.lock }()
		err = s.run(e, op)
	}()
	select {
	case err := <-done:
		return err
	case <-e.hung:
		select {
		case err := <-done: // returned just as it was given up
			return err
		default:
		}
		return errCallHung()
	case <-ctx.Done():
		return ctxError(ctx)
	}
}

// errCallHung is what the callers of a call given up after the call limit
// get. It is not retried on the same client: the caller's next request gets
// a new one.
func errCallHung() *Error {
	return NewError(KindUnavailable, "", "Secrets Manager did not answer within the call limit; the client was replaced, retry later", errors.New("upstream call hung"))
}

// run executes op on e's client (created on first use) with e's lock held.
// The raw SDK error is classified here and dropped.
func (s *SM) run(e *smEntry, op func(c smClient) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("sm: panic in an sdk call", "panic", fmt.Sprintf("%T", r))
			err = &smFailure{class: classSDK, cause: "sdk call panicked"}
		}
	}()
	if e.client == nil {
		c, cerr := s.newClient(s.apiURL, s.identityURL)
		if cerr != nil {
			return &smFailure{class: classSDK, cause: "sdk client init failed"}
		}
		e.client = c
		s.stats.live.Add(1)
	}
	s.stats.requests.Add(1)
	err = op(e.client)
	if err == nil {
		return nil
	}
	f := classifySDKError(err)
	if f.class == classCredentials && f.status != 403 {
		// The upstream refused this token: drop the client (a later call
		// logs in afresh) and its state file (its JWT is no good). A 403
		// is about access, not the token: the client stays.
		e.loggedIn = false
		s.pool.drop(e)
		if path := s.statePath(e.tok); path != "" {
			os.Remove(path)
		}
	}
	return f
}

func ctxError(ctx context.Context) *Error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return NewError(KindTimeout, "", "Secrets Manager did not answer before the deadline; the call finishes in the background, retry later", context.DeadlineExceeded)
	}
	return NewError(KindCanceled, "", "the request was canceled", context.Canceled)
}

// smClass is the category of an SDK failure.
type smClass int

const (
	classSDK         smClass = iota // the SDK itself failed, or an unknown error
	classCredentials                // token refused (400 invalid_client, 401, 403, identity error)
	classRateLimited                // 429
	classServer                     // 5xx, 408
	classTransport                  // connection refused/reset, body cut short
	classMAC                        // integrity check failed
	classMalformed                  // response could not be parsed
	classNotFound                   // 404
	classClient                     // another 4xx
	classBadToken                   // access token format (should be caught earlier)
	classInput                      // the SDK refused our input (validation)
)

// smFailure is a classified SDK failure. cause is a fixed, safe category
// ("upstream answered 503", "mac mismatch"); the raw SDK text is not kept.
type smFailure struct {
	class      smClass
	status     int
	retryAfter time.Duration
	cause      string
}

func (f *smFailure) Error() string { return f.cause }

func (f *smFailure) retryable(kind smOpKind) bool {
	switch f.class {
	case classRateLimited:
		return true
	case classServer, classTransport:
		return kind != opCreate
	}
	return false
}

var (
	reStatus = regexp.MustCompile(`Received error message from server: \[([1-5]\d\d)\b`)
	// The SDK drops response headers, so a Retry-After header is invisible;
	// only a Retry-After that the upstream repeats in its body (the SDK puts
	// the body into the error text) can be honoured. Otherwise we back off.
	reRetryAfter = regexp.MustCompile(`(?i)retry[-_ ]?after\W{0,4}(\d{1,5}(?:\.\d{1,3})?)`)
)

// classifySDKError maps a client error to a category: the native client's
// typed errors (*smHTTPError and the errNative* sentinels) directly, the
// SDK's error text by pattern. The SDK's text can hold response bodies, JWTs
// and values: nothing of it survives except the status code and a
// Retry-After number. Both clients map the same situation to the same class
// and cause (sm_diff_test.go checks it).
func classifySDKError(err error) *smFailure {
	if f, ok := err.(*smFailure); ok {
		return f
	}
	if f := classifyNativeError(err); f != nil {
		return f
	}
	msg := err.Error()
	if m := reStatus.FindStringSubmatch(msg); m != nil {
		code, _ := strconv.Atoi(m[1])
		oauth := ""
		for _, c := range []string{"invalid_client", "invalid_grant", "unauthorized_client"} {
			if strings.Contains(msg, c) {
				oauth = c
				break
			}
		}
		var retryAfter time.Duration
		if code == 429 {
			if m := reRetryAfter.FindStringSubmatch(msg); m != nil {
				if sec, err := strconv.ParseFloat(m[1], 64); err == nil && sec >= 0 {
					retryAfter = time.Duration(sec * float64(time.Second))
					if retryAfter > smMaxRetryAfter {
						retryAfter = smMaxRetryAfter
					}
					if retryAfter == 0 {
						retryAfter = time.Millisecond
					}
				}
			}
		}
		return classifyStatus(code, oauth, retryAfter)
	}
	switch {
	case strings.Contains(msg, "Access token is not in a valid format"):
		return &smFailure{class: classBadToken, cause: "access token format"}
	case strings.Contains(msg, "Error parsing Identity response"):
		return &smFailure{class: classCredentials, cause: "identity refused the login"}
	case containsAny(msg, "error sending request", "error trying to connect", "connection refused",
		"connection reset", "connection closed", "error reading a body", "IncompleteMessage",
		"operation timed out", "dns error",
		// reqwest's text() failing: the body was cut short (observed with a
		// truncated response). A body that is not JSON reads as serde's
		// "expected value at line 1 column 1" instead.
		"error decoding response body"):
		return &smFailure{class: classTransport, cause: "connection failed"}
	case containsAny(msg, "MAC", "mac is missing", "Mac"):
		return &smFailure{class: classMAC, cause: "mac mismatch"}
	case containsAny(msg, "Cryptography error", "EncString error", "Invalid padding", "decrypt"):
		return &smFailure{class: classMAC, cause: "decryption failed"}
	case containsAny(msg, "Invalid command value", "must not be", "Validation", "validation", "exceeds", "must be"):
		return &smFailure{class: classInput, cause: "the sdk refused the input"}
	case containsAny(msg, "missing a required field", "missing field", "expected ", "invalid type", "EOF while parsing",
		"premature end", "failed to unmarshal", "invalid value", "trailing characters", "error decoding", "parsing", "parse"):
		return &smFailure{class: classMalformed, cause: "malformed response"}
	case containsAny(msg, "run command failed", "initialization failed"):
		return &smFailure{class: classSDK, cause: "sdk call failed"}
	}
	return &smFailure{class: classSDK, cause: "unrecognized sdk error"}
}

// classifyStatus categorizes an upstream HTTP status. oauth is the OAuth
// error code of a refused login ("" if none); retryAfter is what the
// upstream asked for (0: not given).
func classifyStatus(code int, oauth string, retryAfter time.Duration) *smFailure {
	f := &smFailure{status: code, retryAfter: retryAfter, cause: fmt.Sprintf("upstream answered %d", code)}
	switch {
	case code >= 200 && code < 300:
		f.class, f.cause = classMalformed, "unexpected identity response shape"
	case code == 401 || code == 403:
		f.class = classCredentials
		if oauth == "invalid_client" {
			f.cause += " invalid_client"
		}
	case code == 400 && (oauth == "invalid_client" || oauth == "invalid_grant" || oauth == "unauthorized_client"):
		// IdentityServer's answer to refused client credentials (at
		// login, or at a renewal inside another call).
		f.class, f.cause = classCredentials, "upstream answered 400 invalid_client"
	case code == 404:
		f.class = classNotFound
	case code == 429:
		f.class = classRateLimited
	case code == 408 || code >= 500:
		f.class = classServer
	default:
		f.class = classClient
	}
	return f
}

// classifyNativeError categorizes the native client's typed errors; it
// returns nil for anything else. The causes are the ones the SDK's text
// gets for the same situation.
func classifyNativeError(err error) *smFailure {
	var he *smHTTPError
	if errors.As(err, &he) {
		return classifyStatus(he.Status, he.OAuthError, he.RetryAfter)
	}
	switch {
	case errors.Is(err, errNativeMAC):
		return &smFailure{class: classMAC, cause: "mac mismatch"}
	case errors.Is(err, errNativeDecrypt):
		return &smFailure{class: classMAC, cause: "decryption failed"}
	case errors.Is(err, errNativeIdentityShape):
		return &smFailure{class: classMalformed, cause: "unexpected identity response shape"}
	case errors.Is(err, errNativeMalformed):
		return &smFailure{class: classMalformed, cause: "malformed response"}
	case errors.Is(err, errNativeLoginRefused):
		return &smFailure{class: classCredentials, cause: "identity refused the login"}
	case errors.Is(err, errNativeConn):
		return &smFailure{class: classTransport, cause: "connection failed"}
	case errors.Is(err, errNativeBadToken):
		return &smFailure{class: classBadToken, cause: "access token format"}
	case errors.Is(err, errNativeInput):
		return &smFailure{class: classInput, cause: "the sdk refused the input"}
	case errors.Is(err, errNativeNotLoggedIn):
		return &smFailure{class: classSDK, cause: "sdk call failed"}
	}
	return nil
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// mapErr turns a do/call error into the *Error a caller sees. hint names
// where the access token comes from.
func (s *SM) mapErr(tenant, hint string, err error) error {
	var fe *Error
	if errors.As(err, &fe) {
		if fe.Tenant == "" {
			c := *fe
			c.Tenant = tenant
			return &c
		}
		return fe
	}
	f, ok := err.(*smFailure)
	if !ok {
		return NewError(KindUpstream, tenant, "the Secrets Manager call failed", errors.New("internal error"))
	}
	cause := errors.New(f.cause)
	if f.class != classCredentials {
		s.log.Warn("sm: upstream call failed", "tenant", tenant, "cause", f.cause)
	}
	switch f.class {
	case classCredentials:
		s.log.Warn("sm: access token refused", "tenant", tenant, "cause", f.cause)
		if f.status == 403 {
			return NewError(KindCredentials, tenant, "Secrets Manager denied this access token the request; give its machine account access to the project, or check "+hint, cause)
		}
		return NewError(KindCredentials, tenant, "the access token was refused by Secrets Manager; check or re-issue "+hint, cause)
	case classRateLimited, classTransport:
		return NewError(KindUnavailable, tenant, "Secrets Manager is unreachable or rate limiting; retry later", cause)
	case classServer:
		return NewError(KindUpstream, tenant, "Secrets Manager answered with a server error; retry later", cause)
	case classMAC:
		return NewError(KindUpstream, tenant, "data from Secrets Manager failed its integrity check; if it persists, check the upstream or re-issue "+hint, cause)
	case classMalformed:
		return NewError(KindUpstream, tenant, "Secrets Manager sent a response the SDK could not read; check the upstream URLs in the policy", cause)
	case classNotFound:
		return NewError(KindUpstream, tenant, "Secrets Manager does not know the organization or secret; check the tenant's organization_id", cause)
	case classClient:
		return NewError(KindUpstream, tenant, "Secrets Manager refused the request", cause)
	case classBadToken:
		return NewError(KindConfig, tenant, hint+" is not in the Secrets Manager format", cause)
	case classInput:
		return NewError(KindData, tenant, "the Secrets Manager SDK refused the data (a key, value or note outside its limits)", cause)
	}
	return NewError(KindUpstream, tenant, "the Secrets Manager SDK failed", cause)
}

// smEntry is one access token's SDK client and what it remembers.
type smEntry struct {
	tok smToken

	// lock is a one-slot semaphore held from before an SDK call until it
	// returns (by the goroutine that runs it). It guards the fields below.
	lock     chan struct{}
	client   smClient
	loggedIn bool
	orgs     map[string]*smOrgState // by lowercase organization id

	// hung is closed when a call on this client ran past the call limit:
	// the entry is out of the pool and no further call starts on it.
	hung chan struct{}

	// Guarded by smPool.mu.
	refs     int  // callers and running calls
	gone     bool // out of the pool: no new users, closed at refs == 0
	closed   bool
	poisoned bool // hung is closed
}

// smOrgState is what the last successful sync of an organization gave.
type smOrgState struct {
	synced  time.Time  // taken just before that request
	secrets []smSecret // the full set (never modified, only replaced)
}

// smPool is the bounded LRU of live clients, keyed by SHA-256 of the token.
type smPool struct {
	s       *SM
	mu      sync.Mutex
	lru     *simplelru.LRU[[32]byte, *smEntry]
	closing []*smEntry // evicted with no user, to close after mu is released
	shut    bool
}

var errPoolClosed = errors.New("backend closed")

func newSMPool(size int, s *SM) (*smPool, error) {
	p := &smPool{s: s}
	l, err := simplelru.NewLRU[[32]byte, *smEntry](size, p.onEvict)
	if err != nil {
		return nil, fmt.Errorf("secrets manager client pool: %v", err)
	}
	p.lru = l
	return p, nil
}

// onEvict runs under p.mu whenever an entry leaves the LRU.
func (p *smPool) onEvict(_ [32]byte, e *smEntry) {
	e.gone = true
	if e.refs == 0 && !e.closed {
		e.closed = true
		p.closing = append(p.closing, e)
	}
}

func (p *smPool) acquire(tok smToken) (*smEntry, error) {
	p.mu.Lock()
	if p.shut {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	e, ok := p.lru.Get(tok.hash)
	if !ok {
		e = &smEntry{tok: tok, lock: make(chan struct{}, 1), hung: make(chan struct{}), orgs: make(map[string]*smOrgState)}
		if p.lru.Add(tok.hash, e) {
			p.s.stats.evictions.Add(1)
			p.s.log.Debug("sm: client pool full; evicted the least recently used client")
		}
	}
	e.refs++
	closing := p.takeClosing()
	p.mu.Unlock()
	p.closeAll(closing)
	return e, nil
}

func (p *smPool) retain(e *smEntry) {
	p.mu.Lock()
	e.refs++
	p.mu.Unlock()
}

func (p *smPool) release(e *smEntry) {
	p.mu.Lock()
	e.refs--
	if e.refs == 0 && e.gone && !e.closed {
		e.closed = true
		p.closing = append(p.closing, e)
	}
	closing := p.takeClosing()
	p.mu.Unlock()
	p.closeAll(closing)
}

// drop takes e out of the pool (if still there); it is closed when its last
// user leaves.
func (p *smPool) drop(e *smEntry) {
	p.mu.Lock()
	if cur, ok := p.lru.Peek(e.tok.hash); ok && cur == e {
		p.lru.Remove(e.tok.hash)
		p.s.stats.dropped.Add(1)
	}
	closing := p.takeClosing()
	p.mu.Unlock()
	p.closeAll(closing)
}

// poison takes e out of the pool (if still there) because one of its calls
// hangs, and wakes everyone waiting on it. e is closed when its last user
// leaves, which is after the hung call returns.
func (p *smPool) poison(e *smEntry) {
	p.mu.Lock()
	if cur, ok := p.lru.Peek(e.tok.hash); ok && cur == e {
		p.lru.Remove(e.tok.hash)
	}
	e.gone = true
	if !e.poisoned {
		e.poisoned = true
		close(e.hung)
	}
	closing := p.takeClosing()
	p.mu.Unlock()
	p.closeAll(closing)
}

func (p *smPool) close() {
	p.mu.Lock()
	p.shut = true
	p.lru.Purge()
	closing := p.takeClosing()
	p.mu.Unlock()
	p.closeAll(closing)
}

func (p *smPool) takeClosing() []*smEntry {
	c := p.closing
	p.closing = nil
	return c
}

// closeAll closes entries that no call uses any more (refs == 0, so no
// goroutine holds their lock or client).
func (p *smPool) closeAll(es []*smEntry) {
	for _, e := range es {
		if e.client != nil {
			e.client.Close()
			e.client = nil
			p.s.stats.live.Add(-1)
		}
	}
}
