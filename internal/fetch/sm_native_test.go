package fetch

// Tests of the pure-Go Secrets Manager client (sm_native.go): the Secrets
// Manager backend against the in-repo upstream (internal/upstream/smserver,
// pure Go, on 127.0.0.1) with every client this build has — the native one
// always, sdk-go too when cgo links it in (so CGO_ENABLED=0 go test runs the
// native client through all of them) — and the native client's own parts.
// sm_diff_test.go compares the two clients directly.

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hostd/broker/internal/bwcrypto"
	"github.com/hostd/broker/internal/upstream/smserver"
)

// smHard are values that break naive quoting; the server seeds them (the
// SDK cannot create an empty value).
var smHard = map[string]string{
	"MULTI":   "line1\nline2",
	"QUOTES":  `he said "hi"`,
	"DOLLAR":  "$HOME ${X}",
	"BACK":    `back\slash`,
	"ZEROS":   "007",
	"UNICODE": "ünïcødé 😀",
	"EMPTY":   "",
}

// smWorld is a seeded upstream: tenant A reads project A; tenant B's
// account reads projects A and B but B is configured with project B only.
type smWorld struct {
	srv                *smserver.Server
	org, projA, projB  string
	acctA, acctB       string
	tokA, tokB         string
	tokAID, tokBID     string
	secretA, secretB   string // ids of one secret in each project
	secretsNeverToLeak []string
}

func newSMWorld(t *testing.T) *smWorld {
	t.Helper()
	srv := smserver.New(smserver.Options{})
	if err := srv.Start(); err != nil {
		t.Fatalf("smserver start: %v", err)
	}
	t.Cleanup(srv.Close)
	w := &smWorld{srv: srv}
	w.org = srv.AddOrganization("acme-org")
	w.projA = srv.AddProject(w.org, "project-a")
	w.projB = srv.AddProject(w.org, "project-b")
	for k, v := range smHard {
		id := srv.AddSecret(w.org, w.projA, k, v, "a note")
		if k == "ZEROS" {
			w.secretA = id
		}
	}
	w.secretB = srv.AddSecret(w.org, w.projB, "B_ONLY", "b-value-secret", "")
	w.acctA = srv.AddMachineAccount(w.org)
	srv.GrantRead(w.acctA, w.projA)
	w.acctB = srv.AddMachineAccount(w.org)
	srv.GrantRead(w.acctB, w.projA)
	srv.GrantRead(w.acctB, w.projB)
	w.tokA, w.tokAID = srv.NewAccessToken(w.acctA)
	w.tokB, w.tokBID = srv.NewAccessToken(w.acctB)
	for _, tok := range []string{w.tokA, w.tokB} {
		secret := strings.Split(strings.Split(tok, ":")[0], ".")[2]
		key := strings.Split(tok, ":")[1]
		w.secretsNeverToLeak = append(w.secretsNeverToLeak, tok, secret, key)
	}
	for _, v := range smHard {
		if len(v) > 3 {
			w.secretsNeverToLeak = append(w.secretsNeverToLeak, v)
		}
	}
	w.secretsNeverToLeak = append(w.secretsNeverToLeak, "b-value-secret")
	return w
}

func (w *smWorld) tenantA() Tenant {
	return Tenant{Name: "acme", Backend: BackendSM, OrganizationID: w.org, ProjectIDs: []string{w.projA}, AccessToken: Secret(w.tokA)}
}

func (w *smWorld) tenantB() Tenant {
	return Tenant{Name: "globex", Backend: BackendSM, OrganizationID: w.org, ProjectIDs: []string{w.projB}, AccessToken: Secret(w.tokB)}
}

// smKinds returns the clients this build can test: native always, sdk when
// the SDK is linked in.
func smKinds() []string {
	if SMSupported() {
		return []string{SMClientSDK, SMClientNative}
	}
	return []string{SMClientNative}
}

// forKinds runs f as one subtest per client kind.
func forKinds(t *testing.T, f func(t *testing.T, kind string)) {
	t.Helper()
	for _, kind := range smKinds() {
		t.Run(kind, func(t *testing.T) { f(t, kind) })
	}
}

// newSMFor returns a backend with the given client on w's server.
func newSMFor(t *testing.T, w *smWorld, kind string, cfg SMConfig) *SM {
	t.Helper()
	cfg.APIURL, cfg.IdentityURL = w.srv.APIURL(), w.srv.IdentityURL()
	cfg.Client = kind
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(t.TempDir(), "sm")
	}
	if cfg.RatePerSec == 0 {
		cfg.RatePerSec, cfg.Burst = 1000, 1000
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	s, err := NewSM(cfg)
	if err != nil {
		t.Fatalf("NewSM(%s): %v", kind, err)
	}
	if s.Client() != kind {
		t.Fatalf("Client() = %q, want %q", s.Client(), kind)
	}
	t.Cleanup(s.Close)
	return s
}

// noLeak fails if err's text holds a token, a token part or a value.
func (w *smWorld) noLeak(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range w.secretsNeverToLeak {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error text holds a secret (%d bytes): %q", len(s), err.Error()[:min(len(err.Error()), 40)])
		}
	}
}

func sameEnv(t *testing.T, what string, got Env, want map[string]string) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			t.Errorf("%s: key %q missing", what, k)
		case g != v:
			t.Errorf("%s: key %q: value differs (got %d bytes, want %d)", what, k, len(g), len(v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected key %q", what, k)
		}
	}
}

