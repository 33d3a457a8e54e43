// Package scope holds the broker's authorization model: the policy (which
// tenants exist, which backend serves each, where the upstreams are), the
// caller tokens that the daemon presents, and the decision whether a token
// may read a tenant's env.
//
// The package is pure: it imports the standard library only and does no file,
// network or process I/O beyond parsing from an [io.Reader]. File handling
// (permissions, locking, atomic writes) lives in internal/state.
//
// # Threat model
//
// The broker runs as a dedicated host user. It trusts:
//   - the host's root and the broker's own user;
//   - the policy file, which the operator writes (it chooses the upstream
//     URLs, so nothing a caller sends can choose where credentials go);
//   - the provider env file and the state dir, which must be owner-only
//     (enforced by internal/state).
//
// It does not trust callers. A caller is anything that can reach the socket
// and presents a caller token. A token reaches exactly the tenants listed in
// its [TokenRecord] (explicit names, never a wildcard: "*" is not a tenant
// name, and a name like "all" means only the tenant called "all"), and, when the record lists key globs, only the keys
// those globs match. A tenant named by a token but no longer in the policy is
// simply denied.
//
// Default deny: [Decide] allows a request only when the tenant is both in the
// token's scope and in the policy. A tenant outside the token's scope and a
// tenant that does not exist are refused the same way (Allow=false; the
// server answers 403 for both), so a token cannot be used as an existence
// oracle for other tenants. Only [Decision.Reason], which is for logs, tells
// them apart.
//
// Caller tokens look like brk_<id>_<secret>: the id (12 characters of
// lowercase base32, 60 random bits) names the token in listings and logs and
// is not secret; the secret part carries 256 random bits. The token store
// holds only the SHA-256 of the whole token, so a copy of the store (which
// configuration management may distribute) does not grant access. Tokens are
// compared in constant time, and every way a presented token can be wrong
// (missing, malformed, unknown, tampered, expired) yields the single error
// [ErrUnauthorized]. The [Token] type prints as "brk_[REDACTED]".
//
// Errors from this package never contain a credential: parse errors name the
// JSON path and the rule that failed, not the offending value, except where
// the value is a name (a tenant, a field, an env var name).
package scope
