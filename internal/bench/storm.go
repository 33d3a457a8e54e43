package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/upstream/smserver"
)

// ---- 3. boot storm ----

// StormReport is scenario 3.
type StormReport struct {
	Tenants          int
	Load             LoadResult
	Logins, Requests int64 // at the upstream
	PeakPerSecond    int64 // most upstream calls in any 1 s window
	PeakPer5Seconds  int64 // most upstream calls in any 5 s window
	// The same peaks per rate budget: the broker limits identity logins
	// and API calls apart, each to RatePerSec with Burst.
	PeakLoginsPerSecond, PeakLoginsPer5Seconds int64
	PeakAPIPerSecond, PeakAPIPer5Seconds       int64
	MeanRate                                   float64 // upstream calls per second over the storm
	RatePerSec                                 float64 // the limiter's default rate
	Burst                                      int
	LimiterBoundSeconds                        float64 // max over the budgets of (calls - burst) / rate: the least time the limiters allow
	// PredecessorPerCallMS is the median shell-helper call of this run.
	PredecessorPerCallMS float64
}

// sampler records an upstream's call count over time.
type sampler struct {
	mu     sync.Mutex
	t      []time.Time
	n      []int64
	stop   chan struct{}
	done   chan struct{}
	sample func() int64
}

func startSampler(every time.Duration, sample func() int64) *sampler {
	sp := &sampler{stop: make(chan struct{}), done: make(chan struct{}), sample: sample}
	go func() {
		defer close(sp.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			sp.mu.Lock()
			sp.t = append(sp.t, time.Now())
			sp.n = append(sp.n, sp.sample())
			sp.mu.Unlock()
			select {
			case <-sp.stop:
				return
			case <-tk.C:
			}
		}
	}()
	return sp
}

// finish stops sampling and returns, for each window length, the most
// calls seen in any window of that length.
func (sp *sampler) finish(ws ...time.Duration) (peaks []int64) {
	close(sp.stop)
	<-sp.done
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.t = append(sp.t, time.Now())
	sp.n = append(sp.n, sp.sample())
	for _, w := range ws {
		peaks = append(peaks, sp.peak(w))
	}
	return peaks
}

// peak returns the most calls seen in any window of length w: from sample
// i-1 to the last sample within w after sample i, so a window can be
// stretched by up to one sampling step.
func (sp *sampler) peak(w time.Duration) int64 {
	var peak int64
	j := 0
	for i := range sp.t {
		for j+1 < len(sp.t) && sp.t[j+1].Sub(sp.t[i]) <= w {
			j++
		}
		// Calls counted after sample i and by sample j happened within
		// (t[i-1], t[j]]; widen by one sample to the left to be safe.
		base := sp.n[max(i-1, 0)]
		if d := sp.n[j] - base; d > peak {
			peak = d
		}
	}
	return peak
}

func (s *suite) stormScenario(ctx context.Context) error {
	cfg := s.cfg
	sm := smserver.New(smserver.Options{})
	if err := sm.Start(); err != nil {
		return err
	}
	defer sm.Close()
	seed := SeedSM(sm, "cold", cfg.StormTenants)
	files, err := WriteBroker(BrokerSetup{Dir: filepath.Join(cfg.Dir, "storm"), CacheTTL: "30m", SM: seed})
	if err != nil {
		return err
	}
	list := filepath.Join(files.Dir, "tenants.txt")
	if err := WriteTenantsFile(list, files.Tenants); err != nil {
		return err
	}
	br, err := s.startBroker(ctx, files)
	if err != nil {
		return err
	}
	defer br.Stop()
	sm.ResetStats()
	total := func() int64 { st := sm.Stats(); return st.Logins + st.Requests }
	sp := startSampler(25*time.Millisecond, total)
	spLogin := startSampler(25*time.Millisecond, func() int64 { return sm.Stats().Logins })
	spAPI := startSampler(25*time.Millisecond, func() int64 { return sm.Stats().Requests })
	n := strconv.Itoa(cfg.StormTenants)
	r, err := s.load(ctx, files.Token(), "--socket", files.Socket, "--tenants-file", list, "--callers", n,
		"--requests", n, "--warmup=false", "--retries", "3", "--max-time", "4m")
	peaks := sp.finish(time.Second, 5*time.Second)
	peak, peak5 := peaks[0], peaks[1]
	lp := spLogin.finish(time.Second, 5*time.Second)
	ap := spAPI.finish(time.Second, 5*time.Second)
	if err != nil {
		return err
	}
	st := sm.Stats()
	rep := &StormReport{Tenants: cfg.StormTenants, Load: r, Logins: st.Logins, Requests: st.Requests, PeakPerSecond: peak, PeakPer5Seconds: peak5,
		RatePerSec: fetch.DefaultSMRatePerSec, Burst: fetch.DefaultSMBurst,
		PeakLoginsPerSecond: lp[0], PeakLoginsPer5Seconds: lp[1], PeakAPIPerSecond: ap[0], PeakAPIPer5Seconds: ap[1]}
	if r.ElapsedMS > 0 {
		rep.MeanRate = float64(st.Logins+st.Requests) / (r.ElapsedMS / 1000)
	}
	rep.LimiterBoundSeconds = float64(max(st.Logins, st.Requests)-int64(rep.Burst)) / rep.RatePerSec
	if fb := s.rep.Fallback; fb != nil && len(fb.Helper) > 0 {
		rep.PredecessorPerCallMS = Median(fb.Helper)
	}
	s.rep.Storm = rep
	s.logf("storm: %d tenants in %.1f s, %d logins + %d requests, peak %d/s, errors %d, first-attempt errors %d",
		cfg.StormTenants, r.ElapsedMS/1000, st.Logins, st.Requests, peak, r.Errors, r.FirstAttemptErrors)
	return nil
}

