package scope

import (
	"errors"
	"fmt"
	"path"
	"slices"
)

// ErrDenied is the error for a request the token's scope does not allow. The
// server answers 403 for it, whatever the reason.
var ErrDenied = errors.New("denied")

// Decision is the outcome of Decide. Reason is for logs only; a caller sees
// only Allow.
type Decision struct {
	Allow  bool
	Reason string
}

// Err returns nil if d allows, else an error wrapping ErrDenied with the
// reason (for logs; do not send it to the caller).
func (d Decision) Err() error {
	if d.Allow {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrDenied, d.Reason)
}

// Reasons given by Decide.
const (
	ReasonAllowed       = "tenant in token scope"
	ReasonNotInScope    = "tenant not in token scope"
	ReasonNotInPolicy   = "tenant in token scope but not in policy"
	ReasonNoToken       = "no token record"
	ReasonNoPolicy      = "no policy"
	ReasonBadTenantName = "invalid tenant name"
)

// Decide says whether the verified token rec may read tenant under policy p.
// It is default-deny: it allows only when tenant is listed in rec.Tenants
// (explicitly: there are no wildcards) and exists in p. Denials differ only
// in Reason: Allow is false for a tenant outside the scope and for a tenant
// that does not exist, so the caller cannot tell them apart. Decide does not
// check expiry; Verify does.
func Decide(rec *TokenRecord, p *Policy, tenant string) Decision {
	if rec == nil {
		return Decision{Reason: ReasonNoToken}
	}
	if p == nil {
		return Decision{Reason: ReasonNoPolicy}
	}
	// Both lookups always run, so that the work does not depend on which
	// one fails.
	inScope := slices.Contains(rec.Tenants, tenant)
	_, inPolicy := p.Tenants[tenant]
	switch {
	case !ValidTenantName(tenant):
		return Decision{Reason: ReasonBadTenantName}
	case !inScope:
		return Decision{Reason: ReasonNotInScope}
	case !inPolicy:
		return Decision{Reason: ReasonNotInPolicy}
	}
	return Decision{Allow: true, Reason: ReasonAllowed}
}

// AllowsKey reports whether the token may receive the env key: true when
// the record has no key globs, else when some glob matches (path.Match).
func (rec *TokenRecord) AllowsKey(key string) bool {
	if len(rec.Keys) == 0 {
		return true
	}
	for _, g := range rec.Keys {
		if ok, err := path.Match(g, key); err == nil && ok {
			return true
		}
	}
	return false
}

// ValidKeyGlob reports whether g is a key glob a token may carry: path.Match
// syntax restricted to env-name characters (A-Z a-z 0-9 _), '*', '?', and
// classes "[...]" of those characters, ranges "a-z" and a leading '^'; no
// backslash escapes, at most MaxEnvNameLen bytes.
func ValidKeyGlob(g string) bool {
	if g == "" || len(g) > MaxEnvNameLen {
		return false
	}
	nameChar := func(c byte) bool {
		return c == '_' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
	}
	for i := 0; i < len(g); i++ {
		c := g[i]
		switch {
		case nameChar(c), c == '*', c == '?':
		case c == '[':
			i++
			if i < len(g) && g[i] == '^' {
				i++
			}
			n := 0
			for ; i < len(g) && g[i] != ']'; i++ {
				lo := g[i]
				if !nameChar(lo) {
					return false
				}
				if i+2 < len(g) && g[i+1] == '-' && g[i+2] != ']' {
					hi := g[i+2]
					if !nameChar(hi) || hi < lo {
						return false
					}
					i += 2
				}
				n++
			}
			if i >= len(g) || n == 0 {
				return false
			}
		default:
			return false
		}
	}
	_, err := path.Match(g, "")
	return err == nil
}
