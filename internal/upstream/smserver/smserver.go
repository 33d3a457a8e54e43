// Package smserver is an in-repo Bitwarden Secrets Manager upstream for
// tests and for `broker dev`. It is NEVER a production server: it keeps
// everything in memory, listens on loopback only, speaks plain HTTP, and has
// no persistence, no users, no audit and no rate limiting of its own.
//
// # What it implements
//
// Exactly what the real github.com/bitwarden/sdk-go v1.0.2 sends and
// expects (see /work/shared/protocols/secrets-manager.md), with the real
// cryptography:
//
//   - POST /identity/connect/token: the client_credentials login of a
//     machine-account access token. The answer has exactly the "payload"
//     shape the SDK recognizes; its encrypted_payload is a type-2 EncString,
//     under the key derived from the token's 16-byte secret, of
//     {"encryptionKey": b64(organization key)}. Like the real server, this
//     server never keeps the 16-byte key: it stores the payload already
//     encrypted when the token is created, and only a SHA-256 hash of the
//     client secret. Failures answer 400 {"error":"invalid_client"}.
//   - JWT access tokens signed with HMAC-SHA256 under a server-random key,
//     verified on every API call; they carry the token id, so revoking a
//     token also refuses the JWTs already issued for it (401).
//   - The API calls of the SDK's secrets and projects operations: list,
//     get-by-ids, sync (with lastSyncedDate), get, create, update and delete
//     of secrets; list and get of projects. Every result is filtered by what
//     the caller's machine account may read; anything else answers 404, as
//     if it did not exist.
//   - Every secret key, value and note and every project name is a fresh
//     type-2 EncString under its organization's random 64-byte key.
//
// # What it does not implement
//
// Users, the password manager, project create/update/delete, access policy
// management over HTTP, pagination, HTTPS, the real server's exact sync
// semantics (see [Server] for the ones used here), and any rate limiting
// other than injected [Fault]s.
//
// # Test hooks
//
// Seeding methods (AddOrganization, AddSecret, GrantRead, NewAccessToken, …)
// build the state; [Server.Stats] counts requests; [Server.InjectFault]
// queues faults (status codes, delays, resets, truncated or non-JSON bodies,
// tampered MACs); [Server.Stop] and [Server.StartAt] take the upstream down
// and bring it back on the same port with its state kept.
//
// All methods are safe for concurrent use. The request log (Options.Logf)
// never carries bodies, tokens or secret values.
package smserver

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hostd/broker/internal/bwcrypto"
)

// Limits and defaults.
const (
	// DefaultTokenLifetime is the JWT lifetime when Options.TokenLifetime is 0.
	DefaultTokenLifetime = time.Hour
	// maxBodyBytes bounds every request body.
	maxBodyBytes = 1 << 20 // 1 MiB
	// clientSecretLen is the length of a generated client secret.
	clientSecretLen = 30
	// accessTokenScope is the only scope machine accounts get.
	accessTokenScope = "api.secrets"
)

// Options configures a Server.
type Options struct {
	// TokenLifetime is the JWT lifetime announced as expires_in; default 1h.
	// The SDK logs in again before every call when it is 300 s or less, so
	// keep it well above that unless a test wants exactly that.
	TokenLifetime time.Duration
	// Logf, when set, receives one line per request (method, path, status,
	// duration). It never receives bodies, tokens or secret values.
	Logf func(format string, args ...any)
}

// Server is an in-memory Secrets Manager upstream. It implements
// http.Handler, serving /identity/... and /api/....
//
// Sync semantics: a sync with a lastSyncedDate reports changes when a
// secret in a project the account can read was created, updated, moved or
// deleted after that date, or when the account's grants changed after it.
type Server struct {
	opts   Options
	mux    *http.ServeMux
	jwtKey []byte

	mu       sync.Mutex // guards the state below
	orgs     map[string]*org
	projects map[string]*project
	secrets  map[string]*secret
	accounts map[string]*account
	tokens   map[string]*accessToken
	lastTime time.Time // last timestamp handed out; strictly increasing

	fmu    sync.Mutex // guards faults
	faults []*queuedFault

	stats statsCounters

	lmu    sync.Mutex // guards the listener state below
	srv    *http.Server
	addr   string        // address of the current or last listener
	down   chan struct{} // closed when the current listener stops
	closed bool
}

