package hardening

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// crossTenantTricks are request paths built from a tenant name T that try to
// reach T's env through a token scoped to "acme". Each runs twice: with T an
// existing tenant outside the scope and with T a tenant that does not
// exist; the two answers must be identical (no existence oracle) and never
// a 200.
var crossTenantTricks = []struct{ name, path string }{
	{"plain", "/v1/tenants/{T}/env"},
	{"dotdot", "/v1/tenants/acme/../{T}/env"},
	{"dotdot-encoded", "/v1/tenants/acme/%2e%2e/{T}/env"},
	{"dotdot-upper-encoded", "/v1/tenants/acme/%2E%2E/{T}/env"},
	{"slash-encoded", "/v1/tenants/acme%2f..%2f{T}/env"},
	{"slash-encoded-upper", "/v1/tenants/acme%2F{T}/env"},
	{"double-slash", "/v1/tenants//{T}/env"},
	{"double-slash-front", "//v1/tenants/{T}/env"},
	{"double-slash-back", "/v1/tenants/{T}//env"},
	{"trailing-slash", "/v1/tenants/{T}/env/"},
	{"trailing-dot", "/v1/tenants/{T}/env/."},
	{"name-trailing-slash-encoded", "/v1/tenants/{T}%2f/env"},
	{"upper-case", "/v1/tenants/{UT}/env"},
	{"upper-route", "/V1/TENANTS/{T}/ENV"},
	{"percent-encoded-name", "/v1/tenants/{PT}/env"},
	{"nul-encoded", "/v1/tenants/{T}%00/env"},
	{"nul-prefix-own", "/v1/tenants/acme%00{T}/env"},
	{"space-encoded", "/v1/tenants/{T}%20/env"},
	{"tab-encoded", "/v1/tenants/{T}%09/env"},
	{"newline-encoded", "/v1/tenants/{T}%0a/env"},
	{"cyrillic-lookalike", "/v1/tenants/{CT}/env"},
	{"fullwidth-lookalike", "/v1/tenants/{FT}/env"},
	{"zero-width-joiner", "/v1/tenants/{T}%E2%80%8B/env"},
	{"semicolon", "/v1/tenants/{T};acme/env"},
	{"query-confusion", "/v1/tenants/{T}/env?tenant=acme&format=dotenv"},
	{"fragment-encoded", "/v1/tenants/{T}%23/env"},
	{"backslash", "/v1/tenants/acme\\..\\{T}/env"},
	{"overlong-utf8-dot", "/v1/tenants/acme/%c0%ae%c0%ae/{T}/env"},
	{"long-name-64", "/v1/tenants/{T}" + strings.Repeat("x", 64) + "/env"},
	{"long-name-4k", "/v1/tenants/{T}" + strings.Repeat("y", 4096) + "/env"},
	{"long-name-20k", "/v1/tenants/{T}" + strings.Repeat("z", 20000) + "/env"},
}

func expand(path, tenant string) string {
	r := strings.NewReplacer(
		"{T}", tenant,
		"{UT}", strings.ToUpper(tenant),
		"{PT}", percentAll(tenant),
		// Cyrillic а (U+0430) and е (U+0435), fullwidth ａ (U+FF41).
		"{CT}", url.PathEscape(strings.NewReplacer("a", "а", "e", "е", "o", "о").Replace(tenant)),
		"{FT}", url.PathEscape(strings.NewReplacer("a", "ａ", "e", "ｅ", "o", "ｏ", "b", "ｂ", "s", "ｓ").Replace(tenant)),
	)
	return r.Replace(path)
}

func percentAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

