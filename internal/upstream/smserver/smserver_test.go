package smserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hostd/broker/internal/bwcrypto"
)

// fixture is a started server with one organization seeded like this:
// project rw (account may write), ro (read only), hidden (not granted), and
// a second organization with its own project and secret.
type fixture struct {
	srv                    *Server
	org, otherOrg          string
	rw, ro, hidden, other  string // project ids
	sRW, sRO, sHidden, sOt string // secret ids
	acct                   string
	token, tokenID         string
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	f := &fixture{srv: New(opts)}
	if err := f.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.srv.Close)
	s := f.srv
	f.org = s.AddOrganization("acme")
	f.otherOrg = s.AddOrganization("globex")
	f.rw = s.AddProject(f.org, "rw")
	f.ro = s.AddProject(f.org, "ro")
	f.hidden = s.AddProject(f.org, "hidden")
	f.other = s.AddProject(f.otherOrg, "other")
	f.sRW = s.AddSecret(f.org, f.rw, "RW_KEY", "rw value", "rw note")
	f.sRO = s.AddSecret(f.org, f.ro, "RO_KEY", "", "")
	f.sHidden = s.AddSecret(f.org, f.hidden, "HIDDEN_KEY", "hidden value", "")
	f.sOt = s.AddSecret(f.otherOrg, f.other, "OTHER_KEY", "other value", "")
	f.acct = s.AddMachineAccount(f.org)
	s.GrantWrite(f.acct, f.rw)
	s.GrantRead(f.acct, f.ro)
	f.token, f.tokenID = s.NewAccessToken(f.acct)
	return f
}

// splitToken parses an access token the way the SDK does.
func splitToken(t *testing.T, token string) (id, secret string, key *bwcrypto.Key) {
	t.Helper()
	left, k, ok := strings.Cut(token, ":")
	if !ok {
		t.Fatal("access token has no ':'")
	}
	parts := strings.Split(left, ".")
	if len(parts) != 3 || parts[0] != "0" {
		t.Fatalf("access token has %d parts, want 3 with version 0", len(parts))
	}
	raw, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(raw) != 16 {
		t.Fatalf("access token key: %d bytes, err %v; want 16", len(raw), err)
	}
	key, err = bwcrypto.AccessTokenKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	return parts[1], parts[2], key
}

// loginForm posts the SDK's login form and returns status and body.
func loginForm(t *testing.T, s *Server, form url.Values) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", s.IdentityURL()+"/connect/token", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	return send(t, req)
}

func tokenForm(id, secret string) url.Values {
	return url.Values{"scope": {"api.secrets"}, "client_id": {id}, "client_secret": {secret}, "grant_type": {"client_credentials"}}
}

