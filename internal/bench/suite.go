package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hostd/broker/internal/upstream/smserver"
	"github.com/hostd/broker/internal/upstream/vwserver"
)

// SuiteConfig configures RunSuite. Zero counts select the defaults of
// `make bench`.
type SuiteConfig struct {
	BrokerBin, LoadBin, BW string
	// ModuleRoot is where `go test -bench` runs ("" skips the Go
	// benchmarks).
	ModuleRoot string
	// Dir holds every file of the run (keep it short: socket paths).
	Dir string
	Log io.Writer

	ServeTenants, ServeRequests, ServeRounds int
	ServeCallers                             []int
	FallbackCalls, HelperCalls               int
	KDFIterations                            int
	StormTenants                             int
	MemTenants, MemRequests                  int
	BenchTime                                string
	BenchCount                               int
	// AltBrokerBin, when set, is a second broker binary (a candidate fix)
	// that the serving scenario measures beside BrokerBin, interleaved,
	// labelled AltLabel.
	AltBrokerBin, AltLabel string
	// AltModule, when set, is the candidate fix's module tree: its
	// resolver cache-hit benchmark runs beside the current one.
	AltModule string
	// Skip names scenarios to leave out: serve, economy, storm, memory, gobench.
	Skip map[string]bool
}

func (c *SuiteConfig) defaults() {
	def := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	def(&c.ServeTenants, 16)
	def(&c.ServeRequests, 20000)
	def(&c.ServeRounds, 3)
	def(&c.FallbackCalls, 5)
	def(&c.HelperCalls, 3)
	def(&c.KDFIterations, vwserver.DefaultKDFIterations)
	def(&c.StormTenants, 100)
	def(&c.MemTenants, 1000)
	def(&c.MemRequests, 20000)
	def(&c.BenchCount, 5)
	if len(c.ServeCallers) == 0 {
		c.ServeCallers = []int{1, 16, 64}
	}
	if c.BenchTime == "" {
		c.BenchTime = "200ms"
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// Report is everything one run measured.
type Report struct {
	Started, Finished time.Time
	Machine           Machine
	Commands          []string
	Serve             *ServeReport
	Economy           *EconomyReport
	Fallback          *FallbackReport
	Storm             *StormReport
	Memory            *MemoryReport
	GoBench           *GoBenchReport
	Notes             []string
}

// suite is one run in progress.
type suite struct {
	cfg SuiteConfig
	rep *Report
	mu  sync.Mutex
}

func (s *suite) logf(format string, args ...any) {
	fmt.Fprintf(s.cfg.Log, "bench: "+format+"\n", args...)
}

// command records a command line for the report, with the run's directory
// shown as $BENCH_DIR.
func (s *suite) command(cmd string) {
	cmd = strings.ReplaceAll(cmd, s.cfg.Dir, "$BENCH_DIR")
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.rep.Commands {
		if c == cmd {
			return
		}
	}
	s.rep.Commands = append(s.rep.Commands, cmd)
}

func (s *suite) note(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rep.Notes = append(s.rep.Notes, fmt.Sprintf(format, args...))
}

// load runs the load tool as a child (the token in BROKER_TOKEN) and
// returns its JSON result.
func (s *suite) load(ctx context.Context, token string, args ...string) (LoadResult, error) {
	args = append(args, "--json")
	cmd := exec.CommandContext(ctx, s.cfg.LoadBin, args...)
	cmd.Env = append(BaseEnv(), "BROKER_TOKEN="+token)
	var errb capWriter
	cmd.Stderr = &errb
	out, err := cmd.Output()
	s.command("BROKER_TOKEN=… brokerload " + strings.Join(args, " "))
	if err != nil {
		return LoadResult{}, fmt.Errorf("brokerload %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	var r LoadResult
	if err := json.Unmarshal(out, &r); err != nil {
		return LoadResult{}, fmt.Errorf("brokerload: bad JSON output: %v", err)
	}
	return r, nil
}

func (s *suite) startBroker(ctx context.Context, f *BrokerFiles) (*Proc, error) {
	p, err := StartBroker(ctx, s.cfg.BrokerBin, f)
	if err != nil {
		return nil, err
	}
	s.command(strings.Replace(p.Command, filepath.Base(s.cfg.BrokerBin), "broker", 1))
	return p, nil
}

// RunSuite runs every scenario not skipped and returns the report. A
// scenario that fails is noted in the report and the others still run.
func RunSuite(ctx context.Context, cfg SuiteConfig) (*Report, error) {
	cfg.defaults()
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	s := &suite{cfg: cfg, rep: &Report{Started: time.Now()}}
	s.rep.Machine = probeMachine(ctx, cfg)

	// The memory scenario's warm-up is paced by the upstream limiter
	// (two calls per cold tenant at 5/s): it runs in the background,
	// against its own upstream and broker, while the others run.
	var mem *memoryRun
	if !cfg.Skip["memory"] {
		var err error
		if mem, err = s.startMemory(ctx); err != nil {
			s.note("memory scenario failed to start: %v", err)
			mem = nil
		}
	}
	run := func(name string, fn func(context.Context) error) {
		if cfg.Skip[name] {
			return
		}
		s.logf("scenario %s: start", name)
		t0 := time.Now()
		if err := fn(ctx); err != nil {
			s.note("scenario %s failed: %v", name, err)
			s.logf("scenario %s: FAILED: %v", name, err)
			return
		}
		s.logf("scenario %s: done in %.0fs", name, time.Since(t0).Seconds())
	}
	run("serve", s.serveScenario)
	run("gobench", s.goBench)
	run("economy", s.economyScenario)
	run("storm", s.stormScenario)
	if mem != nil {
		run("memory", mem.finish)
	}
	s.rep.Machine.LoadAfter = uptime()
	s.rep.Finished = time.Now()
	return s.rep, nil
}

// ---- machine ----

// Machine describes where the run happened.
type Machine struct {
	Date, Host, CPU, GoVersion, BWVersion, Kernel string
	CPUs                                          int
	MemTotal                                      string
	LoadBefore, LoadAfter                         string
}

func probeMachine(ctx context.Context, cfg SuiteConfig) Machine {
	m := Machine{Date: time.Now().UTC().Format(time.RFC3339), LoadBefore: uptime()}
	m.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				m.CPUs++
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		l, _, _ := strings.Cut(string(b), "\n")
		m.MemTotal = strings.Join(strings.Fields(strings.TrimPrefix(l, "MemTotal:")), " ")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.CommandContext(ctx, "go", "version").Output(); err == nil {
		m.GoVersion = strings.TrimSpace(string(out))
	}
	if cfg.BW != "" {
		dir, err := os.MkdirTemp(cfg.Dir, "bwver-")
		if err == nil {
			cmd := exec.CommandContext(ctx, cfg.BW, "--version")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "BITWARDENCLI_APPDATA_DIR=" + dir, "BW_NOINTERACTION=true"}
			if out, err := cmd.Output(); err == nil {
				m.BWVersion = strings.TrimSpace(string(out))
			}
			os.RemoveAll(dir)
		}
	}
	return m
}

func uptime() string {
	out, err := exec.Command("uptime").Output()
	if err != nil {
		if b, err := os.ReadFile("/proc/loadavg"); err == nil {
			return "loadavg " + strings.TrimSpace(string(b))
		}
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// ---- 1. serving ceiling ----

// ServeRow is one caller count of the serving scenario.
type ServeRow struct {
	Callers                     int
	BrokerRPS, CeilingRPS       []float64 // one per round
	BrokerP50, BrokerP99        []float64
	CeilingP50, CeilingP99      []float64
	BrokerErrors, CeilingErrors int
	AltRPS, AltP50, AltP99      []float64
	AltErrors                   int
}

// ServeReport is scenario 1.
type ServeReport struct {
	Tenants, Requests, Rounds, BodyBytes int
	Rows                                 []*ServeRow
	BrokerRSSKiB                         int64
	AltLabel                             string // "" when no second broker was measured
}

func (s *suite) serveScenario(ctx context.Context) error {
	cfg := s.cfg
	sm := smserver.New(smserver.Options{})
	if err := sm.Start(); err != nil {
		return err
	}
	defer sm.Close()
	seed := SeedSM(sm, "srv", cfg.ServeTenants)
	files, err := WriteBroker(BrokerSetup{Dir: filepath.Join(cfg.Dir, "serve"), CacheTTL: "30m", SM: seed})
	if err != nil {
		return err
	}
	br, err := s.startBroker(ctx, files)
	if err != nil {
		return err
	}
	defer br.Stop()
	tenants := strings.Join(files.Tenants, ",")
	// Warm every tenant (and learn the body size).
	warm, err := s.load(ctx, files.Token(), "--socket", files.Socket, "--tenants", tenants, "--callers", "1", "--requests", "100", "--retries", "3")
	if err != nil {
		return err
	}
	ceilSock := filepath.Join(cfg.Dir, "serve", "ceiling.sock")
	ceil, err := StartCeiling(ctx, cfg.LoadBin, ceilSock, warm.BodyBytes)
	if err != nil {
		return err
	}
	defer ceil.Stop()
	s.command(strings.Replace(ceil.Command, filepath.Base(cfg.LoadBin), "brokerload", 1))
	rep := &ServeReport{Tenants: cfg.ServeTenants, Requests: cfg.ServeRequests, Rounds: cfg.ServeRounds, BodyBytes: warm.BodyBytes}
	var altFiles *BrokerFiles
	if cfg.AltBrokerBin != "" {
		// The same tenants and upstream, its own files and state.
		if altFiles, err = WriteBroker(BrokerSetup{Dir: filepath.Join(cfg.Dir, "serve-alt"), CacheTTL: "30m", SM: seed}); err != nil {
			return err
		}
		alt, err := StartBroker(ctx, cfg.AltBrokerBin, altFiles)
		if err != nil {
			return err
		}
		defer alt.Stop()
		s.command(strings.Replace(alt.Command, filepath.Base(cfg.AltBrokerBin), "broker("+cfg.AltLabel+")", 1))
		if _, err := s.load(ctx, altFiles.Token(), "--socket", altFiles.Socket, "--tenants", tenants, "--callers", "1", "--requests", "100", "--retries", "3"); err != nil {
			return err
		}
		rep.AltLabel = cfg.AltLabel
	}
	for _, c := range cfg.ServeCallers {
		rep.Rows = append(rep.Rows, &ServeRow{Callers: c})
	}
	for round := 0; round < cfg.ServeRounds; round++ {
		for _, row := range rep.Rows {
			args := []string{"--tenants", tenants, "--callers", strconv.Itoa(row.Callers), "--requests", strconv.Itoa(cfg.ServeRequests)}
			// Rotate who goes first, round by round.
			order := []string{"broker", "ceiling"}
			if altFiles != nil {
				order = append(order, "alt")
			}
			order = append(order[round%len(order):], order[:round%len(order)]...)
			for _, who := range order {
				sock, tok := ceilSock, files.Token()
				switch who {
				case "broker":
					sock = files.Socket
				case "alt":
					sock, tok = altFiles.Socket, altFiles.Token()
				}
				r, err := s.load(ctx, tok, append([]string{"--socket", sock}, args...)...)
				if err != nil {
					return err
				}
				isBroker := who == "broker"
				if who == "alt" {
					row.AltRPS = append(row.AltRPS, r.ReqPerSec)
					row.AltP50 = append(row.AltP50, r.Latency.P50)
					row.AltP99 = append(row.AltP99, r.Latency.P99)
					row.AltErrors += r.Errors + r.NotRun
				} else if isBroker {
					row.BrokerRPS = append(row.BrokerRPS, r.ReqPerSec)
					row.BrokerP50 = append(row.BrokerP50, r.Latency.P50)
					row.BrokerP99 = append(row.BrokerP99, r.Latency.P99)
					row.BrokerErrors += r.Errors + r.NotRun
				} else {
					row.CeilingRPS = append(row.CeilingRPS, r.ReqPerSec)
					row.CeilingP50 = append(row.CeilingP50, r.Latency.P50)
					row.CeilingP99 = append(row.CeilingP99, r.Latency.P99)
					row.CeilingErrors += r.Errors + r.NotRun
				}
				s.logf("serve round %d callers %d %s: %.0f req/s p99 %.2f ms errors %d", round+1, row.Callers,
					who, r.ReqPerSec, r.Latency.P99, r.Errors)
			}
		}
	}
	if m, err := ProcMem(br.PID()); err == nil {
		rep.BrokerRSSKiB = m.RSSKiB
	}
	s.rep.Serve = rep
	return nil
}
