//go:build cgo && (linux || darwin) && (amd64 || arm64)

package fetch

// Differential tests: the pure-Go client (sm_native.go) against the real
// sdk-go (sm_sdk.go), on the same in-repo upstream with the same tokens and
// data. Both must give identical envs and identical error kinds and causes.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hostd/broker/internal/upstream/smserver"
)

// diffOutcome is what a Fetch gave, comparable across clients.
type diffOutcome struct {
	env   Env
	kind  string // "ok" or the Kind
	cause string
}

func outcomeOf(env Env, err error) diffOutcome {
	return diffOutcome{env: env, kind: kindOrOK(err), cause: causeOf(err)}
}

func sameOutcome(t *testing.T, what string, sdk, native diffOutcome) {
	t.Helper()
	if sdk.kind != native.kind || sdk.cause != native.cause {
		t.Errorf("%s: sdk gave %s %q, native %s %q", what, sdk.kind, sdk.cause, native.kind, native.cause)
	}
	if !maps.Equal(sdk.env, native.env) {
		t.Errorf("%s: envs differ: sdk %v, native %v", what, sdk.env, native.env)
	}
}

// wrongKeyToken returns tok with its 16-byte key replaced by a random one:
// the identity accepts it, the payload does not decrypt.
func wrongKeyToken(tok string) string {
	var k [16]byte
	rand.Read(k[:])
	left, _, _ := strings.Cut(tok, ":")
	return left + ":" + base64.StdEncoding.EncodeToString(k[:])
}

// wrongSecretToken changes the client secret of tok.
func wrongSecretToken(tok string) string {
	left, key, _ := strings.Cut(tok, ":")
	parts := strings.Split(left, ".")
	return parts[0] + "." + parts[1] + ".WrongSecretWrongSecret0123456:" + key
}

func TestDiffEnvs(t *testing.T) {
	w := newSMWorld(t)
	sdk := newSMFor(t, w, SMClientSDK, SMConfig{})
	native := newSMFor(t, w, SMClientNative, SMConfig{})
	ctx := context.Background()
	for round := 0; round < 2; round++ { // cold, then warm (one sync)
		for _, ten := range []Tenant{w.tenantA(), w.tenantB()} {
			a, errA := sdk.Fetch(ctx, ten)
			b, errB := native.Fetch(ctx, ten)
			if errA != nil || errB != nil {
				t.Fatalf("%s round %d: sdk %v, native %v", ten.Name, round, errA, errB)
			}
			sameOutcome(t, ten.Name, outcomeOf(a, nil), outcomeOf(b, nil))
		}
	}
	if err := w.srv.UpdateSecret(w.secretA, "changed\x00value"); err != nil {
		t.Fatal(err)
	}
	sdk.syncSkew, native.syncSkew = 0, 0
	a, errA := sdk.Fetch(ctx, w.tenantA())
	b, errB := native.Fetch(ctx, w.tenantA())
	sameOutcome(t, "after a change", outcomeOf(a, errA), outcomeOf(b, errB))
	if b["ZEROS"] != "changed\x00value" {
		t.Errorf("native did not see the change")
	}
}

