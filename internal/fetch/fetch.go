// Package fetch resolves a tenant's environment from its upstream.
//
// It defines the [Backend] interface that the Secrets Manager client (in this
// package) and the bw CLI fallback (internal/fallback/bwcli) implement, the
// [Resolver] that puts a per-tenant cache, singleflight and stale-if-error in
// front of them, and the error kinds callers branch on.
//
// # Secrets
//
// Values travel as [Env], whose String and LogValue methods never print a
// value. Errors built here carry a public message that is safe to show a
// caller and a sanitized cause that is safe to log; neither ever holds a
// secret value, an access token or an upstream response body.
//
// fetch never imports scope, server or bwcli: authorization happens before
// the resolver is asked (see internal/server).
package fetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
)

// Env is a tenant's resolved environment: key → value. Its String, GoString
// and LogValue methods print key names only, never values.
type Env map[string]string

// String returns the sorted key names, never the values.
func (e Env) String() string { return "Env" + fmt.Sprint(e.Keys()) }

// GoString is like String so that %#v does not print values either.
func (e Env) GoString() string { return e.String() }

// LogValue implements slog.LogValuer: key names only.
func (e Env) LogValue() slog.Value { return slog.AnyValue(e.Keys()) }

// Keys returns the key names in sorted order.
func (e Env) Keys() []string {
	keys := make([]string, 0, len(e))
	for k := range e {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Secret is a credential (access token, client secret, master password).
// It prints as [REDACTED]; call Reveal only where the value must leave the
// process (the SDK call, a child's environment).
type Secret string

// String implements fmt.Stringer and never returns the value.
func (s Secret) String() string { return "[REDACTED]" }

// GoString implements fmt.GoStringer and never returns the value.
func (s Secret) GoString() string { return "[REDACTED]" }

// LogValue implements slog.LogValuer and never returns the value.
func (s Secret) LogValue() slog.Value { return slog.StringValue("[REDACTED]") }

// Reveal returns the secret itself.
func (s Secret) Reveal() string { return string(s) }

// Backend names.
const (
	BackendSM    = "sm"
	BackendBWCLI = "bwcli"
)

// Tenant is what a backend needs to fetch one tenant's env. It is built from
// the policy and the provider env file by the caller; nothing in it comes
// from a request.
type Tenant struct {
	Name           string
	Backend        string // BackendSM or BackendBWCLI
	OrganizationID string

	// CredentialsFrom names where the credentials came from (the provider
	// env file variable, or the variable prefix) for error messages.
	CredentialsFrom string

	// Secrets Manager.
	ProjectIDs  []string
	AccessToken Secret

	// bw CLI fallback.
	Collection   string
	ClientID     Secret
	ClientSecret Secret
	Password     Secret
}

// Backend fetches a tenant's env from its upstream. Implementations are safe
// for concurrent use, honour ctx for as long as the caller waits, validate
// keys (see ValidKey) and return *Error values.
type Backend interface {
	Fetch(ctx context.Context, t Tenant) (Env, error)
}

// Kind classifies a fetch failure; the server maps it to an HTTP status and
// the CLI to an exit code.
type Kind int

const (
	// KindUpstream: the upstream answered but the answer is unusable
	// (5xx after retries, malformed data, a bad MAC). HTTP 502.
	KindUpstream Kind = iota
	// KindUnavailable: the upstream cannot be reached or keeps rate
	// limiting; retry later. HTTP 503, exit 4.
	KindUnavailable
	// KindTimeout: the caller's deadline or a step timeout passed. HTTP 504.
	KindTimeout
	// KindCredentials: the upstream refused this tenant's credentials
	// (revoked access token, wrong password). HTTP 502.
	KindCredentials
	// KindData: the tenant's data is invalid (a bad or duplicate key). HTTP 502.
	KindData
	// KindConfig: the broker cannot serve this tenant as configured (a
	// backend missing from this build, a missing credential). HTTP 500.
	KindConfig
	// KindCanceled: the caller went away.
	KindCanceled
)

var kindNames = [...]string{"upstream", "unavailable", "timeout", "credentials", "data", "config", "canceled"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is a fetch failure. Msg is the public text (safe for a caller: it
// says what to do); Err is the sanitized internal cause (safe to log). Neither
// holds a secret value, a credential or an upstream response body.
type Error struct {
	Kind   Kind
	Tenant string
	Msg    string
	Err    error
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Tenant != "" {
		fmt.Fprintf(&b, "tenant %q: ", e.Tenant)
	}
	b.WriteString(e.Msg)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// NewError returns an *Error of kind k for tenant with the public message msg
// and the sanitized cause. Never pass secret values or upstream bodies.
func NewError(k Kind, tenant, msg string, cause error) *Error {
	return &Error{Kind: k, Tenant: tenant, Msg: msg, Err: cause}
}

// KindOf returns the Kind of err: that of the first *Error in its chain,
// KindTimeout for context.DeadlineExceeded, KindCanceled for
// context.Canceled, and KindUpstream otherwise.
func KindOf(err error) Kind {
	var fe *Error
	switch {
	case errors.As(err, &fe):
		return fe.Kind
	case errors.Is(err, context.DeadlineExceeded):
		return KindTimeout
	case errors.Is(err, context.Canceled):
		return KindCanceled
	}
	return KindUpstream
}
