package migrate

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hostd/broker/internal/scope"
)

const testPolicy = `{
  "version": 1,
  "upstream": {
    "sm": {"api_url": "http://127.0.0.1:1/api", "identity_url": "http://127.0.0.1:1/identity"},
    "bw": {"server_url": "https://127.0.0.1:2"}
  },
  "tenants": {
    "acme": {"backend": "sm", "organization_id": "11111111-1111-1111-1111-111111111111",
             "project_ids": ["22222222-2222-2222-2222-222222222222"], "access_token_env": "BROKER_SM_TOKEN_ACME"},
    "globex": {"backend": "bwcli", "organization_id": "33333333-3333-3333-3333-333333333333"}
  }
}
`

const (
	org2  = "44444444-4444-4444-4444-444444444444"
	proj2 = "55555555-5555-5555-5555-555555555555"
)

func TestSwitchTenant(t *testing.T) {
	p, err := scope.ParsePolicy(strings.NewReader(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	np, data, err := SwitchTenant(p, "globex", org2, proj2, "BROKER_SM_TOKEN_GLOBEX")
	if err != nil {
		t.Fatalf("SwitchTenant: %v", err)
	}
	if p.Tenants["globex"].Backend != scope.BackendBWCLI {
		t.Error("SwitchTenant changed the original policy")
	}
	back, err := scope.ParsePolicy(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the written policy does not load: %v", err)
	}
	g := back.Tenants["globex"]
	if g.Backend != "sm" || g.OrganizationID != org2 || len(g.ProjectIDs) != 1 || g.ProjectIDs[0] != proj2 || g.AccessTokenEnv != "BROKER_SM_TOKEN_GLOBEX" {
		t.Errorf("globex after the switch = %+v", g)
	}
	if back.Tenants["acme"].AccessTokenEnv != "BROKER_SM_TOKEN_ACME" || np.Tenants["acme"].Backend != "sm" {
		t.Error("the switch changed another tenant")
	}

	for _, c := range []struct{ name, tenant, env string }{
		{"unknown tenant", "nope", "BROKER_SM_TOKEN_X"},
		{"token env of another tenant with other projects", "globex", "BROKER_SM_TOKEN_ACME"},
		{"invalid env name", "globex", "1BAD"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, _, err := SwitchTenant(p, c.tenant, org2, proj2, c.env); err == nil {
				t.Error("SwitchTenant succeeded, want an error")
			}
		})
	}
}

func TestWritePolicy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(path, []byte(testPolicy), 0o640); err != nil {
		t.Fatal(err)
	}
	p, _ := scope.ParsePolicy(strings.NewReader(testPolicy))
	_, data, err := SwitchTenant(p, "globex", org2, proj2, "BROKER_SM_TOKEN_GLOBEX")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	// Edited meanwhile: refused, file untouched.
	if _, err := WritePolicy(path, []byte("something else"), data, now); err == nil {
		t.Error("WritePolicy over a policy edited meanwhile succeeded, want an error")
	}
	if got, _ := os.ReadFile(path); string(got) != testPolicy {
		t.Error("a refused WritePolicy changed the file")
	}

	w, err := WritePolicy(path, []byte(testPolicy), data, now)
	if err != nil {
		t.Fatalf("WritePolicy: %v", err)
	}
	if want := path + ".bak-20260102T030405Z"; w.Backup != want {
		t.Errorf("backup = %s, want %s", w.Backup, want)
	}
	if got, _ := os.ReadFile(w.Backup); string(got) != testPolicy {
		t.Error("the backup does not hold the previous policy")
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Error("the policy does not hold the new content")
	}
	for _, f := range []string{path, w.Backup} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o640 {
			t.Errorf("%s mode = %04o, want 0640 (kept)", filepath.Base(f), fi.Mode().Perm())
		}
	}

	// Through a symbolic link: the target is rewritten, the link stays.
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	w, err = WritePolicy(link, data, []byte(testPolicy), now.Add(time.Second))
	if err != nil {
		t.Fatalf("WritePolicy through a link: %v", err)
	}
	if !w.Linked || w.Path != path {
		t.Errorf("through a link: linked %v path %s, want true and %s", w.Linked, w.Path, path)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Error("the symbolic link was replaced")
	}
}