func TestSMRealFetch(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		s := newSMFor(t, w, kind, SMConfig{})
		ctx := context.Background()

		env, err := s.Fetch(ctx, w.tenantA())
		if err != nil {
			t.Fatalf("Fetch A: %v", err)
		}
		sameEnv(t, "tenant A", env, smHard)

		// B's account can see project A too, but B's env holds project B only.
		env, err = s.Fetch(ctx, w.tenantB())
		if err != nil {
			t.Fatalf("Fetch B: %v", err)
		}
		sameEnv(t, "tenant B", env, map[string]string{"B_ONLY": "b-value-secret"})

		// The state files exist, owner-only, named by the token id hash.
		files, _ := filepath.Glob(filepath.Join(s.stateDir, "sm-*.state"))
		if len(files) != 2 {
			t.Fatalf("state files = %d, want 2", len(files))
		}
		for _, f := range files {
			fi, err := os.Stat(f)
			if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
				t.Errorf("state file %s: %v, mode %v, size %d; want 0600, written by the SDK", filepath.Base(f), err, fi.Mode().Perm(), fi.Size())
			}
			if strings.Contains(f, w.tokAID) || strings.Contains(f, w.tokBID) {
				t.Errorf("state file name %s holds a token id", filepath.Base(f))
			}
		}
		if err := s.Check(ctx, w.tenantA()); err != nil {
			t.Errorf("Check: %v", err)
		}
	})
}

// TestSMRealCheckProjects: Check resolves every configured project through
// GET /projects/{id}; one the machine account cannot read (404) is a config
// error naming it.
func TestSMRealCheckProjects(t *testing.T) {
	const unknown = "0badc0de-0000-4000-8000-000000000000"
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		s := newSMFor(t, w, kind, SMConfig{})
		withProjects := func(tn Tenant, ps ...string) Tenant { tn.ProjectIDs = ps; return tn }
		tests := []struct {
			name      string
			tenant    Tenant
			wantNamed string // "" means Check succeeds
		}{
			{"A reads its project", w.tenantA(), ""},
			{"B reads its project", w.tenantB(), ""},
			{"B reads both projects", withProjects(w.tenantB(), w.projA, w.projB), ""},
			{"A cannot read project B", withProjects(w.tenantA(), w.projA, w.projB), w.projB},
			{"upper-case id still resolves", withProjects(w.tenantA(), strings.ToUpper(w.projA)), ""},
			{"unknown project", withProjects(w.tenantA(), unknown), unknown},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := s.Check(context.Background(), tt.tenant)
				w.noLeak(t, err)
				if tt.wantNamed == "" {
					if err != nil {
						t.Fatalf("Check = %v, want nil", err)
					}
					return
				}
				if got := KindOf(err); got != KindConfig || !errors.Is(err, ErrNotResolved) {
					t.Fatalf("Check = %v (kind %v), want kind %v with cause ErrNotResolved", err, got, KindConfig)
				}
				wantIn := []string{tt.wantNamed, "tenants." + tt.tenant.Name + ".project_ids"}
				for _, sub := range wantIn {
					if !strings.Contains(err.Error(), sub) {
						t.Errorf("Check error = %q, want it to contain %q", err, sub)
					}
				}
			})
		}
	})
}

// syncRecorder records the hasChanges answers of the real SDK.
type syncRecorder struct {
	smClient
	mu      *sync.Mutex
	changed *[]bool
}

func (r syncRecorder) Sync(org string, last *time.Time) (bool, []smSecret, error) {
	ch, secs, err := r.smClient.Sync(org, last)
	if err == nil {
		r.mu.Lock()
		*r.changed = append(*r.changed, ch)
		r.mu.Unlock()
	}
	return ch, secs, err
}

func TestSMRealWarmRefresh(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		s := newSMFor(t, w, kind, SMConfig{})
		s.syncSkew = 0 // server and SDK share this machine's clock
		var mu sync.Mutex
		var changed []bool
		inner := s.newClient
		s.newClient = func(api, identity string) (smClient, error) {
			c, err := inner(api, identity)
			if err != nil {
				return nil, err
			}
			return syncRecorder{smClient: c, mu: &mu, changed: &changed}, nil
		}
		ctx := context.Background()
		if _, err := s.Fetch(ctx, w.tenantA()); err != nil {
			t.Fatal(err)
		}
		w.srv.ResetStats()
		env, err := s.Fetch(ctx, w.tenantA())
		if err != nil {
			t.Fatal(err)
		}
		st := w.srv.Stats()
		if st.Logins != 0 || st.Requests != 1 {
			t.Errorf("warm refresh: upstream logins %d, requests %d (%v); want 0 and 1", st.Logins, st.Requests, st.ByRoute)
		}
		sameEnv(t, "warm", env, smHard)
		mu.Lock()
		if !slices.Equal(changed, []bool{true, false}) {
			t.Errorf("hasChanges answers = %v, want [true false]: the warm env must come from the kept set", changed)
		}
		mu.Unlock()

		if err := w.srv.UpdateSecret(w.secretA, "008"); err != nil {
			t.Fatal(err)
		}
		env, err = s.Fetch(ctx, w.tenantA())
		if err != nil {
			t.Fatal(err)
		}
		if env["ZEROS"] != "008" {
			t.Errorf("changed secret not seen on the next fetch")
		}
		if err := w.srv.DeleteSecret(w.secretA); err != nil {
			t.Fatal(err)
		}
		env, err = s.Fetch(ctx, w.tenantA())
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := env["ZEROS"]; ok {
			t.Errorf("deleted secret still in the env")
		}
		if g := s.Stats(); g.Logins != 1 || g.LiveClients != 1 {
			t.Errorf("Stats = %+v, want 1 login, 1 live client", g)
		}
	})
}

