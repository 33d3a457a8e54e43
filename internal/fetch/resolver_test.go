package fetch

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingBackend is a Backend for resolver tests: it counts calls, can block
// until released, and returns a scripted error.
type countingBackend struct {
	calls   atomic.Int64
	release chan struct{} // nil: answer at once
	mu      sync.Mutex
	err     error
	value   string
}

func (b *countingBackend) Fetch(ctx context.Context, t Tenant) (Env, error) {
	b.calls.Add(1)
	if b.release != nil {
		select {
		case <-b.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return nil, b.err
	}
	return Env{"KEY": b.value}, nil
}

func (b *countingBackend) set(value string, err error) {
	b.mu.Lock()
	b.value, b.err = value, err
	b.mu.Unlock()
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestResolver(t *testing.T, cfg ResolverConfig, b Backend) (*Resolver, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	cfg.Now = clk.Now
	return NewResolver(t.Context(), cfg, map[string]Backend{BackendSM: b}), clk
}

var tenantA = Tenant{Name: "acme", Backend: BackendSM, AccessToken: "tok-a"}

func TestResolverCacheTTL(t *testing.T) {
	b := &countingBackend{value: "v1"}
	r, clk := newTestResolver(t, ResolverConfig{TTL: time.Minute}, b)
	ctx := t.Context()
	steps := []struct {
		advance   time.Duration
		wantSrc   string
		wantCalls int64
	}{
		{0, BackendSM, 1},
		{30 * time.Second, SourceCache, 1},
		{29 * time.Second, SourceCache, 1},
		{2 * time.Second, BackendSM, 2}, // past the TTL
		{time.Second, SourceCache, 2},
	}
	for i, s := range steps {
		clk.Add(s.advance)
		res, err := r.Resolve(ctx, tenantA)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if res.Source != s.wantSrc || b.calls.Load() != s.wantCalls {
			t.Fatalf("step %d: source %q calls %d, want %q %d", i, res.Source, b.calls.Load(), s.wantSrc, s.wantCalls)
		}
		if res.Env["KEY"] != "v1" {
			t.Fatalf("step %d: wrong value", i)
		}
	}
}

func TestResolverTTLZeroDisablesCache(t *testing.T) {
	b := &countingBackend{value: "v"}
	r, _ := newTestResolver(t, ResolverConfig{}, b)
	for i := range 3 {
		if res, err := r.Resolve(t.Context(), tenantA); err != nil || res.Source != BackendSM {
			t.Fatalf("call %d: source %q err %v", i, res.Source, err)
		}
	}
	if got := b.calls.Load(); got != 3 {
		t.Fatalf("backend calls = %d, want 3", got)
	}
}

func TestResolverConfigChangeMisses(t *testing.T) {
	b := &countingBackend{value: "v"}
	r, _ := newTestResolver(t, ResolverConfig{TTL: time.Hour}, b)
	if _, err := r.Resolve(t.Context(), tenantA); err != nil {
		t.Fatal(err)
	}
	changed := tenantA
	changed.AccessToken = "tok-rotated"
	res, err := r.Resolve(t.Context(), changed)
	if err != nil || res.Source != BackendSM || b.calls.Load() != 2 {
		t.Fatalf("after a credential change: source %q calls %d err %v; want a fresh fetch", res.Source, b.calls.Load(), err)
	}
	// A project change is a new configuration too, even when the caller
	// reuses (and mutates) its slice: the memoized key must not alias it.
	projects := []string{"p1"}
	withP := changed
	withP.ProjectIDs = projects
	if _, err := r.Resolve(t.Context(), withP); err != nil || b.calls.Load() != 3 {
		t.Fatalf("first project set: calls %d err %v", b.calls.Load(), err)
	}
	projects[0] = "p2"
	if res, err := r.Resolve(t.Context(), withP); err != nil || res.Source != BackendSM || b.calls.Load() != 4 {
		t.Fatalf("after the project changed in place: source %q calls %d err %v; want a fresh fetch", res.Source, b.calls.Load(), err)
	}
	if res, err := r.Resolve(t.Context(), withP); err != nil || res.Source != SourceCache {
		t.Fatalf("unchanged again: source %q err %v; want the cache", res.Source, err)
	}
}

func TestResolverSingleflight(t *testing.T) {
	b := &countingBackend{value: "v", release: make(chan struct{})}
	r, _ := newTestResolver(t, ResolverConfig{TTL: time.Minute}, b)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			res, err := r.Resolve(t.Context(), tenantA)
			if err == nil && res.Env["KEY"] != "v" {
				err = errors.New("wrong value")
			}
			errs <- err
		})
	}
	// Let every caller join the flight before the backend answers.
	for r.misses.Load() < n {
		time.Sleep(time.Millisecond)
	}
	close(b.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := b.calls.Load(); got != 1 {
		t.Fatalf("backend calls for %d concurrent cold fetches = %d, want 1", n, got)
	}
}

