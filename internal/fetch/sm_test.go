package fetch

// Tests of the Secrets Manager backend's pure-Go parts (pool, limiter,
// retries, error mapping) against a fake implementation of the narrow
// smClient interface. No cgo is needed; sm_sdk_test.go runs the real SDK.

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	testOrg      = "6f0a1c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
	testProjectA = "11111111-2222-4333-8444-555555555555"
	testProjectB = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
)

// testToken returns a well-formed access token for id n.
func testToken(n int) string {
	id := fmt.Sprintf("%08d-0000-4000-8000-000000000000", n)
	key := base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("sixteen-bytes-%02d", n%100)))
	return "0." + id + ".SecretPart" + fmt.Sprint(n) + "xyzXYZ:" + key
}

// fakeFail is a queued failure for the next call of op.
type fakeFail struct {
	op  string // "login", "sync", "list", "project", "create", "update", "delete"
	err error
}

// fakeUpstream is the state shared by every fake client.
type fakeUpstream struct {
	t  *testing.T
	mu sync.Mutex

	secrets map[string]smSecret // by id
	nextID  int
	rev     time.Time // last change

	fails    []fakeFail
	revoked  map[string]bool // tokens whose login fails
	hidden   map[string]bool // project ids ProjectExists does not find
	block    chan struct{}   // when set, Sync waits for it to be closed
	entered  chan struct{}   // when set, Sync signals it got the call
	syncLast []*time.Time    // lastSynced arguments, in order
	syncAt   []time.Time     // when each Sync call started
	states   []string        // state files passed to Login

	clients, closes, logins, syncs, lists, creates, updates, deletes int
	projectGets                                                      int
	violations                                                       []string
}

func newFakeUpstream(t *testing.T) *fakeUpstream {
	return &fakeUpstream{t: t, secrets: map[string]smSecret{}, revoked: map[string]bool{}, hidden: map[string]bool{}}
}

func (u *fakeUpstream) add(project, key, value string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.nextID++
	id := fmt.Sprintf("%08d-9999-4999-8999-999999999999", u.nextID)
	u.secrets[id] = smSecret{ID: id, OrganizationID: testOrg, ProjectID: project, Key: key, Value: value}
	u.rev = time.Now()
	return id
}

func (u *fakeUpstream) set(id, value string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.secrets[id]
	s.Value = value
	u.secrets[id] = s
	u.rev = time.Now()
}

func (u *fakeUpstream) failNext(op string, err error, n int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := 0; i < n; i++ {
		u.fails = append(u.fails, fakeFail{op, err})
	}
}

// takeFail pops the first queued failure for op (u.mu held).
func (u *fakeUpstream) takeFail(op string) error {
	for i, f := range u.fails {
		if f.op == op {
			u.fails = append(u.fails[:i:i], u.fails[i+1:]...)
			return f.err
		}
	}
	return nil
}

func (u *fakeUpstream) counts() (clients, closes, logins, syncs int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.clients, u.closes, u.logins, u.syncs
}