func TestSMRealFaults(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		tests := []struct {
			name    string
			fault   smserver.Fault
			timeout time.Duration
			want    Kind // -1: success
			cause   string
		}{
			{"429 with retry-after then ok", smserver.Fault{Route: "api", Status: 429, RetryAfter: time.Second}, 5 * time.Second, -1, ""},
			{"identity 503 then ok", smserver.Fault{Route: "identity", Status: 503}, 5 * time.Second, -1, ""},
			// Two resets: net/http replays an idempotent GET once by itself
			// when a reused keep-alive connection dies before answering, so
			// one reset alone never reaches the native backend's retry.
			{"resets then ok", smserver.Fault{Route: "api", Reset: true, Times: 2}, 5 * time.Second, -1, ""},
			{"5xx persistent", smserver.Fault{Route: "api", Status: 502, Times: 100}, 2 * time.Second, KindUpstream, "upstream answered 502"},
			{"429 persistent", smserver.Fault{Route: "api", Status: 429, Times: 100}, 2 * time.Second, KindUnavailable, "upstream answered 429"},
			{"tampered mac", smserver.Fault{Route: "api", TamperMAC: true}, 5 * time.Second, KindUpstream, "mac mismatch"},
			{"tampered login payload", smserver.Fault{Route: "identity", TamperMAC: true}, 5 * time.Second, KindUpstream, "mac mismatch"},
			{"not json", smserver.Fault{Route: "api", BadJSON: true}, 5 * time.Second, KindUpstream, "malformed response"},
			{"truncated then ok", smserver.Fault{Route: "api", Truncate: true}, 5 * time.Second, -1, ""},
			{"truncated persistent", smserver.Fault{Route: "api", Truncate: true, Times: 100}, time.Second, KindUnavailable, "connection failed"},
			{"server stopped mid-answer", smserver.Fault{Route: "api", Reset: true, Times: 100}, time.Second, KindUnavailable, "connection failed"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				w := newSMWorld(t)
				s := newSMFor(t, w, kind, SMConfig{})
				w.srv.InjectFault(tt.fault)
				ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
				defer cancel()
				start := time.Now()
				env, err := s.Fetch(ctx, w.tenantA())
				t.Logf("outcome after %v: kind %v, cause %v, retries %d", time.Since(start).Round(time.Millisecond), kindOrOK(err), causeOf(err), s.Stats().Retries)
				w.noLeak(t, err)
				switch tt.want {
				case -1:
					if err != nil {
						t.Fatalf("Fetch: %v, want success after a retry", err)
					}
					sameEnv(t, "after retry", env, smHard)
					if s.Stats().Retries == 0 {
						t.Errorf("retries = 0, want at least 1")
					}
				default:
					wantKind(t, err, tt.want)
					if got := causeOf(err); got != tt.cause {
						t.Errorf("cause = %q, want %q", got, tt.cause)
					}
				}
			})
		}
	})
}

func kindOrOK(err error) string {
	if err == nil {
		return "ok"
	}
	return KindOf(err).String()
}

func causeOf(err error) string {
	if fe, ok := err.(*Error); ok && fe.Err != nil {
		return fe.Err.Error()
	}
	return ""
}

func TestSMRealServerDown(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		s := newSMFor(t, w, kind, SMConfig{})
		w.srv.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := s.Fetch(ctx, w.tenantA())
		wantKind(t, err, KindUnavailable)
		w.noLeak(t, err)
		if !strings.Contains(err.Error(), "retry later") {
			t.Errorf("err = %q, want it to say retry later", err)
		}

		// Back up on the same port: the same backend works again.
		if err := w.srv.StartAt(strings.TrimPrefix(w.srv.URL(), "http://")); err != nil {
			t.Fatal(err)
		}
		env, err := s.Fetch(context.Background(), w.tenantA())
		if err != nil {
			t.Fatalf("Fetch after the upstream came back: %v", err)
		}
		sameEnv(t, "after restart", env, smHard)
	})
}

func TestSMRealSlowAnswer(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		s := newSMFor(t, w, kind, SMConfig{})
		if _, err := s.Fetch(context.Background(), w.tenantA()); err != nil {
			t.Fatal(err)
		}
		if err := w.srv.UpdateSecret(w.secretA, "009"); err != nil {
			t.Fatal(err)
		}
		w.srv.InjectFault(smserver.Fault{Route: "api", Delay: 3 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := s.Fetch(ctx, w.tenantA())
		t.Logf("timed out call returned after %v", time.Since(start).Round(time.Millisecond))
		wantKind(t, err, KindTimeout)
		w.noLeak(t, err)

		// The abandoned call finishes in the background; a later fetch waits
		// for it (calls on a client are serialized) and sees its result.
		w.srv.ResetStats()
		env, err := s.Fetch(context.Background(), w.tenantA())
		if err != nil {
			t.Fatalf("Fetch after the slow call: %v", err)
		}
		if env["ZEROS"] != "009" {
			t.Errorf("value after the slow call differs")
		}
		if st := w.srv.Stats(); st.Logins != 0 {
			t.Errorf("logins after the slow call = %d, want 0", st.Logins)
		}
	})
}

func TestSMRealRevokedToken(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		s := newSMFor(t, w, kind, SMConfig{})
		ctx := context.Background()
		if _, err := s.Fetch(ctx, w.tenantA()); err != nil {
			t.Fatal(err)
		}
		w.srv.RevokeAccessToken(w.tokAID)
		// The JWT is refused (401); the client is dropped.
		_, err := s.Fetch(ctx, w.tenantA())
		wantKind(t, err, KindCredentials)
		w.noLeak(t, err)
		if !strings.Contains(err.Error(), "tenants.acme.access_token_env") {
			t.Errorf("err = %q, want it to name where the token comes from", err)
		}
		// The next call logs in afresh and is refused at the identity endpoint.
		w.srv.ResetStats()
		_, err = s.Fetch(ctx, w.tenantA())
		wantKind(t, err, KindCredentials)
		w.noLeak(t, err)
		if st := w.srv.Stats(); st.Logins != 1 {
			t.Errorf("identity calls after revocation = %d, want 1 (a fresh login)", st.Logins)
		}
		if got := causeOf(err); got != "upstream answered 400 invalid_client" {
			t.Errorf("cause = %q, want the identity refusal", got)
		}
		// Tenant B is unaffected.
		if _, err := s.Fetch(ctx, w.tenantB()); err != nil {
			t.Errorf("Fetch B: %v", err)
		}
	})
}

