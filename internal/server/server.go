// Package server is the broker's local API: the HTTP handlers behind the Unix
// socket, the listener, per-connection peer credentials, the audit line and
// the client that `broker fetch` and `broker exec` use.
//
// Every request to a tenant's env runs, in this order: host and origin checks,
// the caller token (401), the scope decision (403, the same answer for an
// unknown tenant and one outside the token's scope), and only then the
// resolver and its cache. Error bodies are short fixed texts that say what to
// do; causes go to the log, never to the caller, and no value ever goes to
// either.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/peercred"
	"github.com/hostd/broker/internal/scope"
)

// Limits of the HTTP surface.
const (
	maxHeaderBytes    = 16 << 10
	readHeaderTimeout = 5 * time.Second
	idleTimeout       = 60 * time.Second
	// DefaultRequestTimeout bounds one request, upstream fetch included.
	DefaultRequestTimeout = 30 * time.Second
)

// Config is one consistent view of what the server serves: the policy, the
// tenants built from it and the provider env file, and the token store. It is
// replaced whole on reload and never mutated.
type Config struct {
	Policy  *scope.Policy
	Tenants map[string]fetch.Tenant
	// Missing names, per tenant, the credential variable absent from the
	// provider env file; such a tenant fails with a config error.
	Missing  map[string]string
	Tokens   *scope.TokenStore
	Resolver *fetch.Resolver
}

// Options configures a Server.
type Options struct {
	Logger         *slog.Logger // operational log (default: discard)
	Audit          *slog.Logger // one line per request (default: Logger)
	Metrics        *Metrics     // nil: no metrics
	RequestTimeout time.Duration
	Now            func() time.Time
	// OnFetch, when set, is told the outcome of every request that reached
	// a configured tenant (not the unauthorized, denied or malformed ones),
	// for `broker status`. It must not block.
	OnFetch func(tenant, outcome, source string, at time.Time)
	// RefreshTokens, when set, is asked after a token fails to verify: it
	// reloads the token store if its file changed since it was last loaded
	// and returns the installed store (already set with SetConfig), or nil.
	// It closes the gap between 'broker token mint' and the next poll.
	RefreshTokens func() *scope.TokenStore
}

// Server serves the local API. It is safe for concurrent use; SetConfig swaps
// the configuration atomically.
type Server struct {
	opts Options
	cfg  atomic.Pointer[Config]
	mux  *http.ServeMux
}

// New returns a Server serving cfg.
func New(opts Options, cfg *Config) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Audit == nil {
		opts.Audit = opts.Logger
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts}
	s.cfg.Store(cfg)
	s.mux = http.NewServeMux()
	for pattern, h := range s.routes() {
		s.mux.HandleFunc(pattern, h)
	}
	return s
}

// routes is the route table, kept in one place (and checked by a test).
func (s *Server) routes() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"/":                            s.notFound,
		"GET /metrics":                 s.serveMetrics,
		"GET /v1/health":               s.health,
		"GET /v1/tenants/{tenant}/env": s.tenantEnv,
		"/metrics":                     s.methodNotAllowed,
		"/v1/health":                   s.methodNotAllowed,
		"/v1/tenants/{tenant}/env":     s.methodNotAllowed,
	}
}

// SetConfig replaces the served configuration.
func (s *Server) SetConfig(cfg *Config) { s.cfg.Store(cfg) }

// Config returns the served configuration.
func (s *Server) Config() *Config { return s.cfg.Load() }

type ctxKey struct{}

// connInfo is what the server knows about the peer of one connection.
type connInfo struct {
	cred peercred.Cred
	ok   bool
	// network is reachable by a browser: a TCP connection, where DNS
	// rebinding makes the Host check matter.
	network bool
}

// ConnContext records the peer's credentials once per connection.
func (s *Server) ConnContext(ctx context.Context, c net.Conn) context.Context {
	info := &connInfo{}
	if cred, err := peercred.Get(c); err == nil {
		info.cred, info.ok = cred, true
	}
	if _, unix := c.(*net.UnixConn); !unix {
		info.network = true
	}
	return context.WithValue(ctx, ctxKey{}, info)
}

func peerOf(r *http.Request) *connInfo {
	if info, ok := r.Context().Value(ctxKey{}).(*connInfo); ok {
		return info
	}
	// Unknown connection (no ConnContext): assume the stricter network case.
	return &connInfo{network: true}
}

// ServeHTTP implements http.Handler: the origin and host checks, then the
// route table. A request carrying Origin comes from a browser page and is
// refused everywhere. On a TCP listener, which a browser can reach, Referer
// and Sec-Fetch-Site are refused too, and the Host must be a loopback name
// (DNS rebinding); on a Unix socket, which no browser can reach, any Host is
// accepted (clients send localhost, unix, or a placeholder of their own).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Origin") != "" {
		writeError(w, http.StatusForbidden, "bad_origin", "browser requests are refused; call the broker from a local program")
		return
	}
	if peerOf(r).network {
		if r.Header.Get("Referer") != "" || r.Header.Get("Sec-Fetch-Site") != "" {
			writeError(w, http.StatusForbidden, "bad_origin", "browser requests are refused; call the broker from a local program")
			return
		}
		if !validHost(r.Host) {
			writeError(w, http.StatusForbidden, "bad_host", "unexpected Host header; local callers send Host: localhost")
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// ClientHost is the Host header the broker's own client sends.
const ClientHost = "localhost"

// validHost reports whether a request's Host is one a local caller sends:
// localhost (what curl --unix-socket sends), with or without a port, or a
// loopback address with a port (the tcp: listener). Anything else could be a
// browser tricked by DNS rebinding.
func validHost(h string) bool {
	if strings.EqualFold(h, ClientHost) {
		return true
	}
	host, _, err := net.SplitHostPort(h)
	if err != nil {
		host = h
	}
	return isLoopback(strings.ToLower(strings.Trim(host, "[]")))
}

// HTTPServer returns an *http.Server for s with the broker's timeouts.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readHeaderTimeout,
		WriteTimeout:      s.opts.RequestTimeout + 5*time.Second,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnContext:       s.ConnContext,
		ErrorLog:          slog.NewLogLogger(s.opts.Logger.Handler(), slog.LevelWarn),
	}
}

// Serve serves on ln until ctx is done, then shuts down gracefully, giving
// in-flight requests up to grace to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	hs := s.HTTPServer()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("server stopped: %v", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	err := hs.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		hs.Close()
		return fmt.Errorf("shutdown: requests still running after %v were cut off", grace)
	}
	if e := <-errc; e != nil && !errors.Is(e, http.ErrServerClosed) {
		return e
	}
	return err
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, "not_found", "no such endpoint; see GET /v1/tenants/{tenant}/env, /v1/health, /metrics")
}

func (s *Server) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Allow", "GET, HEAD")
	writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET")
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	cfg := s.cfg.Load()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprintf(w, "{\"status\":\"ok\",\"tenants\":%d}\n", len(cfg.Tenants))
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if s.opts.Metrics == nil {
		s.notFound(w, r)
		return
	}
	s.opts.Metrics.ServeHTTP(w, r)
}