// login returns the JWT and the organization key, as the SDK obtains them.
func login(t *testing.T, s *Server, token string) (jwt string, orgKey *bwcrypto.Key) {
	t.Helper()
	id, secret, atKey := splitToken(t, token)
	status, body := loginForm(t, s, tokenForm(id, secret))
	if status != 200 {
		t.Fatalf("login status = %d, want 200", status)
	}
	var resp tokenResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	payload, err := bwcrypto.Decrypt(atKey, resp.EncryptedPayload)
	if err != nil {
		t.Fatalf("decrypt encrypted_payload: %v", err)
	}
	var p struct {
		EncryptionKey string `json:"encryptionKey"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		t.Fatalf("payload is not JSON: %v", err)
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(p.EncryptionKey)
	if err != nil {
		t.Fatalf("encryptionKey is not padded base64: %v", err)
	}
	orgKey, err = bwcrypto.KeyFromBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	return resp.AccessToken, orgKey
}

func send(t *testing.T, req *http.Request) (int, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL.Path, err)
	}
	return resp.StatusCode, body
}

// call makes an API request with a bearer JWT ("" for none).
func call(t *testing.T, s *Server, method, path, jwt string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if jwt != "" {
		req.Header.Set("Authorization", "Bearer "+jwt)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return send(t, req)
}

var tokenRE = regexp.MustCompile(`^0\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.[A-Za-z0-9]{30}:[A-Za-z0-9+/]{22}==$`)

func TestLoginCryptoRoundTrip(t *testing.T) {
	f := newFixture(t, Options{})
	if !tokenRE.MatchString(f.token) {
		t.Fatalf("access token does not have the SDK's format")
	}
	id, secret, atKey := splitToken(t, f.token)
	if id != f.tokenID {
		t.Errorf("token id in token = %s, want %s", id, f.tokenID)
	}
	status, body := loginForm(t, f.srv, tokenForm(id, secret))
	if status != 200 {
		t.Fatalf("login status = %d, want 200", status)
	}

	// Exactly the payload shape: five fields, expires_in a number.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	if got, want := strings.Join(names, ","), "access_token,encrypted_payload,expires_in,scope,token_type"; got != want {
		t.Errorf("identity fields = %s, want %s", got, want)
	}
	if got := string(fields["expires_in"]); got != "3600" {
		t.Errorf("expires_in = %s, want 3600", got)
	}
	if got := string(fields["token_type"]); got != `"Bearer"` {
		t.Errorf("token_type = %s, want \"Bearer\"", got)
	}

	// The JWT: three parts, base64url without padding, the SDK's claims.
	var resp tokenResponse
	json.Unmarshal(body, &resp)
	parts := strings.Split(resp.AccessToken, ".")
	if len(parts) != 3 {
		t.Fatalf("JWT has %d parts, want 3", len(parts))
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
	if err != nil {
		t.Fatalf("JWT payload is not base64url without padding: %v", err)
	}
	var c struct {
		Exp          *uint64  `json:"exp"`
		Sub          *string  `json:"sub"`
		Scope        []string `json:"scope"`
		Organization *string  `json:"organization"`
		ClientID     string   `json:"client_id"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("JWT claims: %v", err)
	}
	if c.Exp == nil || c.Sub == nil || *c.Sub != f.acct || c.Organization == nil || *c.Organization != f.org ||
		len(c.Scope) != 1 || c.Scope[0] != "api.secrets" || c.ClientID != f.tokenID {
		t.Errorf("JWT claims = %s, want exp, sub=account, organization=org, scope=[api.secrets], client_id=token id", raw)
	}
	if d := time.Until(time.Unix(int64(*c.Exp), 0)); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("JWT exp is %v from now, want about 1h", d)
	}

	// The payload decrypts under the key derived from the token, and the
	// organization key in it decrypts what the API returns.
	payload, err := bwcrypto.Decrypt(atKey, resp.EncryptedPayload)
	if err != nil {
		t.Fatalf("decrypt encrypted_payload: %v", err)
	}
	var p struct {
		EncryptionKey string `json:"encryptionKey"`
	}
	json.Unmarshal(payload, &p)
	orgKeyRaw, err := base64.StdEncoding.Strict().DecodeString(p.EncryptionKey)
	if err != nil || len(orgKeyRaw) != 64 {
		t.Fatalf("encryptionKey: %d bytes, err %v; want 64", len(orgKeyRaw), err)
	}
	orgKey, _ := bwcrypto.KeyFromBytes(orgKeyRaw)
	st, body := call(t, f.srv, "GET", "/api/secrets/"+f.sRW, resp.AccessToken, nil)
	if st != 200 {
		t.Fatalf("GET secret status = %d, want 200", st)
	}
	var sec secretModel
	json.Unmarshal(body, &sec)
	for _, tc := range []struct{ name, enc, want string }{
		{"key", sec.Key, "RW_KEY"},
		{"value", sec.Value, "rw value"},
		{"note", sec.Note, "rw note"},
		{"project name", sec.Projects[0].Name, "rw"},
	} {
		got, err := bwcrypto.DecryptString(orgKey, tc.enc)
		if err != nil || got != tc.want {
			t.Errorf("%s: decrypts equal %v, err %v", tc.name, got == tc.want, err)
		}
	}
	for _, d := range []string{sec.CreationDate, sec.RevisionDate} {
		if _, err := time.Parse(time.RFC3339Nano, d); err != nil || !strings.HasSuffix(d, "Z") {
			t.Errorf("date %q: want RFC 3339 in UTC with Z (err %v)", d, err)
		}
	}

	// The server keeps no usable key: the stored payload is the one sent.
	f.srv.mu.Lock()
	stored := f.srv.tokens[f.tokenID].payload
	f.srv.mu.Unlock()
	if stored != resp.EncryptedPayload {
		t.Errorf("encrypted_payload differs from the one stored at NewAccessToken")
	}
}