func TestSMRealMalformedToken(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		s := newSMFor(t, w, kind, SMConfig{})
		ten := w.tenantA()
		ten.AccessToken = Secret(strings.Split(w.tokA, ":")[0]) // key part missing
		w.srv.ResetStats()
		_, err := s.Fetch(context.Background(), ten)
		wantKind(t, err, KindConfig)
		w.noLeak(t, err)
		if st := s.Stats(); st.LiveClients != 0 || st.Requests != 0 {
			t.Errorf("Stats = %+v, want no SDK client and no request", st)
		}
	})
}

func TestSMRealEvictionUsesStateFile(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		s := newSMFor(t, w, kind, SMConfig{MaxClients: 1})
		ctx := context.Background()
		for i := 0; i < 6; i++ {
			ten, want := w.tenantA(), smHard
			if i%2 == 1 {
				ten, want = w.tenantB(), map[string]string{"B_ONLY": "b-value-secret"}
			}
			env, err := s.Fetch(ctx, ten)
			if err != nil {
				t.Fatalf("Fetch %d (%s): %v", i, ten.Name, err)
			}
			sameEnv(t, ten.Name, env, want)
		}
		st, up := s.Stats(), w.srv.Stats()
		t.Logf("backend %+v; upstream logins %d", st, up.Logins)
		if st.LiveClients != 1 || st.Evictions != 5 {
			t.Errorf("live %d, evictions %d; want 1 and 5", st.LiveClients, st.Evictions)
		}
		if st.Logins != 6 {
			t.Errorf("SDK logins = %d, want 6 (one per re-created client)", st.Logins)
		}
		if up.Logins != 2 {
			t.Errorf("identity calls = %d, want 2: re-created clients restore their JWT from the state file", up.Logins)
		}
	})
}

func TestSMRealConcurrent(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		s := newSMFor(t, w, kind, SMConfig{MaxConcurrent: 2})
		var wg sync.WaitGroup
		for i := 0; i < 12; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				ten := w.tenantA()
				if i%3 == 0 {
					ten = w.tenantB()
				}
				if _, err := s.Fetch(context.Background(), ten); err != nil {
					t.Errorf("Fetch %s: %v", ten.Name, err)
				}
			}(i)
		}
		wg.Wait()
		if st := w.srv.Stats(); st.Logins != 2 {
			t.Errorf("identity calls = %d, want 2 (one per token)", st.Logins)
		}
	})
}

func TestSMRealUpsert(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		writer := w.srv.AddMachineAccount(w.org)
		target := w.srv.AddProject(w.org, "target")
		w.srv.AddSecret(w.org, target, "KEEP", "same", "")
		w.srv.AddSecret(w.org, target, "OLD", "gone soon", "")
		w.srv.AddSecret(w.org, target, "CHANGE", "before", "kept note")
		w.srv.GrantWrite(writer, target)
		tok, _ := w.srv.NewAccessToken(writer)
		s := newSMFor(t, w, kind, SMConfig{})
		ctx := context.Background()

		env := Env{"KEEP": "same", "CHANGE": "after\nline", "NEW": "ünïcødé 😀", "QUOTED": `"x" $Y \z`}
		w.srv.ResetStats()
		created, updated, unchanged, deleted, err := s.Upsert(ctx, Secret(tok), w.org, target, env, true)
		if err != nil {
			t.Fatalf("Upsert: %v", err)
		}
		check := func(name string, got, want []string) {
			t.Helper()
			if !slices.Equal(got, want) {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
		check("created", created, []string{"NEW", "QUOTED"})
		check("updated", updated, []string{"CHANGE"})
		check("unchanged", unchanged, []string{"KEEP"})
		check("deleted", deleted, []string{"OLD"})
		if st := w.srv.Stats(); st.Writes != 3 {
			t.Errorf("upstream writes = %d, want 3", st.Writes)
		}
		got := w.srv.SecretsOf(w.org, target)
		sameEnv(t, "upstream after upsert", Env(got), env)

		// Again: nothing differs, nothing is written.
		w.srv.ResetStats()
		created, updated, unchanged, deleted, err = s.Upsert(ctx, Secret(tok), w.org, target, env, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(created)+len(updated)+len(deleted) != 0 || w.srv.Stats().Writes != 0 {
			t.Errorf("second upsert wrote: created %v updated %v deleted %v", created, updated, deleted)
		}
		keys := env.Keys()
		sort.Strings(unchanged)
		check("unchanged again", unchanged, keys)

		// The read-only account cannot write.
		_, _, _, _, err = s.Upsert(ctx, Secret(w.tokA), w.org, w.projA, Env{"ZEROS": "1"}, false)
		if err == nil {
			t.Fatalf("Upsert with a read-only token succeeded")
		}
		w.noLeak(t, err)
		wantKind(t, err, KindCredentials)
		if !strings.Contains(err.Error(), "access to the project") {
			t.Errorf("err = %q, want it to say the account lacks access", err)
		}
		if st := s.Stats(); st.Dropped != 0 {
			t.Errorf("dropped = %d after a 403, want 0 (the token itself is fine)", st.Dropped)
		}
	})
}

func TestSMRealLatency(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		w := newSMWorld(t)
		const n = 20
		median := func(d []time.Duration) time.Duration {
			slices.Sort(d)
			return d[len(d)/2]
		}
		var cold, warm, coldState []time.Duration
		for i := 0; i < n+1; i++ {
			dir := filepath.Join(t.TempDir(), "sm")
			s := newSMFor(t, w, kind, SMConfig{StateDir: dir})
			start := time.Now()
			if _, err := s.Fetch(context.Background(), w.tenantA()); err != nil {
				t.Fatal(err)
			}
			d := time.Since(start)
			s.Close()
			// Same state dir, new backend: login from the state file + sync.
			s2 := newSMFor(t, w, kind, SMConfig{StateDir: dir})
			start = time.Now()
			if _, err := s2.Fetch(context.Background(), w.tenantA()); err != nil {
				t.Fatal(err)
			}
			d2 := time.Since(start)
			s2.Close()
			if i > 0 { // the first run warms up
				cold = append(cold, d)
				coldState = append(coldState, d2)
			}
		}
		// Warm: an unchanged tenant (hasChanges false: one small request), and
		// with the default skew margin right after a change (the full set again).
		var warmFull []time.Duration
		for _, skew := range []time.Duration{0, smSyncSkew} {
			s := newSMFor(t, w, kind, SMConfig{})
			s.syncSkew = skew
			for i := 0; i < n+1; i++ {
				start := time.Now()
				if _, err := s.Fetch(context.Background(), w.tenantA()); err != nil {
					t.Fatal(err)
				}
				if i > 0 && skew == 0 {
					warm = append(warm, time.Since(start))
				} else if i > 0 {
					warmFull = append(warmFull, time.Since(start))
				}
			}
		}
		t.Logf("Fetch latency, median of %d: cold (new client, identity login, full sync) %v; cold with state file (no identity call) %v; "+
			"warm unchanged (one sync, hasChanges false) %v; warm within the skew margin after a change (one full sync) %v",
			n, median(cold), median(coldState), median(warm), median(warmFull))
	})
}