func TestResolverStaleIfError(t *testing.T) {
	down := NewError(KindUnavailable, "acme", "upstream down", nil)
	revoked := NewError(KindCredentials, "acme", "revoked", nil)
	tests := []struct {
		name    string
		stale   time.Duration
		advance time.Duration
		err     error
		wantSrc string
		wantErr Kind
	}{
		{"within window", time.Minute, 90 * time.Second, down, SourceStale, 0},
		{"past window", time.Minute, 3 * time.Minute, down, "", KindUnavailable},
		{"disabled", 0, 90 * time.Second, down, "", KindUnavailable},
		{"credentials are not papered over", time.Minute, 90 * time.Second, revoked, "", KindCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &countingBackend{value: "old"}
			r, clk := newTestResolver(t, ResolverConfig{TTL: time.Minute, StaleIfError: tt.stale}, b)
			if _, err := r.Resolve(t.Context(), tenantA); err != nil {
				t.Fatal(err)
			}
			clk.Add(tt.advance)
			b.set("", tt.err)
			res, err := r.Resolve(t.Context(), tenantA)
			if tt.wantSrc != "" {
				if err != nil || res.Source != tt.wantSrc || res.Env["KEY"] != "old" || !res.Stale() {
					t.Fatalf("got source %q err %v, want %q with the old value", res.Source, err, tt.wantSrc)
				}
				return
			}
			if err == nil || KindOf(err) != tt.wantErr {
				t.Fatalf("got source %q err %v, want error kind %v", res.Source, err, tt.wantErr)
			}
		})
	}
}

func TestResolverCallerDeadline(t *testing.T) {
	b := &countingBackend{value: "v", release: make(chan struct{})}
	r, _ := newTestResolver(t, ResolverConfig{TTL: time.Minute}, b)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, err := r.Resolve(ctx, tenantA)
	if KindOf(err) != KindTimeout {
		t.Fatalf("err = %v, want KindTimeout", err)
	}
	// The flight goes on; a patient caller gets its result, with no second fetch.
	done := make(chan error, 1)
	go func() { _, err := r.Resolve(t.Context(), tenantA); done <- err }()
	for r.misses.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	close(b.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := b.calls.Load(); got != 1 {
		t.Fatalf("backend calls = %d, want 1", got)
	}
}

func TestResolverUnknownBackend(t *testing.T) {
	r, _ := newTestResolver(t, ResolverConfig{}, &countingBackend{})
	_, err := r.Resolve(t.Context(), Tenant{Name: "x", Backend: BackendBWCLI})
	if KindOf(err) != KindConfig {
		t.Fatalf("err = %v, want KindConfig", err)
	}
}

func TestEnvNeverPrintsValues(t *testing.T) {
	e := Env{"B": "s3cr3t-b", "A": "s3cr3t-a"}
	for _, s := range []string{e.String(), e.GoString(), e.LogValue().String()} {
		if s == "" || strings.Contains(s, "s3cr3t") {
			t.Fatalf("Env printed %q", s)
		}
	}
	sec := Secret("hunter2")
	if sec.String() != "[REDACTED]" || sec.GoString() != "[REDACTED]" || sec.LogValue().String() != "[REDACTED]" {
		t.Fatal("Secret printed its value")
	}
}

func TestValidKeyAndBuilder(t *testing.T) {
	for _, tt := range []struct {
		k    string
		want bool
	}{
		{"A", true}, {"_x9", true}, {"DATABASE_URL", true}, {"9A", false}, {"", false},
		{"A-B", false}, {"A B", false}, {"Ü", false}, {"A\n", false}, {string(make([]byte, MaxKeyLen+1)), false},
	} {
		if got := ValidKey(tt.k); got != tt.want {
			t.Errorf("ValidKey(%q) = %v, want %v", tt.k, got, tt.want)
		}
	}
	var b EnvBuilder
	b.Tenant = "acme"
	if err := b.Add("OK", "value-1"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"OK", "BAD-KEY"} {
		err := b.Add(k, "value-2")
		if err == nil || KindOf(err) != KindData || !strings.Contains(err.Error(), k) || strings.Contains(err.Error(), "value-") {
			t.Fatalf("Add(%q) = %v; want a KindData error naming the key and not the value", k, err)
		}
	}
}
