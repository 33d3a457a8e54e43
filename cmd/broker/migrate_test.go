package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/hostd/broker/internal/testutil"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/server"
	"github.com/hostd/broker/internal/upstream/smserver"
	"github.com/hostd/broker/internal/upstream/vwserver"
)

// migrateHard are the fallback tenant's values: every one must reach
// Secrets Manager and come back byte for byte.
var migrateHard = map[string]string{
	"MULTILINE": "line1\nline2\r\n",
	"QUOTES":    `he said "hi" and 'bye'`,
	"DOLLARS":   "$HOME ${PATH} `whoami` $(id) !bang",
	"BACKSLASH": `back\slash\n\\ trailing\`,
	"ZIP":       "007",
	"UNICODE":   "ünïcødé 😀 ключ 日本語",
	"SPACES":    "  padded  \t",
	"NOTE_KEY":  "a secure note\nwith lines\n",
}

// useRealBW points BROKER_BW at the real bw CLI.
func useRealBW(t *testing.T) {
	if p := os.Getenv("BROKER_BW"); p != "" {
		return
	}
	p := filepath.Join(testutil.ModuleRootT(t), "tools", "bw", "node_modules", ".bin", "bw")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("the real bw CLI is not at %s: run make tools (or set BROKER_BW)", p)
	}
	t.Setenv("BROKER_BW", p)
}

// migrateWorld is an SM tenant (acme) and a fallback tenant (globex) on the
// in-repo upstreams, with the files a broker needs.
type migrateWorld struct {
	dir, policy, envFile, stateDir string
	sm                             *smserver.Server
	vw                             *vwserver.Server
	smOrg, acmeProject, project    string // project: globex's target
	migTok                         string
	secrets                        []string // every credential, for leak scans
	baseEnv                        string   // provider env file without the BW_ lines
}

func newMigrateWorld(t *testing.T) *migrateWorld {
	t.Helper()
	useRealBW(t)
	w := &migrateWorld{dir: t.TempDir()}
	if err := os.Chmod(w.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w.policy = filepath.Join(w.dir, "policy.json")
	w.envFile = filepath.Join(w.dir, "provider.env")
	w.stateDir = filepath.Join(w.dir, "state")
	if err := os.Mkdir(w.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}

	w.sm = smserver.New(smserver.Options{})
	if err := w.sm.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.sm.Close)
	w.smOrg = w.sm.AddOrganization("Org")
	w.acmeProject = w.sm.AddProject(w.smOrg, "acme")
	w.sm.AddSecret(w.smOrg, w.acmeProject, "ACME_DB", "postgres://acme", "")
	acme := w.sm.AddMachineAccount(w.smOrg)
	w.sm.GrantRead(acme, w.acmeProject)
	acmeTok, _ := w.sm.NewAccessToken(acme)
	w.project = w.sm.AddProject(w.smOrg, "globex")
	mig := w.sm.AddMachineAccount(w.smOrg)
	w.sm.GrantWrite(mig, w.project)
	w.migTok, _ = w.sm.NewAccessToken(mig)
	reader := w.sm.AddMachineAccount(w.smOrg)
	w.sm.GrantRead(reader, w.project)
	globexTok, _ := w.sm.NewAccessToken(reader)

	vw, err := vwserver.New(vwserver.Options{KDFIterations: vwserver.MinKDFIterations})
	if err != nil {
		t.Fatal(err)
	}
	if err := vw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vw.Close)
	w.vw = vw
	ca := filepath.Join(w.dir, "ca.pem")
	if err := vw.WriteCA(ca); err != nil {
		t.Fatal(err)
	}
	const password = "master 🔑 password"
	u := vw.AddUser("ops@globex.example", password)
	vorg := vw.AddOrganization("Globex")
	vw.AddMember(vorg, u.ID, 2)
	coll := vw.AddCollection(vorg, "globex")
	for k, v := range migrateHard {
		if k == "NOTE_KEY" {
			vw.AddNote(vorg, coll, k, v)
		} else {
			vw.AddLogin(vorg, coll, k, "svc", v)
		}
	}

	policy := fmt.Sprintf(`{
  "version": 1,
  "upstream": {
    "sm": {"api_url": %q, "identity_url": %q},
    "bw": {"server_url": %q, "ca_file": %q, "mode": "serve"}
  },
  "cache": {"ttl": "60s", "max_tenants": 64, "stale_if_error": "0s"},
  "tenants": {
    "acme": {"backend": "sm", "organization_id": %q, "project_ids": [%q], "access_token_env": "BROKER_SM_TOKEN_ACME"},
    "globex": {"backend": "bwcli", "organization_id": %q, "collection": "globex"}
  }
}
`, w.sm.APIURL(), w.sm.IdentityURL(), vw.URL(), ca, w.smOrg, w.acmeProject, vorg)
	if err := os.WriteFile(w.policy, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	w.baseEnv = fmt.Sprintf("BROKER_SM_TOKEN_ACME=%q\nBROKER_SM_TOKEN_GLOBEX=%q\n", acmeTok, globexTok)
	w.writeEnv(t, w.baseEnv+fmt.Sprintf("BW_CLIENTID=%q\nBW_CLIENTSECRET=%q\nBW_PASSWORD=%q\n", u.ClientID, u.ClientSecret, password))
	w.secrets = []string{acmeTok, globexTok, w.migTok, u.ClientSecret, password}
	for _, v := range migrateHard {
		w.secrets = append(w.secrets, v)
	}
	// The migration token comes from the environment: it need not rest in
	// the env file.
	t.Setenv(envMigrationToken, w.migTok)
	return w
}

func (w *migrateWorld) writeEnv(t *testing.T, content string) {
	t.Helper()
	tmp := w.envFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, w.envFile); err != nil {
		t.Fatal(err)
	}
}

func (w *migrateWorld) files() []string {
	return []string{"--policy", w.policy, "--env-file", w.envFile, "--state-dir", w.stateDir}
}

// cliResult is one in-process run of the CLI.
type cliResult struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// runCLI runs the broker CLI in-process and checks that its output holds no
// secret.
func (w *migrateWorld) runCLI(t *testing.T, args ...string) cliResult {
	t.Helper()
	var out, errb testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	code := run(ctx, args, strings.NewReader(""), &out, &errb)
	r := cliResult{code: code, stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	w.checkNoSecret(t, strings.Join(args[:1], " "), r.stdout+r.stderr)
	t.Logf("broker %s: exit %d in %v", args[0], code, r.took.Round(time.Millisecond))
	return r
}

func (w *migrateWorld) checkNoSecret(t *testing.T, what, s string) {
	t.Helper()
	for _, v := range w.secrets {
		if len(v) >= 4 && strings.Contains(s, v) {
			t.Errorf("%s output carries a secret value or credential", what)
		}
	}
}

func TestMigrateEndToEnd(t *testing.T) {
	w := newMigrateWorld(t)

	// 1. Status before: one of two tenants uses the master password.
	r := w.runCLI(t, append([]string{"status", "--json"}, w.files()...)...)
	if r.code != 0 {
		t.Fatalf("status before: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	rep := parseStatus(t, r.stdout)
	if rep.Summary.MasterPassword != 1 || rep.Summary.Tenants != 2 {
		t.Errorf("status before: %d of %d use the master password, want 1 of 2", rep.Summary.MasterPassword, rep.Summary.Tenants)
	}
	for _, ts := range rep.Tenants {
		if ts.Upstream != checkOK || ts.Resolves != checkOK || ts.Credentials != "present" {
			t.Errorf("status before: tenant %s upstream %q resolves %q credentials %q (%s), want ok, ok and present", ts.Tenant, ts.Upstream, ts.Resolves, ts.Credentials, ts.Error)
		}
		if want := ts.Tenant == "globex"; ts.MasterPassword != want {
			t.Errorf("status before: tenant %s master_password %v, want %v", ts.Tenant, ts.MasterPassword, want)
		}
	}

	// 2. A broker serves both tenants; globex comes from the fallback.
	b := w.startServe(t)
	before := b.env(t, "globex", "json", "bwcli")
	beforeDotenv := b.env(t, "globex", "dotenv", "cache")
	var beforeMap map[string]string
	if err := json.Unmarshal(before, &beforeMap); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(beforeMap, migrateHard) {
		t.Fatalf("the fallback serves keys %v, want %v with the seeded values", fetch.Env(beforeMap).Keys(), fetch.Env(migrateHard).Keys())
	}

	// 3. A dry run changes nothing upstream or on disk.
	policyBefore, _ := os.ReadFile(w.policy)
	writes := w.sm.Stats().Writes
	migrate := append([]string{"migrate"}, w.files()...)
	migrate = append(migrate, "--tenant", "globex", "--project", w.project, "--organization", w.smOrg)
	r = w.runCLI(t, append(migrate, "--dry-run")...)
	if r.code != 0 {
		t.Fatalf("migrate --dry-run: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, fmt.Sprintf("created    %d ", len(migrateHard))) || !strings.Contains(r.stdout, "dry run") {
		t.Errorf("dry run output does not plan %d creations:\n%s", len(migrateHard), r.stdout)
	}
	if got := w.sm.Stats().Writes; got != writes {
		t.Errorf("dry run: upstream writes %d -> %d, want none", writes, got)
	}
	if got := w.sm.SecretsOf(w.smOrg, w.project); len(got) != 0 {
		t.Errorf("dry run: the project holds %v, want nothing", fetch.Env(got).Keys())
	}
	if after, _ := os.ReadFile(w.policy); !bytes.Equal(after, policyBefore) {
		t.Error("dry run changed the policy file")
	}
	t.Logf("dry run output:\n%s", r.stdout)

	// 4. A value changed upstream between copy and verify blocks the switch.
	other := w.otherSM(t)
	migrateAfterCopy = func(ctx context.Context) error {
		_, _, _, _, err := other.Upsert(ctx, fetch.Secret(w.migTok), w.smOrg, w.project, fetch.Env{"ZIP": "changed meanwhile"}, false)
		return err
	}
	r = w.runCLI(t, append(migrate, "--write-policy")...)
	migrateAfterCopy = nil
	if r.code != exitFailure {
		t.Errorf("migrate with a value changed meanwhile: exit %d, want %d", r.code, exitFailure)
	}
	if !strings.Contains(r.stderr, "broker: error: parity check failed: different value in Secrets Manager: ZIP") ||
		!strings.Contains(r.stderr, "the policy was not changed") {
		t.Errorf("migrate with a value changed meanwhile: stderr does not explain:\n%s", r.stderr)
	}
	if after, _ := os.ReadFile(w.policy); !bytes.Equal(after, policyBefore) {
		t.Error("a failed parity check changed the policy file")
	}

	// 5. A plain run repairs ZIP; the next run finds every key unchanged and
	// writes nothing, then switches the policy.
	r = w.runCLI(t, migrate...)
	if r.code != 0 || !strings.Contains(r.stdout, "updated    1  ZIP") {
		t.Fatalf("repairing run: exit %d, stdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	writes = w.sm.Stats().Writes
	r = w.runCLI(t, append(migrate, "--write-policy")...)
	if r.code != 0 {
		t.Fatalf("migrate --write-policy: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	t.Logf("migrate output:\n%s", r.stdout)
	if !strings.Contains(r.stdout, fmt.Sprintf("unchanged  %d ", len(migrateHard))) ||
		!strings.Contains(r.stdout, "created    0\n") || !strings.Contains(r.stdout, "updated    0\n") {
		t.Errorf("second run does not report every key unchanged:\n%s", r.stdout)
	}
	if got := w.sm.Stats().Writes; got != writes {
		t.Errorf("second run: upstream writes %d -> %d, want none", writes, got)
	}
	if !strings.Contains(r.stdout, "parity     ok") || !strings.Contains(r.stdout, "now uses sm") {
		t.Errorf("migrate --write-policy does not report parity and the switch:\n%s", r.stdout)
	}
	if got := w.sm.SecretsOf(w.smOrg, w.project); !maps.Equal(got, migrateHard) {
		t.Errorf("the project holds keys %v, want the collection's, byte for byte", fetch.Env(got).Keys())
	}
	backups, _ := filepath.Glob(w.policy + ".bak-*")
	if len(backups) != 1 {
		t.Errorf("found %d policy backups, want 1", len(backups))
	} else if b, _ := os.ReadFile(backups[0]); !bytes.Equal(b, policyBefore) {
		t.Error("the backup does not hold the previous policy")
	}

	// 6. Status: nobody uses the master password, and it may go.
	r = w.runCLI(t, append([]string{"status"}, w.files()...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "0 of 2 tenants still use the master password") ||
		!strings.Contains(r.stdout, "delete BW_PASSWORD") {
		t.Errorf("status after the switch: exit %d, stdout:\n%s", r.code, r.stdout)
	}

	// 7. BW_* leave the env file; the running broker reloads and serves
	// globex from Secrets Manager, byte for byte as before.
	w.writeEnv(t, w.baseEnv)
	after := b.waitSource(t, "globex", "json", "sm")
	if !bytes.Equal(after, before) {
		t.Errorf("globex from Secrets Manager differs from the fallback's answer (json)")
	}
	if got := b.env(t, "globex", "dotenv", "cache"); !bytes.Equal(got, beforeDotenv) {
		t.Errorf("globex from Secrets Manager differs from the fallback's answer (dotenv)")
	}
	env, _ := os.ReadFile(w.envFile)
	if strings.Contains(string(env), "BW_PASSWORD") {
		t.Fatal("test bug: BW_PASSWORD still in the env file")
	}

	r = w.runCLI(t, append([]string{"status", "--json"}, w.files()...)...)
	if r.code != 0 {
		t.Fatalf("status after: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	rep = parseStatus(t, r.stdout)
	if rep.Summary.MasterPassword != 0 || rep.Summary.Unhealthy != 0 {
		t.Errorf("status after: master_password %d unhealthy %d, want 0 and 0", rep.Summary.MasterPassword, rep.Summary.Unhealthy)
	}
	for _, a := range rep.Advice {
		if strings.Contains(a, "BW_PASSWORD") {
			t.Errorf("status still advises deleting BW_PASSWORD after it is gone: %s", a)
		}
	}

	// 8. Migrating again reports that there is nothing to do.
	r = w.runCLI(t, migrate...)
	if r.code != 0 || !strings.Contains(r.stderr, "nothing to migrate") {
		t.Errorf("migrate after the switch: exit %d, stderr:\n%s", r.code, r.stderr)
	}

	b.checkMetrics(t, w)
	b.stop(t)
	w.checkNoSecret(t, "serve", b.logs.String())
}

func parseStatus(t *testing.T, s string) statusReport {
	t.Helper()
	var rep statusReport
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("status --json does not parse: %v\n%s", err, s)
	}
	return rep
}

func (w *migrateWorld) otherSM(t *testing.T) *fetch.SM {
	sm, err := fetch.NewSM(fetch.SMConfig{APIURL: w.sm.APIURL(), IdentityURL: w.sm.IdentityURL(),
		StateDir: filepath.Join(t.TempDir(), "sm"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sm.Close)
	return sm
}

// runningBroker is broker serve, in-process.
type runningBroker struct {
	sock, token string
	cancel      context.CancelFunc
	done        chan int
	logs        *testutil.SyncBuffer
	client      *server.Client
}

func (w *migrateWorld) startServe(t *testing.T) *runningBroker {
	t.Helper()
	r := w.runCLI(t, "token", "mint", "--state-dir", w.stateDir, "--tenant", "acme", "--tenant", "globex", "--note", "migrate test")
	if r.code != 0 {
		t.Fatalf("token mint: exit %d: %s", r.code, r.stderr)
	}
	b := &runningBroker{sock: filepath.Join(w.dir, "broker.sock"), token: strings.TrimSpace(r.stdout), done: make(chan int, 1), logs: &testutil.SyncBuffer{}}
	w.secrets = append(w.secrets, b.token)
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	args := append([]string{"serve"}, w.files()...)
	args = append(args, "--listen", "unix:"+b.sock)
	go func() { b.done <- run(ctx, args, strings.NewReader(""), io.Discard, b.logs) }()
	t.Cleanup(func() { b.stop(t) })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Stat(b.sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		select {
		case code := <-b.done:
			t.Fatalf("serve exited with %d before listening:\n%s", code, b.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not listen:\n%s", b.logs.String())
		}
	}
	b.client = server.NewClient(server.ListenSpec{Network: "unix", Address: b.sock})
	return b
}

func (b *runningBroker) stop(t *testing.T) {
	if b.cancel == nil {
		return
	}
	b.cancel()
	b.cancel = nil
	b.client.CloseIdle()
	select {
	case code := <-b.done:
		if code != 0 {
			t.Errorf("serve exited with %d", code)
		}
	case <-time.After(60 * time.Second):
		t.Error("serve did not stop within 60s")
	}
}

// env fetches tenant's env and checks where it came from.
func (b *runningBroker) env(t *testing.T, tenant, format, source string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	body, hdr, err := b.client.Env(ctx, b.token, tenant, format)
	if err != nil {
		t.Fatalf("fetch %s: %v", tenant, err)
	}
	if got := hdr.Get(server.HeaderSource); got != source {
		t.Errorf("fetch %s (%s): source %q, want %q", tenant, format, got, source)
	}
	t.Logf("fetch %s %s from %s: %v", tenant, format, source, time.Since(start).Round(time.Millisecond))
	return body
}

// waitSource fetches until the broker serves tenant from source (it reloads
// the policy and the env file on its own).
func (b *runningBroker) waitSource(t *testing.T, tenant, format, source string) []byte {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		body, hdr, err := b.client.Env(ctx, b.token, tenant, format)
		cancel()
		if err == nil && hdr.Get(server.HeaderSource) == source {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("the broker did not serve %s from %s after the policy change (last error %v)", tenant, source, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrape returns /metrics parsed as Prometheus text.
func (b *runningBroker) scrape(t *testing.T) (map[string]float64, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", b.sock)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://localhost/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			case m.Untyped != nil:
				out[key] = m.GetUntyped().GetValue()
			}
		}
	}
	return out, string(raw)
}

func (b *runningBroker) checkMetrics(t *testing.T, w *migrateWorld) {
	m1, raw := b.scrape(t)
	w.checkNoSecret(t, "/metrics", raw)
	for _, c := range []struct {
		name string
		min  float64
	}{
		{"broker_requests_total{outcome=ok,source=bwcli}", 1},
		{"broker_requests_total{outcome=ok,source=sm}", 1},
		{"broker_requests_total{outcome=ok,source=cache}", 1},
		{"broker_request_duration_seconds{source=sm}_count", 1},
		{"broker_request_duration_seconds{source=bwcli}_count", 1},
		{"broker_cache_entries", 1},
		{"broker_cache_hits_total", 1},
		{"broker_cache_misses_total", 2},
		{"broker_sm_logins_total", 1},
		{"broker_sm_upstream_requests_total", 2},
		{"broker_bw_logins_total", 1},
		{"broker_bw_processes_total", 1},
		{"broker_bw_calls_total", 1},
	} {
		got, ok := m1[c.name]
		if !ok {
			t.Errorf("/metrics lacks %s", c.name)
			continue
		}
		if got < c.min {
			t.Errorf("/metrics %s = %v, want at least %v", c.name, got, c.min)
		}
		t.Logf("metric %s = %v", c.name, got)
	}
	for _, zero := range []string{"broker_bw_vaults_left_unlocked_total", "broker_sm_retries_total"} {
		if got, ok := m1[zero]; !ok || got != 0 {
			t.Errorf("/metrics %s = %v (present %v), want 0", zero, got, ok)
		}
	}

	// Counters move as requests are served: one cache hit for acme, one
	// denied request.
	b.env(t, "acme", "json", "sm")
	b.env(t, "acme", "json", "cache")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := b.client.Env(ctx, "brk_not-a-token", "acme", "json"); err == nil {
		t.Error("a bad token was accepted")
	}
	m2, _ := b.scrape(t)
	for _, c := range []struct {
		name  string
		delta float64
	}{
		{"broker_requests_total{outcome=ok,source=sm}", 1},
		{"broker_requests_total{outcome=ok,source=cache}", 1},
		{"broker_cache_hits_total", 1},
		{"broker_request_duration_seconds{source=cache}_count", 1},
		{"broker_requests_total{outcome=unauthorized,source=}", 1},
	} {
		if got := m2[c.name] - m1[c.name]; got != c.delta {
			t.Errorf("/metrics %s moved by %v, want %v", c.name, got, c.delta)
		}
	}
	if m2["broker_sm_upstream_requests_total"] <= m1["broker_sm_upstream_requests_total"] {
		t.Error("broker_sm_upstream_requests_total did not move on an upstream fetch")
	}
}
