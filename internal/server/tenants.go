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
		var absent string
		get := func(v string) fetch.Secret {
			val, ok := env[v]
			if (!ok || val == "") && absent == "" {
				absent = v
			}
			return fetch.Secret(val)
		}
		switch pt.Backend {
		case fetch.BackendSM:
			t.ProjectIDs = append([]string(nil), pt.ProjectIDs...)
			t.AccessToken = get(pt.AccessTokenEnv)
			t.CredentialsFrom = pt.AccessTokenEnv
		case fetch.BackendBWCLI:
			t.Collection = pt.Collection
			if t.Collection == "" {
				t.Collection = name
			}
			t.CredentialsFrom = pt.CredentialsEnvPrefix + "BW_*"
			t.ClientID = get(pt.CredentialsEnvPrefix + "BW_CLIENTID")
			t.ClientSecret = get(pt.CredentialsEnvPrefix + "BW_CLIENTSECRET")
			t.Password = get(pt.CredentialsEnvPrefix + "BW_PASSWORD")
		}
		if absent != "" {
			missing[name] = absent
			continue
		}
		tenants[name] = t
	}
	return tenants, missing
}
