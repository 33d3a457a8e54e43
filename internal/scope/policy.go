package scope

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/hostd/broker/internal/envkey"
	"io"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// PolicyVersion is the policy file version this package reads and writes.
const PolicyVersion = 1

// MaxPolicySize bounds the policy file.
const MaxPolicySize = 1 << 20 // 1 MiB

// Backend names, as written in a tenant's "backend" field.
const (
	BackendSM    = "sm"
	BackendBWCLI = "bwcli"
)

// Values of upstream.bw.mode.
const (
	BWModeServe = "serve" // one supervised `bw serve` per data dir (default)
	BWModeExec  = "exec"  // one `bw` process per step
)

// Values of upstream.sm.client.
const (
	SMClientDefault = ""
	SMClientSDK     = "sdk"
	SMClientNative  = "native"
)

// Suffixes of a bwcli tenant's credential env names (after its
// credentials_env_prefix).
const (
	EnvBWClientID     = "BW_CLIENTID"
	EnvBWClientSecret = "BW_CLIENTSECRET"
	EnvBWPassword     = "BW_PASSWORD"
)

// Defaults applied when the policy leaves a field out.
const (
	DefaultTTL        = 60 * time.Second
	DefaultMaxTenants = 1024
	// MaxMaxTenants bounds cache.max_tenants.
	MaxMaxTenants = 1 << 20
)

// MaxEnvNameLen bounds an env var name (an access_token_env, a prefix plus
// its suffix, a key glob).
const MaxEnvNameLen = 256

// maxCollectionLen bounds a collection name.
const maxCollectionLen = 512

// Policy is the broker's configuration: upstreams, cache and tenants. A
// *Policy returned by ParsePolicy is valid and normalized (defaults filled,
// UUIDs lowercased); treat it as read-only, since the server shares it
// between requests.
type Policy struct {
	Version  int               `json:"version"`
	Upstream Upstream          `json:"upstream"`
	Cache    Cache             `json:"cache"`
	Tenants  map[string]Tenant `json:"tenants"`
}

// Upstream says where the upstreams are. Only the operator sets these.
type Upstream struct {
	SM SMUpstream `json:"sm"`
	BW BWUpstream `json:"bw"`
}

// SMUpstream is the Bitwarden Secrets Manager endpoint. Required iff some
// tenant uses backend "sm"; when set but unused it is still validated.
type SMUpstream struct {
	APIURL      string `json:"api_url"`
	IdentityURL string `json:"identity_url"`
	Client      string `json:"client,omitempty"` // "", "sdk" or "native"
}

// BWUpstream is the password-manager server the bw CLI fallback talks to.
// ServerURL is required iff some tenant uses backend "bwcli", and must be
// https (the bw CLI refuses anything else). CAFile, when set, is an absolute
// path to a PEM CA bundle. Mode is "serve" (default) or "exec".
type BWUpstream struct {
	ServerURL string `json:"server_url"`
	CAFile    string `json:"ca_file"`
	Mode      string `json:"mode"`
}

// Cache configures the per-tenant cache. TTL 0 disables caching;
// StaleIfError 0 disables serving stale entries.
type Cache struct {
	TTL          Duration `json:"ttl"`
	MaxTenants   int      `json:"max_tenants"`
	StaleIfError Duration `json:"stale_if_error"`
}

// Duration is a time.Duration written in JSON as a Go duration string
// ("60s", "5m").
type Duration struct{ time.Duration }

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: expected a string such as \"60s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration: invalid duration %s", quoteName(s))
	}
	d.Duration = v
	return nil
}

// Tenant is one tenant's entry in the policy.
//
// Backend "sm" uses OrganizationID, ProjectIDs and AccessTokenEnv (the name
// of the provider-env-file variable that holds the tenant's machine-account
// access token). Backend "bwcli" uses OrganizationID, Collection (defaults
// to the tenant name) and CredentialsEnvPrefix.
type Tenant struct {
	Backend              string   `json:"backend"`
	OrganizationID       string   `json:"organization_id"`
	ProjectIDs           []string `json:"project_ids,omitempty"`
	AccessTokenEnv       string   `json:"access_token_env,omitempty"`
	Collection           string   `json:"collection,omitempty"`
	CredentialsEnvPrefix string   `json:"credentials_env_prefix,omitempty"`
}

