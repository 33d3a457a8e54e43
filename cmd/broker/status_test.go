package main

import (
	"context"
	"encoding/json"
	"github.com/hostd/broker/internal/testutil"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// statusFiles writes a policy with one sm and two bwcli tenants and the
// given env file; the upstreams are never contacted (--offline).
func statusFiles(t *testing.T, env string) []string {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	policy := `{"version": 1,
 "upstream": {"sm": {"api_url": "http://127.0.0.1:9/api", "identity_url": "http://127.0.0.1:9/identity"},
              "bw": {"server_url": "https://127.0.0.1:9"}},
 "tenants": {
  "acme":   {"backend": "sm", "organization_id": "11111111-1111-1111-1111-111111111111",
             "project_ids": ["22222222-2222-2222-2222-222222222222"], "access_token_env": "BROKER_SM_TOKEN_ACME"},
  "globex": {"backend": "bwcli", "organization_id": "33333333-3333-3333-3333-333333333333"},
  "hooli":  {"backend": "bwcli", "organization_id": "33333333-3333-3333-3333-333333333333", "credentials_env_prefix": "HOOLI_"}
 }}`
	p, e, s := filepath.Join(dir, "policy.json"), filepath.Join(dir, "provider.env"), filepath.Join(dir, "state")
	if err := os.WriteFile(p, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e, []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(s, 0o700); err != nil {
		t.Fatal(err)
	}
	return []string{"--policy", p, "--env-file", e, "--state-dir", s}
}

func runStatusCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb testutil.SyncBuffer
	code := run(context.Background(), append([]string{"status"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestStatusOffline(t *testing.T) {
	const creds = "BW_CLIENTID=user.x\nBW_CLIENTSECRET=s3cret-client\nBW_PASSWORD=s3cret-pw\n"
	for _, c := range []struct {
		name, env      string
		code, master   int
		unhealthy      int
		missing        map[string]string
		adviceContains string
	}{
		{"all present", "BROKER_SM_TOKEN_ACME=tok-acme\n" + creds + "HOOLI_" + strings.ReplaceAll(creds, "\nBW_", "\nHOOLI_BW_"),
			0, 2, 0, nil, ""},
		{"hooli missing", "BROKER_SM_TOKEN_ACME=tok-acme\n" + creds, 1, 2, 1,
			map[string]string{"hooli": "HOOLI_BW_CLIENTID"}, ""},
		{"stale password", "BROKER_SM_TOKEN_ACME=tok-acme\n" + creds + "OLD_BW_PASSWORD=s3cret-old\n", 1, 2, 1,
			map[string]string{"hooli": "HOOLI_BW_CLIENTID"}, "OLD_BW_PASSWORD is used by no tenant"},
	} {
		t.Run(c.name, func(t *testing.T) {
			files := statusFiles(t, c.env)
			code, out, stderr := runStatusCLI(t, append(files, "--offline", "--json")...)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, c.code, stderr)
			}
			rep := parseStatus(t, out)
			if rep.Summary.MasterPassword != c.master || rep.Summary.Tenants != 3 || rep.Summary.Unhealthy != c.unhealthy {
				t.Errorf("summary %+v, want master_password %d of 3, unhealthy %d", rep.Summary, c.master, c.unhealthy)
			}
			for _, ts := range rep.Tenants {
				if ts.Upstream != checkUnchecked {
					t.Errorf("tenant %s upstream %q with --offline, want %q", ts.Tenant, ts.Upstream, checkUnchecked)
				}
				if got, want := ts.MissingVariable, c.missing[ts.Tenant]; got != want {
					t.Errorf("tenant %s missing_variable %q, want %q", ts.Tenant, got, want)
				}
			}
			if c.adviceContains != "" && !strings.Contains(strings.Join(rep.Advice, "\n"), c.adviceContains) {
				t.Errorf("advice %q lacks %q", rep.Advice, c.adviceContains)
			}
			for _, secret := range []string{"s3cret", "tok-acme"} {
				if strings.Contains(out+stderr, secret) {
					t.Errorf("status output carries a credential")
				}
			}

			code, text, _ := runStatusCLI(t, append(files, "--offline")...)
			if code != c.code || !strings.Contains(text, "2 of 3 tenants still use the master password\n") {
				t.Errorf("text status: exit %d, output:\n%s", code, text)
			}
		})
	}
}

func TestStatusJSONShape(t *testing.T) {
	files := statusFiles(t, "BROKER_SM_TOKEN_ACME=tok\n")
	_, out, _ := runStatusCLI(t, append(files, "--offline", "--json")...)
	var generic map[string]any
	if err := json.Unmarshal([]byte(out), &generic); err != nil {
		t.Fatalf("status --json does not parse: %v", err)
	}
	for _, k := range []string{"tenants", "summary", "advice"} {
		if _, ok := generic[k]; !ok {
			t.Errorf("status --json lacks %q", k)
		}
	}
}

func TestStatusAndMigrateUsage(t *testing.T) {
	files := statusFiles(t, "")
	for _, c := range []struct {
		name string
		args []string
	}{
		{"status offline and deep", append([]string{"status", "--offline", "--deep"}, files...)},
		{"migrate without tenant", append([]string{"migrate", "--project", "p"}, files...)},
		{"migrate without project", append([]string{"migrate", "--tenant", "globex"}, files...)},
		{"migrate bad tenant", append([]string{"migrate", "--tenant", "Bad!", "--project", "p"}, files...)},
		{"migrate dry-run and write-policy", append([]string{"migrate", "--tenant", "globex", "--project", "p", "--dry-run", "--write-policy"}, files...)},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errb testutil.SyncBuffer
			code := run(context.Background(), c.args, strings.NewReader(""), &out, &errb)
			if code != exitUsage {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, exitUsage, errb.String())
			}
			if out.String() != "" {
				t.Errorf("stdout = %q, want nothing", out.String())
			}
			if !strings.Contains(errb.String(), "broker: error: ") {
				t.Errorf("stderr lacks a broker: error: line:\n%s", errb.String())
			}
		})
	}
}

