package bench

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hostd/broker/internal/demo"
	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/state"
	"github.com/hostd/broker/internal/upstream/smserver"
	"github.com/hostd/broker/internal/upstream/vwserver"
)

// SMTenant is one seeded Secrets Manager tenant.
type SMTenant struct {
	Name, ProjectID, AccountID, TokenEnv string
	accessToken                          string
	// SecretIDs are the tenant's secrets by key.
	SecretIDs map[string]string
}

// SMSeed is an organization seeded with tenants on an smserver.
type SMSeed struct {
	SM      *smserver.Server
	OrgID   string
	Tenants []SMTenant
}

// SeedSM adds an organization and n tenants named prefix0001… to sm. Each
// tenant gets its own project, machine account and access token, and the
// demo's hard values plus one key of its own, so that a body is the size of
// a demo tenant's.
func SeedSM(sm *smserver.Server, prefix string, n int) *SMSeed {
	s := &SMSeed{SM: sm, OrgID: sm.AddOrganization("Bench Org " + prefix)}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("%s%04d", prefix, i)
		t := SMTenant{Name: name, TokenEnv: "BROKER_SM_TOKEN_" + strings.ToUpper(name), SecretIDs: map[string]string{}}
		t.ProjectID = sm.AddProject(s.OrgID, name)
		for k, v := range demo.HardValues {
			t.SecretIDs[k] = sm.AddSecret(s.OrgID, t.ProjectID, k, v, "")
		}
		own := strings.ToUpper(name) + "_DATABASE_URL"
		t.SecretIDs[own] = sm.AddSecret(s.OrgID, t.ProjectID, own, "postgres://"+name+"@db/"+name, "")
		t.AccountID = sm.AddMachineAccount(s.OrgID)
		sm.GrantRead(t.AccountID, t.ProjectID)
		t.accessToken, _ = sm.NewAccessToken(t.AccountID)
		s.Tenants = append(s.Tenants, t)
	}
	return s
}

// Names returns the tenant names in order.
func (s *SMSeed) Names() []string {
	out := make([]string, len(s.Tenants))
	for i, t := range s.Tenants {
		out[i] = t.Name
	}
	return out
}

// BWSeed is a Vaultwarden-like organization with one user and one
// collection per fallback tenant.
type BWSeed struct {
	VW       *vwserver.Server
	User     vwserver.User
	password string
	OrgID    string
	// Collections maps tenant name (= collection name) to collection id.
	Collections map[string]string
	Names       []string
	CAFile      string
}

// SeedVW adds a user, an organization and n collections named
// prefix01… (each holding the demo's hard values) to vw, and writes its CA
// to dir/vw-ca.pem.
func SeedVW(vw *vwserver.Server, dir, prefix string, n int) (*BWSeed, error) {
	s := &BWSeed{VW: vw, password: "bench " + rand.Text(), Collections: map[string]string{}}
	s.User = vw.AddUser("bench@"+prefix+".example", s.password)
	s.OrgID = vw.AddOrganization("Bench " + prefix)
	vw.AddMember(s.OrgID, s.User.ID, vwserver.MemberUser)
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("%s%02d", prefix, i)
		coll := vw.AddCollection(s.OrgID, name)
		for k, v := range demo.HardValues {
			if strings.Contains(k, "E") {
				vw.AddLogin(s.OrgID, coll, k, "svc-"+strings.ToLower(k), v)
			} else {
				vw.AddNote(s.OrgID, coll, k, v)
			}
		}
		s.Collections[name] = coll
		s.Names = append(s.Names, name)
	}
	s.CAFile = filepath.Join(dir, "vw-ca.pem")
	if err := vw.WriteCA(s.CAFile); err != nil {
		return nil, fmt.Errorf("seed vw: %v", err)
	}
	return s, nil
}

// BrokerSetup says what one broker serves.
type BrokerSetup struct {
	// Dir receives the policy, env file, state dir and socket (created
	// 0700). Keep it short: a Unix socket path is limited to 107 bytes.
	Dir string
	// CacheTTL is the policy's cache.ttl ("0s" disables the cache).
	CacheTTL string
	SM       *SMSeed
	BW       *BWSeed
	BWMode   string // "serve" or "exec"
}