// CredentialEnvNames returns the names of the provider-env-file variables
// that hold this tenant's upstream credentials: [AccessTokenEnv] for "sm";
// prefix+BW_CLIENTID, prefix+BW_CLIENTSECRET, prefix+BW_PASSWORD for
// "bwcli"; nil for anything else.
func (t Tenant) CredentialEnvNames() []string {
	switch t.Backend {
	case BackendSM:
		return []string{t.AccessTokenEnv}
	case BackendBWCLI:
		p := t.CredentialsEnvPrefix
		return []string{p + EnvBWClientID, p + EnvBWClientSecret, p + EnvBWPassword}
	}
	return nil
}

// UsesMasterPassword reports whether the named tenant depends on a master
// password (backend "bwcli"). It is false for unknown tenants.
func (p *Policy) UsesMasterPassword(tenant string) bool {
	t, ok := p.Tenants[tenant]
	return ok && t.Backend == BackendBWCLI
}

// TenantNames returns the policy's tenant names, sorted.
func (p *Policy) TenantNames() []string {
	names := make([]string, 0, len(p.Tenants))
	for n := range p.Tenants {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ValidTenantName reports whether s is a valid tenant name:
// ^[a-z0-9][a-z0-9_-]{0,62}$.
func ValidTenantName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

const tenantNameRule = "tenant name must match ^[a-z0-9][a-z0-9_-]{0,62}$"

// validEnvName reports whether s is ^[A-Za-z_][A-Za-z0-9_]*$ and at most
// MaxEnvNameLen bytes.
func validEnvName(s string) bool { return len(s) <= MaxEnvNameLen && envkey.Valid(s) }

// normUUID returns s lowercased if it is a UUID in the 8-4-4-4-12 hex form.
// ValidUUID reports whether s is a UUID in the 8-4-4-4-12 hex form the
// policy accepts (any case).
func ValidUUID(s string) bool { _, ok := normUUID(s); return ok }

func normUUID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return "", false
			}
		}
	}
	return strings.ToLower(s), true
}

