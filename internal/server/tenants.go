package server

import (
	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/scope"
)

// BuildTenants turns the policy and the provider env file into what the
// backends need. A tenant whose credential variable is absent from env is
// listed in missing (tenant → variable name) and left out of tenants: it
// fails with a config error that names the variable, while every other
// tenant keeps working.
func BuildTenants(p *scope.Policy, env map[string]string) (tenants map[string]fetch.Tenant, missing map[string]string) {
	tenants = make(map[string]fetch.Tenant, len(p.Tenants))
	missing = make(map[string]string)
	for name, pt := range p.Tenants {
		t := fetch.Tenant{
			Name:           name,
			Backend:        pt.Backend,
			OrganizationID: pt.OrganizationID,
		}
		// The variable names come from the policy (one place spells them);
		// the first one missing or empty makes the tenant fail by name.
		names := pt.CredentialEnvNames()
		var absent string
		vals := make([]fetch.Secret, len(names))
		for i, v := range names {
			val, ok := env[v]
			if (!ok || val == "") && absent == "" {
				absent = v
			}
			vals[i] = fetch.Secret(val)
		}
		switch pt.Backend {
		case fetch.BackendSM:
			t.ProjectIDs = append([]string(nil), pt.ProjectIDs...)
			t.AccessToken = vals[0]
			t.CredentialsFrom = names[0]
		case fetch.BackendBWCLI:
			t.Collection = pt.Collection // the parser defaults it to the tenant name
			t.CredentialsFrom = pt.CredentialsEnvPrefix + "BW_*"
			t.ClientID, t.ClientSecret, t.Password = vals[0], vals[1], vals[2]
		}
		if absent != "" {
			missing[name] = absent
			continue
		}
		tenants[name] = t
	}
	return tenants, missing
}
