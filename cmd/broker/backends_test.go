package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/testutil"
)

type okBackend struct{}

func (okBackend) Fetch(context.Context, fetch.Tenant) (fetch.Env, error) {
	return fetch.Env{"K": "v"}, nil
}

// TestGateHoldsUntilReady: a replacement bw backend is not called before the
// one it replaces has closed; a caller whose deadline passes first gets a
// retryable error, and calls go through once the gate opens.
func TestGateHoldsUntilReady(t *testing.T) {
	g := &gate{ready: make(chan struct{}), next: okBackend{}}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := g.Fetch(ctx, fetch.Tenant{Name: "globex"}); fetch.KindOf(err) != fetch.KindUnavailable {
		t.Fatalf("before ready: %v, want KindUnavailable", err)
	}
	close(g.ready)
	if env, err := g.Fetch(t.Context(), fetch.Tenant{Name: "globex"}); err != nil || env["K"] != "v" {
		t.Fatalf("after ready: %v %v", env, err)
	}
}

// TestOpenBackendsSwap: an unchanged half is carried over; a changed bw
// backend is replaced behind a gate that opens only once the retire step
// closed the old one; a changed SM backend is retired, not closed at once.
func TestOpenBackendsSwap(t *testing.T) {
	t.Setenv("BROKER_BW", testutil.BW(t))
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	u1 := scope.Upstream{
		SM: scope.SMUpstream{APIURL: "http://127.0.0.1:1/api", IdentityURL: "http://127.0.0.1:1/identity"},
		BW: scope.BWUpstream{ServerURL: "https://localhost:1", Mode: "serve"},
	}
	old, retire, err := openBackends(u1, nil, dir, log)
	if err != nil || len(retire) != 0 || old.sm == nil || old.bw == nil || old.bwFetch != fetch.Backend(old.bw) {
		t.Fatalf("first open: %+v retire %d err %v", old, len(retire), err)
	}
	defer old.close(log)

	// Only bw changes: SM carried over, bw gated until the retire step ran.
	u2 := u1
	u2.BW.ServerURL = "https://localhost:2"
	nb, retire, err := openBackends(u2, old, dir, log)
	if err != nil {
		t.Fatal(err)
	}
	defer nb.close(log)
	if nb.sm != old.sm || nb.bw == old.bw || len(retire) != 1 {
		t.Fatalf("bw change: sm carried %v, bw replaced %v, %d retire steps", nb.sm == old.sm, nb.bw != old.bw, len(retire))
	}
	g, ok := nb.bwFetch.(*gate)
	if !ok {
		t.Fatalf("the new bw backend is not gated: %T", nb.bwFetch)
	}
	select {
	case <-g.ready:
		t.Fatal("gate open before the old backend closed")
	default:
	}
	retire[0]()
	select {
	case <-g.ready:
	default:
		t.Fatal("gate still closed after the retire step")
	}
	if _, err := old.bw.Fetch(t.Context(), fetch.Tenant{Name: "x", Backend: fetch.BackendBWCLI}); err == nil {
		t.Fatal("the replaced bw backend still serves")
	}

	// Nothing changes: everything carried over, nothing to retire.
	same, retire, err := openBackends(u2, nb, dir, log)
	if err != nil || same.sm != nb.sm || same.bw != nb.bw || same.bwFetch != nb.bwFetch || len(retire) != 0 {
		t.Fatalf("no change: %+v retire %d err %v", same, len(retire), err)
	}

	// A bad new SM URL: refused before anything is opened or closed.
	bad := u2
	bad.SM.APIURL = "not a url"
	if _, _, err := openBackends(bad, nb, dir, log); err == nil {
		t.Fatal("a bad SM URL was accepted")
	}
}
