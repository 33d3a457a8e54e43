// Package demo starts the embedded upstreams with demo tenants and writes the
// policy, provider env file and state dir a broker serves them from. It backs
// `broker dev`, `make demo` and the end-to-end tests, so that what the demo
// shows is exactly what the tests check.
//
// The upstreams are in-repo test servers (internal/upstream/...) speaking the
// real protocols with the real cryptography on loopback; nothing here is for
// production.
package demo

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hostd/broker/internal/upstream/smserver"
	"github.com/hostd/broker/internal/upstream/vwserver"
)

// HardValues are values that are hard to carry through an env file: every
// demo tenant serves all of them, and every format must return them
// byte-exact.
var HardValues = map[string]string{
	"MULTILINE": "line1\nline2\n",
	"QUOTES":    `he said "hi" and 'bye'`,
	"DOLLARS":   "$HOME ${PATH} $ \\$ `whoami` $(id)",
	"BACKSLASH": `back\slash\n\\ and trailing\`,
	"ZIP":       "007",
	"UNICODE":   "ünïcødé 😀 ключ 日本語",
	"SPACES":    "  padded  \t",
	"HASH":      "#not-a-comment = x",
	"BANG":      "!bang",
	"EMPTY":     "",
}

// Options configures Start.
type Options struct {
	// Dir is where the policy, env file and state dir are written (created
	// 0700). Required.
	Dir string
	// Fallback adds a bw CLI tenant served by the embedded Vaultwarden-like
	// upstream (needs the bw CLI at run time).
	Fallback bool
	// BWMode is upstream.bw.mode ("serve" or "exec"; default serve).
	BWMode string
	// KDFIterations for the fallback user (default 600000, as Bitwarden's
	// default; tests use 5000, the minimum bw accepts).
	KDFIterations int
}

// Tenant describes a demo tenant and what its env must be.
type Tenant struct {
	Name    string
	Backend string
	Env     map[string]string
	// For Secrets Manager tenants.
	OrgID, ProjectID, AccountID, TokenEnv string
	// For fallback tenants.
	CollectionID string
}

// Demo is a running demo: its upstreams and the files a broker needs.
type Demo struct {
	Dir, PolicyPath, EnvFile, StateDir, CAFile string
	SM                                         *smserver.Server
	VW                                         *vwserver.Server
	Tenants                                    map[string]*Tenant
	// Leak is a value seeded only into a project no demo tenant may read,
	// though acme's machine account can: it must never be served.
	Leak string
	// Credentials lists the upstream credentials written to the env file
	// (for leak scans in tests).
	Credentials []string
}

// Names returns the demo tenant names, sorted.
func (d *Demo) Names() []string {
	var n []string
	for k := range d.Tenants {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Close stops the upstreams.
func (d *Demo) Close() {
	if d.SM != nil {
		d.SM.Close()
	}
	if d.VW != nil {
		d.VW.Close()
	}
}

// Start starts the upstreams, seeds them, and writes the broker's files.
func Start(opts Options) (_ *Demo, err error) {
	if opts.Dir == "" {
		return nil, fmt.Errorf("demo: a directory is required")
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("demo: %v", err)
	}
	if err := os.Chmod(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("demo: %v", err)
	}
	d := &Demo{
		Dir:        opts.Dir,
		PolicyPath: filepath.Join(opts.Dir, "policy.json"),
		EnvFile:    filepath.Join(opts.Dir, "provider.env"),
		StateDir:   filepath.Join(opts.Dir, "state"),
		Tenants:    map[string]*Tenant{},
		Leak:       "must-never-be-served-7f3a",
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()

	// Secrets Manager: one organization, a project per tenant, one machine
	// account per tenant. acme's account can also read an ops project, so the
	// broker's project filter is what keeps it out of acme's env.
	d.SM = smserver.New(smserver.Options{})
	if err := d.SM.Start(); err != nil {
		return nil, fmt.Errorf("demo: secrets manager upstream: %v", err)
	}
	org := d.SM.AddOrganization("Demo Org")
	ops := d.SM.AddProject(org, "shared-ops")
	d.SM.AddSecret(org, ops, "OPS_ONLY", d.Leak, "not for tenants")
	envLines := []string{}
	for _, name := range []string{"acme", "initech"} {
		t := &Tenant{Name: name, Backend: "sm", OrgID: org, Env: map[string]string{},
			TokenEnv: "BROKER_SM_TOKEN_" + strings.ToUpper(name)}
		t.ProjectID = d.SM.AddProject(org, name)
		for k, v := range HardValues {
			d.SM.AddSecret(org, t.ProjectID, k, v, "")
			t.Env[k] = v
		}
		own := strings.ToUpper(name) + "_DATABASE_URL"
		t.Env[own] = "postgres://" + name + ":pw-" + name + "@db/" + name
		d.SM.AddSecret(org, t.ProjectID, own, t.Env[own], "demo")
		t.AccountID = d.SM.AddMachineAccount(org)
		d.SM.GrantRead(t.AccountID, t.ProjectID)
		if name == "acme" {
			d.SM.GrantRead(t.AccountID, ops)
		}
		tok, _ := d.SM.NewAccessToken(t.AccountID)
		envLines = append(envLines, fmt.Sprintf("%s=%q", t.TokenEnv, tok))
		d.Credentials = append(d.Credentials, tok)
		d.Tenants[name] = t
	}

	policy := map[string]any{
		"version": 1,
		"upstream": map[string]any{
			"sm": map[string]any{"api_url": d.SM.APIURL(), "identity_url": d.SM.IdentityURL()},
		},
		"cache":   map[string]any{"ttl": "60s", "max_tenants": 1024, "stale_if_error": "0s"},
		"tenants": map[string]any{},
	}
	tenants := policy["tenants"].(map[string]any)
	for _, name := range []string{"acme", "initech"} {
		t := d.Tenants[name]
		tenants[name] = map[string]any{"backend": "sm", "organization_id": t.OrgID,
			"project_ids": []string{t.ProjectID}, "access_token_env": t.TokenEnv}
	}

	if opts.Fallback {
		iters := opts.KDFIterations
		if iters == 0 {
			iters = vwserver.DefaultKDFIterations
		}
		d.VW, err = vwserver.New(vwserver.Options{KDFIterations: iters})
		if err != nil {
			return nil, fmt.Errorf("demo: vaultwarden upstream: %v", err)
		}
		if err := d.VW.Start(); err != nil {
			return nil, fmt.Errorf("demo: vaultwarden upstream: %v", err)
		}
		d.CAFile = filepath.Join(opts.Dir, "vw-ca.pem")
		if err := d.VW.WriteCA(d.CAFile); err != nil {
			return nil, fmt.Errorf("demo: %v", err)
		}
		const password = "correct horse battery staple 42"
		u := d.VW.AddUser("ops@globex.example", password)
		vorg := d.VW.AddOrganization("Globex")
		d.VW.AddMember(vorg, u.ID, 2)
		coll := d.VW.AddCollection(vorg, "globex")
		other := d.VW.AddCollection(vorg, "globex-archive")
		d.VW.AddLogin(vorg, other, "ARCHIVED", "x", d.Leak)
		t := &Tenant{Name: "globex", Backend: "bwcli", OrgID: vorg, CollectionID: coll, Env: map[string]string{}}
		for k, v := range HardValues {
			if strings.Contains(k, "E") { // some as logins, some as notes
				d.VW.AddLogin(vorg, coll, k, "svc-"+strings.ToLower(k), v)
			} else {
				d.VW.AddNote(vorg, coll, k, v)
			}
			t.Env[k] = v
		}
		d.VW.AddCard(vorg, coll, "CORPORATE_CARD") // not a login or note: not served
		d.Tenants["globex"] = t
		mode := opts.BWMode
		if mode == "" {
			mode = "serve"
		}
		policy["upstream"].(map[string]any)["bw"] = map[string]any{"server_url": d.VW.URL(), "ca_file": d.CAFile, "mode": mode}
		tenants["globex"] = map[string]any{"backend": "bwcli", "organization_id": vorg, "collection": "globex"}
		envLines = append(envLines,
			fmt.Sprintf("BW_CLIENTID=%q", u.ClientID),
			fmt.Sprintf("BW_CLIENTSECRET=%q", u.ClientSecret),
			fmt.Sprintf("BW_PASSWORD=%q", password))
		d.Credentials = append(d.Credentials, u.ClientSecret, password)
	}

	pj, err := json.MarshalIndent(policy, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("demo: %v", err)
	}
	if err := os.WriteFile(d.PolicyPath, append(pj, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("demo: %v", err)
	}
	if err := os.WriteFile(d.EnvFile, []byte(strings.Join(envLines, "\n")+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("demo: %v", err)
	}
	if err := os.MkdirAll(d.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("demo: %v", err)
	}
	return d, nil
}
