package scope

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	uuidOrg  = "5b1c7a52-3e0f-4f3c-9d2a-6e8b1f4c2a90"
	uuidOrg2 = "c2d4e6f8-1a3b-4c5d-8e7f-9a0b1c2d3e4f"
	uuidP1   = "0f6e2d1c-8b4a-4e7d-a1c3-9f2b6d8e4a17"
	uuidP2   = "7d3f9a1e-2c4b-4d6e-8f0a-1b3c5d7e9f20"
)

// basePolicy returns a valid policy as a generic JSON tree: one sm tenant
// (acme) and one bwcli tenant (globex).
func basePolicy() map[string]any {
	return map[string]any{
		"version": 1,
		"upstream": map[string]any{
			"sm": map[string]any{"api_url": "https://api.bitwarden.com", "identity_url": "https://identity.bitwarden.com"},
			"bw": map[string]any{"server_url": "https://vault.example.org", "ca_file": "", "mode": "serve"},
		},
		"cache": map[string]any{"ttl": "60s", "max_tenants": 1024, "stale_if_error": "0s"},
		"tenants": map[string]any{
			"acme": map[string]any{"backend": "sm", "organization_id": uuidOrg,
				"project_ids": []any{uuidP1}, "access_token_env": "BROKER_SM_TOKEN_ACME"},
			"globex": map[string]any{"backend": "bwcli", "organization_id": uuidOrg2,
				"collection": "globex", "credentials_env_prefix": ""},
		},
	}
}

