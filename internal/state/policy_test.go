package state

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testPolicy = `{
  "version": 1,
  "upstream": {"bw": {"server_url": "https://vault.example.org"}},
  "tenants": {"globex": {"backend": "bwcli", "organization_id": "c2d4e6f8-1a3b-4c5d-8e7f-9a0b1c2d3e4f"}}
}
`

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "policy.json")
	writeFile(t, good, testPolicy, 0o644)
	p, err := LoadPolicy(good)
	if err != nil {
		t.Fatalf("LoadPolicy = %v", err)
	}
	if g, w := p.Tenants["globex"].Collection, "globex"; g != w {
		t.Errorf("collection = %q, want %q", g, w)
	}
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPolicy(link); err != nil {
		t.Errorf("LoadPolicy(symlink) = %v, want ok (the policy is not secret)", err)
	}

	writable := filepath.Join(dir, "writable.json")
	writeFile(t, writable, testPolicy, 0o664)
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, strings.Replace(testPolicy, `"globex": {`, `"globex": {"project_ids": [], `, 1), 0o600)
	tests := []struct {
		name, path, want string
	}{
		{"group writable", writable, fmt.Sprintf("policy %s is writable by group or others (mode 0664), and it decides where credentials are sent; run: chmod go-w %s", writable, writable)},
		{"invalid", bad, fmt.Sprintf(`policy %s: tenants.globex.project_ids: only valid for backend "sm"`, bad)},
		{"missing", filepath.Join(dir, "nope"), fmt.Sprintf("policy %s: no such file or directory", filepath.Join(dir, "nope"))},
		{"directory", dir, fmt.Sprintf("policy %s is not a regular file", dir)},
	}
	if os.Geteuid() == 0 {
		foreign := filepath.Join(dir, "foreign.json")
		writeFile(t, foreign, testPolicy, 0o644)
		if err := os.Chown(foreign, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, struct{ name, path, want string }{"foreign owner", foreign,
			fmt.Sprintf("policy %s is owned by uid 4242, neither root nor the broker's uid 0; run: chown 0 %s", foreign, foreign)})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadPolicy(tt.path)
			if err == nil || err.Error() != tt.want {
				t.Errorf("LoadPolicy = %v, want %q", err, tt.want)
			}
		})
	}
}
