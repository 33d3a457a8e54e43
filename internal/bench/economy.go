package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hostd/broker/internal/upstream/smserver"
	"github.com/hostd/broker/internal/upstream/vwserver"
)

// CallCount is what one call cost, counted at the upstream (and, for the
// broker, from its own metrics).
type CallCount struct {
	What              string
	Logins, Requests  int64   // at the upstream; Requests excludes logins
	Processes         float64 // bw processes started (-1: not applicable)
	WallMS            float64
	BrokerSDKRequests float64 // broker_sm_upstream_requests_total delta (-1: n/a)
}

// EconomyReport is scenario 2: upstream cost per call.
type EconomyReport struct {
	SM []CallCount
}

// FallbackReport is the fallback timing beside the shell helper (part of
// scenario 2, and the per-call figure scenario 3 scales).
type FallbackReport struct {
	KDFIterations int
	Items         int
	// Wall times in milliseconds.
	Helper            []float64
	HelperSteps       map[string][]float64
	ServeFirst        CallCount
	ExecFirst         CallCount
	Serve, Exec       []CallCount
	HelperCalls       []CallCount
	ServeLog, ExecLog string
}

func (f *FallbackReport) walls(cs []CallCount) []float64 {
	out := make([]float64, len(cs))
	for i, c := range cs {
		out[i] = c.WallMS
	}
	return out
}

type snap struct {
	sm smserver.Stats
	vw vwserver.Stats
	m  map[string]float64
}