func TestDiffErrorClasses(t *testing.T) {
	type scenario struct {
		name    string
		tenant  func(w *smWorld) Tenant
		fault   *smserver.Fault
		timeout time.Duration
		want    string // the kind both must give
	}
	withToken := func(f func(string) string) func(w *smWorld) Tenant {
		return func(w *smWorld) Tenant {
			ten := w.tenantA()
			ten.AccessToken = Secret(f(w.tokA))
			return ten
		}
	}
	a := func(w *smWorld) Tenant { return w.tenantA() }
	tests := []scenario{
		{"ok", a, nil, 5 * time.Second, "ok"},
		{"bad token format", withToken(func(s string) string { return strings.Split(s, ":")[0] }), nil, 5 * time.Second, "config"},
		{"bad token secret", withToken(wrongSecretToken), nil, 5 * time.Second, "credentials"},
		{"wrong key", withToken(wrongKeyToken), nil, 5 * time.Second, "upstream"},
		{"429 persistent", a, &smserver.Fault{Route: "api", Status: 429, Times: 100}, 2 * time.Second, "unavailable"},
		{"identity 429 persistent", a, &smserver.Fault{Route: "identity", Status: 429, Times: 100}, 2 * time.Second, "unavailable"},
		{"5xx persistent", a, &smserver.Fault{Route: "api", Status: 502, Times: 100}, 2 * time.Second, "upstream"},
		{"500 then ok", a, &smserver.Fault{Route: "api", Status: 500}, 5 * time.Second, "ok"},
		{"tampered mac", a, &smserver.Fault{Route: "api", TamperMAC: true}, 5 * time.Second, "upstream"},
		{"tampered login payload", a, &smserver.Fault{Route: "identity", TamperMAC: true}, 5 * time.Second, "upstream"},
		{"not json", a, &smserver.Fault{Route: "api", BadJSON: true}, 5 * time.Second, "upstream"},
		{"identity not json", a, &smserver.Fault{Route: "identity", BadJSON: true}, 5 * time.Second, "upstream"},
		{"truncated persistent", a, &smserver.Fault{Route: "api", Truncate: true, Times: 100}, time.Second, "unavailable"},
		{"reset persistent", a, &smserver.Fault{Route: "", Reset: true, Times: 100}, time.Second, "unavailable"},
		{"unknown organization", func(w *smWorld) Tenant {
			ten := w.tenantA()
			ten.OrganizationID = "00000000-0000-4000-8000-000000000000"
			return ten
		}, nil, 5 * time.Second, "upstream"},
	}
	w := newSMWorld(t) // one upstream, one set of tokens and data for all
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got [2]diffOutcome
			for i, kind := range []string{SMClientSDK, SMClientNative} {
				s := newSMFor(t, w, kind, SMConfig{})
				w.srv.ClearFaults()
				if tt.fault != nil {
					w.srv.InjectFault(*tt.fault)
				}
				ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
				env, err := s.Fetch(ctx, tt.tenant(w))
				cancel()
				w.noLeak(t, err)
				got[i] = outcomeOf(env, err)
				t.Logf("%s: %s %q", kind, got[i].kind, got[i].cause)
			}
			w.srv.ClearFaults()
			sameOutcome(t, tt.name, got[0], got[1])
			if got[1].kind != tt.want {
				t.Errorf("kind = %s, want %s", got[1].kind, tt.want)
			}
		})
	}
}

func TestDiffRevoked(t *testing.T) {
	w := newSMWorld(t)
	sdk := newSMFor(t, w, SMClientSDK, SMConfig{})
	native := newSMFor(t, w, SMClientNative, SMConfig{})
	ctx := context.Background()
	fetchBoth := func(what string) {
		t.Helper()
		a, errA := sdk.Fetch(ctx, w.tenantA())
		b, errB := native.Fetch(ctx, w.tenantA())
		w.noLeak(t, errA)
		w.noLeak(t, errB)
		sameOutcome(t, what, outcomeOf(a, errA), outcomeOf(b, errB))
	}
	fetchBoth("before revocation")
	w.srv.RevokeAccessToken(w.tokAID)
	fetchBoth("live JWT of a revoked token")    // 401 from the API
	fetchBoth("fresh login of a revoked token") // 400 invalid_client
	if a, b := sdk.Stats().Dropped, native.Stats().Dropped; a != b || a == 0 {
		t.Errorf("dropped clients: sdk %d, native %d; want equal and > 0", a, b)
	}
}

// The two clients read each other's state files: no identity call.
func TestDiffStateFileInterop(t *testing.T) {
	w := newSMWorld(t)
	for _, order := range [][2]string{{SMClientSDK, SMClientNative}, {SMClientNative, SMClientSDK}} {
		t.Run(order[0]+" writes, "+order[1]+" reads", func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "sm")
			first := newSMFor(t, w, order[0], SMConfig{StateDir: dir})
			if _, err := first.Fetch(context.Background(), w.tenantA()); err != nil {
				t.Fatal(err)
			}
			first.Close()
			w.srv.ResetStats()
			second := newSMFor(t, w, order[1], SMConfig{StateDir: dir})
			env, err := second.Fetch(context.Background(), w.tenantA())
			if err != nil {
				t.Fatal(err)
			}
			sameEnv(t, "second client", env, smHard)
			if n := w.srv.Stats().Logins; n != 0 {
				t.Errorf("identity calls = %d, want 0: the state file of the other client was not used", n)
			}
		})
	}
}

