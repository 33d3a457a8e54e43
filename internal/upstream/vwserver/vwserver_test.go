package vwserver

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hostd/broker/internal/bwcrypto"
)

const testPassword = "correct horse ☃ battery"

// newTestServer starts a server with the minimum KDF and stops it at the
// end of the test.
func newTestServer(t *testing.T) *Server {
	t.Helper()
	// Handlers may still log after Close returns; never log once the test
	// is over.
	var mu sync.Mutex
	done := false
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			t.Logf(format, args...)
		}
	}
	s, err := New(Options{KDFIterations: MinKDFIterations, Logf: logf})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		mu.Lock()
		done = true
		mu.Unlock()
	})
	return s
}

// client returns an HTTPS client that trusts only the server's CA.
func client(t *testing.T, s *Server) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CAPEM()) {
		t.Fatal("CAPEM: no certificate")
	}
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true},
	}
}

type response struct {
	status int
	ctype  string
	body   []byte
}

func do(t *testing.T, c *http.Client, method, u, bearer, ctype string, body []byte) (response, error) {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return response{resp.StatusCode, resp.Header.Get("Content-Type"), b}, err
}

func mustDo(t *testing.T, c *http.Client, method, u, bearer, ctype string, body []byte) response {
	t.Helper()
	r, err := do(t, c, method, u, bearer, ctype, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	return r
}

func tokenForm(clientID, secret string) []byte {
	return []byte(url.Values{
		"grant_type": {"client_credentials"}, "scope": {"api"}, "client_id": {clientID},
		"client_secret": {secret}, "deviceType": {"25"}, "deviceIdentifier": {"dev-1"}, "deviceName": {"linux"},
	}.Encode())
}

const formType = "application/x-www-form-urlencoded"

// login returns the decoded token response.
func login(t *testing.T, s *Server, c *http.Client, u User) map[string]any {
	t.Helper()
	r := mustDo(t, c, "POST", s.URL()+"/identity/connect/token", "", formType, tokenForm(u.ClientID, u.ClientSecret))
	if r.status != 200 {
		t.Fatalf("token: status %d, want 200", r.status)
	}
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("token: %v", err)
	}
	return m
}

func getJSON(t *testing.T, s *Server, c *http.Client, path, tok string, v any) {
	t.Helper()
	r := mustDo(t, c, "GET", s.URL()+path, tok, "", nil)
	if r.status != 200 {
		t.Fatalf("GET %s: status %d, want 200", path, r.status)
	}
	if !strings.HasPrefix(r.ctype, "application/json") {
		t.Fatalf("GET %s: Content-Type %q, want application/json", path, r.ctype)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

func str(t *testing.T, m map[string]any, path ...string) string {
	t.Helper()
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			t.Fatalf("%s: not an object at %q", strings.Join(path, "."), p)
		}
		cur = mm[p]
	}
	s, ok := cur.(string)
	if !ok {
		t.Fatalf("%s: not a string", strings.Join(path, "."))
	}
	return s
}