// ParsePolicy reads and validates a policy (at most MaxPolicySize bytes, one
// JSON object, unknown fields and duplicate keys refused, "version" required
// and equal to PolicyVersion) and fills in defaults. Errors are *PathError
// values naming the JSON path, or a size or read error.
func ParsePolicy(r io.Reader) (*Policy, error) {
	data, err := readBounded(r, MaxPolicySize, "policy")
	if err != nil {
		return nil, err
	}
	if err := checkVersion(data, PolicyVersion); err != nil {
		return nil, err
	}
	p := &Policy{
		Upstream: Upstream{BW: BWUpstream{Mode: BWModeServe}},
		Cache:    Cache{TTL: Duration{DefaultTTL}, MaxTenants: DefaultMaxTenants},
	}
	rd := newReader(data)
	sawVersion := false
	present := make(map[string]map[string]bool) // tenant → fields present
	err = rd.object("", func(k string, kp jpath) error {
		var err error
		switch k {
		case "version":
			sawVersion = true
			if p.Version, err = rd.integer(kp); err == nil && p.Version != PolicyVersion {
				err = versionError(kp, p.Version, PolicyVersion)
			}
		case "upstream":
			err = readUpstream(rd, kp, &p.Upstream)
		case "cache":
			err = readCache(rd, kp, &p.Cache)
		case "tenants":
			p.Tenants = make(map[string]Tenant)
			err = rd.object(kp, func(name string, np jpath) error {
				if !ValidTenantName(name) {
					return np.errf(tenantNameRule)
				}
				t, fields, err := readTenant(rd, np)
				p.Tenants[name] = t
				present[name] = fields
				return err
			})
		default:
			err = jpath("").key(k).errf("unknown field")
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := rd.end(); err != nil {
		return nil, err
	}
	if !sawVersion {
		return nil, jpath("version").errf("required (set \"version\": %d)", PolicyVersion)
	}
	if err := p.validate(present); err != nil {
		return nil, err
	}
	return p, nil
}

func readUpstream(rd *reader, p jpath, u *Upstream) error {
	return rd.object(p, func(k string, kp jpath) error {
		switch k {
		case "sm":
			return rd.object(kp, func(k string, fp jpath) error {
				var err error
				switch k {
				case "api_url":
					u.SM.APIURL, err = rd.str(fp)
				case "identity_url":
					u.SM.IdentityURL, err = rd.str(fp)
				case "client":
					u.SM.Client, err = rd.str(fp)
				default:
					err = fp.errf("unknown field")
				}
				return err
			})
		case "bw":
			return rd.object(kp, func(k string, fp jpath) error {
				var err error
				switch k {
				case "server_url":
					u.BW.ServerURL, err = rd.str(fp)
				case "ca_file":
					u.BW.CAFile, err = rd.str(fp)
				case "mode":
					u.BW.Mode, err = rd.str(fp)
				default:
					err = fp.errf("unknown field")
				}
				return err
			})
		}
		return kp.errf("unknown field")
	})
}

func readCache(rd *reader, p jpath, c *Cache) error {
	return rd.object(p, func(k string, kp jpath) error {
		var err error
		switch k {
		case "ttl":
			c.TTL, err = rd.duration(kp)
		case "max_tenants":
			c.MaxTenants, err = rd.integer(kp)
		case "stale_if_error":
			c.StaleIfError, err = rd.duration(kp)
		default:
			err = kp.errf("unknown field")
		}
		return err
	})
}

func readTenant(rd *reader, p jpath) (Tenant, map[string]bool, error) {
	var t Tenant
	fields := make(map[string]bool)
	err := rd.object(p, func(k string, kp jpath) error {
		fields[k] = true
		var err error
		switch k {
		case "backend":
			t.Backend, err = rd.str(kp)
		case "organization_id":
			t.OrganizationID, err = rd.str(kp)
		case "project_ids":
			t.ProjectIDs, err = rd.strs(kp)
		case "access_token_env":
			t.AccessTokenEnv, err = rd.str(kp)
		case "collection":
			t.Collection, err = rd.str(kp)
		case "credentials_env_prefix":
			t.CredentialsEnvPrefix, err = rd.str(kp)
		default:
			err = kp.errf("unknown field")
		}
		return err
	})
	return t, fields, err
}

// validate checks p (as read, with the fields present in each tenant) and
// normalizes it in place.
func (p *Policy) validate(present map[string]map[string]bool) error {
	if len(p.Tenants) == 0 {
		return jpath("tenants").errf("at least one tenant is required")
	}
	names := p.TenantNames()
	var firstSM, firstBW string
	for _, name := range names {
		t := p.Tenants[name]
		if err := validateTenant(jpath("tenants").key(name), name, &t, present[name]); err != nil {
			return err
		}
		p.Tenants[name] = t
		switch {
		case t.Backend == BackendSM && firstSM == "":
			firstSM = name
		case t.Backend == BackendBWCLI && firstBW == "":
			firstBW = name
		}
	}
	if err := checkCredentialNames(p, names); err != nil {
		return err
	}

	// Upstreams.
	sm := jpath("upstream.sm")
	for _, f := range []struct {
		name, val string
	}{{"api_url", p.Upstream.SM.APIURL}, {"identity_url", p.Upstream.SM.IdentityURL}} {
		fp := sm.key(f.name)
		switch {
		case f.val != "":
			if err := checkURL(fp, f.val, false); err != nil {
				return err
			}
		case firstSM != "":
			return fp.errf("required because tenant %s uses backend %q", quoteName(firstSM), BackendSM)
		case p.Upstream.SM != (SMUpstream{}):
			return fp.errf("required when upstream.sm is set")
		}
	}
	switch p.Upstream.SM.Client {
	case SMClientDefault, SMClientSDK, SMClientNative:
	default:
		return sm.key("client").errf("must be %q, %q or empty", SMClientSDK, SMClientNative)
	}

	bw := jpath("upstream.bw")
	switch {
	case p.Upstream.BW.ServerURL != "":
		if err := checkURL(bw.key("server_url"), p.Upstream.BW.ServerURL, true); err != nil {
			return err
		}
	case firstBW != "":
		return bw.key("server_url").errf("required because tenant %s uses backend %q", quoteName(firstBW), BackendBWCLI)
	}
	if ca := p.Upstream.BW.CAFile; ca != "" {
		if !path.IsAbs(ca) || strings.ContainsFunc(ca, unicode.IsControl) || !utf8.ValidString(ca) {
			return bw.key("ca_file").errf("must be an absolute path")
		}
	}
	switch p.Upstream.BW.Mode {
	case "":
		p.Upstream.BW.Mode = BWModeServe
	case BWModeServe, BWModeExec:
	default:
		return bw.key("mode").errf("must be %q or %q", BWModeServe, BWModeExec)
	}

	// Cache.
	c := jpath("cache")
	if p.Cache.TTL.Duration < 0 {
		return c.key("ttl").errf("must not be negative")
	}
	if p.Cache.StaleIfError.Duration < 0 {
		return c.key("stale_if_error").errf("must not be negative")
	}
	if p.Cache.MaxTenants < 1 || p.Cache.MaxTenants > MaxMaxTenants {
		return c.key("max_tenants").errf("must be between 1 and %d", MaxMaxTenants)
	}
	return nil
}

// validateTenant checks one tenant and normalizes it (lowercase UUIDs, the
// default collection).
func validateTenant(p jpath, name string, t *Tenant, present map[string]bool) error {
	onlyFor := func(field, backend string) error {
		if present[field] {
			return p.key(field).errf("only valid for backend %q", backend)
		}
		return nil
	}
	switch t.Backend {
	case "":
		return p.key("backend").errf("required (%q or %q)", BackendSM, BackendBWCLI)
	case BackendSM, BackendBWCLI:
	default:
		return p.key("backend").errf("must be %q or %q", BackendSM, BackendBWCLI)
	}

	if t.OrganizationID == "" {
		return p.key("organization_id").errf("required")
	}
	org, ok := normUUID(t.OrganizationID)
	if !ok {
		return p.key("organization_id").errf("not a UUID")
	}
	t.OrganizationID = org

	if t.Backend == BackendSM {
		for _, f := range []string{"collection", "credentials_env_prefix"} {
			if err := onlyFor(f, BackendBWCLI); err != nil {
				return err
			}
		}
		pp := p.key("project_ids")
		if len(t.ProjectIDs) == 0 {
			return pp.errf("at least one project id is required")
		}
		ids := make([]string, len(t.ProjectIDs))
		for i, s := range t.ProjectIDs {
			id, ok := normUUID(s)
			if !ok {
				return pp.index(i).errf("not a UUID")
			}
			if j := slices.Index(ids[:i], id); j >= 0 {
				return pp.index(i).errf("duplicate of project_ids[%d]", j)
			}
			ids[i] = id
		}
		t.ProjectIDs = ids
		switch {
		case t.AccessTokenEnv == "":
			return p.key("access_token_env").errf("required (the provider env file variable holding this tenant's access token)")
		case !validEnvName(t.AccessTokenEnv):
			return p.key("access_token_env").errf("not a valid env var name (want ^[A-Za-z_][A-Za-z0-9_]*$)")
		}
		return nil
	}

	// bwcli
	for _, f := range []string{"project_ids", "access_token_env"} {
		if err := onlyFor(f, BackendSM); err != nil {
			return err
		}
	}
	if t.Collection == "" {
		if present["collection"] {
			return p.key("collection").errf("must not be empty (leave it out to use the tenant name)")
		}
		t.Collection = name
	}
	if err := checkCollection(t.Collection); err != nil {
		return p.key("collection").errf("%s", err.Error())
	}
	if pre := t.CredentialsEnvPrefix; pre != "" && !validEnvName(pre+EnvBWClientSecret) {
		return p.key("credentials_env_prefix").errf("not a valid env var name prefix (want ^[A-Za-z_][A-Za-z0-9_]*$ or empty)")
	}
	return nil
}

// checkCollection checks a collection name. Names go to the bw CLI, so a
// leading '-' is refused as well as control characters.
func checkCollection(s string) error {
	switch {
	case len(s) > maxCollectionLen:
		return fmt.Errorf("longer than %d bytes", maxCollectionLen)
	case !utf8.ValidString(s), strings.ContainsFunc(s, unicode.IsControl):
		return fmt.Errorf("must not contain control characters")
	case strings.TrimSpace(s) != s:
		return fmt.Errorf("must not start or end with white space")
	case strings.HasPrefix(s, "-"):
		return fmt.Errorf("must not start with '-'")
	}
	return nil
}

// checkCredentialNames enforces the rules between tenants' credential env
// names:
//
//   - Two "sm" tenants may share an access_token_env only if they are aliases:
//     the same organization_id and the same set of project_ids. Otherwise one
//     machine account would reach both tenants' projects and the isolation
//     between them would rest on the broker's project filter alone, not on
//     the upstream's machine-account scope that Option C is about.
//   - "bwcli" tenants may share a credentials_env_prefix (one Vaultwarden
//     account serving several collections is the fallback's normal case).
//   - An "sm" access_token_env must not be one of a "bwcli" tenant's
//     credential names (it would hand a password to the SDK, or a token to bw).
func checkCredentialNames(p *Policy, names []string) error {
	smUser := make(map[string]string) // env → first sm tenant using it
	bwUser := make(map[string]string) // env → first bwcli tenant using it
	for _, name := range names {
		t := p.Tenants[name]
		if t.Backend == BackendBWCLI {
			for _, env := range t.CredentialEnvNames() {
				if _, ok := bwUser[env]; !ok {
					bwUser[env] = name
				}
			}
		}
	}
	for _, name := range names {
		t := p.Tenants[name]
		if t.Backend != BackendSM {
			continue
		}
		fp := jpath("tenants").key(name).key("access_token_env")
		env := t.AccessTokenEnv
		if other, ok := bwUser[env]; ok {
			return fp.errf("%s is also a credential of bwcli tenant %s; use a distinct name", env, quoteName(other))
		}
		other, ok := smUser[env]
		if !ok {
			smUser[env] = name
			continue
		}
		o := p.Tenants[other]
		if o.OrganizationID != t.OrganizationID || !sameSet(o.ProjectIDs, t.ProjectIDs) {
			return fp.errf("%s is already the access token of tenant %s, which has other projects; give each tenant its own machine account (sharing is allowed only between tenants with the same organization_id and project_ids)", env, quoteName(other))
		}
	}
	return nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// checkURL checks an upstream URL: absolute http(s) with a host, no user
// info, query or fragment, no trailing slash or empty path segment; https
// unless the host is loopback (and always when httpsOnly). The URL itself is
// never echoed: it might carry credentials.
func checkURL(p jpath, s string, httpsOnly bool) error {
	if strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return p.errf("not a valid URL (contains white space or control characters)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return p.errf("not a valid URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return p.errf("must be an absolute http:// or https:// URL")
	case u.Opaque != "" || u.Host == "":
		return p.errf("must have a host (like https://host.example)")
	case u.User != nil:
		return p.errf("must not contain user info (credentials belong in the provider env file)")
	case u.RawQuery != "" || u.ForceQuery:
		return p.errf("must not have a query")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return p.errf("must not have a fragment")
	case strings.HasSuffix(u.Path, "/"):
		return p.errf("must not end with '/' (the client appends paths and would build \"//\")")
	case strings.Contains(u.Path, "//"):
		return p.errf("must not contain an empty path segment (\"//\")")
	case strings.HasSuffix(u.Host, ":"):
		return p.errf("has an empty port")
	}
	if u.Scheme == "https" {
		return nil
	}
	if httpsOnly {
		return p.errf("must be https:// (the bw CLI refuses other schemes)")
	}
	if !isLoopbackHost(u.Hostname()) {
		return p.errf("must be https:// unless the host is loopback (127.0.0.0/8, ::1, localhost)")
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}

// Marshal returns p as indented JSON that ParsePolicy reads back into an
// equal policy. It refuses an invalid policy (it runs the same validation as
// ParsePolicy), so a policy changed in memory (by migrate) can only be
// written out if it would load.
func (p *Policy) Marshal() ([]byte, error) {
	data, err := marshalIndent(p)
	if err != nil {
		return nil, fmt.Errorf("marshal policy: %w", err)
	}
	if _, err := ParsePolicy(bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("marshal policy: invalid: %w", err)
	}
	return data, nil
}
