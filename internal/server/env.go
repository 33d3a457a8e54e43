package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/render"
	"github.com/hostd/broker/internal/scope"
)

// Response headers describing where an env came from.
const (
	HeaderSource = "X-Broker-Source" // cache | sm | bwcli | stale
	HeaderStale  = "X-Broker-Stale"  // present on stale answers: the age in seconds
)

// Codes of 502 answers that retrying cannot fix (broker fetch exits 1 for
// them, 4 for other 502s): the operator must act.
var PermanentCodes = map[string]bool{"upstream_rejected": true, "config_error": true, "unrenderable": true}

// Public error texts. They never carry a value, a credential or an upstream body.
const (
	msgUnauthorized = "missing or invalid caller token; send Authorization: Bearer brk_… with a token from 'broker token mint'"
	msgForbidden    = "this token may not read that tenant; ask the operator for a token scoped to it"
)

// audit is the one audit line written per request.
type audit struct {
	start   time.Time
	tokenID string
	tenant  string
	format  string
	keys    []string
	source  string
	outcome string
	status  int
	reached bool // the request was authorized for a configured tenant
}

func (s *Server) writeAudit(r *http.Request, a *audit) {
	peer := peerOf(r)
	uid, pid := int64(-1), int64(-1)
	if peer.ok {
		uid, pid = int64(peer.cred.UID), int64(peer.cred.PID)
	}
	d := s.opts.Now().Sub(a.start)
	s.opts.Audit.LogAttrs(r.Context(), slog.LevelInfo, "audit",
		slog.String("token_id", a.tokenID),
		slog.Int64("peer_uid", uid),
		slog.Int64("peer_pid", pid),
		slog.String("tenant", a.tenant),
		slog.String("format", a.format),
		slog.Any("keys", a.keys),
		slog.String("source", a.source),
		slog.String("outcome", a.outcome),
		slog.Int64("status", int64(a.status)),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
	)
	if m := s.opts.Metrics; m != nil {
		m.observeRequest(a.outcome, a.source, d)
	}
	if s.opts.OnFetch != nil && a.reached {
		s.opts.OnFetch(a.tenant, a.outcome, a.source, a.start.Add(d))
	}
}

// auditTenant makes a requested tenant name safe to log: bounded and, when it
// is not a valid name, marked as such.
func auditTenant(t string) string {
	if scope.ValidTenantName(t) {
		return t
	}
	if len(t) > 64 {
		t = t[:64]
	}
	return fmt.Sprintf("invalid:%q", t)
}

func (s *Server) tenantEnv(w http.ResponseWriter, r *http.Request) {
	a := &audit{start: s.opts.Now(), tenant: auditTenant(r.PathValue("tenant")), outcome: "error"}
	defer s.writeAudit(r, a)
	status, code, msg := s.serveTenantEnv(w, r, a)
	a.status = status
	if status != http.StatusOK {
		writeError(w, status, code, msg)
	}
}