// ---- the native client's own parts ----

// The Rust SDK's access-token test vector (protocol §3).
const (
	vectorToken  = "0.ec2c1d46-6a4b-4751-a310-af9601317f2d.C2IgxjjLF7qSshsbwe8JGcbM075YXw:X8vbvA0bduihIDe/qrzIQQ=="
	vectorKeyB64 = "H9/oIRLtL9nGCQOVDjSMoEbJsjWXSOCb3qeyDt6ckzS3FhyboEDWyTP/CQfbIszNmAVg2ExFganG1FVFGXO/Jg=="
)

func TestNativeKeyDerivationVector(t *testing.T) {
	tok, err := parseNativeToken(vectorToken)
	if err != nil {
		t.Fatalf("parseNativeToken: %v", err)
	}
	if tok.id != "ec2c1d46-6a4b-4751-a310-af9601317f2d" || string(tok.secret) != "C2IgxjjLF7qSshsbwe8JGcbM075YXw" {
		t.Errorf("parsed id/secret differ from the token's parts")
	}
	k, err := bwcrypto.AccessTokenKey(tok.key16)
	if err != nil {
		t.Fatal(err)
	}
	if got := base64.StdEncoding.EncodeToString(k.Bytes()); got != vectorKeyB64 {
		t.Errorf("derived key differs from the published vector")
	}
}

func TestParseNativeToken(t *testing.T) {
	good := testToken(3)
	tests := []struct {
		name, tok string
		ok        bool
	}{
		{"valid", good, true},
		{"unpadded key", strings.TrimRight(good, "="), true},
		{"vector", vectorToken, true},
		{"no key", strings.Split(good, ":")[0], false},
		{"version 1", "1" + good[1:], false},
		{"key 17 bytes", strings.Split(good, ":")[0] + ":" + base64.StdEncoding.EncodeToString(make([]byte, 17)), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseNativeToken(tt.tok)
			if got := err == nil; got != tt.ok {
				t.Fatalf("parseNativeToken ok = %v (%v), want %v", got, err, tt.ok)
			}
			if err != nil && (!errors.Is(err, errNativeBadToken) || strings.Contains(err.Error(), "SecretPart")) {
				t.Errorf("err = %q, want errNativeBadToken without token content", err)
			}
		})
	}
}

func FuzzParseNativeToken(f *testing.F) {
	f.Add(vectorToken)
	f.Add(testToken(9))
	f.Add("0.x.y:")
	f.Fuzz(func(t *testing.T, tok string) {
		got, err := parseNativeToken(tok)
		if err != nil {
			if len(tok) >= 8 && strings.Contains(err.Error(), tok) {
				t.Fatalf("error repeats the token")
			}
			return
		}
		if len(got.key16) != 16 || len(got.secret) == 0 || !isUUID(got.id) {
			t.Fatalf("accepted token with key %d bytes, secret %d bytes, id %q", len(got.key16), len(got.secret), got.id)
		}
	})
}

// makeJWT returns an unsigned JWT with the given claims JSON.
func makeJWT(claims string) string {
	return "eyJhbGciOiJIUzI1NiJ9." + base64.RawURLEncoding.EncodeToString([]byte(claims)) + ".c2ln"
}

// padded returns base64url of claims, with padding (spaces are added to the
// JSON until the encoding needs some).
func padded(claims string) string {
	for len(claims)%3 == 0 {
		claims += " "
	}
	return base64.URLEncoding.EncodeToString([]byte(claims))
}

func TestParseJWT(t *testing.T) {
	const org = `"organization":"6f0a1c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"`
	tests := []struct {
		name, tok string
		ok        bool
	}{
		{"valid", makeJWT(`{"exp":2000000000,"sub":"x","scope":["api.secrets"],` + org + `}`), true},
		{"extra claims", makeJWT(`{"exp":2000000000,"sub":"x","scope":[],"nbf":1,"email":"a@b",` + org + `}`), true},
		{"scope string", makeJWT(`{"exp":2000000000,"sub":"x","scope":"api.secrets",` + org + `}`), false},
		{"no sub", makeJWT(`{"exp":2000000000,"scope":[],` + org + `}`), false},
		{"no org", makeJWT(`{"exp":2000000000,"sub":"x","scope":[]}`), false},
		{"org not uuid", makeJWT(`{"exp":2000000000,"sub":"x","scope":[],"organization":"acme"}`), false},
		{"exp string", makeJWT(`{"exp":"2000000000","sub":"x","scope":[],` + org + `}`), false},
		{"exp negative", makeJWT(`{"exp":-1,"sub":"x","scope":[],` + org + `}`), false},
		{"padded payload", "a." + padded(`{"exp":2000000000,"sub":"x","scope":[],`+org+`}`) + ".c", false},
		{"two parts", "a.b", false},
		{"not json", "a." + base64.RawURLEncoding.EncodeToString([]byte("nope")) + ".c", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exp, err := parseJWT(tt.tok)
			if got := err == nil; got != tt.ok {
				t.Fatalf("parseJWT ok = %v (%v), want %v", got, err, tt.ok)
			}
			if tt.ok && exp.Unix() != 2000000000 {
				t.Errorf("exp = %v, want 2000000000", exp.Unix())
			}
		})
	}
}

