package bwcli

import (
	"context"
	"encoding/json"
	"maps"
	"testing"

	"github.com/hostd/broker/internal/fetch"
)

// faultyVault is the real vault with its item lists damaged on purpose:
// bw serve's silent decryption failure (an empty or partial list,
// protocols §10) cannot be produced on demand with the real bw, so the test
// damages the real answers at the vault seam.
type faultyVault struct {
	vault
	// damage returns the answer of the n-th list (from 0), given the real one.
	damage func(n int, items []bwItem, org, coll string) []bwItem
	lists  int
}

func (f *faultyVault) items(ctx context.Context, org, coll string) ([]bwItem, error) {
	items, err := f.vault.items(ctx, org, coll)
	if err != nil {
		return nil, err
	}
	n := f.lists
	f.lists++
	return f.damage(n, items, org, coll), nil
}

// emptyList is bw's silent failure: no item at all.
func emptyList(int, []bwItem, string, string) []bwItem { return []bwItem{} }

// dropOne removes one of the collection's items.
func dropOne(_ int, items []bwItem, org, coll string) []bwItem {
	out := make([]bwItem, 0, len(items))
	dropped := false
	for _, it := range items {
		if !dropped && it.inCollection(org, coll) {
			dropped = true
			continue
		}
		out = append(out, it)
	}
	return out
}

// firstOnly damages the first list only.
func firstOnly(damage func(int, []bwItem, string, string) []bwItem) func(int, []bwItem, string, string) []bwItem {
	return func(n int, items []bwItem, org, coll string) []bwItem {
		if n == 0 {
			return damage(n, items, org, coll)
		}
		return items
	}
}

// TestIncompleteListNeverServed drives the real bw serve through the real
// call path and damages its lists: an empty or partial list of a collection
// that has items is read again after a fresh unlock and, if still
// incomplete, fails with KindUnavailable; a really empty collection gives
// an empty env without a second read.
func TestIncompleteListNeverServed(t *testing.T) {
	t.Parallel()
	h := newHarness(t, ModeServe, nil)
	w := h.w
	// A real, empty collection of the organization (which has items in
	// others).
	w.srv.AddCollection(w.org, "empty")
	alice := w.aliceTenant()
	emptyTenant := alice
	emptyTenant.Name, emptyTenant.Collection = "vacant", "empty"
	ctx := context.Background()

	// Log in and warm up; not damaged.
	env, err := h.b.Fetch(ctx, alice)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	wantEnv(t, env, w.acmeItems)

	tests := []struct {
		name         string
		tenant       fetch.Tenant
		damage       func(int, []bwItem, string, string) []bwItem
		want         map[string]string // nil: want KindUnavailable
		wantRereads  int64
		wantRefresh  bool
		wantFailures int64
	}{
		{"empty once is read again", alice, firstOnly(emptyList), w.acmeItems, 1, true, 0},
		{"partial once is read again", alice, firstOnly(dropOne), w.acmeItems, 1, true, 0},
		{"always empty fails", alice, emptyList, nil, 1, true, 1},
		{"always partial fails", alice, dropOne, nil, 1, true, 1},
		{"empty collection is served empty", emptyTenant, func(_ int, items []bwItem, _, _ string) []bwItem { return items }, map[string]string{}, 0, false, 0},
		{"empty collection with bw's empty answer", emptyTenant, emptyList, map[string]string{}, 0, false, 0},
		{"undamaged", alice, func(_ int, items []bwItem, _, _ string) []bwItem { return items }, w.acmeItems, 0, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			before := h.b.Stats()
			var env fetch.Env
			err := h.b.call(ctx, tt.tenant, func(ctx context.Context, v vault, d *dataDir) error {
				var err error
				env, err = h.b.readCollection(ctx, &faultyVault{vault: v, damage: tt.damage}, d, tt.tenant)
				return err
			})
			after := h.b.Stats()
			if tt.want == nil {
				h.wantKind(err, fetch.KindUnavailable)
				if env != nil {
					t.Errorf("env has %d keys with the error, want none", len(env))
				}
			} else {
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				wantEnv(t, env, maps.Clone(tt.want))
			}
			if got := after.Rereads - before.Rereads; got != tt.wantRereads {
				t.Errorf("Stats().Rereads grew by %d, want %d", got, tt.wantRereads)
			}
			if got := after.Refreshes > before.Refreshes; got != tt.wantRefresh {
				t.Errorf("Stats().Refreshes grew = %v (%d → %d), want %v", got, before.Refreshes, after.Refreshes, tt.wantRefresh)
			}
			if got := after.Incomplete - before.Incomplete; got != tt.wantFailures {
				t.Errorf("Stats().Incomplete grew by %d, want %d", got, tt.wantFailures)
			}
			h.checkLocked(tt.tenant)
		})
	}
	// The plain Fetch of the empty collection: an empty env, no error.
	h.t = t
	env, err = h.b.Fetch(ctx, emptyTenant)
	if err != nil {
		t.Fatalf("Fetch of the empty collection: %v", err)
	}
	if len(env) != 0 {
		t.Errorf("Fetch of the empty collection: %d keys, want 0", len(env))
	}
}