// TestCrossTenant runs the path and token tricks against a running broker.
// None may return another tenant's data; every refusal must look like an
// ordinary one (the same status and body whether the target exists or not,
// the same 401 for every bad token).
func TestCrossTenant(t *testing.T) {
	w := newSMWorld(t)
	acme := w.addTenant(t, "acme", 3, 0)
	w.addTenant(t, "globex", 3, 0)
	w.addTenant(t, "initech", 3, 0)
	w.write(t, "60s")
	acmeTok := mint(t, w.site, "acme")
	globexTok := mint(t, w.site, "globex")
	b := startBroker(t, w.site, nil, nil)
	b.hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	requests := 0

	// notOthers fails when body holds a value of a tenant other than acme.
	notOthers := func(t *testing.T, what string, body []byte) {
		t.Helper()
		for _, name := range []string{"globex", "initech"} {
			for _, v := range w.tenants[name].env {
				if bytes.Contains(body, []byte(v)) {
					t.Fatalf("%s: the answer holds a value of tenant %s", what, name)
				}
			}
		}
	}

	st, plain403, _ := b.get("/v1/tenants/globex/env", bearer(acmeTok))
	requests++
	if st != 403 {
		t.Fatalf("control: acme's token on globex: %d, want 403", st)
	}
	st, body, _ := b.get("/v1/tenants/acme/env", bearer(acmeTok))
	requests++
	if st != 200 || !bytes.Equal(body, acme.dotenv(t)) {
		t.Fatalf("control: acme's token on acme: %d", st)
	}

	t.Run("paths", func(t *testing.T) {
		statuses := map[int]int{}
		for _, tr := range crossTenantTricks {
			var answers [2]string
			for i, target := range []string{"globex", "nosuch"} {
				p := expand(tr.path, target)
				st, body, _ := b.get(p, bearer(acmeTok))
				requests++
				if st == 0 {
					st, body, _ = b.rawGet(p, bearer(acmeTok))
				}
				notOthers(t, tr.name, body)
				if st == 200 {
					t.Errorf("%s → %s: 200", tr.name, target)
				}
				if st == 403 && !bytes.Equal(body, plain403) {
					t.Errorf("%s → %s: a 403 unlike the ordinary one: %s", tr.name, target, body)
				}
				statuses[st]++
				// A redirect names the cleaned path, so the answers are
				// compared with the target's name taken out.
				a := fmt.Sprintf("%d %s", st, body)
				answers[i] = strings.NewReplacer(target, "{T}", strings.ToUpper(target), "{UT}").Replace(a)
			}
			if answers[0] != answers[1] {
				t.Errorf("%s: existing and unknown tenant answer differently (an oracle):\n  %.200s\n  %.200s", tr.name, answers[0], answers[1])
			}
		}
		t.Logf("%d path tricks × 2 targets; statuses %v", len(crossTenantTricks), statuses)
	})

	t.Run("raw-request-line", func(t *testing.T) {
		// Bytes net/http will not put in a URL: raw NUL, raw space, raw
		// unicode, a bare CR.
		for _, p := range []string{"/v1/tenants/globex\x00/env", "/v1/tenants/glob ex/env", "/v1/tenants/glоbex/env", "/v1/tenants/globex\r/env"} {
			st, body, _ := b.rawGet(p, bearer(acmeTok))
			requests++
			notOthers(t, fmt.Sprintf("raw %q", p), body)
			if st == 200 {
				t.Errorf("raw %q: 200", p)
			}
		}
	})

	t.Run("tokens", func(t *testing.T) {
		tamper := []byte(acmeTok)
		tamper[len(tamper)-1] ^= 1
		cases := []struct {
			name string
			hdr  http.Header
			path string
			want int
		}{
			{"another-tenants-token", bearer(globexTok), "/v1/tenants/acme/env", 403},
			{"own-token-other-tenant", bearer(acmeTok), "/v1/tenants/initech/env", 403},
			{"missing", http.Header{}, "/v1/tenants/acme/env", 401},
			{"truncated", bearer(acmeTok[:len(acmeTok)-1]), "/v1/tenants/acme/env", 401},
			{"truncated-to-id", bearer(acmeTok[:len("brk_")+12]), "/v1/tenants/acme/env", 401},
			{"padded", bearer(acmeTok + "A"), "/v1/tenants/acme/env", 401},
			// Trailing whitespace is not part of a header value (RFC 9110
			// 5.5): the server sees the token itself.
			{"padded-space", bearer(acmeTok + " "), "/v1/tenants/acme/env", 200},
			// RFC 9110 allows one or more spaces after the scheme.
			{"leading-space", bearer(" " + acmeTok), "/v1/tenants/acme/env", 200},
			{"leading-tab", bearer("\t" + acmeTok), "/v1/tenants/acme/env", 401},
			{"tampered", bearer(string(tamper)), "/v1/tenants/acme/env", 401},
			{"upper-cased", bearer(strings.ToUpper(acmeTok)), "/v1/tenants/acme/env", 401},
			{"prefix-only", bearer("brk_"), "/v1/tenants/acme/env", 401},
			// The scheme is case-insensitive (RFC 9110 11.1): the own token
			// still reads its own tenant.
			{"lowercase-scheme", http.Header{"Authorization": {"bearer " + acmeTok}}, "/v1/tenants/acme/env", 200},
			{"lowercase-scheme-other-tenant", http.Header{"Authorization": {"bearer " + acmeTok}}, "/v1/tenants/globex/env", 403},
			{"basic-scheme", http.Header{"Authorization": {"Basic " + acmeTok}}, "/v1/tenants/acme/env", 401},
			{"no-scheme", http.Header{"Authorization": {acmeTok}}, "/v1/tenants/acme/env", 401},
			{"wrong-header", http.Header{"X-Broker-Token": {acmeTok}}, "/v1/tenants/acme/env", 401},
			{"proxy-authorization", http.Header{"Proxy-Authorization": {"Bearer " + acmeTok}}, "/v1/tenants/acme/env", 401},
			{"cookie", http.Header{"Cookie": {"token=" + acmeTok}}, "/v1/tenants/acme/env", 401},
			{"query", http.Header{}, "/v1/tenants/acme/env?token=" + acmeTok, 401},
			{"two-authorization-same", http.Header{"Authorization": {"Bearer " + acmeTok, "Bearer " + acmeTok}}, "/v1/tenants/acme/env", 401},
			{"two-authorization-mixed", http.Header{"Authorization": {"Bearer " + globexTok, "Bearer " + acmeTok}}, "/v1/tenants/acme/env", 401},
			{"two-tokens-one-header", http.Header{"Authorization": {"Bearer " + globexTok + ", Bearer " + acmeTok}}, "/v1/tenants/acme/env", 401},
			{"globex-token-two-headers-on-globex", http.Header{"Authorization": {"Bearer " + globexTok, "Bearer " + acmeTok}}, "/v1/tenants/globex/env", 401},
		}
		var first401 []byte
		for _, c := range cases {
			st, body, h := b.get(c.path, c.hdr)
			requests++
			notOthers(t, c.name, body)
			if st != c.want {
				t.Errorf("%s: %d, want %d", c.name, st, c.want)
				continue
			}
			switch st {
			case 401:
				if h.Get("WWW-Authenticate") == "" {
					t.Errorf("%s: 401 without WWW-Authenticate", c.name)
				}
				if first401 == nil {
					first401 = body
				} else if !bytes.Equal(body, first401) {
					t.Errorf("%s: a 401 unlike the others: %s", c.name, body)
				}
			case 403:
				if !bytes.Equal(body, plain403) {
					t.Errorf("%s: a 403 unlike the ordinary one: %s", c.name, body)
				}
			}
		}
	})

	t.Run("cli", func(t *testing.T) {
		r := b.fetch(t, acmeTok, "globex")
		checkCleanFailure(t, r, exitDenied, "may not read that tenant")
		r = b.fetch(t, acmeTok, "nosuch")
		checkCleanFailure(t, r, exitDenied, "may not read that tenant")
		r = b.fetch(t, globexTok+"x", "globex")
		checkCleanFailure(t, r, exitDenied, "invalid caller token")
		r = b.fetch(t, acmeTok, "../globex")
		checkCleanFailure(t, r, 2, "tenant names match")
		requests += 3
	})

	t.Run("revoked", func(t *testing.T) {
		tok := mint(t, w.site, "acme")
		// The broker picks up the token store change by itself.
		for deadline := time.Now().Add(3 * time.Second); ; {
			st, _, _ := b.get("/v1/tenants/acme/env", bearer(tok))
			requests++
			if st == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("new token still refused (%d) 3s after minting", st)
			}
			time.Sleep(50 * time.Millisecond)
		}
		list := cli(t, nil, "", "token", "list", "--state-dir", w.site.stateDir)
		var id string
		for _, line := range strings.Split(string(list.stdout), "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(tok, "brk_"+f[0]+"_") {
				id = f[0]
			}
		}
		if id == "" {
			t.Fatalf("token list does not show the new token's id")
		}
		if r := cli(t, nil, "", "token", "revoke", "--state-dir", w.site.stateDir, id); r.code != 0 {
			t.Fatalf("token revoke: exit %d %s", r.code, r.stderr)
		}
		for deadline := time.Now().Add(3 * time.Second); ; {
			st, _, _ := b.get("/v1/tenants/acme/env", bearer(tok))
			requests++
			if st == 401 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("revoked token still answered %d after 3s", st)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	// Every audit line of a refused request is a refusal; no audit line
	// names a tenant as served except acme.
	for _, a := range b.auditLines() {
		if a["outcome"] == "ok" && a["tenant"] != "acme" {
			t.Errorf("audit: tenant %v served", a["tenant"])
		}
	}
	t.Logf("%d cross-tenant requests, %d audit lines", requests, len(b.auditLines()))
}
