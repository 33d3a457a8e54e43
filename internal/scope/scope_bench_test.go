package scope_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hostd/broker/internal/scope"
)

// benchPolicy returns a policy with n Secrets Manager tenants t0001….
func benchPolicy(b *testing.B, n int) *scope.Policy {
	b.Helper()
	tenants := map[string]any{}
	for i := 1; i <= n; i++ {
		tenants[fmt.Sprintf("t%04d", i)] = map[string]any{"backend": "sm",
			"organization_id":  "6f1c4bd3-0000-4000-8000-000000000001",
			"project_ids":      []string{fmt.Sprintf("6f1c4bd3-0000-4000-8000-%012d", i)},
			"access_token_env": fmt.Sprintf("BROKER_SM_TOKEN_T%04d", i)}
	}
	doc, err := json.Marshal(map[string]any{"version": 1,
		"upstream": map[string]any{"sm": map[string]any{"api_url": "http://127.0.0.1:1/api", "identity_url": "http://127.0.0.1:1/identity"}},
		"tenants":  tenants})
	if err != nil {
		b.Fatal(err)
	}
	p, err := scope.ParsePolicy(strings.NewReader(string(doc)))
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// benchStore returns a store of n tokens, each scoped to tenantsPer tenants,
// and the last token minted (the one a lookup finds last).
func benchStore(b *testing.B, n, tenantsPer int) (*scope.TokenStore, string) {
	b.Helper()
	s := scope.NewTokenStore()
	var last string
	for range n {
		tok, id, hash, err := scope.MintToken(nil)
		if err != nil {
			b.Fatal(err)
		}
		var ts []string
		for i := 1; i <= tenantsPer; i++ {
			ts = append(ts, fmt.Sprintf("t%04d", i))
		}
		if err := s.Add(scope.TokenRecord{ID: id, Hash: hash, Tenants: ts, Created: time.Unix(1700000000, 0)}); err != nil {
			b.Fatal(err)
		}
		last = tok.Reveal()
	}
	return s, last
}

func BenchmarkDecide(b *testing.B) {
	for _, c := range []struct {
		name    string
		tenants int
	}{{"scope1", 1}, {"scope1000", 1000}} {
		p := benchPolicy(b, c.tenants)
		s, tok := benchStore(b, 1, c.tenants)
		rec, err := s.Verify(tok, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		want := fmt.Sprintf("t%04d", c.tenants) // the last in scope: the worst case
		b.Run(c.name+"/allow", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if !scope.Decide(rec, p, want).Allow {
					b.Fatal("denied")
				}
			}
		})
		b.Run(c.name+"/deny", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if scope.Decide(rec, p, "nosuch").Allow {
					b.Fatal("allowed")
				}
			}
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, c := range []struct {
		name               string
		tokens, tenantsPer int
	}{{"tokens1/scope1", 1, 1}, {"tokens100/scope1", 100, 1}, {"tokens1/scope1000", 1, 1000}} {
		s, tok := benchStore(b, c.tokens, c.tenantsPer)
		now := time.Now()
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Verify(tok, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