func TestLoginFailures(t *testing.T) {
	f := newFixture(t, Options{})
	id, secret, _ := splitToken(t, f.token)
	revoked, revokedID := f.srv.NewAccessToken(f.acct)
	rid, rsecret, _ := splitToken(t, revoked)
	f.srv.RevokeAccessToken(revokedID)
	tests := []struct {
		name string
		form url.Values
		want string
	}{
		{"wrong secret", tokenForm(id, secret[:29]+"x"), "invalid_client"},
		{"empty secret", tokenForm(id, ""), "invalid_client"},
		{"unknown id", tokenForm(newUUID(), secret), "invalid_client"},
		{"revoked", tokenForm(rid, rsecret), "invalid_client"},
		{"wrong grant", url.Values{"scope": {"api.secrets"}, "client_id": {id}, "client_secret": {secret}, "grant_type": {"password"}}, "unsupported_grant_type"},
		{"wrong scope", url.Values{"scope": {"api"}, "client_id": {id}, "client_secret": {secret}, "grant_type": {"client_credentials"}}, "invalid_scope"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := loginForm(t, f.srv, tc.form)
			want := `{"error":"` + tc.want + `"}`
			if status != 400 || string(body) != want {
				t.Errorf("status %d body %s, want 400 %s", status, body, want)
			}
		})
	}
	if got, want := f.srv.Stats().Logins, int64(len(tests)); got != want {
		t.Errorf("Logins = %d, want %d (failures count too)", got, want)
	}
	// Case of the id does not matter; the right secret works.
	if status, _ := loginForm(t, f.srv, tokenForm(strings.ToUpper(id), secret)); status != 200 {
		t.Errorf("login with upper-case id: status %d, want 200", status)
	}
}

func TestJWTVerification(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, _ := login(t, f.srv, f.token)
	parts := strings.Split(jwt, ".")
	claimsOf := func() claims {
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var c claims
		json.Unmarshal(raw, &c)
		return c
	}
	reencode := func(c claims) string {
		b, _ := json.Marshal(c)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	otherOrg := claimsOf()
	otherOrg.Organization = f.otherOrg
	otherSub := claimsOf()
	otherSub.Sub = f.srv.AddMachineAccount(f.org)
	expired := claimsOf()
	expired.Exp = time.Now().Add(-time.Minute).Unix()
	stranger := New(Options{}) // same claims, another server's key

	revokedTok, revokedID := f.srv.NewAccessToken(f.acct)
	revokedJWT, _ := login(t, f.srv, revokedTok)
	f.srv.RevokeAccessToken(revokedID)

	tests := []struct {
		name string
		jwt  string
		want int
	}{
		{"valid", jwt, 200},
		{"none", "", 401},
		{"garbage", "not.a.jwt", 401},
		{"two parts", parts[0] + "." + parts[1], 401},
		{"forged organization", parts[0] + "." + reencode(otherOrg) + "." + parts[2], 401},
		{"forged sub", parts[0] + "." + reencode(otherSub) + "." + parts[2], 401},
		{"alg none", base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".", 401},
		{"padded signature", jwt + "=", 401},
		{"other server's key", stranger.signJWT(claimsOf()), 401},
		{"expired, signed", f.srv.signJWT(expired), 401},
		{"revoked token", revokedJWT, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(t, f.srv, "GET", "/api/organizations/"+f.org+"/secrets", tc.jwt, nil)
			if status != tc.want {
				t.Errorf("status = %d, want %d", status, tc.want)
			}
			if status == 401 && len(body) != 0 {
				t.Errorf("401 body has %d bytes, want none", len(body))
			}
		})
	}
}

