package hardening

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hostd/broker/internal/render"
	"github.com/hostd/broker/internal/upstream/smserver"
)

// smWorld is a Secrets Manager upstream seeded with tenants, and the broker
// site that serves them.
type smWorld struct {
	srv     *smserver.Server
	org     string
	tenants map[string]*smTenant
	env     map[string]string // the provider env file
	site    *site
}

type smTenant struct {
	name, project, account, tokenID, tokenEnv, token string
	env                                              map[string]string
}

func newSMWorld(t *testing.T) *smWorld {
	t.Helper()
	srv := smserver.New(smserver.Options{})
	if err := srv.Start(); err != nil {
		t.Fatalf("smserver: %v", err)
	}
	t.Cleanup(srv.Close)
	w := &smWorld{srv: srv, tenants: map[string]*smTenant{}, env: map[string]string{}, site: newSite(t)}
	w.org = srv.AddOrganization("hardening")
	// A project no tenant is configured for, readable by every machine
	// account: its value must never be served.
	ops := srv.AddProject(w.org, "ops")
	opsVal := "ops-only-" + randHex(12)
	srv.AddSecret(w.org, ops, "OPS_ONLY", opsVal, "")
	leaks.secret("ops-only value", "", opsVal)
	w.tenants["_ops"] = &smTenant{project: ops}
	return w
}

// addTenant seeds tenant name with n secrets whose values are about size
// bytes each (at least a unique 40-character marker).
func (w *smWorld) addTenant(t *testing.T, name string, n, size int) *smTenant {
	t.Helper()
	tn := &smTenant{name: name, env: map[string]string{},
		tokenEnv: "BROKER_SM_TOKEN_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
	tn.project = w.srv.AddProject(w.org, name)
	for i := range n {
		key := fmt.Sprintf("KEY_%03d", i)
		marker := fmt.Sprintf("val-%s-%d-%s", name, i, randHex(10))
		v := marker
		if size > len(v) {
			v += strings.Repeat("x", size-len(v))
		}
		w.srv.AddSecret(w.org, tn.project, key, v, "")
		tn.env[key] = v
		leaks.secret(fmt.Sprintf("value %s of %s", key, name), name, marker)
	}
	tn.account = w.srv.AddMachineAccount(w.org)
	w.srv.GrantRead(tn.account, tn.project)
	w.srv.GrantRead(tn.account, w.tenants["_ops"].project)
	tn.token, tn.tokenID = w.srv.NewAccessToken(tn.account)
	leaks.secret("sm access token of "+name, "", tn.token)
	w.env[tn.tokenEnv] = tn.token
	w.tenants[name] = tn
	return tn
}

// write writes the site's policy (every tenant but _ops) and env file.
func (w *smWorld) write(t *testing.T, ttl string) {
	t.Helper()
	tenants := map[string]map[string]any{}
	for name, tn := range w.tenants {
		if name == "_ops" {
			continue
		}
		tenants[name] = map[string]any{"backend": "sm", "organization_id": w.org,
			"project_ids": []string{tn.project}, "access_token_env": tn.tokenEnv}
	}
	w.site.writePolicy(t, policySpec{smAPI: w.srv.APIURL(), smIdentity: w.srv.IdentityURL(), ttl: ttl, tenants: tenants})
	w.site.writeEnv(t, w.env)
}

// dotenv is tenant's env as `broker fetch` prints it.
func (tn *smTenant) dotenv(t *testing.T) []byte {
	t.Helper()
	b, err := render.Render(render.Dotenv, tn.env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