// edit returns a copy of basePolicy with each edit applied: a dotted path
// and a value; the value del removes the key.
func edit(kv ...any) []byte {
	m := basePolicy()
	for i := 0; i < len(kv); i += 2 {
		parts := strings.Split(kv[i].(string), ".")
		cur := m
		for _, p := range parts[:len(parts)-1] {
			next, ok := cur[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				cur[p] = next
			}
			cur = next
		}
		last := parts[len(parts)-1]
		if kv[i+1] == del {
			delete(cur, last)
		} else {
			cur[last] = kv[i+1]
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

type delMarker struct{}

var del = delMarker{}

func parse(b []byte) (*Policy, error) { return ParsePolicy(bytes.NewReader(b)) }

func TestParsePolicyExample(t *testing.T) {
	data, err := os.ReadFile("testdata/policy.example.json")
	if err != nil {
		t.Fatal(err)
	}
	p, err := parse(data)
	if err != nil {
		t.Fatalf("ParsePolicy(example): %v", err)
	}
	acme, globex := p.Tenants["acme"], p.Tenants["globex"]
	checks := []struct {
		name      string
		got, want any
	}{
		{"acme.backend", acme.Backend, BackendSM},
		{"acme.project_ids (lowercased)", acme.ProjectIDs, []string{uuidP1}},
		{"acme.credentials", acme.CredentialEnvNames(), []string{"BROKER_SM_TOKEN_ACME"}},
		{"globex.collection", globex.Collection, "globex"},
		{"globex.credentials", globex.CredentialEnvNames(), []string{"BW_CLIENTID", "BW_CLIENTSECRET", "BW_PASSWORD"}},
		{"acme uses master password", p.UsesMasterPassword("acme"), false},
		{"globex uses master password", p.UsesMasterPassword("globex"), true},
		{"unknown uses master password", p.UsesMasterPassword("nope"), false},
		{"ttl", p.Cache.TTL.Duration, 60 * time.Second},
		{"bw.mode", p.Upstream.BW.Mode, BWModeServe},
		{"tenant names", p.TenantNames(), []string{"acme", "globex"}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	out, err := p.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	p2, err := parse(out)
	if err != nil {
		t.Fatalf("ParsePolicy(Marshal(example)): %v\n%s", err, out)
	}
	if !reflect.DeepEqual(p, p2) {
		t.Errorf("round trip changed the policy:\n got %+v\nwant %+v", p2, p)
	}
	out2, err := p2.Marshal()
	if err != nil || !bytes.Equal(out, out2) {
		t.Errorf("Marshal is not stable (err %v):\n%s\n---\n%s", err, out, out2)
	}
}

func TestParsePolicyDefaults(t *testing.T) {
	p, err := parse([]byte(`{"version":1,
		"upstream":{"bw":{"server_url":"https://vault.example.org"}},
		"tenants":{"globex":{"backend":"bwcli","organization_id":"` + strings.ToUpper(uuidOrg) + `"}}}`))
	if err != nil {
		t.Fatalf("ParsePolicy: %v", err)
	}
	g := p.Tenants["globex"]
	checks := []struct {
		name      string
		got, want any
	}{
		{"cache.ttl", p.Cache.TTL.Duration, DefaultTTL},
		{"cache.max_tenants", p.Cache.MaxTenants, DefaultMaxTenants},
		{"cache.stale_if_error", p.Cache.StaleIfError.Duration, time.Duration(0)},
		{"upstream.bw.mode", p.Upstream.BW.Mode, BWModeServe},
		{"upstream.sm.client", p.Upstream.SM.Client, SMClientDefault},
		{"collection", g.Collection, "globex"},
		{"organization_id", g.OrganizationID, uuidOrg},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestParsePolicyAccepts(t *testing.T) {
	tests := []struct {
		name  string
		input []byte
		check func(*Policy) bool
	}{
		{"ttl 0 disables caching", edit("cache.ttl", "0s"), func(p *Policy) bool { return p.Cache.TTL.Duration == 0 }},
		{"stale_if_error set", edit("cache.stale_if_error", "10m"), func(p *Policy) bool { return p.Cache.StaleIfError.Duration == 10*time.Minute }},
		{"http on 127.0.0.1", edit("upstream.sm.api_url", "http://127.0.0.1:8080/api"), nil},
		{"http on 127.1.2.3", edit("upstream.sm.api_url", "http://127.1.2.3"), nil},
		{"http on ::1", edit("upstream.sm.identity_url", "http://[::1]:9000/identity"), nil},
		{"http on localhost", edit("upstream.sm.identity_url", "http://localhost:9000"), nil},
		{"https with port and path", edit("upstream.bw.server_url", "https://localhost:8443/vault"), nil},
		{"bw mode exec", edit("upstream.bw.mode", "exec"), func(p *Policy) bool { return p.Upstream.BW.Mode == BWModeExec }},
		{"empty bw mode means serve", edit("upstream.bw.mode", ""), func(p *Policy) bool { return p.Upstream.BW.Mode == BWModeServe }},
		{"sm client native", edit("upstream.sm.client", "native"), func(p *Policy) bool { return p.Upstream.SM.Client == SMClientNative }},
		{"sm client sdk", edit("upstream.sm.client", "sdk"), nil},
		{"absolute ca_file", edit("upstream.bw.ca_file", "/etc/broker/ca.pem"), nil},
		{"credentials prefix", edit("tenants.globex.credentials_env_prefix", "GLOBEX_"),
			func(p *Policy) bool { return p.Tenants["globex"].CredentialEnvNames()[2] == "GLOBEX_BW_PASSWORD" }},
		{"no sm tenant, no sm upstream", edit("tenants.acme", del, "upstream.sm", del), nil},
		{"no bwcli tenant, no bw upstream", edit("tenants.globex", del, "upstream.bw", del), nil},
		{"unused sm upstream is allowed", edit("tenants.acme", del), nil},
		{"sm aliases share a token", edit("tenants.acme2", map[string]any{"backend": "sm", "organization_id": strings.ToUpper(uuidOrg),
			"project_ids": []any{uuidP1}, "access_token_env": "BROKER_SM_TOKEN_ACME"}), nil},
		{"bwcli tenants share credentials", edit("tenants.initech", map[string]any{"backend": "bwcli", "organization_id": uuidOrg2}),
			func(p *Policy) bool { return p.Tenants["initech"].Collection == "initech" }},
		{"two projects", edit("tenants.acme.project_ids", []any{uuidP1, strings.ToUpper(uuidP2)}),
			func(p *Policy) bool { return reflect.DeepEqual(p.Tenants["acme"].ProjectIDs, []string{uuidP1, uuidP2}) }},
		{"63-char tenant name", edit("tenants."+strings.Repeat("a", 63), map[string]any{"backend": "bwcli", "organization_id": uuidOrg2}), nil},
		{"collection with spaces, & and slash", edit("tenants.globex.collection", "R&D Team/Prod"), func(p *Policy) bool { b, _ := p.Marshal(); return bytes.Contains(b, []byte(`"R&D Team/Prod"`)) }},
		{"max_tenants 1", edit("cache.max_tenants", 1), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parse(tt.input)
			if err != nil {
				t.Fatalf("ParsePolicy: %v", err)
			}
			if tt.check != nil && !tt.check(p) {
				t.Errorf("check failed on %+v", p)
			}
			if _, err := p.Marshal(); err != nil {
				t.Errorf("Marshal: %v", err)
			}
		})
	}
}

func TestParsePolicyErrors(t *testing.T) {
	tenantSM := func(kv ...any) map[string]any {
		m := map[string]any{"backend": "sm", "organization_id": uuidOrg, "project_ids": []any{uuidP2}, "access_token_env": "TOK_B"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name  string
		input []byte
		want  string // the whole error text, or its start when it ends in "…"
	}{
		// Reading.
		{"too large", bytes.Repeat([]byte(" "), MaxPolicySize+1), "policy is larger than 1048576 bytes"},
		{"empty", []byte(""), "top level: unexpected end of JSON"},
		{"not json", []byte("version = 1"), "top level: invalid JSON near line 1, …"},
		{"syntax error position", []byte("{\"version\": 1,\n  \"tenants\": {,}}"), "tenants: invalid JSON near line 2, column 15: …"},
		{"truncated", []byte(`{"version": 1, "tenants": {`), "tenants: unexpected end of JSON"},
		{"two values", append(edit(), []byte(" {}")...), "top level: unexpected data after the JSON document (want exactly one JSON value)"},
		{"trailing garbage", append(edit(), 'x'), "top level: unexpected data after the JSON document (want exactly one JSON value)"},
		{"array at top", []byte(`[1]`), "top level: expected an object, got an array"},

		// Version.
		{"version missing", edit("version", del), `version: required (set "version": 1)`},
		{"version 2", edit("version", 2), "version: unsupported version 2 (this broker reads version 1)"},
		{"version 2 with future fields", edit("version", 2, "tenants.acme.future", true), "version: unsupported version 2 (this broker reads version 1)"},
		{"version string", edit("version", "1"), "version: expected an integer, got a string"},
		{"version float", []byte(`{"version": 1.5}`), `version: expected an integer, got "1.5"`},
		{"version null", []byte(`{"version": null}`), "version: expected an integer, got null"},

		// Unknown fields and duplicates.
		{"unknown top field", edit("extra", 1), `extra: unknown field`},
		{"unknown tenant field", edit("tenants.acme.acces_token_env", "X"), `tenants.acme.acces_token_env: unknown field`},
		{"unknown sm field", edit("upstream.sm.url", "x"), `upstream.sm.url: unknown field`},
		{"unknown bw field", edit("upstream.bw.password", "x"), `upstream.bw.password: unknown field`},
		{"unknown upstream", edit("upstream.vault", map[string]any{}), `upstream.vault: unknown field`},
		{"unknown cache field", edit("cache.size", 1), `cache.size: unknown field`},
		{"duplicate tenant", []byte(`{"version":1,"tenants":{"acme":{},"acme":{}}}`), "tenants.acme: duplicate key"},
		{"duplicate tenant key", []byte(`{"version":1,"tenants":{"a":{"backend":"bwcli"},"a":{"backend":"sm"}}}`), "tenants.a: duplicate key"},
		{"duplicate field", []byte(`{"version":1,"version":1}`), "version: duplicate key"},
		{"case-folded field", edit("Version", 1), `Version: unknown field`},

		// Tenants.
		{"no tenants", edit("tenants", map[string]any{}), "tenants: at least one tenant is required"},
		{"tenants missing", edit("tenants", del), "tenants: at least one tenant is required"},
		{"tenants is an array", edit("tenants", []any{}), "tenants: expected an object, got an array"},
		{"tenant is null", edit("tenants.acme", nil), "tenants.acme: expected an object, got null"},
		{"bad tenant name", edit("tenants.Bad Name", tenantSM()), `tenants["Bad Name"]: tenant name must match ^[a-z0-9][a-z0-9_-]{0,62}$`},
		{"uppercase tenant name", edit("tenants.Acme", tenantSM()), `tenants.Acme: tenant name must match ^[a-z0-9][a-z0-9_-]{0,62}$`},
		{"leading dash", edit("tenants.-x", tenantSM()), `tenants.-x: tenant name must match …`},
		{"wildcard tenant", edit("tenants.*", tenantSM()), `tenants["*"]: tenant name must match …`},
		{"64-char tenant name", edit("tenants."+strings.Repeat("a", 64), tenantSM()), "tenants." + strings.Repeat("a", 64) + ": tenant name must match …"},
		{"backend missing", edit("tenants.acme.backend", del), `tenants.acme.backend: required ("sm" or "bwcli")`},
		{"backend unknown", edit("tenants.acme.backend", "vault"), `tenants.acme.backend: must be "sm" or "bwcli"`},
		{"backend number", edit("tenants.acme.backend", 1), `tenants.acme.backend: expected a string, got a number`},
		{"org missing", edit("tenants.acme.organization_id", del), "tenants.acme.organization_id: required"},
		{"org not uuid", edit("tenants.globex.organization_id", "acme-org"), "tenants.globex.organization_id: not a UUID"},
		{"org braces", edit("tenants.acme.organization_id", "{"+uuidOrg+"}"), "tenants.acme.organization_id: not a UUID"},

		// sm tenants.
		{"project_ids missing", edit("tenants.acme.project_ids", del), "tenants.acme.project_ids: at least one project id is required"},
		{"project_ids empty", edit("tenants.acme.project_ids", []any{}), "tenants.acme.project_ids: at least one project id is required"},
		{"project_ids string", edit("tenants.acme.project_ids", uuidP1), "tenants.acme.project_ids: expected an array, got a string"},
		{"project_ids[0] not uuid", edit("tenants.acme.project_ids", []any{"abc"}), "tenants.acme.project_ids[0]: not a UUID"},
		{"project_ids[1] not uuid", edit("tenants.acme.project_ids", []any{uuidP1, uuidP1 + "0"}), "tenants.acme.project_ids[1]: not a UUID"},
		{"project_ids[0] number", edit("tenants.acme.project_ids", []any{7}), "tenants.acme.project_ids[0]: expected a string, got a number"},
		{"project_ids duplicate", edit("tenants.acme.project_ids", []any{uuidP1, uuidP2, strings.ToUpper(uuidP1)}), "tenants.acme.project_ids[2]: duplicate of project_ids[0]"},
		{"access_token_env missing", edit("tenants.acme.access_token_env", del), "tenants.acme.access_token_env: required …"},
		{"access_token_env digit", edit("tenants.acme.access_token_env", "1TOKEN"), "tenants.acme.access_token_env: not a valid env var name (want ^[A-Za-z_][A-Za-z0-9_]*$)"},
		{"access_token_env dash", edit("tenants.acme.access_token_env", "SM-TOKEN"), "tenants.acme.access_token_env: not a valid env var name …"},
		{"sm with collection", edit("tenants.acme.collection", "acme"), `tenants.acme.collection: only valid for backend "bwcli"`},
		{"sm with empty prefix", edit("tenants.acme.credentials_env_prefix", ""), `tenants.acme.credentials_env_prefix: only valid for backend "bwcli"`},
		{"sm token shared, other projects", edit("tenants.beta", tenantSM("access_token_env", "BROKER_SM_TOKEN_ACME")),
			`tenants.beta.access_token_env: BROKER_SM_TOKEN_ACME is already the access token of tenant "acme", which has other projects; …`},
		{"sm token shared, other org", edit("tenants.beta", tenantSM("access_token_env", "BROKER_SM_TOKEN_ACME", "organization_id", uuidOrg2, "project_ids", []any{uuidP1})),
			`tenants.beta.access_token_env: BROKER_SM_TOKEN_ACME is already the access token of tenant "acme", …`},
		{"sm token is a bw credential", edit("tenants.acme.access_token_env", "BW_PASSWORD"),
			`tenants.acme.access_token_env: BW_PASSWORD is also a credential of bwcli tenant "globex"; use a distinct name`},

		// bwcli tenants.
		{"bwcli with project_ids", edit("tenants.globex.project_ids", []any{uuidP1}), `tenants.globex.project_ids: only valid for backend "sm"`},
		{"bwcli with access_token_env", edit("tenants.globex.access_token_env", "X"), `tenants.globex.access_token_env: only valid for backend "sm"`},
		{"bad prefix digit", edit("tenants.globex.credentials_env_prefix", "9X_"), "tenants.globex.credentials_env_prefix: not a valid env var name prefix …"},
		{"bad prefix dash", edit("tenants.globex.credentials_env_prefix", "A-"), "tenants.globex.credentials_env_prefix: not a valid env var name prefix …"},
		{"empty collection", edit("tenants.globex.collection", ""), "tenants.globex.collection: must not be empty (leave it out to use the tenant name)"},
		{"collection with newline", edit("tenants.globex.collection", "a\nb"), "tenants.globex.collection: must not contain control characters"},
		{"collection leading dash", edit("tenants.globex.collection", "--help"), "tenants.globex.collection: must not start with '-'"},
		{"collection padded", edit("tenants.globex.collection", " x"), "tenants.globex.collection: must not start or end with white space"},

		// Upstreams.
		{"sm upstream missing", edit("upstream.sm", del), `upstream.sm.api_url: required because tenant "acme" uses backend "sm"`},
		{"sm identity missing", edit("upstream.sm.identity_url", ""), `upstream.sm.identity_url: required because tenant "acme" uses backend "sm"`},
		{"unused sm half set", edit("tenants.acme", del, "upstream.sm.identity_url", del), "upstream.sm.identity_url: required when upstream.sm is set"},
		{"bw upstream missing", edit("upstream.bw", del), `upstream.bw.server_url: required because tenant "globex" uses backend "bwcli"`},
		{"trailing slash", edit("upstream.sm.api_url", "https://api.bitwarden.com/"), "upstream.sm.api_url: must not end with '/' …"},
		{"trailing slash in path", edit("upstream.sm.identity_url", "https://h.example/identity/"), "upstream.sm.identity_url: must not end with '/' …"},
		{"double slash", edit("upstream.sm.api_url", "https://h.example//api"), `upstream.sm.api_url: must not contain an empty path segment ("//")`},
		{"userinfo", edit("upstream.sm.api_url", "https://user:hunter2@api.bitwarden.com"), "upstream.sm.api_url: must not contain user info (credentials belong in the provider env file)"},
		{"query", edit("upstream.sm.api_url", "https://api.bitwarden.com?x=1"), "upstream.sm.api_url: must not have a query"},
		{"empty query", edit("upstream.sm.api_url", "https://api.bitwarden.com?"), "upstream.sm.api_url: must not have a query"},
		{"fragment", edit("upstream.bw.server_url", "https://vault.example.org#x"), "upstream.bw.server_url: must not have a fragment"},
		{"http remote", edit("upstream.sm.api_url", "http://api.bitwarden.com"), "upstream.sm.api_url: must be https:// unless the host is loopback (127.0.0.0/8, ::1, localhost)"},
		{"http lookalike", edit("upstream.sm.api_url", "http://localhost.evil.example"), "upstream.sm.api_url: must be https:// unless …"},
		{"http 128.0.0.1", edit("upstream.sm.api_url", "http://128.0.0.1"), "upstream.sm.api_url: must be https:// unless …"},
		{"bw http loopback", edit("upstream.bw.server_url", "http://127.0.0.1:8080"), "upstream.bw.server_url: must be https:// (the bw CLI refuses other schemes)"},
		{"ftp", edit("upstream.sm.api_url", "ftp://api.bitwarden.com"), "upstream.sm.api_url: must be an absolute http:// or https:// URL"},
		{"relative", edit("upstream.sm.api_url", "api.bitwarden.com"), "upstream.sm.api_url: must be an absolute http:// or https:// URL"},
		{"no host", edit("upstream.sm.api_url", "https:///api"), "upstream.sm.api_url: must have a host (like https://host.example)"},
		{"opaque", edit("upstream.sm.api_url", "https:api.bitwarden.com"), "upstream.sm.api_url: must have a host (like https://host.example)"},
		{"empty port", edit("upstream.sm.api_url", "https://api.bitwarden.com:"), "upstream.sm.api_url: has an empty port"},
		{"bad port", edit("upstream.sm.api_url", "https://api.bitwarden.com:x"), "upstream.sm.api_url: not a valid URL"},
		{"space", edit("upstream.sm.api_url", "https://api.bitwarden.com/a b"), "upstream.sm.api_url: not a valid URL (contains white space or control characters)"},
		{"sm client", edit("upstream.sm.client", "rust"), `upstream.sm.client: must be "sdk", "native" or empty`},
		{"bw mode", edit("upstream.bw.mode", "fork"), `upstream.bw.mode: must be "serve" or "exec"`},
		{"relative ca_file", edit("upstream.bw.ca_file", "ca.pem"), "upstream.bw.ca_file: must be an absolute path"},

		// Cache.
		{"ttl invalid", edit("cache.ttl", "abc"), `cache.ttl: invalid duration "abc" …`},
		{"ttl number", edit("cache.ttl", 60), "cache.ttl: expected a string, got a number"},
		{"ttl negative", edit("cache.ttl", "-1s"), "cache.ttl: must not be negative"},
		{"stale negative", edit("cache.stale_if_error", "-5m"), "cache.stale_if_error: must not be negative"},
		{"stale invalid", edit("cache.stale_if_error", "5"), "cache.stale_if_error: invalid duration …"},
		{"max_tenants 0", edit("cache.max_tenants", 0), "cache.max_tenants: must be between 1 and 1048576"},
		{"max_tenants negative", edit("cache.max_tenants", -3), "cache.max_tenants: must be between 1 and 1048576"},
		{"max_tenants huge", edit("cache.max_tenants", 1<<21), "cache.max_tenants: must be between 1 and 1048576"},
		{"max_tenants overflow", []byte(`{"version":1,"cache":{"max_tenants":99999999999999999999999}}`), `cache.max_tenants: expected an integer, got "99999999999999999999999"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parse(tt.input)
			if err == nil {
				t.Fatalf("ParsePolicy succeeded (%+v), want error %q", p, tt.want)
			}
			got := err.Error()
			if prefix, ok := strings.CutSuffix(tt.want, "…"); ok {
				if !strings.HasPrefix(got, prefix) {
					t.Errorf("error = %q, want prefix %q", got, prefix)
				}
			} else if got != tt.want {
				t.Errorf("error = %q, want %q", got, tt.want)
			}
			if strings.Contains(got, "hunter2") {
				t.Errorf("error contains the URL's password")
			}
			// Lowercase, unless it starts with the path of a field the
			// policy spelled in upper case.
			if got != strings.TrimSuffix(got, ".") || (got[0] != strings.ToLower(got[:1])[0] && !strings.HasPrefix(got, "Version:")) {
				t.Errorf("error %q is not lowercase without a final period", got)
			}
		})
	}
}

func TestPathErrorAs(t *testing.T) {
	_, err := parse(edit("tenants.acme.project_ids", []any{"x"}))
	var pe *PathError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a *PathError", err)
	}
	if g, w := pe.Path, "tenants.acme.project_ids[0]"; g != w {
		t.Errorf("Path = %q, want %q", g, w)
	}
}

func TestPolicyMarshalRefusesInvalid(t *testing.T) {
	p, err := parse(edit())
	if err != nil {
		t.Fatal(err)
	}
	p.Tenants["acme"] = Tenant{Backend: BackendSM, OrganizationID: uuidOrg}
	if _, err := p.Marshal(); err == nil || !strings.Contains(err.Error(), "tenants.acme.project_ids: at least one") {
		t.Errorf("Marshal of a policy without project ids: err = %v, want the project_ids error", err)
	}
}

func TestDurationJSON(t *testing.T) {
	var d Duration
	if err := json.Unmarshal([]byte(`"90s"`), &d); err != nil || d.Duration != 90*time.Second {
		t.Fatalf("Unmarshal(\"90s\") = %v, %v", d, err)
	}
	b, err := json.Marshal(d)
	if err != nil || string(b) != `"1m30s"` {
		t.Errorf("Marshal = %s, %v; want \"1m30s\"", b, err)
	}
	if err := json.Unmarshal([]byte(`90`), &d); err == nil {
		t.Errorf("Unmarshal(90) succeeded, want error")
	}
}

func TestValidTenantName(t *testing.T) {
	tests := map[string]bool{
		"acme": true, "a": true, "0": true, "a-b_c9": true, strings.Repeat("x", 63): true,
		"": false, "-a": false, "_a": false, "A": false, "a b": false, "a.b": false, "*": false,
		strings.Repeat("x", 64): false, "é": false,
	}
	for in, want := range tests {
		if got := ValidTenantName(in); got != want {
			t.Errorf("ValidTenantName(%q) = %v, want %v", in, got, want)
		}
	}
}

func FuzzParsePolicy(f *testing.F) {
	if data, err := os.ReadFile("testdata/policy.example.json"); err == nil {
		f.Add(data)
	}
	f.Add(edit())
	f.Add(edit("tenants.acme", del, "cache.ttl", "0s"))
	f.Add([]byte(`{"version":1,"tenants":{"a":{"backend":"bwcli","organization_id":"` + uuidOrg + `"}},"upstream":{"bw":{"server_url":"https://x"}}}`))
	f.Add([]byte(`{"version":1,"tenants":{"a":{},"a":{}}}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(bytes.NewReader(data))
		if err != nil {
			if p != nil {
				t.Fatalf("ParsePolicy returned a policy and an error")
			}
			return
		}
		out, err := p.Marshal()
		if err != nil {
			t.Fatalf("Marshal of an accepted policy: %v", err)
		}
		p2, err := ParsePolicy(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("ParsePolicy(Marshal(p)): %v", err)
		}
		if !reflect.DeepEqual(p, p2) {
			t.Fatalf("round trip changed the policy:\n got %+v\nwant %+v", p2, p)
		}
	})
}

// TestRepoPolicyExample loads the policy.example.json at the repository
// root, the file operators copy: it must stay valid.
func TestRepoPolicyExample(t *testing.T) {
	data, err := os.ReadFile("../../policy.example.json")
	if err != nil {
		t.Fatal(err)
	}
	p, err := parse(data)
	if err != nil {
		t.Fatalf("policy.example.json: %v", err)
	}
	if got := p.TenantNames(); !reflect.DeepEqual(got, []string{"acme", "globex"}) {
		t.Fatalf("tenants %v, want acme and globex", got)
	}
}
