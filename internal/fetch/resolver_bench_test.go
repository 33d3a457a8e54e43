package fetch_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hostd/broker/internal/fetch"
)

// staticBackend answers every fetch with the same env.
type staticBackend struct{ env fetch.Env }

func (b staticBackend) Fetch(context.Context, fetch.Tenant) (fetch.Env, error) { return b.env, nil }

func benchTenants(n int) []fetch.Tenant {
	ts := make([]fetch.Tenant, n)
	for i := range ts {
		ts[i] = fetch.Tenant{Name: fmt.Sprintf("t%04d", i), Backend: fetch.BackendSM,
			OrganizationID: "6f1c4bd3-0000-4000-8000-000000000001",
			ProjectIDs:     []string{fmt.Sprintf("6f1c4bd3-0000-4000-8000-%012d", i)},
			AccessToken:    fetch.Secret(fmt.Sprintf("0.6f1c4bd3-0000-4000-8000-%012d.secretsecretsecretsecretsecret:a2V5a2V5a2V5a2V5a2V5a2V5", i))}
	}
	return ts
}

// BenchmarkResolveCacheHit measures the resolver's hit path: the cache key,
// the LRU lookup and the freshness check.
func BenchmarkResolveCacheHit(b *testing.B) {
	env := fetch.Env{"A": "1", "B": "2", "DATABASE_URL": "postgres://x@db/x"}
	for _, n := range []int{1, 1000} {
		ts := benchTenants(n)
		r := fetch.NewResolver(context.Background(), fetch.ResolverConfig{TTL: time.Hour, MaxTenants: 1024},
			map[string]fetch.Backend{fetch.BackendSM: staticBackend{env}})
		ctx := context.Background()
		for _, t := range ts {
			if _, err := r.Resolve(ctx, t); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("tenants%d", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				res, err := r.Resolve(ctx, ts[i%n])
				if err != nil || res.Source != fetch.SourceCache {
					b.Fatalf("got source %q, err %v; want a cache hit", res.Source, err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("tenants%d/parallel", n), func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if res, err := r.Resolve(ctx, ts[i%n]); err != nil || res.Source != fetch.SourceCache {
						b.Errorf("got source %q, err %v; want a cache hit", res.Source, err)
						return
					}
					i++
				}
			})
		})
	}
}