func (s *suite) economyScenario(ctx context.Context) error {
	cfg := s.cfg
	if cfg.BW == "" {
		return fmt.Errorf("the bw CLI is needed (set BROKER_BW or run make tools)")
	}
	dir := filepath.Join(cfg.Dir, "eco")
	sm := smserver.New(smserver.Options{})
	if err := sm.Start(); err != nil {
		return err
	}
	defer sm.Close()
	vw, err := vwserver.New(vwserver.Options{KDFIterations: cfg.KDFIterations})
	if err != nil {
		return err
	}
	if err := vw.Start(); err != nil {
		return err
	}
	defer vw.Close()
	smSeed := SeedSM(sm, "eco", 1)
	bwSeed, err := SeedVW(vw, cfg.Dir, "fb", max(cfg.HelperCalls, 1))
	if err != nil {
		return err
	}
	// TTL 0: every request is a refresh (SM) or a fallback call (bw).
	serveFiles, err := WriteBroker(BrokerSetup{Dir: filepath.Join(dir, "s"), CacheTTL: "0s", SM: smSeed, BW: bwSeed, BWMode: "serve"})
	if err != nil {
		return err
	}
	execFiles, err := WriteBroker(BrokerSetup{Dir: filepath.Join(dir, "x"), CacheTTL: "0s", BW: bwSeed, BWMode: "exec"})
	if err != nil {
		return err
	}
	bs, err := s.startBroker(ctx, serveFiles)
	if err != nil {
		return err
	}
	defer bs.Stop()
	bx, err := s.startBroker(ctx, execFiles)
	if err != nil {
		return err
	}
	defer bx.Stop()

	take := func(p *Proc) snap {
		sn := snap{sm: sm.Stats(), vw: vw.Stats()}
		if p != nil {
			sn.m, _ = p.Metrics(ctx)
		}
		return sn
	}
	diff := func(what string, a, b snap, wall float64, vwSide bool) CallCount {
		c := CallCount{What: what, WallMS: wall, Processes: -1, BrokerSDKRequests: -1}
		if vwSide {
			c.Logins = b.vw.Logins - a.vw.Logins
			c.Requests = (b.vw.Requests - a.vw.Requests) - c.Logins
		} else {
			c.Logins = b.sm.Logins - a.sm.Logins
			c.Requests = b.sm.Requests - a.sm.Requests
		}
		if a.m != nil && b.m != nil {
			if vwSide {
				c.Processes = b.m["broker_bw_processes_total"] - a.m["broker_bw_processes_total"]
			} else {
				c.BrokerSDKRequests = b.m["broker_sm_upstream_requests_total"] - a.m["broker_sm_upstream_requests_total"]
			}
		}
		return c
	}
	call := func(p *Proc, f *BrokerFiles, tenant, what string, vwSide bool) (CallCount, error) {
		a := take(p)
		r, err := s.load(ctx, f.Token(), "--socket", f.Socket, "--tenants", tenant, "--callers", "1", "--requests", "1", "--warmup=false")
		if err != nil {
			return CallCount{}, err
		}
		if r.OK != 1 {
			return CallCount{}, fmt.Errorf("%s: the request failed (%v); see %s", what, r.ByStatus, p.Log)
		}
		return diff(what, a, take(p), r.Latency.P50, vwSide), nil
	}

	// Secrets Manager economy.
	eco := &EconomyReport{}
	smTenant := smSeed.Tenants[0]
	for _, step := range []struct {
		what   string
		before func()
	}{
		{"cold tenant (first fetch: login + full sync)", nil},
		{"unchanged refresh", nil},
		{"unchanged refresh (again)", nil},
		{"changed refresh (one secret updated upstream)", func() {
			sm.UpdateSecret(smTenant.SecretIDs["ZIP"], "008")
		}},
		{"unchanged refresh after the change", nil},
	} {
		if step.before != nil {
			step.before()
		}
		c, err := call(bs, serveFiles, smTenant.Name, step.what, false)
		if err != nil {
			return err
		}
		eco.SM = append(eco.SM, c)
	}
	s.rep.Economy = eco

	// Fallback beside the shell helper, interleaved round by round.
	fb := &FallbackReport{KDFIterations: cfg.KDFIterations, HelperSteps: map[string][]float64{},
		ServeLog: bs.Log, ExecLog: bx.Log}
	s.rep.Fallback = fb
	tenant := bwSeed.Names[0]
	if fb.ServeFirst, err = call(bs, serveFiles, tenant, "serve mode, first call (login, bw serve start)", true); err != nil {
		return err
	}
	s.logf("fallback serve first call: %.0f ms", fb.ServeFirst.WallMS)
	if fb.ExecFirst, err = call(bx, execFiles, tenant, "exec mode, first call (login)", true); err != nil {
		return err
	}
	s.logf("fallback exec first call: %.0f ms", fb.ExecFirst.WallMS)
	rounds := max(cfg.FallbackCalls, cfg.HelperCalls)
	for r := 0; r < rounds; r++ {
		steps := []func() error{
			func() error {
				if r >= cfg.FallbackCalls {
					return nil
				}
				c, err := call(bs, serveFiles, tenant, "serve mode", true)
				fb.Serve = append(fb.Serve, c)
				s.logf("fallback serve call %d: %.0f ms", r+1, c.WallMS)
				return err
			},
			func() error {
				if r >= cfg.FallbackCalls {
					return nil
				}
				c, err := call(bx, execFiles, tenant, "exec mode", true)
				fb.Exec = append(fb.Exec, c)
				s.logf("fallback exec call %d: %.0f ms", r+1, c.WallMS)
				return err
			},
			func() error {
				if r >= cfg.HelperCalls {
					return nil
				}
				coll := bwSeed.Names[r%len(bwSeed.Names)]
				a := take(nil)
				t0 := time.Now()
				steps, items, err := ShellHelper(ctx, cfg.BW, bwSeed, coll, cfg.Dir)
				wall := msSince(t0)
				if err != nil {
					return err
				}
				fb.Items = items
				c := diff("shell helper", a, take(nil), wall, true)
				c.Processes = float64(len(steps))
				fb.HelperCalls = append(fb.HelperCalls, c)
				fb.Helper = append(fb.Helper, wall)
				for _, st := range steps {
					fb.HelperSteps[st.Name] = append(fb.HelperSteps[st.Name], float64(st.Dur)/float64(time.Millisecond))
				}
				s.logf("shell helper call %d (%s): %.0f ms", r+1, coll, wall)
				return nil
			},
		}
		// Rotate the order so that no flow always runs first.
		for i := range steps {
			if err := steps[(i+r)%len(steps)](); err != nil {
				return err
			}
		}
	}
	s.command(fmt.Sprintf("shell helper (internal/bench.ShellHelper): bw config server URL; bw login --apikey; bw unlock --raw --passwordenv BW_PASSWORD; bw sync; bw list items --collectionid ID; bw lock; bw logout  (fresh BITWARDENCLI_APPDATA_DIR each call, PBKDF2 %d)", cfg.KDFIterations))
	return nil
}