// BrokerFiles are the files a broker is started with, and a caller token
// scoped to every tenant.
type BrokerFiles struct {
	Dir, Policy, EnvFile, StateDir, Socket string
	Tenants                                []string
	token                                  string
}

// Token returns the caller token (pass it in BROKER_TOKEN, never argv).
func (f *BrokerFiles) Token() string { return f.token }

// WriteBroker writes the policy, the provider env file and a token store
// holding one caller token for every tenant of setup.
func WriteBroker(setup BrokerSetup) (*BrokerFiles, error) {
	if err := os.MkdirAll(setup.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("broker files: %v", err)
	}
	f := &BrokerFiles{
		Dir:      setup.Dir,
		Policy:   filepath.Join(setup.Dir, "policy.json"),
		EnvFile:  filepath.Join(setup.Dir, "provider.env"),
		StateDir: filepath.Join(setup.Dir, "state"),
		Socket:   filepath.Join(setup.Dir, "broker.sock"),
	}
	ttl := setup.CacheTTL
	if ttl == "" {
		ttl = "60s"
	}
	upstream := map[string]any{}
	tenants := map[string]any{}
	var env []string
	if s := setup.SM; s != nil {
		upstream["sm"] = map[string]any{"api_url": s.SM.APIURL(), "identity_url": s.SM.IdentityURL()}
		for _, t := range s.Tenants {
			tenants[t.Name] = map[string]any{"backend": "sm", "organization_id": s.OrgID,
				"project_ids": []string{t.ProjectID}, "access_token_env": t.TokenEnv}
			env = append(env, fmt.Sprintf("%s=%q", t.TokenEnv, t.accessToken))
			f.Tenants = append(f.Tenants, t.Name)
		}
	}
	if b := setup.BW; b != nil {
		mode := setup.BWMode
		if mode == "" {
			mode = "serve"
		}
		upstream["bw"] = map[string]any{"server_url": b.VW.URL(), "ca_file": b.CAFile, "mode": mode}
		for _, name := range b.Names {
			tenants[name] = map[string]any{"backend": "bwcli", "organization_id": b.OrgID, "collection": name}
			f.Tenants = append(f.Tenants, name)
		}
		env = append(env, fmt.Sprintf("BW_CLIENTID=%q", b.User.ClientID),
			fmt.Sprintf("BW_CLIENTSECRET=%q", b.User.ClientSecret), fmt.Sprintf("BW_PASSWORD=%q", b.password))
	}
	policy := map[string]any{
		"version":  1,
		"upstream": upstream,
		"cache":    map[string]any{"ttl": ttl, "max_tenants": 1024, "stale_if_error": "0s"},
		"tenants":  tenants,
	}
	pj, err := json.MarshalIndent(policy, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("broker files: %v", err)
	}
	if err := os.WriteFile(f.Policy, append(pj, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("broker files: %v", err)
	}
	if err := os.WriteFile(f.EnvFile, []byte(strings.Join(env, "\n")+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("broker files: %v", err)
	}
	if err := state.EnsureStateDir(f.StateDir); err != nil {
		return nil, err
	}
	tok, id, hash, err := scope.MintToken(nil)
	if err != nil {
		return nil, err
	}
	rec := scope.TokenRecord{ID: id, Hash: hash, Tenants: f.Tenants, Note: "bench", Created: time.Now().UTC().Truncate(time.Second)}
	if err := state.OpenTokenFile(f.StateDir).Update(func(s *scope.TokenStore) error { return s.Add(rec) }); err != nil {
		return nil, fmt.Errorf("broker files: token store: %v", err)
	}
	f.token = tok.Reveal()
	return f, nil
}

// WriteTenantsFile writes names one per line to path (for --tenants-file).
func WriteTenantsFile(path string, names []string) error {
	return os.WriteFile(path, []byte(strings.Join(names, "\n")+"\n"), 0o600)
}