func (u *fakeUpstream) newClient(apiURL, identityURL string) (smClient, error) {
	if apiURL == "" || identityURL == "" {
		u.t.Errorf("newClient(%q, %q): empty url", apiURL, identityURL)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.clients++
	return &fakeClient{u: u}, nil
}

// fakeClient checks that it is never used concurrently or after Close.
type fakeClient struct {
	u      *fakeUpstream
	inUse  atomic.Int32
	closed atomic.Bool
	token  string
}

func (c *fakeClient) enter(op string) func() {
	if c.closed.Load() {
		c.u.mu.Lock()
		c.u.violations = append(c.u.violations, op+" on a closed client")
		c.u.mu.Unlock()
	}
	if c.inUse.Add(1) > 1 {
		c.u.mu.Lock()
		c.u.violations = append(c.u.violations, op+" while another call runs on the client")
		c.u.mu.Unlock()
	}
	return func() { c.inUse.Add(-1) }
}

func (c *fakeClient) Login(token, stateFile string) error {
	defer c.enter("login")()
	c.u.mu.Lock()
	defer c.u.mu.Unlock()
	c.u.logins++
	c.u.states = append(c.u.states, stateFile)
	if err := c.u.takeFail("login"); err != nil {
		return err
	}
	if c.u.revoked[token] {
		return errors.New(`API error: Received error message from server: [400 Bad Request] {"error":"invalid_client","token":"` + token + `"}`)
	}
	c.token = token
	return nil
}

func (c *fakeClient) Sync(org string, last *time.Time) (bool, []smSecret, error) {
	defer c.enter("sync")()
	start := time.Now()
	c.u.mu.Lock()
	block, entered := c.u.block, c.u.entered
	c.u.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if block != nil {
		<-block
	}
	c.u.mu.Lock()
	defer c.u.mu.Unlock()
	c.u.syncs++
	c.u.syncAt = append(c.u.syncAt, start)
	var l *time.Time
	if last != nil {
		v := *last
		l = &v
	}
	c.u.syncLast = append(c.u.syncLast, l)
	if err := c.u.takeFail("sync"); err != nil {
		return false, nil, err
	}
	if c.token == "" {
		return false, nil, errors.New("API error: Received error message from server: [401 Unauthorized] ")
	}
	if c.u.revoked[c.token] {
		return false, nil, errors.New("API error: Received error message from server: [401 Unauthorized] ")
	}
	if last != nil && !c.u.rev.After(*last) {
		return false, nil, nil
	}
	var out []smSecret
	for _, s := range c.u.secrets {
		if s.OrganizationID == org {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return true, out, nil
}

func (c *fakeClient) List(org string) ([]smSecretID, error) {
	defer c.enter("list")()
	c.u.mu.Lock()
	defer c.u.mu.Unlock()
	c.u.lists++
	if err := c.u.takeFail("list"); err != nil {
		return nil, err
	}
	var out []smSecretID
	for _, s := range c.u.secrets {
		out = append(out, smSecretID{ID: s.ID, OrganizationID: s.OrganizationID, Key: s.Key})
	}
	return out, nil
}

func (c *fakeClient) ProjectExists(id string) (bool, error) {
	defer c.enter("project")()
	c.u.mu.Lock()
	defer c.u.mu.Unlock()
	c.u.projectGets++
	if err := c.u.takeFail("project"); err != nil {
		return false, err
	}
	if c.token == "" || c.u.revoked[c.token] {
		return false, errors.New("API error: Received error message from server: [401 Unauthorized] ")
	}
	return !c.u.hidden[id], nil
}

func (c *fakeClient) Create(org, project, key, value, note string) (smSecret, error) {
	defer c.enter("create")()
	c.u.mu.Lock()
	c.u.creates++
	err := c.u.takeFail("create")
	c.u.mu.Unlock()
	if err != nil {
		return smSecret{}, err
	}
	id := c.u.add(project, key, value)
	return smSecret{ID: id, OrganizationID: org, ProjectID: project, Key: key, Value: value}, nil
}

func (c *fakeClient) Update(id, org, project, key, value, note string) (smSecret, error) {
	defer c.enter("update")()
	c.u.mu.Lock()
	c.u.updates++
	err := c.u.takeFail("update")
	c.u.mu.Unlock()
	if err != nil {
		return smSecret{}, err
	}
	c.u.set(id, value)
	return smSecret{ID: id, OrganizationID: org, ProjectID: project, Key: key, Value: value, Note: note}, nil
}

func (c *fakeClient) Delete(ids []string) error {
	defer c.enter("delete")()
	c.u.mu.Lock()
	defer c.u.mu.Unlock()
	c.u.deletes++
	if err := c.u.takeFail("delete"); err != nil {
		return err
	}
	for _, id := range ids {
		delete(c.u.secrets, id)
	}
	c.u.rev = time.Now()
	return nil
}

func (c *fakeClient) Close() {
	if c.inUse.Load() != 0 {
		c.u.mu.Lock()
		c.u.violations = append(c.u.violations, "close while a call runs")
		c.u.mu.Unlock()
	}
	if c.closed.Swap(true) {
		c.u.mu.Lock()
		c.u.violations = append(c.u.violations, "closed twice")
		c.u.mu.Unlock()
	}
	c.u.mu.Lock()
	c.u.closes++
	c.u.mu.Unlock()
}

func (u *fakeUpstream) checkViolations() {
	u.t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, v := range u.violations {
		u.t.Errorf("client misuse: %s", v)
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newFakeSM returns a backend on u with a generous limiter unless cfg says otherwise.
func newFakeSM(t *testing.T, u *fakeUpstream, cfg SMConfig) *SM {
	t.Helper()
	cfg.APIURL = "http://127.0.0.1:9/api"
	cfg.IdentityURL = "http://127.0.0.1:9/identity"
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(t.TempDir(), "sm")
	}
	if cfg.RatePerSec == 0 {
		cfg.RatePerSec, cfg.Burst = 10000, 10000
	}
	cfg.Logger = quietLogger()
	s, err := newSM(cfg, u.newClient)
	if err != nil {
		t.Fatalf("newSM: %v", err)
	}
	s.syncSkew = 0 // the fake's clock is ours
	t.Cleanup(func() {
		s.Close()
		u.checkViolations()
	})
	return s
}

func smTenant(name string, tokenN int, projects ...string) Tenant {
	return Tenant{Name: name, Backend: BackendSM, OrganizationID: testOrg, ProjectIDs: projects, AccessToken: Secret(testToken(tokenN))}
}

func wantKind(t *testing.T, err error, want Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want kind %v", want)
	}
	if got := KindOf(err); got != want {
		t.Fatalf("KindOf(%v) = %v, want %v", err, got, want)
	}
}

func TestParseAccessToken(t *testing.T) {
	good := testToken(7)
	raw := strings.TrimRight(good, "=")
	tests := []struct {
		name, tok string
		ok        bool
	}{
		{"valid", good, true},
		{"valid unpadded key", raw, true},
		{"valid upper-case id", strings.Replace(good, "00000007-0000-4000-8000", "00000007-0000-4000-8000", 1), true},
		{"no key", strings.Split(good, ":")[0], false},
		{"two parts", "0.00000007-0000-4000-8000-000000000000:" + strings.Split(good, ":")[1], false},
		{"four parts", "0.00000007-0000-4000-8000-000000000000.a.b:" + strings.Split(good, ":")[1], false},
		{"version 1", "1" + good[1:], false},
		{"bad uuid", strings.Replace(good, "00000007-0000", "0000000g-0000", 1), false},
		{"empty secret", "0.00000007-0000-4000-8000-000000000000.:" + strings.Split(good, ":")[1], false},
		{"key not base64", strings.Split(good, ":")[0] + ":!!!!", false},
		{"key 15 bytes", strings.Split(good, ":")[0] + ":" + base64.StdEncoding.EncodeToString(make([]byte, 15)), false},
		{"empty", "", false},
		{"whitespace in secret", "0.00000007-0000-4000-8000-000000000000.ab cd:" + strings.Split(good, ":")[1], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, reason := parseAccessToken(tt.tok)
			if got := reason == ""; got != tt.ok {
				t.Fatalf("parseAccessToken ok = %v (reason %q), want %v", got, reason, tt.ok)
			}
			if tt.ok && tok.id != "00000007-0000-4000-8000-000000000000" {
				t.Errorf("id = %q, want the token id", tok.id)
			}
			if reason != "" && strings.Contains(reason, "SecretPart") {
				t.Errorf("reason %q contains the token", reason)
			}
		})
	}
}

func FuzzParseAccessToken(f *testing.F) {
	f.Add(testToken(1))
	f.Add("0.x.y:z")
	f.Add("::::")
	f.Fuzz(func(t *testing.T, tok string) {
		got, reason := parseAccessToken(tok)
		if reason != "" {
			if len(tok) >= 8 && strings.Contains(reason, tok) {
				t.Fatalf("reason %q repeats the token", reason)
			}
			return
		}
		if !isUUID(got.id) {
			t.Fatalf("accepted token with id %q", got.id)
		}
		if _, _, ok := strings.Cut(tok, ":"); !ok {
			t.Fatalf("accepted a token without a key")
		}
	})
}

func TestClassifySDKError(t *testing.T) {
	const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
	tests := []struct {
		name       string
		msg        string
		class      smClass
		retryAfter time.Duration
		cause      string
	}{
		{"identity invalid_client", `API error: Received error message from server: [400 Bad Request] {"error":"invalid_client"}` + "\n", classCredentials, 0, "upstream answered 400 invalid_client"},
		{"identity 401", `API error: Received error message from server: [401 Unauthorized] {"error":"invalid_client"}`, classCredentials, 0, "upstream answered 401 invalid_client"},
		{"identity error model", "API error: Error parsing Identity response: Invalid client", classCredentials, 0, "identity refused the login"},
		{"429 text", "API error: Received error message from server: [429 Too Many Requests] Slow down! " + jwt, classRateLimited, 0, "upstream answered 429"},
		{"429 retry-after in body", `API error: Received error message from server: [429 Too Many Requests] {"message":"Retry-After: 2"}`, classRateLimited, 2 * time.Second, "upstream answered 429"},
		{"429 huge retry-after", `API error: Received error message from server: [429 Too Many Requests] retry after 99999`, classRateLimited, smMaxRetryAfter, "upstream answered 429"},
		{"500 empty", "API error: Received error message from server: [500 Internal Server Error] ", classServer, 0, "upstream answered 500"},
		{"503 html", "API error: Received error message from server: [503 Service Unavailable] <html>" + jwt + "</html>", classServer, 0, "upstream answered 503"},
		{"connection refused", "API error: error sending request for url (http://127.0.0.1:1/identity/connect/token)", classTransport, 0, "connection failed"},
		{"api 401", "API error: Received error message from server: [401 Unauthorized] ", classCredentials, 0, "upstream answered 401"},
		{"api 404", "API error: Received error message from server: [404 Not Found] Resource not found.", classNotFound, 0, "upstream answered 404"},
		{"api 400 other", "API error: Received error message from server: [400 Bad Request] {\"message\":\"lastSyncedDate is not an RFC 3339 date.\"}", classClient, 0, "upstream answered 400"},
		{"api 422", "API error: Received error message from server: [422 Unprocessable Entity] x", classClient, 0, "upstream answered 422"},
		{"200 bad shape", `API error: Received error message from server: [200 OK] {"access_token":"` + jwt + `"}`, classMalformed, 0, "unexpected identity response shape"},
		{"non-json", "API error: expected ident at line 1 column 2", classMalformed, 0, "malformed response"},
		{"truncated body", "API error: error decoding response body", classTransport, 0, "connection failed"},
		{"missing field", "API error: The response received was missing a required field: response.note", classMalformed, 0, "malformed response"},
		{"mac", "API error: Cryptography error, The cipher's MAC doesn't match the expected value", classMAC, 0, "mac mismatch"},
		{"padding", "API error: EncString error, Error decoding base64: Invalid padding", classMAC, 0, "decryption failed"},
		{"bad token", "API error: Access token is not in a valid format: Doesn't contain a decryption key", classBadToken, 0, "access token format"},
		{"invalid uuid", "API error: Invalid command value: UUID parsing failed: x", classInput, 0, "the sdk refused the input"},
		{"empty value", "API error: value must not be empty", classInput, 0, "the sdk refused the input"},
		{"wrapper", "run command failed", classSDK, 0, "sdk call failed"},
		{"unknown", "something else " + jwt, classSDK, 0, "unrecognized sdk error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := classifySDKError(errors.New(tt.msg))
			if f.class != tt.class {
				t.Errorf("class = %v, want %v", f.class, tt.class)
			}
			if f.retryAfter != tt.retryAfter {
				t.Errorf("retryAfter = %v, want %v", f.retryAfter, tt.retryAfter)
			}
			if f.cause != tt.cause {
				t.Errorf("cause = %q, want %q", f.cause, tt.cause)
			}
		})
	}
}

// knownCause reports whether c is one of the fixed cause strings.
func knownCause(c string) bool {
	switch c {
	case "unexpected identity response shape", "access token format", "identity refused the login",
		"connection failed", "mac mismatch", "decryption failed", "the sdk refused the input",
		"malformed response", "sdk call failed", "unrecognized sdk error":
		return true
	}
	return reKnownStatusCause.MatchString(c)
}

var reKnownStatusCause = regexp.MustCompile(`^upstream answered \d{3}( invalid_client)?$`)

func FuzzClassifySDKError(f *testing.F) {
	f.Add("API error: Received error message from server: [429 Too Many Requests] Retry-After: 3")
	f.Add("API error: Received error message from server: [400 Bad Request] {\"error\":\"invalid_client\"}")
	f.Add("API error: error sending request for url (http://x)")
	f.Add("Received error message from server: [000")
	f.Fuzz(func(t *testing.T, msg string) {
		fl := classifySDKError(errors.New(msg))
		if !knownCause(fl.cause) {
			t.Fatalf("cause %q is not a fixed category", fl.cause)
		}
		if fl.retryAfter < 0 || fl.retryAfter > smMaxRetryAfter {
			t.Fatalf("retryAfter %v out of range", fl.retryAfter)
		}
	})
}

func TestNewSMConfig(t *testing.T) {
	u := newFakeUpstream(t)
	dir := t.TempDir()
	tests := []struct {
		name     string
		api, id  string
		stateDir string
		wantErr  string
	}{
		{"empty api", "", "http://127.0.0.1:1/identity", "", "api url is empty"},
		{"empty identity", "http://127.0.0.1:1/api", "", "", "identity url is empty"},
		{"not http", "ftp://x/api", "http://127.0.0.1:1/identity", "", "is not an http(s) url"},
		{"credentials in url", "http://u:p@127.0.0.1/api", "http://127.0.0.1:1/identity", "", "is not an http(s) url"},
		{"ok", "http://127.0.0.1:1/api/", "http://127.0.0.1:1/identity", filepath.Join(dir, "new"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := newSM(SMConfig{APIURL: tt.api, IdentityURL: tt.id, StateDir: tt.stateDir, Logger: quietLogger()}, u.newClient)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("newSM: %v", err)
			}
			defer s.Close()
			if s.apiURL != "http://127.0.0.1:1/api" {
				t.Errorf("apiURL = %q, want the trailing slash removed", s.apiURL)
			}
			fi, err := os.Stat(tt.stateDir)
			if err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("state dir: %v mode %v, want 0700", err, fi.Mode().Perm())
			}
		})
	}

	t.Run("state dir open to others", func(t *testing.T) {
		open := filepath.Join(dir, "open")
		if err := os.Mkdir(open, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(open, 0o755)
		_, err := newSM(SMConfig{APIURL: "http://127.0.0.1:1/api", IdentityURL: "http://127.0.0.1:1/identity", StateDir: open}, u.newClient)
		if err == nil || !strings.Contains(err.Error(), "chmod 700") {
			t.Fatalf("err = %v, want a chmod 700 hint", err)
		}
	})
}

