package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hostd/broker/internal/fallback/bwcli"
	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/lastfetch"
	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/server"
	"github.com/hostd/broker/internal/state"
)

const (
	reloadPollInterval = 250 * time.Millisecond
	shutdownGrace      = 10 * time.Second
)

func runServe(ctx context.Context, c *cli, args []string) error {
	fs := c.newFlagSet("serve", "--policy FILE --env-file FILE --state-dir DIR [--listen unix:PATH | tcp:HOST:PORT]")
	var ff fileFlags
	c.addFileFlags(fs, &ff)
	listen := defaultListen(c)
	fs.StringVar(&listen, "listen", listen, "where to listen: unix:`PATH` (default from BROKER_SOCKET) or tcp:HOST:PORT on loopback")
	var logFormat, socketMode string
	fs.StringVar(&socketMode, "socket-mode", "0600", "unix socket `MODE`: 0600 (the broker's user and root) or 0660 (also its group, e.g. the daemon's)")
	fs.StringVar(&logFormat, "log-format", "json", "log and audit line `FORMAT`: json or text")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	if err := ff.require(true, true); err != nil {
		return err
	}
	spec, err := server.ParseListen(listen)
	if err != nil {
		return usageErr("--listen: %v", err)
	}
	var mode os.FileMode
	switch socketMode {
	case "0600", "600":
		mode = 0o600
	case "0660", "660":
		mode = 0o660
	default:
		return usageErr("--socket-mode %q: want 0600 or 0660 (callers still need a token; others never get access)", socketMode)
	}
	logger, err := newLogger(c.stderr, logFormat)
	if err != nil {
		return err
	}
	b, err := openBroker(ctx, logger, ff)
	if err != nil {
		return err
	}
	defer b.close()
	return b.serve(ctx, spec, mode)
}

func defaultListen(c *cli) string {
	if s := c.getenv("BROKER_SOCKET"); s != "" {
		return socketSpec(s)
	}
	return "unix:" + server.DefaultSocket
}

func newLogger(w io.Writer, format string) (*slog.Logger, error) {
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, nil)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, nil)), nil
	}
	return nil, usageErr("--log-format %q: want json or text", format)
}

// broker is a running serve: its files, backends and HTTP server.
type broker struct {
	log     *slog.Logger
	files   fileFlags
	base    context.Context
	cancel  context.CancelFunc
	cur     atomic.Pointer[backends] // the backends in use
	metrics *server.Metrics
	srv     *server.Server
	cache   scope.Cache
	last    *lastfetch.Recorder
	unlock  func() // releases the state dir's serve lock

	cfgMu    sync.Mutex      // serializes configuration swaps (reload, token refresh)
	tokStamp state.FileStamp // the token store's stamp when last loaded
}

// openBroker loads and checks everything serve needs, refusing to start on
// any problem, and builds the backends.
func openBroker(ctx context.Context, logger *slog.Logger, ff fileFlags) (*broker, error) {
	hardenProcess(logger)
	if err := state.EnsureStateDir(ff.stateDir); err != nil {
		return nil, err
	}
	// One serve per state dir: two would drive the same bw data dirs (which
	// bw corrupts under concurrency) and SDK state files.
	unlock, err := state.LockExclusive(ff.stateDir, "serve.lock", false)
	if errors.Is(err, state.ErrLocked) {
		return nil, withCode(exitFailure, fmt.Errorf("state dir %s is in use by another broker serve", ff.stateDir),
			"run one broker per state dir; stop the other one or give this one its own --state-dir")
	}
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			unlock()
		}
	}()
	pol, envVars, err := ff.load()
	if err != nil {
		return nil, err
	}
	tf := state.OpenTokenFile(ff.stateDir)
	stamp, _ := tf.Stamp()
	tokens, err := tf.Load()
	if err != nil {
		return nil, err
	}
	b := &broker{log: logger, files: ff, metrics: server.NewMetrics(), cache: pol.Cache, unlock: unlock, tokStamp: stamp}
	ok = true // from here on b.close releases the lock
	b.base, b.cancel = context.WithCancel(context.WithoutCancel(ctx))
	bs, _, err := openBackends(pol.Upstream, nil, ff.stateDir, logger)
	if err != nil {
		b.close()
		return nil, err
	}
	b.cur.Store(bs)
	backends := bs.resolverBackends()
	resolver := fetch.NewResolver(b.base, fetch.ResolverConfig{
		TTL:          pol.Cache.TTL.Duration,
		StaleIfError: pol.Cache.StaleIfError.Duration,
		MaxTenants:   pol.Cache.MaxTenants,
	}, backends)
	cfg := b.buildConfig(pol, envVars, tokens, resolver)
	b.last = lastfetch.NewRecorder(ff.stateDir, logger)
	b.srv = server.New(server.Options{Logger: logger, Audit: logger, Metrics: b.metrics, OnFetch: b.last.Record, RefreshTokens: b.refreshTokens}, cfg)
	b.registerMetrics()
	return b, nil
}

func (b *broker) buildConfig(pol *scope.Policy, envVars map[string]string, tokens *scope.TokenStore, r *fetch.Resolver) *server.Config {
	tenants, missing := server.BuildTenants(pol, envVars)
	for t, v := range missing {
		b.log.Warn("tenant credential missing from the provider env file; the tenant will fail until it is added",
			"tenant", t, "variable", v)
	}
	return &server.Config{Policy: pol, Tenants: tenants, Missing: missing, Tokens: tokens, Resolver: r}
}