// TestUnwrapChain plays the client: from the password and what the server
// sends, it unwraps master key → stretched key → user key → RSA private key
// → org key, and decrypts the collection and the items.
func TestUnwrapChain(t *testing.T) {
	s := newTestServer(t)
	c := client(t, s)
	u := s.AddUser("Mixed.Case@Example.com", testPassword)
	orgID := s.AddOrganization("Tenants Org")
	s.AddMember(orgID, u.ID, MemberUser)
	collID := s.AddCollection(orgID, "acme")
	loginID := s.AddLogin(orgID, collID, "DB_PASSWORD", "admin", "s3cret\nline2")
	noteID := s.AddNote(orgID, collID, "CERT", "ünïcødé 😀")
	emptyID := s.AddNote(orgID, collID, "EMPTY", "")

	tok := login(t, s, c, u)
	if got, want := tok["KdfIterations"], float64(MinKDFIterations); got != want {
		t.Fatalf("KdfIterations = %v, want %v", got, want)
	}
	salt := str(t, tok, "UserDecryptionOptions", "MasterPasswordUnlock", "Salt")
	if salt != "mixed.case@example.com" {
		t.Fatalf("Salt = %q, want the lower-cased email", salt)
	}
	mk, err := pbkdf2.Key(sha256.New, testPassword, []byte(salt), MinKDFIterations, 32)
	if err != nil {
		t.Fatal(err)
	}
	stretched, err := bwcrypto.StretchKey(mk)
	if err != nil {
		t.Fatal(err)
	}
	ukBytes, err := bwcrypto.Decrypt(stretched, str(t, tok, "UserDecryptionOptions", "MasterPasswordUnlock", "MasterKeyEncryptedUserKey"))
	if err != nil {
		t.Fatalf("unwrap user key: %v", err)
	}
	userKey, err := bwcrypto.KeyFromBytes(ukBytes)
	if err != nil {
		t.Fatal(err)
	}
	// A wrong password must not unwrap it.
	badMK, _ := pbkdf2.Key(sha256.New, "wrong", []byte(salt), MinKDFIterations, 32)
	badStretched, _ := bwcrypto.StretchKey(badMK)
	if _, err := bwcrypto.Decrypt(badStretched, str(t, tok, "Key")); !errors.Is(err, bwcrypto.ErrMAC) {
		t.Fatalf("wrong password: err = %v, want %v", err, bwcrypto.ErrMAC)
	}
	pkcs8, err := bwcrypto.Decrypt(userKey, str(t, tok, "AccountKeys", "publicKeyEncryptionKeyPair", "wrappedPrivateKey"))
	if err != nil {
		t.Fatalf("unwrap private key: %v", err)
	}
	pk, err := x509.ParsePKCS8PrivateKey(pkcs8)
	if err != nil {
		t.Fatalf("private key: %v", err)
	}
	priv := pk.(*rsa.PrivateKey)
	spki, _ := base64.StdEncoding.DecodeString(str(t, tok, "AccountKeys", "publicKeyEncryptionKeyPair", "publicKey"))
	pub, err := x509.ParsePKIXPublicKey(spki)
	if err != nil || !priv.PublicKey.Equal(pub) {
		t.Fatalf("publicKey does not match the private key (err %v)", err)
	}

	var sync map[string]any
	getJSON(t, s, c, "/api/sync?excludeDomains=true", str(t, tok, "access_token"), &sync)
	profile := sync["profile"].(map[string]any)
	orgs := profile["organizations"].([]any)
	if len(orgs) != 1 {
		t.Fatalf("organizations: got %d, want 1", len(orgs))
	}
	o := orgs[0].(map[string]any)
	if o["status"] != float64(2) || o["type"] != float64(MemberUser) || o["id"] != orgID {
		t.Fatalf("organization: status %v type %v, want 2 and %d", o["status"], o["type"], MemberUser)
	}
	wrapped, ok := strings.CutPrefix(o["key"].(string), "4.")
	if !ok {
		t.Fatal("organization key is not an EncString of type 4")
	}
	ct, _ := base64.StdEncoding.DecodeString(wrapped)
	okBytes, err := rsa.DecryptOAEP(sha1.New(), nil, priv, ct, nil)
	if err != nil {
		t.Fatalf("unwrap org key: %v", err)
	}
	orgKey, err := bwcrypto.KeyFromBytes(okBytes)
	if err != nil {
		t.Fatal(err)
	}

	colls := sync["collections"].([]any)
	if len(colls) != 1 {
		t.Fatalf("collections: got %d, want 1", len(colls))
	}
	if got, err := bwcrypto.DecryptString(orgKey, colls[0].(map[string]any)["name"].(string)); err != nil || got != "acme" {
		t.Fatalf("collection name: got %q, err %v, want acme", got, err)
	}

	type want struct{ name, value string }
	wants := map[string]want{
		loginID: {"DB_PASSWORD", "s3cret\nline2"},
		noteID:  {"CERT", "ünïcødé 😀"},
		emptyID: {"EMPTY", ""},
	}
	ciphers := sync["ciphers"].([]any)
	if len(ciphers) != len(wants) {
		t.Fatalf("ciphers: got %d, want %d", len(ciphers), len(wants))
	}
	for _, ci := range ciphers {
		cm := ci.(map[string]any)
		w := wants[cm["id"].(string)]
		if cm["organizationId"] != orgID || fmt.Sprint(cm["collectionIds"]) != "["+collID+"]" {
			t.Fatalf("cipher %s: organizationId/collectionIds wrong", w.name)
		}
		name, err := bwcrypto.DecryptString(orgKey, cm["name"].(string))
		if err != nil || name != w.name {
			t.Fatalf("cipher name: got %q, err %v, want %q", name, err, w.name)
		}
		var enc any
		if cm["type"] == float64(cipherLogin) {
			enc = cm["login"].(map[string]any)["password"]
		} else {
			enc = cm["notes"]
		}
		got := ""
		if enc != nil {
			if got, err = bwcrypto.DecryptString(orgKey, enc.(string)); err != nil {
				t.Fatalf("cipher %s: %v", name, err)
			}
		}
		if got != w.value {
			t.Fatalf("cipher %s: value differs from the seed", name)
		}
	}
}

