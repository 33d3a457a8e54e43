//go:build cgo && (linux || darwin) && (amd64 || arm64)

package fetch

// Tests of the Secrets Manager backend with the real SDK against the in-repo
// upstream (internal/upstream/smserver) on 127.0.0.1.

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

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

// newRealSM returns a backend with the real SDK on w's server.
func newRealSM(t *testing.T, w *smWorld, cfg SMConfig) *SM {
	t.Helper()
	cfg.APIURL, cfg.IdentityURL = w.srv.APIURL(), w.srv.IdentityURL()
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
		t.Fatalf("NewSM: %v", err)
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
	w := newSMWorld(t)
	s := newRealSM(t, w, SMConfig{})
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
	w := newSMWorld(t)
	s := newRealSM(t, w, SMConfig{})
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
}

func TestSMRealFaults(t *testing.T) {
	tests := []struct {
		name    string
		fault   smserver.Fault
		timeout time.Duration
		want    Kind // -1: success
		cause   string
	}{
		{"429 with retry-after then ok", smserver.Fault{Route: "api", Status: 429, RetryAfter: time.Second}, 5 * time.Second, -1, ""},
		{"identity 503 then ok", smserver.Fault{Route: "identity", Status: 503}, 5 * time.Second, -1, ""},
		{"reset then ok", smserver.Fault{Route: "api", Reset: true}, 5 * time.Second, -1, ""},
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
			s := newRealSM(t, w, SMConfig{})
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
	w := newSMWorld(t)
	s := newRealSM(t, w, SMConfig{})
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
}

func TestSMRealSlowAnswer(t *testing.T) {
	w := newSMWorld(t)
	s := newRealSM(t, w, SMConfig{})
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
}

func TestSMRealRevokedToken(t *testing.T) {
	w := newSMWorld(t)
	s := newRealSM(t, w, SMConfig{})
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
}

func TestSMRealMalformedToken(t *testing.T) {
	w := newSMWorld(t)
	s := newRealSM(t, w, SMConfig{})
	ten := w.tenantA()
	ten.AccessToken = Secret(strings.Split(w.tokA, ":")[0]) // key part missing
	w.srv.ResetStats()
	_, err := s.Fetch(context.Background(), ten)
	wantKind(t, err, KindConfig)
	w.noLeak(t, err)
	if st := s.Stats(); st.LiveClients != 0 || st.Requests != 0 {
		t.Errorf("Stats = %+v, want no SDK client and no request", st)
	}
}

func TestSMRealEvictionUsesStateFile(t *testing.T) {
	w := newSMWorld(t)
	s := newRealSM(t, w, SMConfig{MaxClients: 1})
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
}

func TestSMRealConcurrent(t *testing.T) {
	w := newSMWorld(t)
	s := newRealSM(t, w, SMConfig{MaxConcurrent: 2})
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
}

func TestSMRealUpsert(t *testing.T) {
	w := newSMWorld(t)
	writer := w.srv.AddMachineAccount(w.org)
	target := w.srv.AddProject(w.org, "target")
	w.srv.AddSecret(w.org, target, "KEEP", "same", "")
	w.srv.AddSecret(w.org, target, "OLD", "gone soon", "")
	w.srv.AddSecret(w.org, target, "CHANGE", "before", "kept note")
	w.srv.GrantWrite(writer, target)
	tok, _ := w.srv.NewAccessToken(writer)
	s := newRealSM(t, w, SMConfig{})
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
}

func TestSMRealLatency(t *testing.T) {
	w := newSMWorld(t)
	const n = 20
	median := func(d []time.Duration) time.Duration {
		slices.Sort(d)
		return d[len(d)/2]
	}
	var cold, warm, coldState []time.Duration
	for i := 0; i < n+1; i++ {
		dir := filepath.Join(t.TempDir(), "sm")
		s := newRealSM(t, w, SMConfig{StateDir: dir})
		start := time.Now()
		if _, err := s.Fetch(context.Background(), w.tenantA()); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		s.Close()
		// Same state dir, new backend: login from the state file + sync.
		s2 := newRealSM(t, w, SMConfig{StateDir: dir})
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
		s := newRealSM(t, w, SMConfig{})
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
}