func FuzzParseJWT(f *testing.F) {
	f.Add(makeJWT(`{"exp":2000000000,"sub":"x","scope":["api.secrets"],"organization":"6f0a1c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"}`))
	f.Add("a.b.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, tok string) {
		exp, err := parseJWT(tok)
		if err != nil {
			if !errors.Is(err, errNativeMalformed) {
				t.Fatalf("err = %v, want errNativeMalformed", err)
			}
			return
		}
		if exp.Unix() < 0 || exp.Unix() > 1<<40 {
			t.Fatalf("accepted exp %d", exp.Unix())
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"2", 2 * time.Second},
		{" 7 ", 7 * time.Second},
		{"0", time.Millisecond},
		{"99999", smMaxRetryAfter},
		{"-3", 0},
		{"1.5", 0},
		{"soon", 0},
		{now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), time.Millisecond},
		{now.Add(time.Hour).Format(http.TimeFormat), smMaxRetryAfter},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	f.Add("3")
	f.Add("Wed, 21 Oct 2015 07:28:00 GMT")
	f.Fuzz(func(t *testing.T, v string) {
		if d := parseRetryAfter(v, time.Now()); d < 0 || d > smMaxRetryAfter {
			t.Fatalf("parseRetryAfter(%q) = %v, out of range", v, d)
		}
	})
}

// newNative returns a native client on w's server, logged in with tok.
func newNative(t *testing.T, w *smWorld, tok, stateFile string) *nativeClient {
	t.Helper()
	c, err := smNewNativeClient(w.srv.APIURL(), w.srv.IdentityURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Login(tok, stateFile); err != nil {
		t.Fatalf("Login: %v", err)
	}
	return c.(*nativeClient)
}

// The native client sees the Retry-After header and the backend honours it:
// a wait longer than the caller's deadline is not started, where a plain
// backoff would have retried (and succeeded) in time.
func TestNativeHonoursRetryAfter(t *testing.T) {
	w := newSMWorld(t)
	c := newNative(t, w, w.tokA, "")
	w.srv.InjectFault(smserver.Fault{Route: "api", Status: 429, RetryAfter: 2 * time.Second})
	_, err := c.List(w.org)
	f := classifySDKError(err)
	if f.class != classRateLimited || f.retryAfter != 2*time.Second {
		t.Fatalf("classified 429 = class %v, retryAfter %v; want rate limited, 2s", f.class, f.retryAfter)
	}

	for _, tt := range []struct {
		name       string
		retryAfter time.Duration
		wantOK     bool
	}{
		{"no header: backoff fits the deadline", 0, true},
		{"retry-after beyond the deadline", 2 * time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newSMFor(t, w, SMClientNative, SMConfig{})
			if _, err := s.Fetch(context.Background(), w.tenantA()); err != nil {
				t.Fatal(err)
			}
			w.srv.InjectFault(smserver.Fault{Route: "api", Status: 429, RetryAfter: tt.retryAfter})
			defer w.srv.ClearFaults()
			ctx, cancel := context.WithTimeout(context.Background(), 900*time.Millisecond)
			defer cancel()
			_, err := s.Fetch(ctx, w.tenantA())
			if tt.wantOK {
				if err != nil {
					t.Fatalf("Fetch: %v, want success after a backoff", err)
				}
				return
			}
			wantKind(t, err, KindUnavailable)
			if got := causeOf(err); got != "upstream answered 429" {
				t.Errorf("cause = %q, want the 429", got)
			}
			if r := s.Stats().Retries; r != 0 {
				t.Errorf("retries = %d, want 0: the asked wait does not fit the deadline", r)
			}
		})
	}
}

func TestNativeStateFile(t *testing.T) {
	w := newSMWorld(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "sm-x.state")
	c := newNative(t, w, w.tokA, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("state file not written: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(raw), "2.") || strings.Contains(string(raw), c.jwt) {
		t.Errorf("state file is not a type-2 EncString hiding the JWT")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".sm-state-*")); len(left) != 0 {
		t.Errorf("temp files left behind: %v", left)
	}

	logins := func(f func()) int64 {
		t.Helper()
		w.srv.ResetStats()
		f()
		return w.srv.Stats().Logins
	}
	// A valid file: no identity call, and the session works.
	if n := logins(func() {
		c2 := newNative(t, w, w.tokA, path)
		if _, err := c2.List(w.org); err != nil {
			t.Errorf("List after restoring the state: %v", err)
		}
	}); n != 0 {
		t.Errorf("identity calls with a valid state file = %d, want 0", n)
	}
	// Another token's key cannot read it: a normal login follows.
	if n := logins(func() { newNative(t, w, w.tokB, path) }); n != 1 {
		t.Errorf("identity calls with another token's state file = %d, want 1", n)
	}
	// Corrupt, empty, or expired files are ignored; the login rewrites them.
	expired := &nativeClient{atKey: c.atKey, orgKey: c.orgKey, stateFile: path,
		jwt: makeJWT(`{"exp":1000,"sub":"x","scope":[],"organization":"` + w.org + `"}`)}
	for name, prep := range map[string]func(){
		"garbage": func() { os.WriteFile(path, []byte("not an encstring"), 0o600) },
		"empty":   func() { os.WriteFile(path, nil, 0o600) },
		"expired": func() { expired.writeState() },
	} {
		prep()
		if n := logins(func() { newNative(t, w, w.tokA, path) }); n != 1 {
			t.Errorf("%s state file: identity calls = %d, want 1", name, n)
		}
		if n := logins(func() { newNative(t, w, w.tokA, path) }); n != 0 {
			t.Errorf("%s state file: not rewritten by the login (identity calls after = %d)", name, n)
		}
	}
}

