package bwcli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hostd/broker/internal/fetch"
)

// reason is the classified cause of a failed bw step. Only reasons are
// logged, never bw's output.
type reason int

const (
	reasonUnknown       reason = iota // bw failed for a reason not recognized
	reasonWrongPassword               // unlock refused the master password
	reasonBadAPIKey                   // login refused the client id / secret
	reasonNotLoggedIn                 // bw holds no login
	reasonLoggedIn                    // bw already holds a login (fine for login/config)
	reasonLocked                      // bw says the vault is locked
	reasonUnreachable                 // the server cannot be reached
	reasonTLS                         // the server's certificate is not trusted
	reasonRateLimited                 // the server rate-limits
	reasonServerError                 // the server answered with an error
	reasonKDF                         // the account's KDF settings are refused
	reasonStepTimeout                 // a step ran past StepTimeout
	reasonCanceled                    // the call's context ended
	reasonOutput                      // bw's answer is too large or malformed
	reasonStart                       // bw cannot be started
	reasonServeDown                   // bw serve is gone or does not answer
)

var reasonNames = [...]string{
	"unknown", "wrong-password", "bad-api-key", "not-logged-in", "already-logged-in", "locked",
	"unreachable", "tls", "rate-limited", "server-error", "kdf", "step-timeout", "canceled",
	"bad-output", "cannot-start", "serve-down",
}

func (r reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// classifyRule maps a fragment of a bw message (lower case) to a reason.
type classifyRule struct {
	fragment string
	reason   reason
}

// classifyRules is checked in order; the first fragment found wins. The
// fragments are the texts bw 2026.9.0 prints (protocols/password-manager.md §8).
var classifyRules = []classifyRule{
	{"client_id or client_secret is incorrect", reasonBadAPIKey},
	{"invalid_client", reasonBadAPIKey},
	{"client_secret is required", reasonBadAPIKey},
	{"client_id is required", reasonBadAPIKey},
	{"insufficient kdf", reasonKDF},
	{"cryptography error", reasonWrongPassword},
	{"decryption operation failed", reasonWrongPassword},
	{"invalid master password", reasonWrongPassword},
	{"master password is required", reasonWrongPassword},
	{"you are already logged in", reasonLoggedIn},
	{"logout required before server config update", reasonLoggedIn},
	{"you are not logged in", reasonNotLoggedIn},
	{"no active account", reasonNotLoggedIn},
	{"vault is locked", reasonLocked},
	{"self signed certificate", reasonTLS},
	{"self-signed certificate", reasonTLS},
	{"unable to verify the first certificate", reasonTLS},
	{"unable to get local issuer certificate", reasonTLS},
	{"certificate has expired", reasonTLS},
	{"err_tls", reasonTLS},
	{"insecure url", reasonTLS},
	{"too many requests", reasonRateLimited},
	{"rate limit", reasonRateLimited},
	{"econnrefused", reasonUnreachable},
	{"econnreset", reasonUnreachable},
	{"enotfound", reasonUnreachable},
	{"eai_again", reasonUnreachable},
	{"etimedout", reasonUnreachable},
	{"ehostunreach", reasonUnreachable},
	{"enetunreach", reasonUnreachable},
	{"socket hang up", reasonUnreachable},
	{"fetcherror", reasonUnreachable},
	{"failed to fetch", reasonUnreachable},
	{"network error", reasonUnreachable},
	{"internal server error", reasonServerError},
	{"bad gateway", reasonServerError},
	{"service unavailable", reasonUnreachable},
	{"gateway timeout", reasonUnreachable},
	{"syncing failed", reasonServerError},
}

// classify maps a bw message (stderr or a JSON "message") to a reason.
func classify(msg string) reason {
	m := strings.ToLower(msg)
	for _, r := range classifyRules {
		if strings.Contains(m, r.fragment) {
			return r.reason
		}
	}
	return reasonUnknown
}

// stepError is a failed bw step. It holds no bw output: only the step, the
// exit code and the classified reason, plus a sanitized cause.
type stepError struct {
	step   string
	reason reason
	exit   int   // process exit code; -1 for serve requests and kills
	err    error // sanitized cause (context errors, I/O), or nil
}

func (e *stepError) Error() string {
	s := fmt.Sprintf("bw %s: %s", e.step, e.reason)
	if e.exit >= 0 {
		s += fmt.Sprintf(" (exit %d)", e.exit)
	}
	if e.err != nil {
		s += ": " + e.err.Error()
	}
	return s
}

func (e *stepError) Unwrap() error { return e.err }

// reasonOf returns the reason of err's stepError, reasonUnknown if none.
func reasonOf(err error) reason {
	var se *stepError
	if errors.As(err, &se) {
		return se.reason
	}
	return reasonUnknown
}

// ctxReason classifies why a step's context ended: its own timeout, or its
// caller's context.
func ctxReason(caller, step context.Context) (reason, error) {
	if caller.Err() != nil {
		return reasonCanceled, context.Cause(caller)
	}
	if errors.Is(step.Err(), context.DeadlineExceeded) {
		return reasonStepTimeout, context.DeadlineExceeded
	}
	return reasonCanceled, step.Err()
}

// toFetchError turns a session error into a *fetch.Error with a fixed public
// message for the tenant. A *fetch.Error passes through.
func toFetchError(tenant string, err error) error {
	if err == nil {
		return nil
	}
	var fe *fetch.Error
	if errors.As(err, &fe) {
		return fe
	}
	var se *stepError
	if !errors.As(err, &se) {
		return fetch.NewError(fetch.KindUpstream, tenant, "the bw fallback failed; see the broker log", err)
	}
	kind, msg := publicMessage(se)
	return fetch.NewError(kind, tenant, msg, se)
}

// publicMessage is the kind and fixed public message of a failed step.
func publicMessage(se *stepError) (fetch.Kind, string) {
	switch se.reason {
	case reasonWrongPassword:
		return fetch.KindCredentials, "the Vaultwarden master password was refused; check the tenant's BW_PASSWORD in the provider env file"
	case reasonBadAPIKey:
		return fetch.KindCredentials, "the Vaultwarden API key was refused; check the tenant's BW_CLIENTID and BW_CLIENTSECRET in the provider env file"
	case reasonUnreachable:
		return fetch.KindUnavailable, "the Vaultwarden server cannot be reached; retry later"
	case reasonRateLimited:
		return fetch.KindUnavailable, "the Vaultwarden server is rate limiting; retry later"
	case reasonTLS:
		return fetch.KindConfig, "the Vaultwarden server's TLS certificate is not trusted; set upstream.bw.ca_file to its CA"
	case reasonKDF:
		return fetch.KindUpstream, "bw refuses the account's KDF settings (PBKDF2 needs at least 5000 iterations); raise them in Vaultwarden"
	case reasonStepTimeout:
		return fetch.KindTimeout, fmt.Sprintf("bw step %q timed out; the vault was locked again; retry later", se.step)
	case reasonCanceled:
		return fetch.KindCanceled, "the request was canceled"
	case reasonStart:
		return fetch.KindConfig, "the bw CLI cannot be started; run `make tools` or set BROKER_BW"
	case reasonNotLoggedIn:
		return fetch.KindUpstream, "bw lost its login to the Vaultwarden server; retry"
	case reasonServeDown:
		return fetch.KindUpstream, "bw serve stopped answering; it is restarted on the next request; retry"
	case reasonServerError:
		return fetch.KindUpstream, "the Vaultwarden server answered with an error; retry later"
	default:
		return fetch.KindUpstream, fmt.Sprintf("bw step %q failed; see the broker log", se.step)
	}
}