// ---- 5. Go benchmarks ----

// GoBenchRow is one benchmark's medians over its runs.
type GoBenchRow struct {
	Pkg, Name                  string
	Runs                       int
	NsPerOp, BPerOp, AllocsPer float64
}

// GoBenchReport is scenario 5.
type GoBenchReport struct {
	Command string
	Rows    []GoBenchRow
	// ServeBench is the BenchmarkServeCacheHit result line, and Profile
	// the handler's share of the server side's CPU in its profile.
	ServeBench string
	Profile    []ProfileRow
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op(?:\s+[\d.]+ MB/s)?(?:\s+([\d.]+) B/op)?(?:\s+([\d.]+) allocs/op)?`)

func (s *suite) goBench(ctx context.Context) error {
	if s.cfg.ModuleRoot == "" {
		return fmt.Errorf("no module root given")
	}
	pkgs := []string{"./internal/render", "./internal/scope", "./internal/fetch"}
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", strconv.Itoa(s.cfg.BenchCount),
		"-benchtime", s.cfg.BenchTime}, pkgs...)
	rep := &GoBenchReport{Command: "go " + strings.Join(args, " ")}
	s.command(rep.Command)
	rows, err := runGoBench(ctx, s.cfg.ModuleRoot, args, "")
	if err != nil {
		return err
	}
	rep.Rows = rows
	if s.cfg.AltModule != "" {
		// The candidate fix's own cache-hit benchmark, for before/after.
		aargs := []string{"test", "-run", "^$", "-bench", "ResolveCacheHit", "-benchmem", "-count", strconv.Itoa(s.cfg.BenchCount),
			"-benchtime", s.cfg.BenchTime, "./internal/fetch"}
		s.command("(in the " + s.cfg.AltLabel + " tree) go " + strings.Join(aargs, " "))
		alt, err := runGoBench(ctx, s.cfg.AltModule, aargs, " ("+s.cfg.AltLabel+")")
		if err != nil {
			s.note("%s benchmarks: %v", s.cfg.AltLabel, err)
		}
		rep.Rows = append(rep.Rows, alt...)
	}
	sort.SliceStable(rep.Rows, func(i, j int) bool { return rep.Rows[i].Pkg < rep.Rows[j].Pkg })
	s.rep.GoBench = rep
	if rep.ServeBench, rep.Profile, err = s.profileServe(ctx); err != nil {
		s.note("serving profile: %v", err)
	}
	return nil
}

// runGoBench runs go with args in dir and returns the medians of each
// benchmark, its package suffixed with suffix.
func runGoBench(ctx context.Context, dir string, args []string, suffix string) ([]GoBenchRow, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -bench: %v: %s", err, lastLines(out, 10))
	}
	type acc struct{ ns, b, a []float64 }
	byName := map[[2]string]*acc{}
	var order [][2]string
	pkg := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(p, "github.com/hostd/broker/") + suffix
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		k := [2]string{pkg, m[1]}
		a := byName[k]
		if a == nil {
			a = &acc{}
			byName[k] = a
			order = append(order, k)
		}
		f := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
		a.ns, a.b, a.a = append(a.ns, f(m[2])), append(a.b, f(m[3])), append(a.a, f(m[4]))
	}
	var rows []GoBenchRow
	for _, k := range order {
		a := byName[k]
		rows = append(rows, GoBenchRow{Pkg: k[0], Name: k[1], Runs: len(a.ns),
			NsPerOp: Median(a.ns), BPerOp: Median(a.b), AllocsPer: Median(a.a)})
	}
	return rows, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ProfileRow is one function's share of the server side's CPU in the
// in-process serving profile.
type ProfileRow struct {
	Func  string
	What  string
	Share float64 // cumulative CPU of Func ÷ that of net/http.(*conn).serve
}

// profiled are the functions whose share the report shows.
var profiled = []struct{ fn, what string }{
	{"net/http.(*conn).readRequest", "read and parse the request (net/http)"},
	{"net/http.(*response).finishRequest", "flush the response (net/http)"},
	{"github.com/hostd/broker/internal/server.(*Server).tenantEnv", "the broker's handler, in all"},
	{"github.com/hostd/broker/internal/server.(*Server).writeAudit", "↳ audit line (slog JSON) and metrics"},
	{"github.com/hostd/broker/internal/fetch.(*Resolver).Resolve", "↳ resolver cache hit"},
	{"github.com/hostd/broker/internal/fetch.cacheKey", "↳ ↳ of which the cache key (SHA-256 over the tenant's fields)"},
	{"github.com/hostd/broker/internal/render.Render", "↳ render (dotenv)"},
	{"github.com/hostd/broker/internal/scope.(*TokenStore).Verify", "↳ caller token check"},
}

var pprofLine = regexp.MustCompile(`^\s*[\d.]+(?:m?s)?\s+[\d.]+%\s+[\d.]+%\s+([\d.]+)(m?s)\s+[\d.]+%\s+(\S+)`)

// profileServe profiles BenchmarkServeCacheHit (the real handler in
// process) and returns each profiled function's share of the server side.
func (s *suite) profileServe(ctx context.Context) (string, []ProfileRow, error) {
	dir := filepath.Join(s.cfg.Dir, "prof")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	prof, bin := filepath.Join(dir, "cpu.out"), filepath.Join(dir, "bench.test")
	args := []string{"test", "-run", "^$", "-bench", "ServeCacheHit", "-benchmem", "-benchtime", "2s", "-cpuprofile", prof, "-o", bin, "./internal/bench"}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = s.cfg.ModuleRoot
	out, err := cmd.CombinedOutput()
	s.command(strings.ReplaceAll("go "+strings.Join(args, " "), dir, "$BENCH_DIR/prof"))
	if err != nil {
		return "", nil, fmt.Errorf("profile: %v: %s", err, lastLines(out, 5))
	}
	var benchLineOut string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "BenchmarkServeCacheHit") {
			benchLineOut = strings.Join(strings.Fields(l), " ")
		}
	}
	pargs := []string{"tool", "pprof", "-top", "-cum", "-focus", `net/http.\(\*conn\).serve`, "-nodecount", "300", bin, prof}
	pcmd := exec.CommandContext(ctx, "go", pargs...)
	pout, err := pcmd.Output()
	s.command(`go tool pprof -top -cum -focus 'net/http.\(\*conn\).serve' $BENCH_DIR/prof/bench.test $BENCH_DIR/prof/cpu.out`)
	if err != nil {
		return benchLineOut, nil, fmt.Errorf("pprof: %v", err)
	}
	cum := map[string]float64{}
	for _, l := range strings.Split(string(pout), "\n") {
		m := pprofLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		if m[2] == "ms" {
			v /= 1000
		}
		cum[m[3]] = v
	}
	total := cum["net/http.(*conn).serve"]
	if total == 0 {
		return benchLineOut, nil, fmt.Errorf("pprof: no samples in net/http.(*conn).serve")
	}
	var rows []ProfileRow
	for _, p := range profiled {
		rows = append(rows, ProfileRow{Func: p.fn, What: p.what, Share: cum[p.fn] / total})
	}
	return benchLineOut, rows, nil
}