func TestVisibility(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, key := login(t, f.srv, f.token)
	enc := func(s string) string { return bwcrypto.EncryptString(key, s) }
	newSecret := func(project string) map[string]any {
		return map[string]any{"key": enc("NEW"), "value": enc("v"), "note": enc(""), "projectIds": []string{project}}
	}
	orgs := "/api/organizations/"
	tests := []struct {
		name, method, path string
		body               any
		want               int
	}{
		{"list own org", "GET", orgs + f.org + "/secrets", nil, 200},
		{"list other org", "GET", orgs + f.otherOrg + "/secrets", nil, 404},
		{"list unknown org", "GET", orgs + newUUID() + "/secrets", nil, 404},
		{"sync other org", "GET", orgs + f.otherOrg + "/secrets/sync", nil, 404},
		{"projects other org", "GET", orgs + f.otherOrg + "/projects", nil, 404},
		{"get rw", "GET", "/api/secrets/" + f.sRW, nil, 200},
		{"get ro (empty value)", "GET", "/api/secrets/" + f.sRO, nil, 200},
		{"get upper-case id", "GET", "/api/secrets/" + strings.ToUpper(f.sRW), nil, 200},
		{"get hidden", "GET", "/api/secrets/" + f.sHidden, nil, 404},
		{"get other org", "GET", "/api/secrets/" + f.sOt, nil, 404},
		{"get unknown", "GET", "/api/secrets/" + newUUID(), nil, 404},
		{"get-by-ids visible", "POST", "/api/secrets/get-by-ids", map[string]any{"ids": []string{f.sRW, f.sRO}}, 200},
		{"get-by-ids with hidden", "POST", "/api/secrets/get-by-ids", map[string]any{"ids": []string{f.sRW, f.sHidden}}, 404},
		{"get-by-ids with other org", "POST", "/api/secrets/get-by-ids", map[string]any{"ids": []string{f.sOt}}, 404},
		{"project rw", "GET", "/api/projects/" + f.rw, nil, 200},
		{"project hidden", "GET", "/api/projects/" + f.hidden, nil, 404},
		{"project other org", "GET", "/api/projects/" + f.other, nil, 404},
		{"create in hidden", "POST", orgs + f.org + "/secrets", newSecret(f.hidden), 404},
		{"create in other org's project", "POST", orgs + f.org + "/secrets", newSecret(f.other), 404},
		{"create in other org", "POST", orgs + f.otherOrg + "/secrets", newSecret(f.other), 404},
		{"create in ro", "POST", orgs + f.org + "/secrets", newSecret(f.ro), 403},
		{"create without project", "POST", orgs + f.org + "/secrets", map[string]any{"key": enc("K"), "value": enc("v"), "note": enc("")}, 400},
		{"create with plaintext", "POST", orgs + f.org + "/secrets", map[string]any{"key": "K", "value": "v", "note": "", "projectIds": []string{f.rw}}, 400},
		{"create under another key", "POST", orgs + f.org + "/secrets", map[string]any{"key": bwcrypto.EncryptString(bwcrypto.NewKey(), "K"), "value": enc("v"), "projectIds": []string{f.rw}}, 400},
		{"create in rw", "POST", orgs + f.org + "/secrets", newSecret(f.rw), 200},
		{"update hidden", "PUT", "/api/secrets/" + f.sHidden, newSecret(f.hidden), 404},
		{"update ro", "PUT", "/api/secrets/" + f.sRO, newSecret(f.ro), 403},
		{"update rw into hidden", "PUT", "/api/secrets/" + f.sRW, newSecret(f.hidden), 404},
		{"delete hidden", "POST", "/api/secrets/delete", []string{f.sHidden}, 404},
		{"delete other org", "POST", "/api/secrets/delete", []string{f.sOt}, 404},
		{"bad json", "POST", "/api/secrets/get-by-ids", "not an object", 400},
		{"unknown path", "GET", "/api/nothing", nil, 404},
		{"wrong method", "DELETE", orgs + f.org + "/secrets", nil, 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _ := call(t, f.srv, tc.method, tc.path, jwt, tc.body)
			if status != tc.want {
				t.Errorf("%s %s: status = %d, want %d", tc.method, tc.name, status, tc.want)
			}
		})
	}

	// What the list shows.
	_, body := call(t, f.srv, "GET", orgs+f.org+"/secrets", jwt, nil)
	var list struct {
		Secrets []secretListItem `json:"secrets"`
	}
	json.Unmarshal(body, &list)
	var keys []string
	for _, s := range list.Secrets {
		k, _ := bwcrypto.DecryptString(key, s.Key)
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if got, want := strings.Join(keys, ","), "NEW,RO_KEY,RW_KEY"; got != want {
		t.Errorf("listed keys = %s, want %s", got, want)
	}

	// Nothing changed in the hidden project or the other org.
	if got := f.srv.SecretsOf(f.org, f.hidden); len(got) != 1 || got["HIDDEN_KEY"] != "hidden value" {
		t.Errorf("hidden project secrets changed: keys %v", keysOf(got))
	}
	if got := f.srv.SecretsOf(f.otherOrg, f.other); len(got) != 1 {
		t.Errorf("other org secrets changed: keys %v", keysOf(got))
	}
	// Deleting a read-only secret is refused per item.
	status, body := call(t, f.srv, "POST", "/api/secrets/delete", jwt, []string{f.sRO})
	if status != 200 || !strings.Contains(string(body), `"error":"access denied"`) {
		t.Errorf("delete ro: status %d body %s, want 200 with an access denied entry", status, body)
	}
	if got := f.srv.SecretsOf(f.org, f.ro); len(got) != 1 {
		t.Errorf("ro secret was deleted")
	}
}