func TestTokenEndpoint(t *testing.T) {
	s := newTestServer(t)
	c := client(t, s)
	u := s.AddUser("a@example.com", testPassword)
	other := s.AddUser("b@example.com", testPassword)
	s.ResetStats()

	tests := []struct {
		name, clientID, secret, ctype string
		want                          int
		wantErr                       string
	}{
		{"good", u.ClientID, u.ClientSecret, formType, 200, ""},
		{"wrong secret", u.ClientID, other.ClientSecret, formType, 400, "invalid_client"},
		{"empty secret", u.ClientID, "", formType, 400, "invalid_client"},
		{"secret prefix", u.ClientID, u.ClientSecret[:29], formType, 400, "invalid_client"},
		{"unknown client", "user.00000000-0000-4000-8000-000000000000", u.ClientSecret, formType, 400, "invalid_client"},
		{"bare user id", u.ID, u.ClientSecret, formType, 400, "invalid_client"},
		{"json body", u.ClientID, u.ClientSecret, "application/json", 400, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustDo(t, c, "POST", s.URL()+"/identity/connect/token", "", tt.ctype, tokenForm(tt.clientID, tt.secret))
			if r.status != tt.want {
				t.Fatalf("status = %d, want %d", r.status, tt.want)
			}
			if !strings.HasPrefix(r.ctype, "application/json") {
				t.Fatalf("Content-Type = %q, want application/json", r.ctype)
			}
			var m map[string]any
			if err := json.Unmarshal(r.body, &m); err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != "" && m["error"] != tt.wantErr {
				t.Fatalf("error = %v, want %s", m["error"], tt.wantErr)
			}
			if tt.want == 200 {
				for _, k := range []string{"access_token", "Kdf", "KdfIterations", "UserDecryptionOptions", "AccountKeys"} {
					if _, ok := m[k]; !ok {
						t.Fatalf("token response lacks %s", k)
					}
				}
				if exp := m["expires_in"].(float64); exp != DefaultTokenLifetime.Seconds() {
					t.Fatalf("expires_in = %v, want %v", exp, DefaultTokenLifetime.Seconds())
				}
			}
		})
	}
	if got, want := s.Stats().Logins, int64(len(tests)); got != want {
		t.Fatalf("Stats().Logins = %d, want %d (every attempt counts)", got, want)
	}

	// Rotation: the old secret is refused, the new one accepted.
	old := u.ClientSecret
	u.ClientSecret = s.RotateClientSecret(u.ID)
	if u.ClientSecret == old || len(u.ClientSecret) != clientSecretLen {
		t.Fatalf("RotateClientSecret returned the old secret or a bad length %d", len(u.ClientSecret))
	}
	if r := mustDo(t, c, "POST", s.URL()+"/identity/connect/token", "", formType, tokenForm(u.ClientID, old)); r.status != 400 {
		t.Fatalf("old secret after rotation: status %d, want 400", r.status)
	}
	login(t, s, c, u)

	big := append(tokenForm(u.ClientID, u.ClientSecret), "&pad="+strings.Repeat("x", maxFormBytes)...)
	if r := mustDo(t, c, "POST", s.URL()+"/identity/connect/token", "", formType, big); r.status != 400 {
		t.Fatalf("oversized form: status %d, want 400", r.status)
	}
}

