package hardening

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/render"
	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/server"
)

// memBackend serves fixed envs after a short pause, counting fetches.
type memBackend struct {
	envs    map[string]fetch.Env
	fetches atomic.Int64
}

func (m *memBackend) Fetch(ctx context.Context, t fetch.Tenant) (fetch.Env, error) {
	m.fetches.Add(1)
	select {
	case <-time.After(time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return m.envs[t.Name], nil
}

// TestLoadSoak sends requests from many callers across many tenants through
// internal/server on a real Unix socket, with a short cache TTL so that
// upstream fetches (collapsed per tenant) run all along. Every answer must
// be exactly the asking tenant's env (or the ordinary 403 for the requests
// deliberately aimed outside the caller's scope); afterwards goroutines and
// open files return to their baseline, and RSS stays bounded.
//
// The default run is 100,000 requests from 64 callers across 1,000 tenants
// (a few seconds); under -race or -short, 10,000 across 100 tenants;
// BROKER_SOAK=1 (make soak) runs 1,000,000 across 1,000 tenants.
func TestLoadSoak(t *testing.T) {
	requests, tenants, callers := 100000, 1000, 64
	switch {
	case os.Getenv("BROKER_SOAK") == "1":
		requests = 1000000
	case raceEnabled || testing.Short():
		requests, tenants = 10000, 100
	}
	const org, proj = "5f0c6e36-3b5d-4c8e-9a53-2c1d7b0e4a11", "8d2b1f9e-6c4a-4f0b-b7e2-93a5d1c0f6e2"
	var pj strings.Builder
	pj.WriteString(`{"version":1,"upstream":{"sm":{"api_url":"http://127.0.0.1:1/api","identity_url":"http://127.0.0.1:1/identity"}},"tenants":{`)
	be := &memBackend{envs: map[string]fetch.Env{}}
	provider := map[string]string{}
	want := map[string][]byte{}
	names := make([]string, tenants)
	for i := range tenants {
		name := fmt.Sprintf("t%04d", i)
		names[i] = name
		if i > 0 {
			pj.WriteString(",")
		}
		fmt.Fprintf(&pj, `%q:{"backend":"sm","organization_id":%q,"project_ids":[%q],"access_token_env":"TOK_%d"}`, name, org, proj, i)
		provider[fmt.Sprintf("TOK_%d", i)] = "unused-" + randHex(8)
		env := fetch.Env{}
		for k := range 4 {
			v := fmt.Sprintf("soak-%s-%d-%s", name, k, randHex(8))
			env[fmt.Sprintf("K%d", k)] = v
			leaks.secret(fmt.Sprintf("soak value K%d of %s", k, name), name, v)
		}
		be.envs[name] = env
		b, err := render.Render(render.Dotenv, env)
		if err != nil {
			t.Fatal(err)
		}
		want[name] = b
	}
	pj.WriteString("}}")
	pol, err := scope.ParsePolicy(strings.NewReader(pj.String()))
	if err != nil {
		t.Fatal(err)
	}
	tset, missing := server.BuildTenants(pol, provider)
	store := scope.NewTokenStore()
	type caller struct {
		tok     string
		tenants []string
		outside string
	}
	cs := make([]caller, callers)
	for i := range cs {
		// Each caller may read a slice of the tenants; one tenant outside
		// its slice is asked now and then and must be refused.
		per := (tenants + callers - 1) / callers
		if per < 2 {
			per = 2
		}
		var mine []string
		for j := range per {
			mine = append(mine, names[(i*per+j)%tenants])
		}
		tok, id, hash, err := scope.MintToken(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Add(scope.TokenRecord{ID: id, Hash: hash, Tenants: mine, Created: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
		leaks.secret("soak caller token", "", tok.Reveal())
		cs[i] = caller{tok: tok.Reveal(), tenants: mine, outside: names[(i*per+per)%tenants]}
	}

	// The log is scanned for secrets as it is written, and its audit lines
	// counted, rather than kept (a million lines would skew the RSS).
	logs := &auditCounter{w: leaks.stream(t.Name() + ": server log and audit")}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	res := fetch.NewResolver(ctx, fetch.ResolverConfig{TTL: 200 * time.Millisecond, MaxTenants: 4096}, map[string]fetch.Backend{fetch.BackendSM: be})
	srv := server.New(server.Options{Logger: logger, Metrics: server.NewMetrics()},
		&server.Config{Policy: pol, Tenants: tset, Missing: missing, Tokens: store, Resolver: res})
	sockDir, err := os.MkdirTemp("", "hbs-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	spec := server.ListenSpec{Network: "unix", Address: filepath.Join(sockDir, "s.sock")}

	runtime.GC()
	baseG, baseFD, baseRSS := runtime.NumGoroutine(), openFiles(), rssKB()
	ln, cleanup, err := server.Listen(spec, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln, 5*time.Second) }()

	var next, errs, denied, ok atomic.Int64
	var maxRSS atomic.Int64
	stopSampler := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			if r := rssKB(); r > maxRSS.Load() {
				maxRSS.Store(r)
			}
			select {
			case <-stopSampler:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	var firstErr sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for i := range cs {
		wg.Add(1)
		go func(c caller, seed int) {
			defer wg.Done()
			cl := server.NewClient(spec)
			defer cl.CloseIdle()
			for n := 0; ; n++ {
				k := next.Add(1)
				if k > int64(requests) {
					return
				}
				tenant := c.tenants[(int(k)+seed)%len(c.tenants)]
				if k%50 == 0 {
					tenant = c.outside
				}
				rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
				body, _, err := cl.Env(rctx, c.tok, tenant, "dotenv")
				rcancel()
				var ae *server.APIError
				switch {
				case tenant == c.outside && errors.As(err, &ae) && ae.Status == 403:
					denied.Add(1)
				case tenant != c.outside && err == nil && bytes.Equal(body, want[tenant]):
					ok.Add(1)
				default:
					errs.Add(1)
					firstErr.Do(func() { t.Errorf("request %d (tenant %s): unexpected answer: err %v", k, tenant, err) })
				}
			}
		}(cs[i], i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopSampler)
	sampler.Wait()
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	cleanup()

	// Back to baseline: poll, since closed connections' goroutines need a
	// moment to finish.
	var g, fd int
	for deadline := time.Now().Add(10 * time.Second); ; {
		runtime.GC()
		g, fd = runtime.NumGoroutine(), openFiles()
		if (g <= baseG && fd <= baseFD) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d requests (%d ok, %d denied as intended, %d errors) from %d callers across %d tenants in %v (%.0f req/s); %d upstream fetches",
		requests, ok.Load(), denied.Load(), errs.Load(), callers, tenants, elapsed.Round(time.Millisecond),
		float64(requests)/elapsed.Seconds(), be.fetches.Load())
	t.Logf("goroutines %d → %d, open files %d → %d, RSS %d KB at start, %d KB peak, %d KB after",
		baseG, g, baseFD, fd, baseRSS, maxRSS.Load(), rssKB())
	if errs.Load() != 0 || ok.Load()+denied.Load() != int64(requests) {
		t.Errorf("%d errors; %d ok + %d denied of %d", errs.Load(), ok.Load(), denied.Load(), requests)
	}
	if g > baseG {
		t.Errorf("goroutines %d after the load, baseline %d", g, baseG)
	}
	if fd > baseFD {
		t.Errorf("open files %d after the load, baseline %d", fd, baseFD)
	}
	// Bounded memory: the whole load may not grow RSS by more than 256 MB
	// (the envs themselves are a few hundred KB).
	if grow := maxRSS.Load() - baseRSS; grow > 256<<10 {
		t.Errorf("RSS grew by %d KB during the load", grow)
	}
	if lines := logs.audit.Load(); lines != int64(requests) {
		t.Errorf("%d audit lines for %d requests", lines, requests)
	}
}

// auditCounter counts audit lines and passes every line on.
type auditCounter struct {
	w     *streamWriter
	audit atomic.Int64
}

func (a *auditCounter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(`"msg":"audit"`)) {
		a.audit.Add(1)
	}
	return a.w.Write(p)
}

func openFiles() int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(es)
}

func rssKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return -1
}