func TestListVerdicts(t *testing.T) {
	tests := []struct {
		name                   string
		listed, stored, inOrg  int
		known                  bool
		wantSuspect, wantFails bool
	}{
		{"complete", 11, 11, 12, true, false, false},
		{"more than stored", 12, 11, 12, true, false, false},
		{"empty collection", 0, 0, 0, true, false, false},
		{"empty list of a stored collection", 0, 11, 0, true, true, true},
		{"partial", 10, 11, 11, true, true, true},
		{"unknown store, items", 3, 0, 3, false, false, false},
		{"unknown store, empty, org has items", 0, 0, 5, false, true, false},
		{"unknown store, nothing at all", 0, 0, 0, false, true, true},
	}
	for _, tt := range tests {
		if got := listSuspect(tt.listed, tt.stored, tt.known); got != tt.wantSuspect {
			t.Errorf("%s: listSuspect = %v, want %v", tt.name, got, tt.wantSuspect)
		}
		if got := listIncomplete(tt.listed, tt.stored, tt.known, tt.inOrg); got != tt.wantFails {
			t.Errorf("%s: listIncomplete = %v, want %v", tt.name, got, tt.wantFails)
		}
	}
}

func TestCountStored(t *testing.T) {
	const org, coll = "org-1", "coll-1"
	state := func(active string, ciphers any) map[string]json.RawMessage {
		m := map[string]json.RawMessage{}
		if active != "" {
			m["global_account_activeAccountId"], _ = json.Marshal(active)
		}
		if ciphers != nil {
			m["user_u1_ciphers_ciphers"], _ = json.Marshal(ciphers)
		}
		return m
	}
	c := func(o string, colls []string, deleted, archived any) map[string]any {
		return map[string]any{"organizationId": o, "collectionIds": colls, "deletedDate": deleted, "archivedDate": archived, "name": "2.x|y|z"}
	}
	tests := []struct {
		name   string
		m      map[string]json.RawMessage
		want   int
		wantOK bool
	}{
		{"counts", state("u1", map[string]any{
			"a": c(org, []string{coll}, nil, nil),
			"b": c(org, []string{"other", coll}, nil, nil),
			"c": c(org, []string{"other"}, nil, nil),
			"d": c("org-2", []string{coll}, nil, nil),
			"e": c(org, []string{coll}, "2026-01-01T00:00:00Z", nil),
			"f": c(org, []string{coll}, nil, "2026-01-01T00:00:00Z"),
			"g": c(org, nil, nil, nil),
		}), 2, true},
		{"no ciphers yet", state("u1", map[string]any{}), 0, true},
		{"null ciphers", map[string]json.RawMessage{"global_account_activeAccountId": json.RawMessage(`"u1"`), "user_u1_ciphers_ciphers": json.RawMessage(`null`)}, 0, true},
		{"another account's ciphers", state("u2", map[string]any{"a": c(org, []string{coll}, nil, nil)}), 0, false},
		{"no active account", state("", map[string]any{"a": c(org, []string{coll}, nil, nil)}), 0, false},
		{"no state", nil, 0, false},
		{"unknown layout", map[string]json.RawMessage{"global_account_activeAccountId": json.RawMessage(`"u1"`), "user_u1_ciphers_ciphers": json.RawMessage(`[1,2]`)}, 0, false},
	}
	for _, tt := range tests {
		got, ok := countStored(tt.m, org, coll)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("%s: countStored = %d, %v; want %d, %v", tt.name, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestSyncChanged(t *testing.T) {
	base := stateSnapshot{fp: "f1", lastSync: "t1"}
	tests := []struct {
		name          string
		before, after stateSnapshot
		want          bool
	}{
		{"nothing downloaded", base, stateSnapshot{fp: "f1", lastSync: "t2"}, false},
		{"downloaded changes", base, stateSnapshot{fp: "f2", lastSync: "t2"}, true},
		{"last sync not rewritten", base, base, true},
		{"no last sync stored", stateSnapshot{fp: "f1"}, stateSnapshot{fp: "f1"}, true},
		{"unreadable before", stateSnapshot{}, stateSnapshot{fp: "f1", lastSync: "t2"}, true},
		{"unreadable after", base, stateSnapshot{}, true},
	}
	for _, tt := range tests {
		if got := syncChanged(tt.before, tt.after); got != tt.want {
			t.Errorf("%s: syncChanged = %v, want %v", tt.name, got, tt.want)
		}
	}
}