func TestNativeRenewal(t *testing.T) {
	w := newSMWorld(t)
	c := newNative(t, w, w.tokA, "")
	w.srv.ResetStats()
	for i := 0; i < 3; i++ {
		if _, err := c.List(w.org); err != nil {
			t.Fatal(err)
		}
	}
	if n := w.srv.Stats().Logins; n != 0 {
		t.Errorf("identity calls with a fresh JWT = %d, want 0", n)
	}
	// 56 minutes later the 1h JWT is within the 5-minute margin: one renewal.
	later := time.Now().Add(56 * time.Minute)
	c.now = func() time.Time { return later }
	for i := 0; i < 3; i++ {
		if _, err := c.List(w.org); err != nil {
			t.Fatal(err)
		}
	}
	if n := w.srv.Stats().Logins; n != 1 {
		t.Errorf("identity calls near expiry = %d, want 1 renewal", n)
	}
	// A revoked token fails its renewal like a login.
	c.now = func() time.Time { return later.Add(time.Hour) }
	w.srv.RevokeAccessToken(w.tokAID)
	_, err := c.List(w.org)
	if f := classifySDKError(err); f.class != classCredentials || f.cause != "upstream answered 400 invalid_client" {
		t.Errorf("renewal with a revoked token: class %v cause %q, want credentials / 400 invalid_client", f.class, f.cause)
	}
}

// fakeIdentity is an httptest upstream for cases smserver cannot produce.
func fakeUpstreamServer(t *testing.T, h http.HandlerFunc) (api, identity string) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL + "/api", srv.URL + "/identity"
}

// loggedInNative returns a native client that believes it is logged in to
// api (for API-side tests against a fake server).
func loggedInNative(t *testing.T, api, identity string) *nativeClient {
	t.Helper()
	c, err := smNewNativeClient(api, identity)
	if err != nil {
		t.Fatal(err)
	}
	nc := c.(*nativeClient)
	nc.jwt, nc.orgKey, nc.expiresOn = "header.payload.sig", bwcrypto.NewKey(), time.Now().Add(time.Hour)
	t.Cleanup(nc.Close)
	return nc
}

func TestNativeErrorsCarryNoBody(t *testing.T) {
	const marker = "MARKER-tok-0.abc.def:ghi"
	tests := []struct {
		name   string
		status int
		body   string
		login  bool
		class  smClass
		cause  string
	}{
		{"identity invalid_client", 400, `{"error":"invalid_client","detail":"` + marker + `"}`, true, classCredentials, "upstream answered 400 invalid_client"},
		{"identity unknown error code", 400, `{"error":"` + marker + `"}`, true, classClient, "upstream answered 400"},
		{"identity error model", 400, `{"error":"invalid_grant","error_description":"` + marker + `","ErrorModel":{"Message":"` + marker + `"}}`, true, classCredentials, "identity refused the login"},
		{"identity 200 wrong shape", 200, `{"access_token":"` + marker + `"}`, true, classMalformed, "unexpected identity response shape"},
		{"identity 200 not json", 200, marker, true, classMalformed, "unexpected identity response shape"},
		{"api 500", 500, marker, false, classServer, "upstream answered 500"},
		{"api 200 not json", 200, "<html>" + marker, false, classMalformed, "malformed response"},
		{"api 200 missing field", 200, `{"hasChanges":true,"secrets":{"data":[{"id":"` + marker + `"}]}}`, false, classMalformed, "malformed response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api, identity := fakeUpstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			var err error
			if tt.login {
				c, _ := smNewNativeClient(api, identity)
				err = c.Login(testToken(1), "")
			} else {
				_, _, err = loggedInNative(t, api, identity).Sync(testOrg, nil)
			}
			if err == nil {
				t.Fatal("err = nil")
			}
			if strings.Contains(err.Error(), "MARKER") {
				t.Errorf("error text holds the response body: %q", err)
			}
			f := classifySDKError(err)
			if f.class != tt.class || f.cause != tt.cause {
				t.Errorf("classified as %v %q, want %v %q", f.class, f.cause, tt.class, tt.cause)
			}
		})
	}
}

func TestNativeNoRedirects(t *testing.T) {
	var followed atomic.Int32
	api, identity := fakeUpstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			followed.Add(1)
			return
		}
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	})
	c, _ := smNewNativeClient(api, identity)
	err := c.Login(testToken(1), "")
	if f := classifySDKError(err); f.class != classClient || f.status != http.StatusTemporaryRedirect {
		t.Errorf("redirected login: class %v status %d, want a client error 307", f.class, f.status)
	}
	if followed.Load() != 0 {
		t.Errorf("the redirect was followed: the client secret would go elsewhere")
	}
}