// serveTenantEnv does the work of tenantEnv. It writes the body itself on
// success and returns 200; otherwise it returns the status and public error.
func (s *Server) serveTenantEnv(w http.ResponseWriter, r *http.Request, a *audit) (int, string, string) {
	cfg := s.cfg.Load()

	// 1. The caller token: exactly one Authorization header, a bearer token.
	auth := r.Header.Values("Authorization")
	var tok string
	if len(auth) == 1 {
		// The scheme is case-insensitive (RFC 9110 section 11.1).
		if scheme, t, ok := strings.Cut(auth[0], " "); ok && strings.EqualFold(scheme, "Bearer") {
			tok = strings.TrimLeft(t, " ") // RFC 9110 allows 1*SP
		}
	}
	rec, err := cfg.Tokens.Verify(tok, s.opts.Now())
	if err != nil && s.opts.RefreshTokens != nil {
		if fresh := s.opts.RefreshTokens(); fresh != nil && fresh != cfg.Tokens {
			rec, err = fresh.Verify(tok, s.opts.Now())
			cfg = s.cfg.Load()
		}
	}
	if err != nil {
		a.outcome = "unauthorized"
		w.Header().Set("WWW-Authenticate", `Bearer realm="broker"`)
		return http.StatusUnauthorized, "unauthorized", msgUnauthorized
	}
	a.tokenID = rec.ID

	// 2. The scope decision, before anything else is looked at.
	tenant := r.PathValue("tenant")
	if d := scope.Decide(rec, cfg.Policy, tenant); !d.Allow {
		a.outcome = "denied"
		s.opts.Logger.Info("request denied", "token_id", rec.ID, "tenant", a.tenant, "reason", d.Reason)
		return http.StatusForbidden, "forbidden", msgForbidden
	}

	// 3. The request itself.
	q := r.URL.Query()
	if len(q["format"]) > 1 || r.ContentLength > 0 {
		a.outcome = "bad_request"
		return http.StatusBadRequest, "bad_request", "send one format parameter and no body"
	}
	format, err := render.ParseFormat(q.Get("format"))
	if err != nil {
		a.outcome = "bad_request"
		return http.StatusBadRequest, "bad_request", "unknown format; use format=dotenv, shell or json"
	}
	a.format = string(format)
	a.reached = true
	if v, missing := cfg.Missing[tenant]; missing {
		a.outcome = "config_error"
		s.opts.Logger.Error("tenant credential missing from the provider env file", "tenant", tenant, "variable", v)
		return http.StatusBadGateway, "config_error",
			fmt.Sprintf("tenant %q is misconfigured on the broker host (credential %s is not in the provider env file); tell the operator", tenant, v)
	}
	t, ok := cfg.Tenants[tenant]
	if !ok { // Decide allowed it, so the policy has it: a programming error.
		a.outcome = "config_error"
		return http.StatusInternalServerError, "internal", "tenant configuration is inconsistent; tell the operator"
	}

	// 4. Resolve (cache, then upstream) within the request deadline.
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.RequestTimeout)
	defer cancel()
	res, err := cfg.Resolver.Resolve(ctx, t)
	if err != nil {
		if fetch.KindOf(err) == fetch.KindCanceled && r.Context().Err() == nil {
			// The caller is still there: the fetch was canceled because the
			// broker is shutting down. That is "retry later", not a cancel.
			a.outcome = "shutting_down"
			s.opts.Logger.Warn("fetch canceled by shutdown", "tenant", tenant)
			return http.StatusServiceUnavailable, "upstream_unavailable",
				fmt.Sprintf("tenant %q: the broker is shutting down; retry later", tenant)
		}
		return s.fetchError(tenant, err, a)
	}
	a.source = res.Source

	// 5. Narrow to the token's keys, render, answer.
	env := res.Env
	if len(rec.Keys) > 0 {
		env = make(fetch.Env, len(res.Env))
		for k, v := range res.Env {
			if rec.AllowsKey(k) {
				env[k] = v
			}
		}
	}
	a.keys = env.Keys()
	body, err := render.Render(format, env)
	if err != nil {
		a.outcome = "render_error"
		s.opts.Logger.Error("render failed", "tenant", tenant, "format", format, "err", err)
		return http.StatusBadGateway, "unrenderable",
			fmt.Sprintf("tenant %q has a value that format %s cannot carry; use format=json or fix the value upstream", tenant, format)
	}
	h := w.Header()
	h.Set("Content-Type", format.ContentType())
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderSource, res.Source)
	if res.Stale() {
		h.Set(HeaderStale, fmt.Sprintf("%d", int(s.opts.Now().Sub(res.FetchedAt).Seconds())))
	}
	w.WriteHeader(http.StatusOK)
	w.Write(body)
	a.outcome = "ok"
	return http.StatusOK, "", ""
}

// fetchError maps a resolver error to a status and a public message, and logs
// the sanitized cause.
func (s *Server) fetchError(tenant string, err error, a *audit) (int, string, string) {
	kind := fetch.KindOf(err)
	a.outcome = "upstream_" + kind.String()
	s.opts.Logger.Warn("fetch failed", "tenant", tenant, "kind", kind.String(), "err", err)
	var fe *fetch.Error
	public := ""
	if errors.As(err, &fe) {
		public = fe.Msg
	}
	switch kind {
	case fetch.KindUnavailable:
		return http.StatusServiceUnavailable, "upstream_unavailable",
			withTenant(tenant, public, "the upstream is unreachable or rate limiting; retry later")
	case fetch.KindTimeout:
		return http.StatusGatewayTimeout, "timeout",
			withTenant(tenant, public, "the upstream did not answer in time; retry later")
	case fetch.KindCanceled:
		return 499, "canceled", "request canceled"
	case fetch.KindConfig:
		return http.StatusBadGateway, "config_error",
			withTenant(tenant, public, "the broker cannot serve this tenant as configured; tell the operator")
	case fetch.KindCredentials, fetch.KindData:
		// Not an outage: retrying will not help until someone acts.
		return http.StatusBadGateway, "upstream_rejected",
			withTenant(tenant, public, "the upstream refused this tenant's credentials or data; tell the operator")
	default: // upstream
		return http.StatusBadGateway, "upstream_error",
			withTenant(tenant, public, "the upstream answer could not be used; tell the operator")
	}
}

func withTenant(tenant, public, fallback string) string {
	if public == "" {
		public = fallback
	}
	return fmt.Sprintf("tenant %q: %s", tenant, public)
}

// ErrorBody is the JSON error shape of every non-200 answer.
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b ErrorBody
	b.Error.Code, b.Error.Message = code, msg
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(b)
}
