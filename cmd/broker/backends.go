package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/hostd/broker/internal/fallback/bwcli"
	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/scope"
)

// backends are the upstream clients built from one policy's upstream block.
// A reload that changes the block builds a new set and closes the old one.
type backends struct {
	upstream scope.Upstream
	sm       *fetch.SM      // nil when the policy has no upstream.sm
	bw       *bwcli.Backend // nil when the policy has no upstream.bw
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
// returned in retire for the caller to close once the new set is in use.
// A changed bw backend is closed (waiting for its calls) before its
// successor is used, since both would drive the same bw data dirs, which bw
// corrupts under concurrency.
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
	case u.SM.APIURL != "":
		if nb.sm, err = openSM(u.SM, stateDir, logger); err != nil {
			return nil, nil, err
		}
		fallthrough
	default:
		if old != nil && old.sm != nil {
			retire = append(retire, old.sm.Close)
		}
	}
	switch {
	case old != nil && u.BW == old.upstream.BW:
		nb.bw = old.bw
	default:
		if u.BW.ServerURL != "" {
			// New touches no data dir until its first call.
			if nb.bw, err = openBW(u.BW, stateDir, logger); err != nil {
				return nil, nil, err
			}
		}
		if old != nil && old.bw != nil {
			if err := old.bw.Close(); err != nil {
				logger.Error("closing the old bw fallback", "err", err)
			}
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
	if bs.bw != nil {
		m[fetch.BackendBWCLI] = bs.bw
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
