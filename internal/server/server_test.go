package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"github.com/hostd/broker/internal/testutil"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/scope"
)

// Values served by the test backend; none may ever show up in a log line or
// an error body.
var testEnvs = map[string]fetch.Env{
	"acme":    {"DB_URL": "postgres://acme-secret-1", "DB_PASS": "acme-secret-2", "API_KEY": "acme-secret-3"},
	"globex":  {"TOKEN": "globex-secret-1"},
	"initech": {"X": "initech-secret-1"},
}

// envBackend serves testEnvs, or a scripted error for a tenant.
type envBackend struct {
	mu   sync.Mutex
	errs map[string]error
}

func (b *envBackend) Fetch(ctx context.Context, t fetch.Tenant) (fetch.Env, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.errs[t.Name]; err != nil {
		return nil, err
	}
	return testEnvs[t.Name], nil
}

func (b *envBackend) fail(tenant string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.errs == nil {
		b.errs = map[string]error{}
	}
	b.errs[tenant] = err
}

type testBroker struct {
	srv     *Server
	backend *envBackend
	client  *Client
	sock    string
	logs    *testutil.SyncBuffer
	tokens  map[string]string // name → token
	store   *scope.TokenStore
}

const (
	orgID  = "5f0c6e36-3b5d-4c8e-9a53-2c1d7b0e4a11"
	projID = "8d2b1f9e-6c4a-4f0b-b7e2-93a5d1c0f6e2"
)

func testPolicy(t *testing.T) *scope.Policy {
	t.Helper()
	const js = `{"version":1,
	  "upstream":{"sm":{"api_url":"http://127.0.0.1:1/api","identity_url":"http://127.0.0.1:1/identity"}},
	  "tenants":{
	    "acme":{"backend":"sm","organization_id":"` + orgID + `","project_ids":["` + projID + `"],"access_token_env":"TOK_ACME"},
	    "globex":{"backend":"sm","organization_id":"` + orgID + `","project_ids":["` + projID + `"],"access_token_env":"TOK_GLOBEX"},
	    "initech":{"backend":"sm","organization_id":"` + orgID + `","project_ids":["` + projID + `"],"access_token_env":"TOK_INITECH"},
	    "hooli":{"backend":"sm","organization_id":"` + orgID + `","project_ids":["` + projID + `"],"access_token_env":"TOK_HOOLI_MISSING"}}}`
	p, err := scope.ParsePolicy(strings.NewReader(js))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newTestBroker(t *testing.T) *testBroker {
	t.Helper()
	tb := &testBroker{backend: &envBackend{}, logs: &testutil.SyncBuffer{}, tokens: map[string]string{}}
	pol := testPolicy(t)
	tenants, missing := BuildTenants(pol, map[string]string{"TOK_ACME": "a", "TOK_GLOBEX": "g", "TOK_INITECH": "i"})
	tb.store = scope.NewTokenStore()
	mint := func(name string, tenants []string, keys []string, expires time.Time) {
		tok, id, hash, err := scope.MintToken(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		rec := scope.TokenRecord{ID: id, Hash: hash, Tenants: tenants, Keys: keys, Expires: expires, Created: time.Now().UTC().Add(-time.Hour)}
		if err := tb.store.Add(rec); err != nil {
			t.Fatal(err)
		}
		tb.tokens[name] = tok.Reveal()
	}
	mint("acme", []string{"acme"}, nil, time.Time{})
	mint("acme-db", []string{"acme"}, []string{"DB_*"}, time.Time{})
	mint("globex", []string{"globex"}, nil, time.Time{})
	mint("both", []string{"acme", "initech", "hooli"}, nil, time.Time{})
	mint("expired", []string{"acme"}, nil, time.Now().Add(-time.Minute))
	res := fetch.NewResolver(t.Context(), fetch.ResolverConfig{TTL: time.Minute}, map[string]fetch.Backend{fetch.BackendSM: tb.backend})
	logger := slog.New(slog.NewJSONHandler(tb.logs, nil))
	tb.srv = New(Options{Logger: logger, Metrics: NewMetrics()},
		&Config{Policy: pol, Tenants: tenants, Missing: missing, Tokens: tb.store, Resolver: res})
	tb.sock = filepath.Join(t.TempDir(), "b.sock")
	spec := ListenSpec{Network: "unix", Address: tb.sock}
	ln, cleanup, err := Listen(spec, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tb.srv.Serve(ctx, ln, 5*time.Second) }()
	tb.client = NewClient(spec)
	t.Cleanup(func() {
		tb.client.CloseIdle()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		cleanup()
		// No value may ever reach a log line.
		logs := tb.logs.String()
		for _, env := range testEnvs {
			for _, v := range env {
				if strings.Contains(logs, v) {
					t.Errorf("a secret value reached the log")
				}
			}
		}
		for name, tok := range tb.tokens {
			if strings.Contains(logs, tok) {
				t.Errorf("token %s reached the log", name)
			}
		}
	})
	return tb
}

// raw sends a request over the socket with full control of the headers.
func (tb *testBroker) raw(t *testing.T, method, path string, hdr http.Header) (int, []byte, http.Header) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", tb.sock)
	}}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://localhost"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		if strings.EqualFold(k, "Host") {
			req.Host = vs[0]
			continue
		}
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body, resp.Header
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