func keysOf(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestUpdateMovesAndWrites(t *testing.T) {
	f := newFixture(t, Options{})
	rw2 := f.srv.AddProject(f.org, "rw2")
	f.srv.GrantWrite(f.acct, rw2)
	jwt, key := login(t, f.srv, f.token)
	f.srv.ResetStats()
	body := map[string]any{"key": bwcrypto.EncryptString(key, "RW_KEY"), "value": bwcrypto.EncryptString(key, "moved"), "projectIds": []string{rw2}}
	if status, _ := call(t, f.srv, "PUT", "/api/secrets/"+f.sRW, jwt, body); status != 200 {
		t.Fatalf("update status = %d, want 200", status)
	}
	if got := f.srv.SecretsOf(f.org, rw2); got["RW_KEY"] != "moved" {
		t.Errorf("secret not moved to rw2 with its new value")
	}
	if got := f.srv.SecretsOf(f.org, f.rw); len(got) != 0 {
		t.Errorf("rw still has keys %v", keysOf(got))
	}
	if got := f.srv.Stats().Writes; got != 1 {
		t.Errorf("Writes = %d, want 1", got)
	}
	// Without projectIds the secret stays where it is.
	body = map[string]any{"key": bwcrypto.EncryptString(key, "RW_KEY"), "value": bwcrypto.EncryptString(key, "again")}
	if status, _ := call(t, f.srv, "PUT", "/api/secrets/"+f.sRW, jwt, body); status != 200 {
		t.Fatalf("update without projectIds status = %d, want 200", status)
	}
	if got := f.srv.SecretsOf(f.org, rw2); got["RW_KEY"] != "again" {
		t.Errorf("update without projectIds did not keep the project")
	}
}

func TestSync(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, _ := login(t, f.srv, f.token)
	before := time.Now().UTC()
	path := "/api/organizations/" + f.org + "/secrets/sync"
	sync := func(t *testing.T, since *time.Time, layout string) (bool, int) {
		t.Helper()
		p := path
		if since != nil {
			p += "?lastSyncedDate=" + url.QueryEscape(since.Format(layout))
		}
		status, body := call(t, f.srv, "GET", p, jwt, nil)
		if status != 200 {
			t.Fatalf("sync status = %d, want 200", status)
		}
		var resp struct {
			HasChanges *bool `json:"hasChanges"`
			Secrets    *struct {
				Data []secretModel `json:"data"`
			} `json:"secrets"`
		}
		if err := json.Unmarshal(body, &resp); err != nil || resp.HasChanges == nil {
			t.Fatalf("sync body: err %v, hasChanges present %v", err, resp.HasChanges != nil)
		}
		if *resp.HasChanges != (resp.Secrets != nil) {
			t.Fatalf("hasChanges %v but secrets present %v", *resp.HasChanges, resp.Secrets != nil)
		}
		if resp.Secrets == nil {
			return false, 0
		}
		return true, len(resp.Secrets.Data)
	}
	// chrono's to_rfc3339 writes "+00:00"; accept it as well as "Z".
	const chrono = "2006-01-02T15:04:05.999999999-07:00"

	mark := func() time.Time { return time.Now().UTC() }
	tests := []struct {
		name    string
		change  func()
		changed bool
		n       int
	}{
		{"nothing", func() {}, false, 0},
		{"hidden project update", func() { f.srv.UpdateSecret(f.sHidden, "x") }, false, 0},
		{"other org add", func() { f.srv.AddSecret(f.otherOrg, f.other, "O2", "x", "") }, false, 0},
		{"seeded update", func() { f.srv.UpdateSecret(f.sRO, "new") }, true, 2},
		{"seeded add", func() { f.srv.AddSecret(f.org, f.rw, "ADDED", "x", "") }, true, 3},
		{"delete", func() { f.srv.DeleteSecret(f.sRO) }, true, 2},
		{"grant", func() { f.srv.GrantRead(f.acct, f.hidden) }, true, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			since := mark()
			tc.change()
			for _, layout := range []string{time.RFC3339Nano, chrono} {
				changed, n := sync(t, &since, layout)
				if changed != tc.changed || n != tc.n {
					t.Errorf("layout %q: changed %v with %d secrets, want %v with %d", layout, changed, n, tc.changed, tc.n)
				}
			}
		})
	}
	if changed, n := sync(t, nil, ""); !changed || n != 3 {
		t.Errorf("sync without date: changed %v with %d secrets, want true with 3", changed, n)
	}
	if changed, _ := sync(t, &before, time.RFC3339Nano); !changed {
		t.Errorf("sync since before the test: no changes, want changes")
	}
	if status, _ := call(t, f.srv, "GET", path+"?lastSyncedDate=yesterday", jwt, nil); status != 400 {
		t.Errorf("sync with a bad date: status %d, want 400", status)
	}
}