// Client level: every smClient operation gives the same result.
func TestDiffClientOperations(t *testing.T) {
	w := newSMWorld(t)
	writer := w.srv.AddMachineAccount(w.org)
	w.srv.GrantWrite(writer, w.projB)
	w.srv.GrantRead(writer, w.projA)
	tok, _ := w.srv.NewAccessToken(writer)

	sdkC, err := smNewSDKClient(w.srv.APIURL(), w.srv.IdentityURL())
	if err != nil {
		t.Fatal(err)
	}
	defer sdkC.Close()
	natC, _ := smNewNativeClient(w.srv.APIURL(), w.srv.IdentityURL())
	defer natC.Close()
	clients := [2]smClient{sdkC, natC}
	for _, c := range clients {
		if err := c.Login(tok, ""); err != nil {
			t.Fatalf("Login: %v", err)
		}
	}
	byID := func(s []smSecret) []smSecret {
		s = slices.Clone(s)
		slices.SortFunc(s, func(a, b smSecret) int { return strings.Compare(a.ID, b.ID) })
		return s
	}

	var lists [2][]smSecretID
	var syncs [2][]smSecret
	for i, c := range clients {
		l, err := c.List(w.org)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		slices.SortFunc(l, func(a, b smSecretID) int { return strings.Compare(a.ID, b.ID) })
		lists[i] = l
		changed, s, err := c.Sync(w.org, nil)
		if err != nil || !changed {
			t.Fatalf("Sync: %v, changed %v", err, changed)
		}
		syncs[i] = byID(s)
	}
	if !slices.Equal(lists[0], lists[1]) || len(lists[0]) != len(smHard)+1 {
		t.Errorf("List differs or is short: sdk %d, native %d secrets", len(lists[0]), len(lists[1]))
	}
	if !slices.Equal(syncs[0], syncs[1]) {
		t.Errorf("Sync results differ")
	}

	// Sync with a date after the last change: nothing changed for both.
	last := time.Now().Add(time.Second)
	for i, c := range clients {
		changed, s, err := c.Sync(w.org, &last)
		if err != nil || changed || len(s) != 0 {
			t.Errorf("client %d: Sync(later) = %v, %d secrets, %v; want unchanged", i, changed, len(s), err)
		}
	}

	// get-by-ids: the SDK's GetByIDS against the native getByIDs.
	ids := []string{w.secretA, w.secretB}
	r, err := sdkC.(*sdkClient).c.Secrets().GetByIDS(ids)
	if err != nil {
		t.Fatal(err)
	}
	var fromSDK []smSecret
	for i := range r.Data {
		fromSDK = append(fromSDK, fromSDKSecret(&r.Data[i]))
	}
	fromNative, err := natC.(*nativeClient).getByIDs([]string{strings.ToUpper(w.secretA), w.secretB})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(byID(fromSDK), byID(fromNative)) || len(fromNative) != 2 {
		t.Errorf("get-by-ids differs: sdk %d, native %d secrets", len(fromSDK), len(fromNative))
	}

	// Writes: create, update, delete give the same shapes; the upstream holds
	// what each wrote.
	strip := func(s smSecret) smSecret { s.ID = ""; return s }
	var created [2]smSecret
	for i, c := range clients {
		key := []string{"FROM_SDK", "FROM_NATIVE"}[i]
		s, err := c.Create(w.org, w.projB, "  "+key+" ", "välue\n\"q\" $x", " a note ")
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		s.Key = strings.TrimPrefix(s.Key, "FROM_")
		created[i] = s
	}
	if a, b := strip(created[0]), strip(created[1]); a.Key != "SDK" || b.Key != "NATIVE" {
		t.Errorf("created keys %q and %q, want both trimmed", a.Key, b.Key)
	} else if a.Key, b.Key = "", ""; a != b {
		t.Errorf("Create results differ: sdk %+v, native %+v", a, b)
	}
	var updated [2]smSecret
	for i, c := range clients {
		s, err := c.Update(created[i].ID, w.org, w.projB, []string{"FROM_SDK", "FROM_NATIVE"}[i], "new", "n2")
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
		updated[i] = s
	}
	if updated[0].Value != "new" || updated[1].Value != "new" || updated[0].Note != updated[1].Note {
		t.Errorf("Update results differ")
	}
	got := w.srv.SecretsOf(w.org, w.projB)
	if got["FROM_SDK"] != "new" || got["FROM_NATIVE"] != "new" {
		t.Errorf("upstream after updates holds %v", slices.Sorted(maps.Keys(got)))
	}
	for i, c := range clients {
		if err := c.Delete([]string{created[i].ID}); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	got = w.srv.SecretsOf(w.org, w.projB)
	if _, ok := got["FROM_SDK"]; ok {
		t.Errorf("sdk delete left the secret")
	}
	if _, ok := got["FROM_NATIVE"]; ok {
		t.Errorf("native delete left the secret")
	}

	// Refused input: both refuse without a request, with the same class.
	w.srv.ResetStats()
	for i, c := range clients {
		_, err := c.Create(w.org, w.projB, "K", "", "")
		if f := classifySDKError(err); f.class != classInput {
			t.Errorf("client %d: empty value gave %v, want an input error", i, f.cause)
		}
	}
	if n := w.srv.Stats().Requests; n != 0 {
		t.Errorf("requests for refused input = %d, want 0", n)
	}
}
