package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/hostd/broker/internal/fallback/bwcli"
	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/scope"
	"github.com/hostd/broker/internal/server"
)

// backends are the upstream clients built from one policy's upstream block.
// A reload that changes the block builds a new set and closes the old one.
type backends struct {
	upstream scope.Upstream
	sm       *fetch.SM      // nil when the policy has no upstream.sm
	bw       *bwcli.Backend // nil when the policy has no upstream.bw
	// bwFetch is what the resolver calls for bw tenants: bw itself, or bw
	// behind a gate that opens once the backend it replaced has closed.
	bwFetch fetch.Backend
}

// smRetireGrace is how long a replaced Secrets Manager backend stays open:
// a request that read the old configuration just before the swap may
// still reach it (it closes clients only once their calls return anyway).
const smRetireGrace = server.DefaultRequestTimeout + 5*time.Second

// gate holds calls to a new bw backend until the one it replaces has
// closed (its calls finished, its vaults locked, its bw serve stopped):
// both would drive the same data dirs, which bw corrupts under concurrency.
type gate struct {
	ready chan struct{}
	next  fetch.Backend
}

func (g *gate) Fetch(ctx context.Context, t fetch.Tenant) (fetch.Env, error) {
	select {
	case <-g.ready:
	case <-ctx.Done():
		return nil, fetch.NewError(fetch.KindUnavailable, t.Name,
			"the bw fallback is being reconfigured; retry", ctx.Err())
	}
	return g.next.Fetch(ctx, t)
}

// openSM and openBW build one backend each from the policy.
func openSM(u scope.SMUpstream, stateDir string, logger *slog.Logger) (*fetch.SM, error) {
	sm, err := fetch.NewSM(fetch.SMConfig{
		APIURL:      u.APIURL,
		IdentityURL: u.IdentityURL,
		StateDir:    filepath.Join(stateDir, "sm"),
		Logger:      logger,
		Client:      u.Client,
	})
	if err != nil {
		return nil, fmt.Errorf("secrets manager backend: %v", err)
	}
	return sm, nil
}

func openBW(u scope.BWUpstream, stateDir string, logger *slog.Logger) (*bwcli.Backend, error) {
	bw, err := bwcli.New(bwcli.Config{
		ServerURL: u.ServerURL,
		CAFile:    u.CAFile,
		Mode:      u.Mode,
		StateDir:  stateDir,
		Logger:    logger,
	})
	if err != nil {
		return nil, fmt.Errorf("bw fallback backend: %v", err)
	}
	return bw, nil
}

// openBackends builds the backends for u. When old is given, a backend whose
// part of the upstream block did not change is carried over (its clients,
// logins and bw serve processes stay), and the ones that did change are
// closed by the functions returned in retire, which the caller runs (in the
// background) once the new set is installed: a replaced Secrets Manager
// backend after smRetireGrace; a replaced bw backend at once, while its
// successor waits behind a gate until that close finished.
func openBackends(u scope.Upstream, old *backends, stateDir string, logger *slog.Logger) (_ *backends, retire []func(), err error) {
	nb := &backends{upstream: u}
	defer func() {
		if err != nil && nb.sm != nil && (old == nil || nb.sm != old.sm) {
			nb.sm.Close()
		}
	}()
	switch {
	case old != nil && u.SM == old.upstream.SM:
		nb.sm = old.sm
	default:
		if u.SM.APIURL != "" {
			if nb.sm, err = openSM(u.SM, stateDir, logger); err != nil {
				return nil, nil, err
			}
		}
		if old != nil && old.sm != nil {
			prev := old.sm
			retire = append(retire, func() {
				time.Sleep(smRetireGrace)
				prev.Close()
			})
		}
	}
	switch {
	case old != nil && u.BW == old.upstream.BW:
		nb.bw, nb.bwFetch = old.bw, old.bwFetch
	default:
		if u.BW.ServerURL != "" {
			// New touches no data dir until its first call.
			if nb.bw, err = openBW(u.BW, stateDir, logger); err != nil {
				return nil, nil, err
			}
			nb.bwFetch = nb.bw
		}
		if old != nil && old.bw != nil {
			prev := old.bw
			var g *gate
			if nb.bw != nil {
				g = &gate{ready: make(chan struct{}), next: nb.bw}
				nb.bwFetch = g
			}
			retire = append(retire, func() {
				if err := prev.Close(); err != nil {
					logger.Error("closing the replaced bw fallback", "err", err)
				}
				if g != nil {
					close(g.ready)
				}
			})
		}
	}
	return nb, retire, nil
}

// resolverBackends is the backend map the resolver fetches through.
func (bs *backends) resolverBackends() map[string]fetch.Backend {
	m := map[string]fetch.Backend{}
	if bs.sm != nil {
		m[fetch.BackendSM] = bs.sm
	}
	if bs.bwFetch != nil {
		m[fetch.BackendBWCLI] = bs.bwFetch
	}
	return m
}

// close closes every backend of the set.
func (bs *backends) close(logger *slog.Logger) {
	var wg sync.WaitGroup
	if bs.bw != nil {
		wg.Go(func() {
			if err := bs.bw.Close(); err != nil {
				logger.Error("closing the bw fallback", "err", err)
			}
		})
	}
	if bs.sm != nil {
		wg.Go(bs.sm.Close)
	}
	wg.Wait()
}