func TestStatsAndCounters(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, _ := login(t, f.srv, f.token)
	call(t, f.srv, "GET", "/api/organizations/"+f.org+"/secrets", jwt, nil)
	call(t, f.srv, "GET", "/api/organizations/"+f.org+"/secrets/sync", jwt, nil)
	call(t, f.srv, "GET", "/api/organizations/"+f.org+"/secrets/sync", "", nil) // 401 still counts
	f.srv.InjectFault(Fault{Route: "api", Status: 503})
	call(t, f.srv, "GET", "/api/secrets/"+f.sRW, jwt, nil) // faulted still counts
	call(t, f.srv, "GET", "/nowhere", "", nil)
	loginForm(t, f.srv, tokenForm(f.tokenID, "wrong"))

	st := f.srv.Stats()
	want := map[string]int64{
		"POST /identity/connect/token":              2,
		"GET /api/organizations/{org}/secrets":      1,
		"GET /api/organizations/{org}/secrets/sync": 2,
		"GET /api/secrets/{id}":                     1,
		"unmatched":                                 1,
	}
	for route, n := range want {
		if st.ByRoute[route] != n {
			t.Errorf("ByRoute[%q] = %d, want %d", route, st.ByRoute[route], n)
		}
	}
	if len(st.ByRoute) != len(want) {
		t.Errorf("ByRoute has %d routes, want %d: %v", len(st.ByRoute), len(want), st.ByRoute)
	}
	if st.Logins != 2 || st.Requests != 5 || st.Writes != 0 {
		t.Errorf("Logins %d Requests %d Writes %d, want 2 5 0", st.Logins, st.Requests, st.Writes)
	}
	st.ByRoute["unmatched"] = 99 // a snapshot, not the live map
	if f.srv.Stats().ByRoute["unmatched"] != 1 {
		t.Errorf("Stats returned the live map")
	}
	f.srv.ResetStats()
	if st := f.srv.Stats(); st.Logins != 0 || st.Requests != 0 || len(st.ByRoute) != 0 {
		t.Errorf("after ResetStats: %+v, want zeros", st)
	}
}

