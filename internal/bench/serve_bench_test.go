package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hostd/broker/internal/demo"
	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/server"
)

type staticBackend struct{ env fetch.Env }

func (b staticBackend) Fetch(context.Context, fetch.Tenant) (fetch.Env, error) { return b.env, nil }

// BenchmarkServeCacheHit runs the broker's real HTTP handler in process over
// a Unix socket, with the audit line and metrics on, answering cached
// tenants: the path scenario 1 measures, without the process boundary, so
// that `-cpuprofile` shows where a request's time goes.
func BenchmarkServeCacheHit(b *testing.B) {
	const n = 16
	tenants := map[string]any{}
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("t%04d", i+1)
		tenants[names[i]] = map[string]any{"backend": "sm", "organization_id": "6f1c4bd3-0000-4000-8000-000000000001",
			"project_ids": []string{fmt.Sprintf("6f1c4bd3-0000-4000-8000-%012d", i+1)}, "access_token_env": "TOK_" + fmt.Sprint(i)}
	}
	doc, _ := json.Marshal(map[string]any{"version": 1,
		"upstream": map[string]any{"sm": map[string]any{"api_url": "http://127.0.0.1:1/api", "identity_url": "http://127.0.0.1:1/identity"}},
		"tenants":  tenants})
	pol, err := scope.ParsePolicy(strings.NewReader(string(doc)))
	if err != nil {
		b.Fatal(err)
	}
	envVars := map[string]string{}
	for i := range n {
		envVars["TOK_"+fmt.Sprint(i)] = "0.6f1c4bd3-0000-4000-8000-000000000001.secret:a2V5a2V5a2V5a2V5a2V5a2V5"
	}
	ts, missing := server.BuildTenants(pol, envVars)
	if len(missing) > 0 {
		b.Fatalf("missing credentials: %v", missing)
	}
	store := scope.NewTokenStore()
	tok, id, hash, err := scope.MintToken(nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := store.Add(scope.TokenRecord{ID: id, Hash: hash, Tenants: names, Created: time.Now().UTC().Truncate(time.Second)}); err != nil {
		b.Fatal(err)
	}
	env := fetch.Env{}
	for k, v := range demo.HardValues {
		env[k] = v
	}
	res := fetch.NewResolver(context.Background(), fetch.ResolverConfig{TTL: time.Hour},
		map[string]fetch.Backend{fetch.BackendSM: staticBackend{env}})
	audit := slog.New(slog.NewJSONHandler(io.Discard, nil))
	srv := server.New(server.Options{Audit: audit, Metrics: server.NewMetrics()},
		&server.Config{Policy: pol, Tenants: ts, Missing: missing, Tokens: store, Resolver: res})
	sock := filepath.Join(b.TempDir(), "b.sock")
	ln, cleanup, err := server.Listen(server.ListenSpec{Network: "unix", Address: sock}, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer cleanup()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, 5*time.Second) }()
	defer func() { cancel(); <-done }()

	c := NewHTTPClient("unix", sock, 64)
	defer c.CloseIdleConnections()
	get := func(t string) error {
		req, _ := http.NewRequest(http.MethodGet, "http://localhost/v1/tenants/"+t+"/env", nil)
		req.Header.Set("Authorization", "Bearer "+tok.Reveal())
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	for _, t := range names {
		if err := get(t); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.SetParallelism(8) // 16 callers on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if err := get(names[i%n]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