func TestServeEnvFormats(t *testing.T) {
	tb := newTestBroker(t)
	for _, tt := range []struct{ format, want, ctype string }{
		{"dotenv", "API_KEY=\"acme-secret-3\"\nDB_PASS=\"acme-secret-2\"\nDB_URL=\"postgres://acme-secret-1\"\n", "text/plain; charset=utf-8"},
		{"shell", "API_KEY='acme-secret-3'\nDB_PASS='acme-secret-2'\nDB_URL='postgres://acme-secret-1'\n", "text/plain; charset=utf-8"},
		{"json", `{"API_KEY":"acme-secret-3","DB_PASS":"acme-secret-2","DB_URL":"postgres://acme-secret-1"}` + "\n", "application/json"},
	} {
		t.Run(tt.format, func(t *testing.T) {
			status, body, h := tb.raw(t, "GET", "/v1/tenants/acme/env?format="+tt.format, bearer(tb.tokens["acme"]))
			if status != 200 || string(body) != tt.want {
				t.Fatalf("got %d %q, want 200 %q", status, body, tt.want)
			}
			if h.Get("Cache-Control") != "no-store" || h.Get("Content-Type") != tt.ctype {
				t.Fatalf("headers: Cache-Control %q Content-Type %q", h.Get("Cache-Control"), h.Get("Content-Type"))
			}
			if src := h.Get(HeaderSource); src != "sm" && src != "cache" {
				t.Fatalf("%s = %q", HeaderSource, src)
			}
		})
	}
	// The default format is dotenv.
	body, _, err := tb.client.Env(t.Context(), tb.tokens["acme"], "acme", "")
	if err != nil || !strings.HasPrefix(string(body), `API_KEY="`) {
		t.Fatalf("default format: %q %v", body, err)
	}
}

func TestUnauthorized(t *testing.T) {
	tb := newTestBroker(t)
	good := tb.tokens["acme"]
	tampered := []byte(good)
	tampered[len(tampered)-1] ^= 1
	cases := map[string]http.Header{
		"missing":              {},
		"empty bearer":         bearer(""),
		"malformed":            bearer("not-a-token"),
		"wrong scheme":         {"Authorization": {"Basic " + good}},
		"bearer without space": {"Authorization": {"Bearer" + good}},
		"tampered":             bearer(string(tampered)),
		"truncated":            bearer(good[:len(good)-1]),
		"padded":               bearer(good + "A"),
		"expired":              bearer(tb.tokens["expired"]),
		"two headers":          {"Authorization": {"Bearer " + good, "Bearer " + good}},
		"token in X-Header":    {"X-Broker-Token": {good}},
	}
	var first []byte
	for name, hdr := range cases {
		t.Run(name, func(t *testing.T) {
			status, body, h := tb.raw(t, "GET", "/v1/tenants/acme/env", hdr)
			if status != 401 || h.Get("WWW-Authenticate") == "" {
				t.Fatalf("status %d, want 401 with WWW-Authenticate", status)
			}
			if first == nil {
				first = body
			} else if !bytes.Equal(body, first) {
				t.Fatalf("401 bodies differ: %q vs %q", body, first)
			}
			var eb ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Code != "unauthorized" {
				t.Fatalf("body %q: %v", body, err)
			}
		})
	}
}