func TestStopStart(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, _ := login(t, f.srv, f.token)
	addr := f.srv.Addr()
	path := "/api/secrets/" + f.sRW
	f.srv.Stop()
	f.srv.Stop() // idempotent
	req, _ := http.NewRequest("GET", f.srv.URL()+path, nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("request while stopped succeeded")
	}
	if err := f.srv.StartAt(addr); err != nil {
		t.Fatalf("StartAt(%s): %v", addr, err)
	}
	if err := f.srv.StartAt(addr); err == nil {
		t.Errorf("StartAt while listening succeeded, want an error")
	}
	if status, _ := call(t, f.srv, "GET", path, jwt, nil); status != 200 {
		t.Errorf("after StartAt: status %d, want 200 (state and JWT kept)", status)
	}
	for _, bad := range []string{"0.0.0.0:0", "192.0.2.1:80", "example.com:80", "nonsense"} {
		s := New(Options{})
		if err := s.StartAt(bad); err == nil {
			s.Close()
			t.Errorf("StartAt(%q) succeeded, want a loopback-only error", bad)
		}
	}
	f.srv.Close()
	if err := f.srv.Start(); err == nil {
		t.Errorf("Start after Close succeeded")
	}
}

func TestSecretsOfAndSeedingErrors(t *testing.T) {
	s := New(Options{})
	org := s.AddOrganization("o")
	p := s.AddProject(org, "p")
	hard := map[string]string{"A": "line1\nline2", "B": `he said "hi"`, "C": "", "D": "ünïcødé 😀"}
	for k, v := range hard {
		s.AddSecret(org, p, k, v, "")
	}
	got := s.SecretsOf(org, p)
	for k, v := range hard {
		if got[k] != v {
			t.Errorf("SecretsOf: key %q differs", k)
		}
	}
	if err := s.UpdateSecret(newUUID(), "x"); err == nil {
		t.Errorf("UpdateSecret(unknown) succeeded")
	}
	if err := s.DeleteSecret(newUUID()); err == nil {
		t.Errorf("DeleteSecret(unknown) succeeded")
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Errorf("AddProject(unknown org) did not panic")
			}
		}()
		s.AddProject(newUUID(), "x")
	}()
}

func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, key := login(t, f.srv, f.token)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				f.srv.AddSecret(f.org, f.rw, "K", "v", "")
				f.srv.Stats()
				req, _ := http.NewRequestWithContext(context.Background(), "GET", f.srv.URL()+"/api/organizations/"+f.org+"/secrets/sync", nil)
				req.Header.Set("Authorization", "Bearer "+jwt)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				b, _ := json.Marshal(map[string]any{"key": bwcrypto.EncryptString(key, "C"), "value": bwcrypto.EncryptString(key, "v"), "projectIds": []string{f.rw}})
				req, _ = http.NewRequest("POST", f.srv.URL()+"/api/organizations/"+f.org+"/secrets", bytes.NewReader(b))
				req.Header.Set("Authorization", "Bearer "+jwt)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	if got := f.srv.Stats().Writes; got != 40 {
		t.Errorf("Writes = %d, want 40", got)
	}
}

func TestRequestBodyBound(t *testing.T) {
	f := newFixture(t, Options{})
	jwt, _ := login(t, f.srv, f.token)
	big := `{"ids":["` + strings.Repeat("a", maxBodyBytes) + `"]}`
	req, _ := http.NewRequest("POST", f.srv.URL()+"/api/secrets/get-by-ids", strings.NewReader(big))
	req.Header.Set("Authorization", "Bearer "+jwt)
	status, _ := send(t, req)
	if status != 400 {
		t.Errorf("oversized body: status %d, want 400", status)
	}
}

func TestLogfCarriesNoSecrets(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	f := newFixture(t, Options{Logf: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		b, _ := json.Marshal(args)
		lines = append(lines, format+string(b))
	}})
	jwt, _ := login(t, f.srv, f.token)
	call(t, f.srv, "GET", "/api/secrets/"+f.sRW, jwt, nil)
	_, secret, _ := splitToken(t, f.token)
	mu.Lock()
	defer mu.Unlock()
	if len(lines) != 2 {
		t.Errorf("got %d log lines, want 2", len(lines))
	}
	for _, l := range lines {
		for _, s := range []string{secret, jwt, "rw value", "encrypted_payload"} {
			if strings.Contains(l, s) {
				t.Errorf("a log line carries secret material (len %d)", len(s))
			}
		}
	}
}