func TestNativeBoundedResponse(t *testing.T) {
	api, identity := fakeUpstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"secrets":[`)
		chunk := strings.Repeat(" ", 1<<20)
		for i := 0; i <= nativeMaxResponse>>20; i++ {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
		io.WriteString(w, `]}`)
	})
	_, err := loggedInNative(t, api, identity).List(testOrg)
	if !errors.Is(err, errNativeMalformed) {
		t.Errorf("List of a %d MiB answer: err = %v, want errNativeMalformed", nativeMaxResponse>>20+1, err)
	}
}

func TestNativeInputLimits(t *testing.T) {
	var requests atomic.Int32
	api, identity := fakeUpstreamServer(t, func(w http.ResponseWriter, r *http.Request) { requests.Add(1) })
	c := loggedInNative(t, api, identity)
	tests := []struct {
		name, key, value, note string
	}{
		{"empty key", "", "v", ""},
		{"blank key", "   ", "v", ""},
		{"long key", strings.Repeat("k", smMaxKeyChars+1), "v", ""},
		{"empty value", "K", "", ""},
		{"long value", "K", strings.Repeat("ü", smMaxValueChars+1), ""},
		{"blank note", "K", "v", " \t"},
		{"long note", "K", "v", strings.Repeat("n", nativeMaxNoteChars+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Create(testOrg, testProjectA, tt.key, tt.value, tt.note)
			if f := classifySDKError(err); f.class != classInput {
				t.Errorf("Create: %v, want an input error", err)
			}
		})
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("requests sent for refused input = %d, want 0", n)
	}
	// At the limits it is sent (the fake answers an empty 200: malformed).
	_, err := c.Create(testOrg, testProjectA, strings.Repeat("k", smMaxKeyChars), strings.Repeat("ü", smMaxValueChars), "")
	if !errors.Is(err, errNativeMalformed) || requests.Load() != 1 {
		t.Errorf("Create at the limits: %v after %d requests, want it sent", err, requests.Load())
	}
}

func TestNativeCreateTrimsKeyAndNote(t *testing.T) {
	w := newSMWorld(t)
	writer := w.srv.AddMachineAccount(w.org)
	w.srv.GrantWrite(writer, w.projB)
	tok, _ := w.srv.NewAccessToken(writer)
	c := newNative(t, w, tok, "")
	got, err := c.Create(w.org, w.projB, "  SPACED \n", " value kept ", "  note  ")
	if err != nil {
		t.Fatal(err)
	}
	if got.Key != "SPACED" || got.Value != " value kept " || got.Note != "note" || got.ProjectID != w.projB {
		t.Errorf("created %q/%q/%q in %s; want key and note trimmed, value exact, project B", got.Key, got.Value, got.Note, got.ProjectID)
	}
}

func TestNativeCloseWipesKeys(t *testing.T) {
	w := newSMWorld(t)
	c := newNative(t, w, w.tokA, "")
	org, at, secret := c.orgKey, c.atKey, c.clientSecret
	c.Close()
	var zero [32]byte
	if org.Enc != zero || org.Mac != zero || at.Enc != zero || at.Mac != zero {
		t.Errorf("key material left after Close")
	}
	for _, b := range secret {
		if b != 0 {
			t.Fatalf("client secret left after Close")
		}
	}
	if _, err := c.List(w.org); !errors.Is(err, errNativeNotLoggedIn) {
		t.Errorf("List after Close: %v, want errNativeNotLoggedIn", err)
	}
}

func TestWipingBody(t *testing.T) {
	buf := []byte("key=value&client_secret=s3cr3t")
	b := &wipingBody{buf: buf}
	got, _ := io.ReadAll(b)
	if string(got) != "key=value&client_secret=s3cr3t" {
		t.Errorf("read %q", got)
	}
	b.Close()
	for _, c := range buf {
		if c != 0 {
			t.Fatalf("buffer not cleared on Close")
		}
	}
	if n, err := b.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Errorf("Read after Close = %d, %v; want 0, EOF", n, err)
	}
}

func TestAppendQueryEscaped(t *testing.T) {
	for _, s := range []string{"C2IgxjjLF7qSshsbwe8JGcbM075YXw", "a b+c&d=e/ü~._-", ""} {
		if got, want := string(appendQueryEscaped(nil, []byte(s))), url.QueryEscape(s); got != want {
			t.Errorf("appendQueryEscaped(%q) = %q, want %q", s, got, want)
		}
	}
}

func TestNewSMClientSelection(t *testing.T) {
	base := SMConfig{APIURL: "http://127.0.0.1:1/api", IdentityURL: "http://127.0.0.1:1/identity", Logger: quietLogger()}
	tests := []struct {
		client, want, wantErr string
	}{
		{"", SMClientDefault(), ""},
		{SMClientNative, SMClientNative, ""},
		{"rust", "", `"rust" is unknown`},
	}
	if SMSupported() {
		tests = append(tests, struct{ client, want, wantErr string }{SMClientSDK, SMClientSDK, ""})
	} else {
		tests = append(tests, struct{ client, want, wantErr string }{SMClientSDK, "", "CGO_ENABLED=1"})
		if SMClientDefault() != SMClientNative {
			t.Errorf("SMClientDefault() = %q in a build without the SDK, want native", SMClientDefault())
		}
	}
	for _, tt := range tests {
		t.Run(tt.client, func(t *testing.T) {
			cfg := base
			cfg.Client = tt.client
			s, err := NewSM(cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewSM(%q) err = %v, want one containing %q", tt.client, err, tt.wantErr)
				}
				if tt.client == SMClientSDK && !strings.Contains(err.Error(), `"native"`) {
					t.Errorf("err = %q, want it to suggest the native client", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewSM(%q): %v", tt.client, err)
			}
			defer s.Close()
			if s.Client() != tt.want {
				t.Errorf("Client() = %q, want %q", s.Client(), tt.want)
			}
		})
	}
}

func FuzzParseState(f *testing.F) {
	key := base64.StdEncoding.EncodeToString(make([]byte, 64))
	jwt := makeJWT(`{"exp":2000000000,"sub":"x","scope":[],"organization":"6f0a1c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"}`)
	f.Add([]byte(`{"version":1,"token":"` + jwt + `","encryption_key":"` + key + `"}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"token":"a.b.c","encryption_key":"AAAA"}`))
	now := time.Unix(1900000000, 0)
	f.Fuzz(func(t *testing.T, pt []byte) {
		tok, exp, k, ok := parseState(pt, now)
		if !ok {
			if tok != "" || k != nil {
				t.Fatalf("refused state returned a session")
			}
			return
		}
		if k == nil || !exp.After(now) {
			t.Fatalf("accepted state without a key or with an expired JWT")
		}
		if _, err := parseJWT(tok); err != nil {
			t.Fatalf("accepted state with a bad JWT")
		}
	})
}