func TestJWTRejected(t *testing.T) {
	s := newTestServer(t)
	c := client(t, s)
	u := s.AddUser("a@example.com", testPassword)
	v := s.AddUser("v@example.com", testPassword)
	good := str(t, login(t, s, c, u), "access_token")
	parts := strings.Split(good, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var cl claims
	json.Unmarshal(payload, &cl)

	forged := cl
	forged.Subject = v.ID
	fp, _ := json.Marshal(forged)
	otherKey := bytes.Repeat([]byte{7}, 32)
	now := time.Now()
	expired := cl
	expired.NotBefore, expired.Expires = now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix()
	noneHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	stale := cl
	stale.SecurityStamp = "00000000-0000-4000-8000-000000000000"

	tests := []struct {
		name, tok string
		want      int
	}{
		{"valid", good, 200},
		{"no token", "", 401},
		{"garbage", "not-a-jwt", 401},
		{"payload swapped", parts[0] + "." + base64.RawURLEncoding.EncodeToString(fp) + "." + parts[2], 401},
		{"other key", signJWT(otherKey, forged), 401},
		{"alg none", noneHeader + "." + parts[1] + ".", 401},
		{"expired", signJWT(s.jwtKey, expired), 401},
		{"stale security stamp", signJWT(s.jwtKey, stale), 401},
		{"four parts", good + ".x", 401},
		{"signature cut", parts[0] + "." + parts[1] + "." + parts[2][:10], 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, path := range []string{"/api/sync?excludeDomains=true", "/api/accounts/revision-date", "/api/collections"} {
				if r := mustDo(t, c, "GET", s.URL()+path, tt.tok, "", nil); r.status != tt.want {
					t.Fatalf("GET %s: status %d, want %d", path, r.status, tt.want)
				}
			}
		})
	}
}

func TestUnknownPathsAre404(t *testing.T) {
	s := newTestServer(t)
	c := client(t, s)
	u := s.AddUser("a@example.com", testPassword)
	tok := str(t, login(t, s, c, u), "access_token")
	tests := []struct{ method, path, tok string }{
		{"GET", "/api/nope", ""},
		{"GET", "/api/nope", "bad"},
		{"GET", "/api/nope", tok},
		{"POST", "/events/collect", tok},
		{"GET", "/", ""},
		{"GET", "/api/organizations/" + newUUID() + "/collections", tok},
	}
	for _, tt := range tests {
		r := mustDo(t, c, tt.method, s.URL()+tt.path, tt.tok, "", nil)
		if r.status != 404 || !strings.HasPrefix(r.ctype, "application/json") {
			t.Errorf("%s %s: status %d (%s), want 404 JSON", tt.method, tt.path, r.status, r.ctype)
		}
	}
	if got := s.Stats().ByRoute["unknown"]; got != 5 {
		t.Errorf(`ByRoute["unknown"] = %d, want 5`, got)
	}
}

func TestRevisionAndKeyID(t *testing.T) {
	s := newTestServer(t)
	c := client(t, s)
	u := s.AddUser("a@example.com", testPassword)
	orgID := s.AddOrganization("o")
	s.AddMember(orgID, u.ID, MemberOwner)
	collID := s.AddCollection(orgID, "acme")
	loginID := s.AddLogin(orgID, collID, "K", "u", "v1")
	noteID := s.AddNote(orgID, collID, "N", "n1")
	cardID := s.AddCard(orgID, collID, "CARD")
	tok := str(t, login(t, s, c, u), "access_token")

	rev := func() int64 {
		var n int64
		getJSON(t, s, c, "/api/accounts/revision-date", tok, &n)
		return n
	}
	last := rev()
	steps := []struct {
		name   string
		change func() error
	}{
		{"update login", func() error { return s.UpdateItem(loginID, "v2") }},
		{"update note", func() error { return s.UpdateItem(noteID, "n2") }},
		{"add note", func() error { s.AddNote(orgID, collID, "M", "m"); return nil }},
		{"delete", func() error { return s.DeleteItem(noteID) }},
		{"user key id", func() error {
			r := mustDo(t, c, "POST", s.URL()+"/api/accounts/key-management/user-key-id", tok, "application/json", []byte(`{"userKeyId":"0123456789abcdef0123456789abcdef"}`))
			if r.status != 200 {
				return fmt.Errorf("status %d", r.status)
			}
			return nil
		}},
	}
	for _, st := range steps {
		if err := st.change(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := rev(); got <= last {
			t.Fatalf("%s: revision date %d, want > %d", st.name, got, last)
		} else {
			last = got
		}
	}
	if got := rev(); got != last {
		t.Fatalf("revision date moved without a change: %d, want %d", got, last)
	}

	var sync map[string]any
	getJSON(t, s, c, "/api/sync?excludeDomains=true", tok, &sync)
	if got := str(t, sync, "userDecryption", "userKeyId"); got != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("userDecryption.userKeyId = %q, want the posted id", got)
	}
	if n := len(sync["ciphers"].([]any)); n != 3 {
		t.Fatalf("ciphers after delete: got %d, want 3", n)
	}

	errTests := []struct {
		name string
		err  error
	}{
		{"update deleted", s.UpdateItem(noteID, "x")},
		{"delete twice", s.DeleteItem(noteID)},
		{"update card", s.UpdateItem(cardID, "x")},
	}
	for _, tt := range errTests {
		if tt.err == nil {
			t.Errorf("%s: err = nil, want an error", tt.name)
		}
	}
	for _, body := range []string{`{"userKeyId":""}`, `{"userKeyId":"zz"}`, `{`} {
		r := mustDo(t, c, "POST", s.URL()+"/api/accounts/key-management/user-key-id", tok, "application/json", []byte(body))
		if r.status != 400 {
			t.Errorf("user-key-id %s: status %d, want 400", body, r.status)
		}
	}
	big := `{"userKeyId":"` + strings.Repeat("a", maxJSONBytes) + `"}`
	if r := mustDo(t, c, "POST", s.URL()+"/api/accounts/key-management/user-key-id", tok, "application/json", []byte(big)); r.status != 400 {
		t.Errorf("oversized body: status %d, want 400", r.status)
	}
}