type org struct {
	id   string
	name string
	key  *bwcrypto.Key
}

type project struct {
	id, orgID string
	name      string // EncString under the org key
	created   time.Time
	revised   time.Time
	changed   time.Time // last create/update/move/delete of a secret in it
}

type secret struct {
	id, orgID, projectID string
	key, value, note     string // EncStrings under the org key
	created, revised     time.Time
}

type account struct {
	id, orgID     string
	read, write   map[string]bool // project id -> granted
	grantsChanged time.Time
}

type accessToken struct {
	id, accountID string
	secretHash    [sha256.Size]byte
	payload       string // EncString of {"encryptionKey":…} under the access-token key
	revoked       bool
}

// New returns a Server with no state; call Start to listen, or use it as an
// http.Handler.
func New(opts Options) *Server {
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = DefaultTokenLifetime
	}
	s := &Server{
		opts:     opts,
		jwtKey:   make([]byte, 32),
		orgs:     map[string]*org{},
		projects: map[string]*project{},
		secrets:  map[string]*secret{},
		accounts: map[string]*account{},
		tokens:   map[string]*accessToken{},
	}
	rand.Read(s.jwtKey)
	s.stats.byRoute = map[string]int64{}
	s.routes()
	return s
}

// Start listens on 127.0.0.1 on a free port and serves in the background.
func (s *Server) Start() error { return s.StartAt("127.0.0.1:0") }

