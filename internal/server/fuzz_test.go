package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/render"
	"github.com/hostd/broker/internal/scope"
)

// fuzzEnvs are the envs the fuzzed server serves.
var fuzzEnvs = map[string]fetch.Env{
	"acme":   {"A_KEY": "fuzz-acme-value-1", "DB_PASS": "fuzz-acme-value-2"},
	"globex": {"G_KEY": "fuzz-globex-value-1"},
	"acme-2": {"X": "fuzz-acme2-value-1"},
}

type fuzzBackend struct{}

func (fuzzBackend) Fetch(_ context.Context, t fetch.Tenant) (fetch.Env, error) {
	return fuzzEnvs[t.Name], nil
}

// FuzzTenantPath sends arbitrary request targets and Authorization headers
// through the real handler (host check, route table, token, scope,
// resolver, render) with a token scoped to tenant "acme" only. Whatever the
// path: no panic; a 200 only for acme's own env, byte-exact in one of the
// formats; never a value of another tenant; and every 403 is the same
// ordinary denial.
func FuzzTenantPath(f *testing.F) {
	const js = `{"version":1,
	  "upstream":{"sm":{"api_url":"http://127.0.0.1:1/api","identity_url":"http://127.0.0.1:1/identity"}},
	  "tenants":{
	    "acme":{"backend":"sm","organization_id":"5f0c6e36-3b5d-4c8e-9a53-2c1d7b0e4a11","project_ids":["8d2b1f9e-6c4a-4f0b-b7e2-93a5d1c0f6e2"],"access_token_env":"T1"},
	    "acme-2":{"backend":"sm","organization_id":"5f0c6e36-3b5d-4c8e-9a53-2c1d7b0e4a11","project_ids":["8d2b1f9e-6c4a-4f0b-b7e2-93a5d1c0f6e2"],"access_token_env":"T2"},
	    "globex":{"backend":"sm","organization_id":"5f0c6e36-3b5d-4c8e-9a53-2c1d7b0e4a11","project_ids":["8d2b1f9e-6c4a-4f0b-b7e2-93a5d1c0f6e2"],"access_token_env":"T3"}}}`
	pol, err := scope.ParsePolicy(strings.NewReader(js))
	if err != nil {
		f.Fatal(err)
	}
	tenants, missing := BuildTenants(pol, map[string]string{"T1": "a", "T2": "b", "T3": "c"})
	store := scope.NewTokenStore()
	tok, id, hash, err := scope.MintToken(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	if err := store.Add(scope.TokenRecord{ID: id, Hash: hash, Tenants: []string{"acme"}, Created: time.Now().UTC()}); err != nil {
		f.Fatal(err)
	}
	good := tok.Reveal()
	res := fetch.NewResolver(context.Background(), fetch.ResolverConfig{TTL: time.Hour}, map[string]fetch.Backend{fetch.BackendSM: fuzzBackend{}})
	srv := New(Options{}, &Config{Policy: pol, Tenants: tenants, Missing: missing, Tokens: store, Resolver: res})

	allowed := map[string]bool{}
	for _, format := range []render.Format{render.Dotenv, render.Shell, render.JSON} {
		b, err := render.Render(format, fuzzEnvs["acme"])
		if err != nil {
			f.Fatal(err)
		}
		allowed[string(b)] = true
	}
	serve := func(target, auth string) *httptest.ResponseRecorder {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return nil
		}
		req := &http.Request{Method: "GET", URL: u, RequestURI: target, Host: "localhost",
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}
		req = req.WithContext(context.Background())
		if auth != "" {
			req.Header["Authorization"] = strings.Split(auth, "\n")
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		return rec
	}
	denial := serve("/v1/tenants/globex/env", "Bearer "+good).Body.String()

	for _, p := range []string{
		"/v1/tenants/acme/env", "/v1/tenants/globex/env", "/v1/tenants/acme/../globex/env",
		"/v1/tenants/acme%2f..%2fglobex/env", "/v1/tenants/%61cme/env", "/v1/tenants/ACME/env",
		"/v1/tenants/acme%00/env", "/v1/tenants/аcme/env", "/v1/tenants//globex/env",
		"/v1/tenants/globex/env/", "/v1/tenants/acme-2/env", "/v1/tenants/acme/env?format=json",
		"/v1/tenants/acme/env?format=shell&format=json", "/v1/tenants/acme%2dx/env",
	} {
		f.Add(p, uint8(0), "")
		f.Add(p, uint8(1), "x")
		f.Add(p, uint8(2), "\nBearer ")
	}
	f.Fuzz(func(t *testing.T, target string, mode uint8, extra string) {
		var auth string
		switch mode % 5 {
		case 0:
			auth = "Bearer " + good
		case 1: // the good token with something appended or cut
			auth = "Bearer " + good + extra
		case 2: // the good token and whatever else as separate header lines
			auth = "Bearer " + good + extra
		case 3:
			if n := len(extra) % len(good); n > 0 {
				auth = "Bearer " + good[:n]
			}
		case 4:
			auth = extra
		}
		if mode%5 != 2 {
			auth = strings.ReplaceAll(auth, "\n", "")
		}
		rec := serve(target, auth)
		if rec == nil {
			return
		}
		body := rec.Body.Bytes()
		for name, env := range fuzzEnvs {
			if name == "acme" {
				continue
			}
			for _, v := range env {
				if bytes.Contains(body, []byte(v)) {
					t.Fatalf("GET %q (mode %d): the answer holds a value of %s", target, mode%5, name)
				}
			}
		}
		switch rec.Code {
		case 200:
			if strings.HasPrefix(target, "/v1/tenants/") && !allowed[string(body)] {
				t.Fatalf("GET %q: 200 with a body that is not acme's env", target)
			}
		case 403:
			if rec.Body.String() != denial && !strings.Contains(rec.Body.String(), `"forbidden"`) {
				t.Fatalf("GET %q: an unusual 403: %s", target, body)
			}
			if strings.Contains(rec.Body.String(), "may not read") && rec.Body.String() != denial {
				t.Fatalf("GET %q: a scope denial unlike the ordinary one: %s", target, body)
			}
		}
	})
}