func TestCollectionsAndConfig(t *testing.T) {
	s := newTestServer(t)
	c := client(t, s)
	owner := s.AddUser("o@example.com", testPassword)
	member := s.AddUser("m@example.com", testPassword)
	outsider := s.AddUser("x@example.com", testPassword)
	orgID := s.AddOrganization("o")
	s.AddMember(orgID, owner.ID, MemberOwner)
	s.AddMember(orgID, member.ID, MemberUser)
	s.AddCollection(orgID, "acme")
	s.AddCollection(orgID, "globex")

	type list struct {
		Object string           `json:"object"`
		Data   []map[string]any `json:"data"`
	}
	tests := []struct {
		name string
		u    User
		path string
		want int
	}{
		{"owner org collections", owner, "/api/organizations/" + orgID + "/collections", 2},
		{"member collections", member, "/api/collections", 2},
		{"outsider collections", outsider, "/api/collections", 0},
	}
	for _, tt := range tests {
		var l list
		getJSON(t, s, c, tt.path, str(t, login(t, s, c, tt.u), "access_token"), &l)
		if l.Object != "list" || len(l.Data) != tt.want {
			t.Errorf("%s: object %q with %d collections, want list with %d", tt.name, l.Object, len(l.Data), tt.want)
		}
	}
	var cfg map[string]any
	getJSON(t, s, c, "/api/config", "", &cfg)
	if cfg["object"] != "config" || cfg["featureStates"] == nil {
		t.Errorf("config: object %v, featureStates %v", cfg["object"], cfg["featureStates"])
	}
	r := mustDo(t, c, "POST", s.URL()+"/identity/accounts/prelogin/password", "", "application/json", []byte(`{"email":"O@Example.com"}`))
	var pre struct {
		KdfSettings struct{ KdfType, Iterations int } `json:"kdfSettings"`
		Salt        string                            `json:"salt"`
	}
	if err := json.Unmarshal(r.body, &pre); err != nil || r.status != 200 {
		t.Fatalf("prelogin: status %d, err %v", r.status, err)
	}
	if pre.Salt != "o@example.com" || pre.KdfSettings.Iterations != MinKDFIterations {
		t.Errorf("prelogin: salt %q iterations %d, want o@example.com and %d", pre.Salt, pre.KdfSettings.Iterations, MinKDFIterations)
	}
}