func TestRevokedTokenRefused(t *testing.T) {
	tb := newTestBroker(t)
	tok := tb.tokens["acme"]
	if status, _, _ := tb.raw(t, "GET", "/v1/tenants/acme/env", bearer(tok)); status != 200 {
		t.Fatalf("before revoke: %d", status)
	}
	cfg := *tb.srv.Config()
	ns := scope.NewTokenStore()
	for _, r := range cfg.Tokens.Tokens {
		if rec, _ := cfg.Tokens.Verify(tok, time.Now()); rec != nil && rec.ID == r.ID {
			continue
		}
		if err := ns.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Tokens = ns
	tb.srv.SetConfig(&cfg)
	if status, _, _ := tb.raw(t, "GET", "/v1/tenants/acme/env", bearer(tok)); status != 401 {
		t.Fatalf("after revoke: %d, want 401", status)
	}
}

func TestForbiddenIsNoOracle(t *testing.T) {
	tb := newTestBroker(t)
	tok := tb.tokens["acme"]
	paths := []string{
		"/v1/tenants/globex/env",       // exists, out of scope
		"/v1/tenants/nosuchtenant/env", // does not exist
		"/v1/tenants/ACME/env",         // case variant
		"/v1/tenants/acme%2f..%2fglobex/env",
		"/v1/tenants/acme%00/env",
		"/v1/tenants/%61cme%20/env",
		"/v1/tenants/" + strings.Repeat("a", 300) + "/env",
		"/v1/tenants/аcme/env", // Cyrillic а
	}
	var first []byte
	for _, p := range paths {
		status, body, _ := tb.raw(t, "GET", p, bearer(tok))
		if status != 403 {
			t.Fatalf("GET %s: %d %q, want 403", p, status, body)
		}
		if first == nil {
			first = body
		} else if !bytes.Equal(first, body) {
			t.Fatalf("GET %s: 403 body %q differs from %q: an existence oracle", p, body, first)
		}
		for _, v := range testEnvs["globex"] {
			if bytes.Contains(body, []byte(v)) {
				t.Fatalf("GET %s leaked another tenant's value", p)
			}
		}
	}
	// Path tricks that the mux cleans never reach another tenant either.
	for _, p := range []string{"/v1/tenants/acme/../globex/env", "/v1/tenants//globex/env", "/v1/tenants/globex/env/"} {
		status, body, _ := tb.raw(t, "GET", p, bearer(tok))
		if status == 200 {
			t.Fatalf("GET %s: 200 %q", p, body)
		}
	}
}

func TestKeyGlobNarrows(t *testing.T) {
	tb := newTestBroker(t)
	body, _, err := tb.client.Env(t.Context(), tb.tokens["acme-db"], "acme", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["DB_URL"] == "" || got["DB_PASS"] == "" {
		t.Fatalf("keys %v, want only DB_URL and DB_PASS", fetch.Env(got).Keys())
	}
}

func TestHostAndOrigin(t *testing.T) {
	tb := newTestBroker(t)
	tok := tb.tokens["acme"]
	// A TCP listener on loopback for the same server: there a browser can
	// reach the broker, so the Host and Referer checks apply.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tb.srv.Serve(ctx, ln, time.Second) }()
	defer func() { cancel(); <-done }()
	tcp := NewClient(ListenSpec{Network: "tcp", Address: ln.Addr().String()})
	defer tcp.CloseIdle()

	for _, tt := range []struct {
		name      string
		hdr       http.Header
		unix, net int // want, per listener
	}{
		{"localhost", http.Header{"Host": {"localhost"}}, 200, 200},
		{"LOCALHOST", http.Header{"Host": {"LOCALHOST"}}, 200, 200},
		{"loopback with port", http.Header{"Host": {"127.0.0.1:8080"}}, 200, 200},
		{"client placeholder host", http.Header{"Host": {"unix"}}, 200, 403},
		{"rebinding host", http.Header{"Host": {"evil.example"}}, 200, 403},
		{"origin", http.Header{"Origin": {"http://localhost"}}, 403, 403},
		{"referer", http.Header{"Referer": {"http://evil.example/"}}, 200, 403},
		{"sec-fetch-site", http.Header{"Sec-Fetch-Site": {"cross-site"}}, 200, 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := bearer(tok)
			for k, v := range tt.hdr {
				h[k] = v
			}
			if status, body, _ := tb.raw(t, "GET", "/v1/tenants/acme/env", h); status != tt.unix {
				t.Errorf("unix socket: status %d %q, want %d", status, body, tt.unix)
			}
			if status := rawTCP(t, ln.Addr().String(), h); status != tt.net {
				t.Errorf("tcp: status %d, want %d", status, tt.net)
			}
		})
	}
	if _, _, err := tcp.Env(t.Context(), tok, "acme", "json"); err != nil {
		t.Fatalf("the broker's own client over tcp: %v", err)
	}
}

// rawTCP sends one request over TCP with full control of the headers.
func rawTCP(t *testing.T, addr string, hdr http.Header) int {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+addr+"/v1/tenants/acme/env", nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		if strings.EqualFold(k, "Host") {
			req.Host = vs[0]
			continue
		}
		req.Header[k] = vs
	}
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestBadRequests(t *testing.T) {
	tb := newTestBroker(t)
	tok := tb.tokens["acme"]
	for _, tt := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/v1/tenants/acme/env?format=yaml", 400},
		{"GET", "/v1/tenants/acme/env?format=json&format=shell", 400},
		{"POST", "/v1/tenants/acme/env", 405},
		{"GET", "/v2/tenants/acme/env", 404},
		{"GET", "/v1/health", 200},
	} {
		if status, body, _ := tb.raw(t, tt.method, tt.path, bearer(tok)); status != tt.want {
			t.Errorf("%s %s: %d %q, want %d", tt.method, tt.path, status, body, tt.want)
		}
	}
}