// StartAt listens on addr, which must be a loopback address (for example
// the address of an earlier listener, to come back "up" on the same port),
// and serves in the background. It fails if the server is already listening
// or was closed.
func (s *Server) StartAt(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("smserver: listen address %q: %v", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("smserver: listen address %q: not a loopback address", addr)
	}
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		return errors.New("smserver: start: server is closed")
	}
	if s.srv != nil {
		return errors.New("smserver: start: already listening")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("smserver: listen: %v", err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.srv = srv
	s.addr = ln.Addr().String()
	s.down = make(chan struct{})
	go srv.Serve(ln)
	return nil
}

// Stop stops listening and closes every open connection (the upstream is
// "down"); requests then fail with connection refused. The state is kept;
// Start or StartAt(the old address) serve it again.
func (s *Server) Stop() {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.srv == nil {
		return
	}
	s.srv.Close() // first: a handler woken by down must find its connection closed
	close(s.down)
	s.srv = nil
}

// Close stops the server for good; Start fails afterwards.
func (s *Server) Close() {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	s.stopLocked()
	s.closed = true
}

// Addr returns the host:port of the current (or last) listener, "" if the
// server never listened.
func (s *Server) Addr() string {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return s.addr
}

// URL returns http://127.0.0.1:PORT of the current (or last) listener.
func (s *Server) URL() string { return "http://" + s.Addr() }

// APIURL returns URL()+"/api", the SDK's apiUrl.
func (s *Server) APIURL() string { return s.URL() + "/api" }

// IdentityURL returns URL()+"/identity", the SDK's identityUrl.
func (s *Server) IdentityURL() string { return s.URL() + "/identity" }

// downChan returns the channel closed when the current listener stops (nil
// when not listening, e.g. when used as a plain http.Handler).
func (s *Server) downChan() <-chan struct{} {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return s.down
}

// ---- seeding ----

// newUUID returns a random (version 4) UUID in lowercase.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// nowLocked returns the current UTC time, strictly after every time it
// returned before, so that each change has its own instant.
func (s *Server) nowLocked() time.Time {
	t := time.Now().UTC().Round(0)
	if !t.After(s.lastTime) {
		t = s.lastTime.Add(time.Nanosecond)
	}
	s.lastTime = t
	return t
}

// AddOrganization creates an organization with a fresh random 64-byte key.
func (s *Server) AddOrganization(name string) (orgID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := &org{id: newUUID(), name: name, key: bwcrypto.NewKey()}
	s.orgs[o.id] = o
	return o.id
}

// AddProject creates a project in orgID. It panics if orgID is unknown
// (seeding is the caller's code, not input).
func (s *Server) AddProject(orgID, name string) (projectID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.mustOrg(orgID)
	now := s.nowLocked()
	p := &project{id: newUUID(), orgID: o.id, name: bwcrypto.EncryptString(o.key, name), created: now, revised: now, changed: now}
	s.projects[p.id] = p
	return p.id
}

// AddSecret creates a secret in orgID and project projectID ("" for none:
// then no machine account can see it). Any value is accepted, the empty one
// included. It panics if orgID or projectID is unknown.
func (s *Server) AddSecret(orgID, projectID, key, value, note string) (secretID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.mustOrg(orgID)
	if projectID != "" {
		s.mustProject(o.id, projectID)
	}
	now := s.nowLocked()
	sec := &secret{
		id: newUUID(), orgID: o.id, projectID: projectID,
		key:     bwcrypto.EncryptString(o.key, key),
		value:   bwcrypto.EncryptString(o.key, value),
		note:    bwcrypto.EncryptString(o.key, note),
		created: now, revised: now,
	}
	s.secrets[sec.id] = sec
	s.touchLocked(projectID, now)
	return sec.id
}

// UpdateSecret replaces the value of a secret and bumps its revision date,
// so that Sync reports a change.
func (s *Server) UpdateSecret(secretID, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, ok := s.secrets[secretID]
	if !ok {
		return fmt.Errorf("smserver: update secret %s: not found", secretID)
	}
	now := s.nowLocked()
	sec.value = bwcrypto.EncryptString(s.orgs[sec.orgID].key, value)
	sec.revised = now
	s.touchLocked(sec.projectID, now)
	return nil
}

// DeleteSecret deletes a secret; Sync reports the deletion as a change.
func (s *Server) DeleteSecret(secretID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, ok := s.secrets[secretID]
	if !ok {
		return fmt.Errorf("smserver: delete secret %s: not found", secretID)
	}
	delete(s.secrets, secretID)
	s.touchLocked(sec.projectID, s.nowLocked())
	return nil
}

// AddMachineAccount creates a machine account (service account) in orgID,
// with no grants. It panics if orgID is unknown.
func (s *Server) AddMachineAccount(orgID string) (accountID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.mustOrg(orgID)
	a := &account{id: newUUID(), orgID: o.id, read: map[string]bool{}, write: map[string]bool{}, grantsChanged: s.nowLocked()}
	s.accounts[a.id] = a
	return a.id
}

// GrantRead lets accountID read the secrets of projectID. It panics if
// either is unknown or they belong to different organizations.
func (s *Server) GrantRead(accountID, projectID string) {
	s.grant(accountID, projectID, false)
}

// GrantWrite lets accountID read the secrets of projectID and create or
// update secrets in it. It panics like GrantRead.
func (s *Server) GrantWrite(accountID, projectID string) {
	s.grant(accountID, projectID, true)
}

func (s *Server) grant(accountID, projectID string, write bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.mustAccount(accountID)
	s.mustProject(a.orgID, projectID)
	a.read[projectID] = true
	if write {
		a.write[projectID] = true
	}
	a.grantsChanged = s.nowLocked()
}

// NewAccessToken mints an access token for accountID, in the SDK's format
// "0.<tokenID>.<30 alphanumerics>:<base64 of 16 bytes>". The server keeps
// only a SHA-256 hash of the client secret and the login payload already
// encrypted under the token's key; the 16-byte key itself is forgotten. It
// panics if accountID is unknown.
func (s *Server) NewAccessToken(accountID string) (token, tokenID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.mustAccount(accountID)
	o := s.orgs[a.orgID]

	clientSecret := randomAlnum(clientSecretLen)
	var key16 [16]byte
	rand.Read(key16[:])
	atKey, err := bwcrypto.AccessTokenKey(key16[:])
	if err != nil {
		panic("smserver: " + err.Error()) // impossible: the key is 16 bytes
	}
	payload, err := json.Marshal(struct {
		EncryptionKey string `json:"encryptionKey"`
	}{base64.StdEncoding.EncodeToString(o.key.Bytes())})
	if err != nil {
		panic("smserver: " + err.Error())
	}
	t := &accessToken{
		id:         newUUID(),
		accountID:  a.id,
		secretHash: sha256.Sum256([]byte(clientSecret)),
		payload:    bwcrypto.Encrypt(atKey, payload),
	}
	s.tokens[t.id] = t
	token = "0." + t.id + "." + clientSecret + ":" + base64.StdEncoding.EncodeToString(key16[:])
	return token, t.id
}

// RevokeAccessToken revokes a token: later logins with it get 400
// invalid_client, and API calls with JWTs issued for it get 401.
func (s *Server) RevokeAccessToken(tokenID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[tokenID]; ok {
		t.revoked = true
	}
}

// SecretsOf returns key -> value of the secrets stored in orgID and
// projectID ("" for secrets without a project), decrypting what is stored.
// It is meant for parity checks in tests.
func (s *Server) SecretsOf(orgID, projectID string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	o, ok := s.orgs[orgID]
	if !ok {
		return out
	}
	for _, sec := range s.secrets {
		if sec.orgID != orgID || sec.projectID != projectID {
			continue
		}
		k, err1 := bwcrypto.DecryptString(o.key, sec.key)
		v, err2 := bwcrypto.DecryptString(o.key, sec.value)
		if err1 != nil || err2 != nil {
			continue // impossible: everything stored was checked
		}
		out[k] = v
	}
	return out
}

func (s *Server) mustOrg(id string) *org {
	o, ok := s.orgs[id]
	if !ok {
		panic(fmt.Sprintf("smserver: unknown organization %q", id))
	}
	return o
}

func (s *Server) mustProject(orgID, id string) *project {
	p, ok := s.projects[id]
	if !ok || p.orgID != orgID {
		panic(fmt.Sprintf("smserver: unknown project %q in organization %q", id, orgID))
	}
	return p
}

func (s *Server) mustAccount(id string) *account {
	a, ok := s.accounts[id]
	if !ok {
		panic(fmt.Sprintf("smserver: unknown machine account %q", id))
	}
	return a
}

// touchLocked records a change of the secrets of a project at t.
func (s *Server) touchLocked(projectID string, t time.Time) {
	if p, ok := s.projects[projectID]; ok {
		p.changed = t
	}
}

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// randomAlnum returns n uniformly random alphanumeric characters.
func randomAlnum(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = alnum[randIntn(len(alnum))]
	}
	return string(b)
}