func TestNewSMEnvironment(t *testing.T) {
	u := newFakeUpstream(t)
	t.Setenv("RUST_LOG", "debug")
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:9")
	t.Setenv("NO_PROXY", "example.org")
	t.Setenv("no_proxy", "")
	s, err := newSM(SMConfig{APIURL: "http://127.0.0.1:1/api", IdentityURL: "http://localhost:1/identity", Logger: quietLogger()}, u.newClient)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, ok := os.LookupEnv("RUST_LOG"); ok {
		t.Errorf("RUST_LOG = %q after NewSM, want it unset", v)
	}
	for _, name := range []string{"NO_PROXY", "no_proxy"} {
		v := os.Getenv(name)
		for _, host := range []string{"127.0.0.1", "localhost"} {
			if !noProxyCovers(v, host) {
				t.Errorf("%s = %q, want it to cover %s", name, v, host)
			}
		}
	}
	if v := os.Getenv("NO_PROXY"); !strings.HasPrefix(v, "example.org,") {
		t.Errorf("NO_PROXY = %q, want the old entries kept", v)
	}
}

func TestNoProxyUntouchedWithoutProxy(t *testing.T) {
	for _, v := range proxyVars {
		t.Setenv(v, "")
	}
	t.Setenv("NO_PROXY", "")
	u := newFakeUpstream(t)
	s, err := newSM(SMConfig{APIURL: "http://127.0.0.1:1/api", IdentityURL: "http://127.0.0.1:1/identity", Logger: quietLogger()}, u.newClient)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v := os.Getenv("NO_PROXY"); v != "" {
		t.Errorf("NO_PROXY = %q, want it untouched", v)
	}
}