func (b *broker) registerMetrics() {
	m := b.metrics
	m.GaugeFunc("broker_cache_entries", "Tenant envs in the cache.", func() float64 {
		_, _, n := b.srv.Config().Resolver.CacheStats()
		return float64(n)
	})
	m.CounterFunc("broker_cache_hits_total", "Env requests answered from the cache.", func() float64 {
		h, _, _ := b.srv.Config().Resolver.CacheStats()
		return float64(h)
	})
	m.CounterFunc("broker_cache_misses_total", "Env requests that went to the upstream (or joined a fetch in flight).", func() float64 {
		_, mi, _ := b.srv.Config().Resolver.CacheStats()
		return float64(mi)
	})
	registerSMMetrics(m, func() *fetch.SM { return b.cur.Load().sm })
	registerBWMetrics(m, func() *bwcli.Backend { return b.cur.Load().bw })
}

// reload re-reads the policy, the provider env file and the token store. A
// policy or env file that does not load is refused and the running policy
// kept; a changed upstream block gets new backends. A token store that does not load fails
// closed: keeping the old tokens could keep a just-revoked one alive, so
// every caller gets 401 until the store loads again (the watcher retries on
// every change, chmod included).
func (b *broker) reload(reason string) {
	b.cfgMu.Lock()
	defer b.cfgMu.Unlock()
	old := b.srv.Config()
	tf := state.OpenTokenFile(b.files.stateDir)
	b.tokStamp, _ = tf.Stamp()
	tokens, err := tf.Load()
	if err != nil {
		b.log.Error("token store does not load: refusing every caller token until it does", "reason", reason, "err", err)
		tokens = scope.NewTokenStore()
	}
	pol, envVars, err := b.files.load()
	if err != nil {
		b.log.Error("reload refused: keeping the running policy", "reason", reason, "err", err)
		if tokens != old.Tokens {
			cfg := *old
			cfg.Tokens = tokens
			b.srv.SetConfig(&cfg)
		}
		return
	}
	resolver := old.Resolver
	var retire []func()
	if cur := b.cur.Load(); pol.Upstream != cur.upstream {
		// New upstream settings: new backends (unchanged parts carried
		// over), a new resolver (nothing cached under the old upstream is
		// served), and the old backends closed once requests left them.
		bs, r, err := openBackends(pol.Upstream, cur, b.files.stateDir, b.log)
		if err != nil {
			b.log.Error("reload refused: keeping the running policy", "reason", reason, "err", err)
			cfg := *old
			cfg.Tokens = tokens
			b.srv.SetConfig(&cfg)
			return
		}
		b.cur.Store(bs)
		retire = r
		resolver = nil
	}
	if resolver == nil || pol.Cache != b.cache {
		resolver = fetch.NewResolver(b.base, fetch.ResolverConfig{
			TTL:          pol.Cache.TTL.Duration,
			StaleIfError: pol.Cache.StaleIfError.Duration,
			MaxTenants:   pol.Cache.MaxTenants,
		}, b.cur.Load().resolverBackends())
		b.cache = pol.Cache
	}
	defer func() {
		for _, f := range retire {
			go f() // closes wait for calls in flight
		}
	}()
	b.srv.SetConfig(b.buildConfig(pol, envVars, tokens, resolver))
	b.log.Info("configuration reloaded", "reason", reason, "tenants", len(pol.Tenants), "tokens", len(tokens.Tokens))
}

// refreshTokens reloads the token store if it changed since it was last
// loaded, so that a token minted a moment ago works at once rather than
// after the next poll. It returns the installed store (new or not), or nil
// if the changed store does not load (the watcher then fails closed).
func (b *broker) refreshTokens() *scope.TokenStore {
	b.cfgMu.Lock()
	defer b.cfgMu.Unlock()
	tf := state.OpenTokenFile(b.files.stateDir)
	st, err := tf.Stamp()
	if err != nil || st == b.tokStamp {
		// Unchanged since the last load; but that load may have happened
		// after the caller read its configuration (another request's
		// refresh, or the watcher): hand back what is installed now.
		return b.srv.Config().Tokens
	}
	tokens, err := tf.Load()
	if err != nil {
		return nil
	}
	b.tokStamp = st
	cfg := *b.srv.Config()
	cfg.Tokens = tokens
	b.srv.SetConfig(&cfg)
	return tokens
}

func (b *broker) serve(ctx context.Context, spec server.ListenSpec, mode os.FileMode) error {
	ln, cleanup, err := server.Listen(spec, mode)
	if err != nil {
		return err
	}
	defer cleanup()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go server.Watch(wctx, []string{b.files.policy, b.files.envFile, state.OpenTokenFile(b.files.stateDir).Path()},
		reloadPollInterval, hup, b.reload)
	b.log.Info("serving", "listen", spec.Network+":"+spec.Address, "tenants", len(b.srv.Config().Tenants))
	go func() {
		<-ctx.Done()
		b.cancel() // abort upstream fetches in flight; bw calls lock on the way out
	}()
	err = b.srv.Serve(ctx, ln, shutdownGrace)
	b.log.Info("stopped")
	return err
}

func (b *broker) close() {
	// Wait for a reload in progress, so that no backend it opens is missed.
	b.cfgMu.Lock()
	defer b.cfgMu.Unlock()
	if b.cancel != nil {
		b.cancel()
	}
	if bs := b.cur.Load(); bs != nil {
		bs.close(b.log)
	}
	if b.last != nil {
		if err := b.last.Close(); err != nil {
			b.log.Error("writing the last-fetch record", "err", err)
		}
	}
	if b.unlock != nil {
		b.unlock()
	}
}