func TestUpstreamErrorsMapped(t *testing.T) {
	const cause = "CAUSE-WITH-UPSTREAM-BODY"
	for _, tt := range []struct {
		kind   fetch.Kind
		status int
		code   string
	}{
		{fetch.KindUnavailable, 503, "upstream_unavailable"},
		{fetch.KindTimeout, 504, "timeout"},
		{fetch.KindUpstream, 502, "upstream_error"},
		{fetch.KindCredentials, 502, "upstream_rejected"},
		{fetch.KindData, 502, "upstream_rejected"},
		{fetch.KindConfig, 502, "config_error"},
	} {
		t.Run(tt.kind.String(), func(t *testing.T) {
			tb := newTestBroker(t)
			tb.backend.fail("acme", fetch.NewError(tt.kind, "acme", "do the thing", errors.New(cause)))
			_, _, err := tb.client.Env(t.Context(), tb.tokens["acme"], "acme", "dotenv")
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != tt.status || ae.Code != tt.code {
				t.Fatalf("err %v, want status %d code %s", err, tt.status, tt.code)
			}
			if !strings.Contains(ae.Message, `"acme"`) || strings.Contains(ae.Message, cause) {
				t.Fatalf("message %q must name the tenant and not carry the cause", ae.Message)
			}
		})
	}
}

func TestMissingCredential(t *testing.T) {
	tb := newTestBroker(t)
	_, _, err := tb.client.Env(t.Context(), tb.tokens["both"], "hooli", "dotenv")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Code != "config_error" || !strings.Contains(ae.Message, "TOK_HOOLI_MISSING") {
		t.Fatalf("err %v, want 502 config_error naming the missing variable", err)
	}
}

func TestAuditLine(t *testing.T) {
	tb := newTestBroker(t)
	if _, _, err := tb.client.Env(t.Context(), tb.tokens["acme-db"], "acme", "json"); err != nil {
		t.Fatal(err)
	}
	tb.raw(t, "GET", "/v1/tenants/globex/env", bearer(tb.tokens["acme"]))
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(tb.logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", l, err)
		}
		if m["msg"] == "audit" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("%d audit lines, want 2", len(lines))
	}
	ok, denied := lines[0], lines[1]
	if ok["outcome"] != "ok" || ok["tenant"] != "acme" || ok["token_id"] == "" ||
		ok["peer_uid"] != float64(os.Getuid()) || ok["peer_pid"] != float64(os.Getpid()) {
		t.Fatalf("audit line %v", ok)
	}
	if keys, _ := ok["keys"].([]any); len(keys) != 2 {
		t.Fatalf("audit keys %v, want the two DB_ keys", ok["keys"])
	}
	if denied["outcome"] != "denied" || denied["status"] != float64(403) {
		t.Fatalf("denied audit line %v", denied)
	}
}

func TestMetricsMove(t *testing.T) {
	tb := newTestBroker(t)
	for range 3 {
		if _, _, err := tb.client.Env(t.Context(), tb.tokens["acme"], "acme", ""); err != nil {
			t.Fatal(err)
		}
	}
	status, body, _ := tb.raw(t, "GET", "/metrics", nil)
	if status != 200 || !bytes.Contains(body, []byte(`broker_requests_total{outcome="ok",source="cache"} 2`)) {
		t.Fatalf("metrics: %d\n%s", status, body)
	}
}

func TestListenSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "b.sock")
	spec := ListenSpec{Network: "unix", Address: sock}
	ln, cleanup, err := Listen(spec, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v err %v, want a 0600 socket", fi.Mode(), err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A live broker is not replaced.
	if _, _, err := Listen(spec, 0o600); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
	ln.Close()
	// A stale socket (nothing answers) is replaced.
	ln2, cleanup2, err := Listen(spec, 0o600)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln2.Close()
	cleanup2()
	cleanup()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cleanup left the socket: %v", err)
	}
	// A regular file is never removed.
	if err := os.WriteFile(sock, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Listen(spec, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("Listen left temporary files: %v", entries)
	}
}

func TestListenRefusesWritableDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	spec := ListenSpec{Network: "unix", Address: filepath.Join(dir, "b.sock")}
	if _, _, err := Listen(spec, 0o600); err == nil || !strings.Contains(err.Error(), "chmod go-w") {
		t.Fatalf("Listen in a 0777 dir: %v, want a refusal naming the chmod", err)
	}
	// The sticky bit (as on /tmp) prevents replacing another user's socket.
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	ln, cleanup, err := Listen(spec, 0o600)
	if err != nil {
		t.Fatalf("Listen in a sticky dir: %v", err)
	}
	ln.Close()
	cleanup()
}

func TestParseListen(t *testing.T) {
	for _, tt := range []struct {
		in      string
		network string
		ok      bool
	}{
		{"unix:/run/b.sock", "unix", true},
		{"/run/b.sock", "unix", true},
		{"unix:rel.sock", "", false},
		{"tcp:127.0.0.1:7070", "tcp", true},
		{"tcp:[::1]:7070", "tcp", true},
		{"tcp:localhost:7070", "tcp", true},
		{"tcp:0.0.0.0:7070", "", false},
		{"tcp:10.0.0.1:7070", "", false},
		{"http://x", "", false},
	} {
		got, err := ParseListen(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got.Network != tt.network) {
			t.Errorf("ParseListen(%q) = %v, %v; want ok=%v network %q", tt.in, got, err, tt.ok, tt.network)
		}
	}
}

func TestBearerSchemeCaseInsensitive(t *testing.T) {
	tb := newTestBroker(t)
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		h := http.Header{"Authorization": {scheme + " " + tb.tokens["acme"]}}
		if status, body, _ := tb.raw(t, "GET", "/v1/tenants/acme/env", h); status != 200 {
			t.Errorf("scheme %q: %d %q, want 200", scheme, status, body)
		}
	}
}

// TestRefreshTokensOnMiss: a token that is not in the store the request
// started with, but is in the store installed since (a token minted a
// moment ago, picked up by this or a concurrent request), is accepted; a
// refresh that finds nothing new keeps the 401.
func TestRefreshTokensOnMiss(t *testing.T) {
	tb := newTestBroker(t)
	old := tb.srv.Config()
	tok, id, hash, err := scope.MintToken(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	next := scope.NewTokenStore()
	for _, r := range old.Tokens.Tokens {
		if err := next.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := next.Add(scope.TokenRecord{ID: id, Hash: hash, Tenants: []string{"acme"}, Created: time.Now().UTC().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	refreshes := 0
	tb.srv.opts.RefreshTokens = func() *scope.TokenStore {
		refreshes++
		return tb.srv.Config().Tokens // nothing new yet
	}
	if status, _, _ := tb.raw(t, "GET", "/v1/tenants/acme/env", bearer(tok.Reveal())); status != 401 || refreshes != 1 {
		t.Fatalf("unknown token: status %d after %d refreshes, want 401 after 1", status, refreshes)
	}
	tb.srv.opts.RefreshTokens = func() *scope.TokenStore {
		refreshes++
		cfg := *tb.srv.Config()
		cfg.Tokens = next
		tb.srv.SetConfig(&cfg)
		return tb.srv.Config().Tokens
	}
	if status, body, _ := tb.raw(t, "GET", "/v1/tenants/acme/env", bearer(tok.Reveal())); status != 200 {
		t.Fatalf("token in the newly installed store: %d %q, want 200", status, body)
	}
	// A good token never triggers a refresh.
	before := refreshes
	if status, _, _ := tb.raw(t, "GET", "/v1/tenants/acme/env", bearer(tb.tokens["acme"])); status != 200 || refreshes != before {
		t.Fatalf("good token: status %d, refreshes %d → %d", status, before, refreshes)
	}
}