func TestFetchFiltersProjectsAndIsExact(t *testing.T) {
	u := newFakeUpstream(t)
	values := map[string]string{
		"MULTI": "line1\nline2", "QUOTE": `he said "hi"`, "DOLLAR": "$HOME ${X}",
		"BACK": `back\slash`, "ZERO": "007", "UNI": "ünïcødé 😀", "EMPTY": "",
	}
	for k, v := range values {
		u.add(testProjectA, k, v)
	}
	u.add(testProjectB, "OTHER", "not for a")
	u.add("", "NOPROJECT", "not for anyone")
	s := newFakeSM(t, u, SMConfig{})

	got, err := s.Fetch(context.Background(), smTenant("acme", 1, strings.ToUpper(testProjectA)))
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if len(got) != len(values) {
		t.Errorf("keys = %v, want %d keys", got.Keys(), len(values))
	}
	for k, v := range values {
		if got[k] != v {
			t.Errorf("value of %s differs", k)
		}
	}
	if _, leaked := got["OTHER"]; leaked {
		t.Errorf("OTHER from another project leaked into the env")
	}
}

func TestFetchInvalidAndDuplicateKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		keys []string
		want string
	}{
		{"invalid", []string{"GOOD", "BAD-KEY"}, `"BAD-KEY"`},
		{"duplicate", []string{"DUP", "DUP"}, `"DUP"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newFakeUpstream(t)
			for _, k := range tc.keys {
				u.add(testProjectA, k, "value-must-not-appear")
			}
			s := newFakeSM(t, u, SMConfig{})
			_, err := s.Fetch(context.Background(), smTenant("acme", 1, testProjectA))
			wantKind(t, err, KindData)
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "value-must-not-appear") {
				t.Errorf("err = %q, want it to name %s and no value", err, tc.want)
			}
		})
	}
}

func TestFetchTenantValidation(t *testing.T) {
	u := newFakeUpstream(t)
	s := newFakeSM(t, u, SMConfig{})
	good := smTenant("acme", 1, testProjectA)
	tests := []struct {
		name   string
		modify func(*Tenant)
		want   string
	}{
		{"malformed token", func(t *Tenant) { t.AccessToken = "0.not-a-token.SecretPart1xyzXYZ" }, "tenants.acme.access_token_env"},
		{"no token", func(t *Tenant) { t.AccessToken = "" }, "no access token"},
		{"bad org", func(t *Tenant) { t.OrganizationID = "acme" }, "organization_id"},
		{"no projects", func(t *Tenant) { t.ProjectIDs = nil }, "project_ids is empty"},
		{"bad project", func(t *Tenant) { t.ProjectIDs = []string{testProjectA, "x"} }, "project_ids[1]"},
		{"other backend", func(t *Tenant) { t.Backend = BackendBWCLI }, "backend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ten := good
			tt.modify(&ten)
			_, err := s.Fetch(context.Background(), ten)
			wantKind(t, err, KindConfig)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to mention %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "SecretPart") {
				t.Errorf("err = %q contains the token", err)
			}
		})
	}
	if c, _, _, _ := u.counts(); c != 0 {
		t.Errorf("clients created = %d, want 0 (no SDK call for invalid tenants)", c)
	}
}

func TestNoSDKBuild(t *testing.T) {
	s, err := newSM(SMConfig{APIURL: "http://127.0.0.1:1/api", IdentityURL: "http://127.0.0.1:1/identity", Logger: quietLogger()}, nil)
	if err != nil {
		t.Fatalf("newSM without sdk: %v", err)
	}
	defer s.Close()
	_, err = s.Fetch(context.Background(), smTenant("acme", 1, testProjectA))
	wantKind(t, err, KindConfig)
	for _, want := range []string{"without the Secrets Manager SDK", "CGO_ENABLED=1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %q, want it to say %q", err, want)
		}
	}
	if err := s.Check(context.Background(), smTenant("acme", 1, testProjectA)); KindOf(err) != KindConfig {
		t.Errorf("Check: %v, want KindConfig", err)
	}
	if _, _, _, _, err := s.Upsert(context.Background(), Secret(testToken(1)), testOrg, testProjectA, Env{"A": "b"}, false); KindOf(err) != KindConfig {
		t.Errorf("Upsert: %v, want KindConfig", err)
	}
}

func TestWarmRefreshCostsOneSync(t *testing.T) {
	u := newFakeUpstream(t)
	id := u.add(testProjectA, "K", "v1")
	s := newFakeSM(t, u, SMConfig{})
	ten := smTenant("acme", 1, testProjectA)
	ctx := context.Background()

	if _, err := s.Fetch(ctx, ten); err != nil {
		t.Fatal(err)
	}
	before := s.Stats()
	_, _, logins0, syncs0 := u.counts()
	env, err := s.Fetch(ctx, ten)
	if err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	_, _, logins1, syncs1 := u.counts()
	if g, w := logins1-logins0, 0; g != w {
		t.Errorf("logins on warm refresh = %d, want %d", g, w)
	}
	if g, w := syncs1-syncs0, 1; g != w {
		t.Errorf("syncs on warm refresh = %d, want %d", g, w)
	}
	if g, w := after.Requests-before.Requests, int64(1); g != w {
		t.Errorf("Stats().Requests diff = %d, want %d", g, w)
	}
	if env["K"] != "v1" {
		t.Errorf("warm env K differs from the kept value")
	}
	if s.Stats().Requests != before.Requests+1 {
		t.Errorf("warm refresh made more than one request")
	}
	u.mu.Lock()
	last := u.syncLast[len(u.syncLast)-1]
	firstStart := u.syncAt[0]
	u.mu.Unlock()
	if last == nil {
		t.Fatalf("warm Sync got no lastSyncedDate")
	}
	if last.After(firstStart) {
		t.Errorf("lastSyncedDate %v is after the first request started (%v); it must be taken before", last, firstStart)
	}

	u.set(id, "v2")
	env, err = s.Fetch(ctx, ten)
	if err != nil {
		t.Fatal(err)
	}
	if env["K"] != "v2" {
		t.Errorf("changed secret not seen on the next fetch")
	}
	if st := s.Stats(); st.Logins != 1 || st.LiveClients != 1 {
		t.Errorf("Stats = %+v, want 1 login and 1 live client", st)
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name      string
		projects  []string
		hidden    string // project the account cannot see
		fail      string // error queued for the first ProjectExists
		want      Kind   // -1: success
		wantNamed string // a project id the error must name
		wantGets  int    // ProjectExists calls
		revoke    bool   // the token is refused at login
	}{
		{name: "visible", projects: []string{testProjectA}, want: -1, wantGets: 1},
		{name: "two visible", projects: []string{testProjectA, testProjectB}, want: -1, wantGets: 2},
		{name: "second hidden", projects: []string{testProjectA, testProjectB}, hidden: testProjectB, want: KindConfig, wantNamed: testProjectB, wantGets: 2},
		{name: "first hidden", projects: []string{testProjectA, testProjectB}, hidden: testProjectA, want: KindConfig, wantNamed: testProjectA, wantGets: 1},
		{name: "project get fails 503 then ok", projects: []string{testProjectA}, fail: "API error: Received error message from server: [503 Service Unavailable] ", want: -1, wantGets: 2},
		{name: "token refused", projects: []string{testProjectA}, revoke: true, want: KindCredentials, wantGets: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newFakeUpstream(t)
			u.add(testProjectA, "K", "v")
			if tt.hidden != "" {
				u.hidden[tt.hidden] = true
			}
			if tt.fail != "" {
				u.failNext("project", errors.New(tt.fail), 1)
			}
			if tt.revoke {
				u.revoked[testToken(1)] = true
			}
			s := newFakeSM(t, u, SMConfig{})
			err := s.Check(context.Background(), smTenant("acme", 1, tt.projects...))
			if tt.want < 0 {
				if err != nil {
					t.Fatalf("Check: %v, want nil", err)
				}
			} else {
				wantKind(t, err, tt.want)
			}
			if tt.wantNamed != "" {
				var fe *Error
				if !errors.As(err, &fe) || !strings.Contains(fe.Msg, tt.wantNamed) || !strings.Contains(fe.Msg, "tenants.acme.project_ids") || !errors.Is(err, ErrNotResolved) {
					t.Errorf("Check error = %v, want it to name project %s and tenants.acme.project_ids, with cause ErrNotResolved", err, tt.wantNamed)
				}
			}
			u.mu.Lock()
			lists, syncs, gets := u.lists, u.syncs, u.projectGets
			u.mu.Unlock()
			if syncs != 0 {
				t.Errorf("syncs = %d, want 0: Check must not read values", syncs)
			}
			if wantLists := 1; !tt.revoke && lists != wantLists {
				t.Errorf("lists = %d, want %d", lists, wantLists)
			}
			if gets != tt.wantGets {
				t.Errorf("project gets = %d, want %d", gets, tt.wantGets)
			}
		})
	}
}

func TestRetries(t *testing.T) {
	const (
		e429  = "API error: Received error message from server: [429 Too Many Requests] Retry-After: 0.01"
		e429b = "API error: Received error message from server: [429 Too Many Requests] slow down"
		e503  = "API error: Received error message from server: [503 Service Unavailable] <html>"
		eConn = "API error: error sending request for url (http://127.0.0.1:1/api/x)"
	)
	tests := []struct {
		name        string
		op          string
		err         string
		n           int
		want        Kind // KindOf the result; -1 for success
		wantRetries int64
	}{
		{"429 then ok", "sync", e429, 1, -1, 1},
		{"429 without retry-after then ok", "sync", e429b, 1, -1, 1},
		{"503 twice then ok", "sync", e503, 2, -1, 2},
		{"conn refused then ok", "sync", eConn, 1, -1, 1},
		{"login 503 then ok", "login", e503, 1, -1, 1},
		{"503 persistent", "sync", e503, 10, KindUpstream, smMaxAttempts - 1},
		{"429 persistent", "sync", e429, 10, KindUnavailable, smMaxAttempts - 1},
		{"conn persistent", "login", eConn, 10, KindUnavailable, smMaxAttempts - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if testing.Short() && tt.wantRetries > 2 {
				t.Skip("backoff takes seconds; skipped in -short")
			}
			u := newFakeUpstream(t)
			u.add(testProjectA, "K", "v")
			u.failNext(tt.op, errors.New(tt.err), tt.n)
			s := newFakeSM(t, u, SMConfig{})
			env, err := s.Fetch(context.Background(), smTenant("acme", 1, testProjectA))
			if tt.want < 0 {
				if err != nil || env["K"] != "v" {
					t.Fatalf("Fetch: %v, want success", err)
				}
			} else {
				wantKind(t, err, tt.want)
			}
			if g, w := s.Stats().Retries, tt.wantRetries; g != w {
				t.Errorf("retries = %d, want %d", g, w)
			}
		})
	}
}

func TestRetryStopsBeforeDeadline(t *testing.T) {
	u := newFakeUpstream(t)
	u.add(testProjectA, "K", "v")
	u.failNext("sync", errors.New("API error: Received error message from server: [503 Service Unavailable] "), 100)
	s := newFakeSM(t, u, SMConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Fetch(ctx, smTenant("acme", 1, testProjectA))
	t.Logf("gave up after %v", time.Since(start))
	// The answer is the upstream's failure, not a timeout: no attempt is
	// started that the deadline would cut.
	wantKind(t, err, KindUpstream)
	if r := s.Stats().Retries; r >= smMaxAttempts-1 {
		t.Errorf("retries = %d, want fewer than %d within 300ms", r, smMaxAttempts-1)
	}
	if ctx.Err() != nil {
		t.Errorf("Fetch returned after the deadline; it should give up before")
	}
}

func TestCreateNotRetriedOnServerError(t *testing.T) {
	u := newFakeUpstream(t)
	u.failNext("create", errors.New("API error: Received error message from server: [502 Bad Gateway] "), 1)
	s := newFakeSM(t, u, SMConfig{})
	_, _, _, _, err := s.Upsert(context.Background(), Secret(testToken(1)), testOrg, testProjectA, Env{"A": "1"}, false)
	wantKind(t, err, KindUpstream)
	u.mu.Lock()
	creates := u.creates
	u.mu.Unlock()
	if creates != 1 {
		t.Errorf("creates = %d, want 1 (a create is not idempotent)", creates)
	}
}

func TestCredentialsDropClientAndStateFile(t *testing.T) {
	u := newFakeUpstream(t)
	u.add(testProjectA, "K", "v")
	s := newFakeSM(t, u, SMConfig{})
	ten := smTenant("acme", 1, testProjectA)
	ctx := context.Background()
	if _, err := s.Fetch(ctx, ten); err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	state := u.states[0]
	u.mu.Unlock()
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file %s: %v, want it pre-created 0600", filepath.Base(state), err)
	}
	if !strings.HasPrefix(filepath.Base(state), "sm-") || len(filepath.Base(state)) != len("sm-")+32+len(".state") {
		t.Errorf("state file name %q, want sm-<32 hex>.state", filepath.Base(state))
	}

	u.failNext("sync", errors.New("API error: Received error message from server: [401 Unauthorized] "), 1)
	_, err := s.Fetch(ctx, ten)
	wantKind(t, err, KindCredentials)
	if !strings.Contains(err.Error(), "re-issue") || !strings.Contains(err.Error(), "tenants.acme.access_token_env") {
		t.Errorf("err = %q, want it to say what to re-issue", err)
	}
	clients, closes, _, _ := u.counts()
	if clients != 1 || closes != 1 {
		t.Errorf("clients, closes = %d, %d; want the refused client closed", clients, closes)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state file still there after a 401 (err %v)", err)
	}
	if st := s.Stats(); st.Dropped != 1 || st.LiveClients != 0 {
		t.Errorf("Stats = %+v, want 1 dropped, 0 live", st)
	}
	// A later call logs in afresh.
	if _, err := s.Fetch(ctx, ten); err != nil {
		t.Fatal(err)
	}
	clients, _, logins, _ := u.counts()
	if clients != 2 || logins != 2 {
		t.Errorf("clients, logins = %d, %d; want 2, 2", clients, logins)
	}
}

func TestTimeoutFinishesInBackground(t *testing.T) {
	u := newFakeUpstream(t)
	u.add(testProjectA, "K", "v1")
	s := newFakeSM(t, u, SMConfig{})
	ten := smTenant("acme", 1, testProjectA)

	block := make(chan struct{})
	entered := make(chan struct{}, 1)
	u.mu.Lock()
	u.block, u.entered = block, entered
	u.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := s.Fetch(ctx, ten)
	wantKind(t, err, KindTimeout)
	<-entered
	if st := s.Stats(); st.LiveClients != 1 {
		t.Errorf("live clients = %d while the call runs, want 1", st.LiveClients)
	}

	// Closing the backend now must not close the client under the call.
	u.mu.Lock()
	u.block, u.entered = nil, nil
	u.mu.Unlock()
	close(block)

	// The abandoned call's result was kept: the next fetch is a warm one.
	env, err := s.Fetch(context.Background(), ten)
	if err != nil {
		t.Fatal(err)
	}
	if env["K"] != "v1" {
		t.Errorf("env after background completion differs")
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.syncLast) != 2 || u.syncLast[1] == nil {
		t.Errorf("second sync lastSynced = %v, want the abandoned call's sync time", u.syncLast)
	}
}

func TestCancelIsKindCanceled(t *testing.T) {
	u := newFakeUpstream(t)
	s := newFakeSM(t, u, SMConfig{})
	block := make(chan struct{})
	entered := make(chan struct{}, 1)
	u.mu.Lock()
	u.block, u.entered = block, entered
	u.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-entered; cancel() }()
	_, err := s.Fetch(ctx, smTenant("acme", 1, testProjectA))
	wantKind(t, err, KindCanceled)
	close(block)
}

func TestEvictionWaitsForRunningCall(t *testing.T) {
	u := newFakeUpstream(t)
	u.add(testProjectA, "K", "v")
	s := newFakeSM(t, u, SMConfig{MaxClients: 1})
	a, b := smTenant("a", 1, testProjectA), smTenant("b", 2, testProjectA)

	block := make(chan struct{})
	entered := make(chan struct{}, 1)
	u.mu.Lock()
	u.block, u.entered = block, entered
	u.mu.Unlock()
	errA := make(chan error, 1)
	go func() { _, err := s.Fetch(context.Background(), a); errA <- err }()
	<-entered // a's sync is running
	u.mu.Lock()
	u.block, u.entered = nil, nil
	u.mu.Unlock()

	if _, err := s.Fetch(context.Background(), b); err != nil {
		t.Fatalf("Fetch b: %v", err)
	}
	if _, closes, _, _ := u.counts(); closes != 0 {
		t.Errorf("closes = %d while a's call runs, want 0", closes)
	}
	close(block)
	if err := <-errA; err != nil {
		t.Fatalf("Fetch a: %v", err)
	}
	clients, closes, _, _ := u.counts()
	if clients != 2 || closes != 1 {
		t.Errorf("clients, closes = %d, %d; want a's client closed once its call ended", clients, closes)
	}
	st := s.Stats()
	if st.Evictions != 1 || st.LiveClients != 1 {
		t.Errorf("Stats = %+v, want 1 eviction, 1 live client", st)
	}
	// a again: a new client that logs in with the same state file.
	if _, err := s.Fetch(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.states) != 3 || u.states[0] != u.states[2] || u.states[0] == u.states[1] {
		t.Errorf("state files = %d, want a's reused and b's distinct", len(u.states))
	}
}

func TestCallsOnOneClientAreSerialized(t *testing.T) {
	u := newFakeUpstream(t)
	u.add(testProjectA, "K", "v")
	s := newFakeSM(t, u, SMConfig{MaxConcurrent: 8})
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Fetch(context.Background(), smTenant("acme", 1, testProjectA)); err != nil {
				t.Errorf("Fetch: %v", err)
			}
		}()
	}
	wg.Wait()
	if clients, _, logins, _ := u.counts(); clients != 1 || logins != 1 {
		t.Errorf("clients, logins = %d, %d; want 1, 1", clients, logins)
	}
	// fakeClient records any overlap as a violation (checked at cleanup).
}

func TestConcurrencyLimit(t *testing.T) {
	u := newFakeUpstream(t)
	s := newFakeSM(t, u, SMConfig{MaxConcurrent: 1})
	// Log both tenants in first.
	for i := 1; i <= 2; i++ {
		if _, err := s.Fetch(context.Background(), smTenant("t", i, testProjectA)); err != nil {
			t.Fatal(err)
		}
	}
	block := make(chan struct{})
	entered := make(chan struct{}, 2)
	u.mu.Lock()
	u.block, u.entered = block, entered
	u.mu.Unlock()
	done := make(chan error, 1)
	go func() { _, err := s.Fetch(context.Background(), smTenant("t", 1, testProjectA)); done <- err }()
	<-entered
	// The second tenant's call cannot start while the slot is taken.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := s.Fetch(ctx, smTenant("t", 2, testProjectA))
	wantKind(t, err, KindTimeout)
	select {
	case <-entered:
		t.Errorf("a second call entered the SDK with MaxConcurrent=1")
	default:
	}
	u.mu.Lock()
	u.block, u.entered = nil, nil
	u.mu.Unlock()
	close(block)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRateLimiterHonoursDeadline(t *testing.T) {
	u := newFakeUpstream(t)
	s := newFakeSM(t, u, SMConfig{RatePerSec: 0.01, Burst: 1})
	ten := smTenant("acme", 1, testProjectA)
	// The login uses the identity limiter's burst, the sync the API's: a
	// cold fetch fits in a burst of 1 (with one shared budget it could not).
	cold, cancelCold := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelCold()
	if _, err := s.Fetch(cold, ten); err != nil {
		t.Fatalf("cold fetch with a burst of 1 per service: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := s.Fetch(ctx, ten)
	wantKind(t, err, KindTimeout)
	if !strings.Contains(err.Error(), "rate limit") {
		t.Errorf("err = %q, want it to mention the rate limit", err)
	}
	if ctx.Err() != nil {
		t.Errorf("the limiter waited until the deadline; it should refuse at once")
	}
	if _, _, _, syncs := u.counts(); syncs != 1 {
		t.Errorf("syncs = %d, want 1", syncs)
	}
}

func TestErrorsNeverLeak(t *testing.T) {
	const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJlLXNlY3JldA"
	tok := testToken(1)
	bodies := []string{
		"API error: Received error message from server: [400 Bad Request] " + tok,
		"API error: Received error message from server: [200 OK] {\"access_token\":\"" + jwt + "\"}",
		"API error: Received error message from server: [503 Service Unavailable] " + jwt,
		"API error: Received error message from server: [429 Too Many Requests] " + jwt,
		"API error: error sending request for url (http://127.0.0.1:1/?t=" + jwt + ")",
		"API error: Cryptography error, value=" + jwt,
		"API error: invalid type: string \"TOPSECRETVALUE\", expected u64",
		"odd " + jwt,
	}
	for i, body := range bodies {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			u := newFakeUpstream(t)
			u.add(testProjectA, "K", "TOPSECRETVALUE")
			u.failNext("login", errors.New(body), 1)
			var logs strings.Builder
			s := newFakeSM(t, u, SMConfig{})
			s.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			_, err := s.Fetch(ctx, smTenant("acme", 1, testProjectA))
			if err == nil {
				// Retried and succeeded: make it fail for good.
				u.failNext("sync", errors.New(body), 100)
				u.mu.Lock()
				u.rev = time.Now()
				u.mu.Unlock()
				_, err = s.Fetch(ctx, smTenant("acme", 1, testProjectA))
			}
			if err == nil {
				t.Fatalf("Fetch succeeded, want an error")
			}
			for _, bad := range []string{tok, "SecretPart1", jwt, "TOPSECRETVALUE", "c2lnbmF0dXJl"} {
				if strings.Contains(err.Error(), bad) {
					t.Errorf("error %q leaks a secret", err)
				}
				if strings.Contains(logs.String(), bad) {
					t.Errorf("log leaks a secret: %s", logs.String())
				}
			}
		})
	}
}

func TestUpsert(t *testing.T) {
	u := newFakeUpstream(t)
	u.add(testProjectA, "SAME", "same")
	u.add(testProjectA, "CHANGE", "old")
	u.add(testProjectA, "EXTRA", "x")
	u.add(testProjectB, "ELSEWHERE", "y")
	s := newFakeSM(t, u, SMConfig{})
	ctx := context.Background()
	env := Env{"SAME": "same", "CHANGE": "new", "NEW": "n"}

	created, updated, unchanged, deleted, err := s.Upsert(ctx, Secret(testToken(1)), testOrg, testProjectA, env, false)
	if err != nil {
		t.Fatalf("Upsert: %v", err)
	}
	check := func(name string, got, want []string) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("created", created, []string{"NEW"})
	check("updated", updated, []string{"CHANGE"})
	check("unchanged", unchanged, []string{"SAME"})
	check("deleted", deleted, nil)

	u.mu.Lock()
	writes := u.creates + u.updates
	u.mu.Unlock()
	// Same again: nothing to write.
	created, updated, unchanged, _, err = s.Upsert(ctx, Secret(testToken(1)), testOrg, testProjectA, env, false)
	if err != nil {
		t.Fatal(err)
	}
	check("created again", created, nil)
	check("updated again", updated, nil)
	check("unchanged again", unchanged, []string{"CHANGE", "NEW", "SAME"})
	u.mu.Lock()
	if g := u.creates + u.updates; g != writes {
		t.Errorf("writes on an unchanged upsert = %d, want 0", g-writes)
	}
	u.mu.Unlock()

	_, _, _, deleted, err = s.Upsert(ctx, Secret(testToken(1)), testOrg, testProjectA, env, true)
	if err != nil {
		t.Fatal(err)
	}
	check("deleted", deleted, []string{"EXTRA"})
	got, err := s.Fetch(ctx, smTenant("acme", 1, testProjectA, testProjectB))
	if err != nil {
		t.Fatal(err)
	}
	check("keys after prune", got.Keys(), []string{"CHANGE", "ELSEWHERE", "NEW", "SAME"})
}

func TestUpsertRefusesBadInput(t *testing.T) {
	u := newFakeUpstream(t)
	s := newFakeSM(t, u, SMConfig{})
	ctx := context.Background()
	tests := []struct {
		name    string
		tok     string
		org     string
		env     Env
		kind    Kind
		message string
	}{
		{"empty value", testToken(1), testOrg, Env{"A": "x", "EMPTY": ""}, KindData, `"EMPTY"`},
		{"bad key", testToken(1), testOrg, Env{"1A": "x"}, KindData, `"1A"`},
		{"long value", testToken(1), testOrg, Env{"L": strings.Repeat("x", smMaxValueChars+1)}, KindData, `"L"`},
		{"bad token", "nope", testOrg, Env{"A": "x"}, KindConfig, "migration"},
		{"bad org", testToken(1), "org", Env{"A": "x"}, KindConfig, "UUID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, _, err := s.Upsert(ctx, Secret(tt.tok), tt.org, testProjectA, tt.env, false)
			wantKind(t, err, tt.kind)
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("err = %q, want it to mention %s", err, tt.message)
			}
		})
	}
	if c, _, _, _ := u.counts(); c != 0 {
		t.Errorf("clients = %d, want 0: bad input never reaches the SDK", c)
	}
}

func TestCloseClosesIdleClients(t *testing.T) {
	u := newFakeUpstream(t)
	s := newFakeSM(t, u, SMConfig{})
	for i := 1; i <= 3; i++ {
		if _, err := s.Fetch(context.Background(), smTenant("t", i, testProjectA)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if clients, closes, _, _ := u.counts(); clients != 3 || closes != 3 {
		t.Errorf("clients, closes = %d, %d; want 3, 3", clients, closes)
	}
	_, err := s.Fetch(context.Background(), smTenant("t", 1, testProjectA))
	wantKind(t, err, KindUnavailable)
	if st := s.Stats(); st.LiveClients != 0 {
		t.Errorf("live clients after Close = %d, want 0", st.LiveClients)
	}
}

func TestBackoff(t *testing.T) {
	for attempt := 1; attempt <= 10; attempt++ {
		d := backoff(attempt)
		want := smBackoffBase << (attempt - 1)
		if want > smBackoffCap {
			want = smBackoffCap
		}
		if d < want/2 || d > want {
			t.Errorf("backoff(%d) = %v, want within [%v, %v]", attempt, d, want/2, want)
		}
	}
}

func TestSyncSkewMargin(t *testing.T) {
	u := newFakeUpstream(t)
	id := u.add(testProjectA, "K", "v1")
	s := newFakeSM(t, u, SMConfig{})
	s.syncSkew = time.Hour
	ten := smTenant("acme", 1, testProjectA)
	if _, err := s.Fetch(context.Background(), ten); err != nil {
		t.Fatal(err)
	}
	// A change stamped by an upstream clock 30 minutes behind ours.
	u.set(id, "v2")
	u.mu.Lock()
	u.rev = time.Now().Add(-30 * time.Minute)
	u.mu.Unlock()
	env, err := s.Fetch(context.Background(), ten)
	if err != nil {
		t.Fatal(err)
	}
	if env["K"] != "v2" {
		t.Errorf("a change stamped by a slower upstream clock was missed")
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if last := u.syncLast[1]; last == nil || !last.Before(u.syncAt[0].Add(-59*time.Minute)) {
		t.Errorf("lastSyncedDate = %v, want the first sync's start minus the margin", last)
	}
}