// randIntn returns a uniform random int in [0, n) from crypto/rand, n <= 256.
func randIntn(n int) int {
	limit := 256 - 256%n
	var b [1]byte
	for {
		rand.Read(b[:])
		if int(b[0]) < limit {
			return int(b[0]) % n
		}
	}
}

// ---- counters ----

// Stats are request counters.
type Stats struct {
	Logins   int64            // POST /identity/connect/token calls (any outcome)
	Requests int64            // other calls, API ones mostly (any outcome)
	ByRoute  map[string]int64 // by ServeMux pattern, e.g. "GET /api/organizations/{org}/secrets/sync"; "unmatched" for the rest
	Writes   int64            // successful secret creates/updates through the API
}

type statsCounters struct {
	logins, requests, writes atomic.Int64
	mu                       sync.Mutex
	byRoute                  map[string]int64
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Logins:   s.stats.logins.Load(),
		Requests: s.stats.requests.Load(),
		Writes:   s.stats.writes.Load(),
		ByRoute:  map[string]int64{},
	}
	s.stats.mu.Lock()
	for k, v := range s.stats.byRoute {
		st.ByRoute[k] = v
	}
	s.stats.mu.Unlock()
	return st
}

// ResetStats sets every counter to zero.
func (s *Server) ResetStats() {
	s.stats.mu.Lock()
	s.stats.logins.Store(0)
	s.stats.requests.Store(0)
	s.stats.writes.Store(0)
	s.stats.byRoute = map[string]int64{}
	s.stats.mu.Unlock()
}

func (s *Server) count(route string, login bool) {
	if login {
		s.stats.logins.Add(1)
	} else {
		s.stats.requests.Add(1)
	}
	s.stats.mu.Lock()
	s.stats.byRoute[route]++
	s.stats.mu.Unlock()
}
