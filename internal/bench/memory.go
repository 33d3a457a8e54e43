package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hostd/broker/internal/upstream/smserver"
)

// MemPoint is the broker's memory and goroutines at one moment.
type MemPoint struct {
	When        string
	RSSKiB      int64
	HWMKiB      int64
	Threads     int64
	Goroutines  float64
	CacheSize   float64
	LiveClients float64
	Evictions   float64
}

// MemoryReport is scenario 4.
type MemoryReport struct {
	Tenants       int
	Warm          LoadResult
	Load          LoadResult
	Points        []MemPoint
	SettleSeconds float64 // how long the goroutines took to come back after the load
	Returned      bool    // goroutines back to the post-warm-up baseline
}

type memoryRun struct {
	s      *suite
	sm     *smserver.Server
	files  *BrokerFiles
	br     *Proc
	list   string
	rep    *MemoryReport
	warmed chan struct{}
	err    error
}

func (s *suite) point(ctx context.Context, p *Proc, when string) MemPoint {
	pt := MemPoint{When: when}
	if m, err := ProcMem(p.PID()); err == nil {
		pt.RSSKiB, pt.HWMKiB, pt.Threads = m.RSSKiB, m.HWMKiB, m.Threads
	}
	if m, err := p.Metrics(ctx); err == nil {
		pt.Goroutines = m["go_goroutines"]
		pt.CacheSize = m["broker_cache_entries"]
		pt.LiveClients = m["broker_sm_live_clients"]
		pt.Evictions = m["broker_sm_client_evictions_total"]
	}
	return pt
}

// startMemory seeds the tenants, starts the broker and its warm-up in the
// background.
func (s *suite) startMemory(ctx context.Context) (*memoryRun, error) {
	cfg := s.cfg
	mr := &memoryRun{s: s, sm: smserver.New(smserver.Options{}), warmed: make(chan struct{}),
		rep: &MemoryReport{Tenants: cfg.MemTenants}}
	if err := mr.sm.Start(); err != nil {
		return nil, err
	}
	seed := SeedSM(mr.sm, "mem", cfg.MemTenants)
	files, err := WriteBroker(BrokerSetup{Dir: filepath.Join(cfg.Dir, "mem"), CacheTTL: "2h", SM: seed})
	if err != nil {
		mr.sm.Close()
		return nil, err
	}
	mr.files = files
	mr.list = filepath.Join(files.Dir, "tenants.txt")
	if err := WriteTenantsFile(mr.list, files.Tenants); err != nil {
		mr.sm.Close()
		return nil, err
	}
	if mr.br, err = s.startBroker(ctx, files); err != nil {
		mr.sm.Close()
		return nil, err
	}
	time.Sleep(500 * time.Millisecond)
	mr.rep.Points = append(mr.rep.Points, s.point(ctx, mr.br, "started, nothing cached"))
	s.logf("memory: warming %d tenants in the background (paced by the upstream limiter)", cfg.MemTenants)
	go func() {
		defer close(mr.warmed)
		// Four callers, each tenant once: the limiter (2 calls per cold
		// tenant) sets the pace, and no request waits near its timeout.
		mr.rep.Warm, mr.err = s.load(ctx, files.Token(), "--socket", files.Socket, "--tenants-file", mr.list,
			"--callers", "4", "--requests", strconv.Itoa(cfg.MemTenants), "--warmup=false", "--retries", "3", "--max-time", "15m")
	}()
	return mr, nil
}

// finish waits for the warm-up, then loads the cached tenants and measures.
func (mr *memoryRun) finish(ctx context.Context) error {
	s := mr.s
	defer mr.sm.Close()
	defer mr.br.Stop()
	s.logf("memory: waiting for the warm-up to finish")
	select {
	case <-mr.warmed:
	case <-ctx.Done():
		return ctx.Err()
	}
	if mr.err != nil {
		return mr.err
	}
	s.rep.Memory = mr.rep
	time.Sleep(time.Second)
	base := s.point(ctx, mr.br, "after warm-up (idle)")
	mr.rep.Points = append(mr.rep.Points, base)
	r, err := s.load(ctx, mr.files.Token(), "--socket", mr.files.Socket, "--tenants-file", mr.list,
		"--callers", "64", "--requests", strconv.Itoa(s.cfg.MemRequests), "--warmup=false")
	if err != nil {
		return err
	}
	mr.rep.Load = r
	mr.rep.Points = append(mr.rep.Points, s.point(ctx, mr.br, "right after the load (64 callers)"))
	t0 := time.Now()
	var last MemPoint
	for time.Since(t0) < 15*time.Second {
		last = s.point(ctx, mr.br, "settled after the load")
		if last.Goroutines <= base.Goroutines {
			mr.rep.Returned = true
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	mr.rep.SettleSeconds = time.Since(t0).Seconds()
	mr.rep.Points = append(mr.rep.Points, last)
	if r.Errors > 0 || mr.rep.Warm.Errors > 0 {
		s.note("memory scenario: %d warm-up errors, %d load errors", mr.rep.Warm.Errors, r.Errors)
	}
	if mr.rep.Warm.OK != s.cfg.MemTenants {
		return fmt.Errorf("memory: only %d of %d tenants warmed", mr.rep.Warm.OK, s.cfg.MemTenants)
	}
	return nil
}