func TestFaultsAndRestart(t *testing.T) {
	s := newTestServer(t)
	c := client(t, s)
	u := s.AddUser("a@example.com", testPassword)
	tok := str(t, login(t, s, c, u), "access_token")
	syncURL := s.URL() + "/api/sync?excludeDomains=true"

	s.InjectFault(Fault{Route: "/api/sync", Times: 2, Status: 503})
	for i := range 2 {
		if r := mustDo(t, c, "GET", syncURL, tok, "", nil); r.status != 503 {
			t.Fatalf("faulted sync %d: status %d, want 503", i, r.status)
		}
	}
	if r := mustDo(t, c, "GET", syncURL, tok, "", nil); r.status != 200 {
		t.Fatalf("sync after the fault ran out: status %d, want 200", r.status)
	}

	s.InjectFault(Fault{Route: "identity", Reset: true})
	if _, err := do(t, c, "POST", s.URL()+"/identity/connect/token", "", formType, tokenForm(u.ClientID, u.ClientSecret)); err == nil {
		t.Fatal("reset fault: request succeeded, want a connection error")
	}
	if r := mustDo(t, c, "GET", syncURL, tok, "", nil); r.status != 200 {
		t.Fatalf("identity fault hit the api: status %d", r.status)
	}
	s.ClearFaults()

	s.InjectFault(Fault{Route: "api", Times: 1, Delay: 50 * time.Millisecond, Status: 500})
	if r := mustDo(t, c, "GET", syncURL, tok, "", nil); r.status != 500 {
		t.Fatalf("delayed fault: status %d, want 500", r.status)
	}
	// A stall longer than the client's patience ends when the client leaves.
	s.InjectFault(Fault{Route: "api", Times: 1, Delay: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "GET", syncURL, nil)
	if _, err := c.Do(req); err == nil {
		t.Fatal("stalled request returned, want a timeout")
	}
	cancel()

	addr := s.Addr()
	s.Stop()
	if _, err := do(t, c, "GET", syncURL, tok, "", nil); err == nil {
		t.Fatal("request while stopped succeeded")
	}
	if err := s.StartAt(addr); err != nil {
		t.Fatalf("StartAt(%s): %v", addr, err)
	}
	if r := mustDo(t, c, "GET", syncURL, tok, "", nil); r.status != 200 {
		t.Fatalf("after restart: status %d, want 200 with the old token", r.status)
	}
	st := s.Stats()
	if st.Logins != 2 || st.ByRoute["GET /api/sync"] < 6 {
		t.Fatalf("stats: logins %d, sync %d; want 2 and at least 6", st.Logins, st.ByRoute["GET /api/sync"])
	}
	s.ResetStats()
	if st := s.Stats(); st.Logins != 0 || st.Requests != 0 || len(st.ByRoute) != 0 {
		t.Fatalf("after ResetStats: %+v", st)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, o := range []Options{{KDFIterations: 4999}, {TokenLifetime: time.Minute}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v): err = nil, want an error", o)
		}
	}
}

func TestWriteCA(t *testing.T) {
	s, err := New(Options{KDFIterations: MinKDFIterations})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := s.WriteCA(p); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.pem mode %v (err %v), want 0600", fi.Mode().Perm(), err)
	}
	b, _ := os.ReadFile(p)
	if !bytes.Equal(b, s.CAPEM()) {
		t.Fatal("ca.pem differs from CAPEM")
	}
}

// TestConcurrent runs seeding and API calls at once; run it with -race.
func TestConcurrent(t *testing.T) {
	s := newTestServer(t)
	c := client(t, s)
	u := s.AddUser("a@example.com", testPassword)
	orgID := s.AddOrganization("o")
	s.AddMember(orgID, u.ID, MemberUser)
	collID := s.AddCollection(orgID, "acme")
	tok := str(t, login(t, s, c, u), "access_token")
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 5 {
				id := s.AddLogin(orgID, collID, fmt.Sprintf("K%d_%d", i, j), "", "v")
				s.UpdateItem(id, "w")
				if r, err := do(t, c, "GET", s.URL()+"/api/sync", tok, "", nil); err != nil || r.status != 200 {
					t.Errorf("sync: status %d err %v", r.status, err)
				}
				s.Stats()
			}
		})
	}
	wg.Wait()
}

func FuzzVerifyJWT(f *testing.F) {
	key := bytes.Repeat([]byte{1}, 32)
	now := time.Unix(1_800_000_000, 0)
	good := signJWT(key, claims{Subject: "s", NotBefore: now.Unix(), Expires: now.Add(time.Hour).Unix()})
	f.Add(good)
	f.Add("a.b.c")
	f.Add("")
	f.Add(jwtHeader + "..")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := verifyJWT(key, tok, now)
		if err != nil {
			return
		}
		// Anything accepted must carry our own signature over its bytes.
		_ = c
		i := strings.LastIndex(tok, ".")
		if tok[i+1:] != base64.RawURLEncoding.EncodeToString(jwtMAC(key, tok[:i])) {
			t.Fatal("accepted a token not signed with the key")
		}
	})
}