func TestMigrateRefusesWithoutTokens(t *testing.T) {
	t.Setenv(envMigrationToken, "")
	files := statusFiles(t, "BW_CLIENTID=user.x\nBW_CLIENTSECRET=c\nBW_PASSWORD=p\n")
	var out, errb testutil.SyncBuffer
	code := run(context.Background(), append([]string{"migrate", "--tenant", "globex",
		"--project", "55555555-5555-5555-5555-555555555555"}, files...), strings.NewReader(""), &out, &errb)
	if code != exitFailure || !strings.Contains(errb.String(), "no BROKER_MIGRATION_TOKEN") {
		t.Errorf("migrate without a migration token: exit %d, stderr:\n%s", code, errb.String())
	}
}

// TestStatusResolves: without --deep, status resolves each tenant's Secrets
// Manager project and bw collection; one that the credentials cannot see is
// "failed" in RESOLVES with the reason, while UPSTREAM stays ok.
func TestStatusResolves(t *testing.T) {
	w := newMigrateWorld(t)
	raw, err := os.ReadFile(w.policy)
	if err != nil {
		t.Fatal(err)
	}
	// acme's machine account cannot read globex's project; the vault has no
	// collection "nope".
	pol := strings.Replace(string(raw), w.acmeProject, w.project, 1)
	pol = strings.Replace(pol, `"collection": "globex"`, `"collection": "nope"`, 1)
	if pol == string(raw) || !strings.Contains(pol, `"nope"`) || !strings.Contains(pol, w.project) {
		t.Fatalf("policy rewrite failed")
	}
	if err := os.WriteFile(w.policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	r := w.runCLI(t, append([]string{"status", "--json"}, w.files()...)...)
	if r.code != exitFailure {
		t.Errorf("status: exit %d, want %d; stderr:\n%s", r.code, exitFailure, r.stderr)
	}
	rep := parseStatus(t, r.stdout)
	wantIn := map[string]string{"acme": w.project, "globex": `"nope"`}
	for _, ts := range rep.Tenants {
		if ts.Upstream != checkOK || ts.Resolves != checkFailed {
			t.Errorf("tenant %s: upstream %q resolves %q (%s), want %q and %q", ts.Tenant, ts.Upstream, ts.Resolves, ts.Error, checkOK, checkFailed)
		}
		if want := wantIn[ts.Tenant]; !strings.Contains(ts.Error, want) || !strings.HasPrefix(ts.Error, "config: ") {
			t.Errorf("tenant %s: error %q, want a config error naming %s", ts.Tenant, ts.Error, want)
		}
	}
	if rep.Summary.Unhealthy != 2 {
		t.Errorf("unhealthy = %d, want 2", rep.Summary.Unhealthy)
	}
}
