// Command benchsuite runs the broker's benchmark scenarios (internal/bench)
// and writes BENCHMARKS.md. `make bench` runs it through scripts/bench.sh,
// which builds the binaries it needs.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/hostd/broker/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchsuite: error: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("benchsuite", flag.ContinueOnError)
	var cfg bench.SuiteConfig
	var out, skip, dir string
	var quick bool
	fs.StringVar(&cfg.BrokerBin, "broker", "", "the broker binary (go build ./cmd/broker)")
	fs.StringVar(&cfg.LoadBin, "brokerload", "", "the brokerload binary (go build ./cmd/brokerload)")
	fs.StringVar(&cfg.BW, "bw", os.Getenv("BROKER_BW"), "the bw CLI (default $BROKER_BW)")
	fs.StringVar(&cfg.ModuleRoot, "module", ".", "module root, for go test -bench")
	fs.StringVar(&dir, "dir", "", "scratch directory (default: a new temp dir, removed at the end)")
	fs.StringVar(&out, "out", "BENCHMARKS.md", "where to write the report")
	fs.StringVar(&skip, "skip", "", "comma-separated scenarios to skip: serve, gobench, economy, storm, memory")
	fs.StringVar(&cfg.AltBrokerBin, "alt-broker", "", "a second broker `BINARY` (a candidate fix) to measure beside --broker in the serving scenario")
	fs.StringVar(&cfg.AltModule, "alt-module", "", "the candidate fix's module `DIR`, for its resolver cache-hit benchmark")
	fs.StringVar(&cfg.AltLabel, "alt-label", "after", "what to call --alt-broker in the report")
	var jsonOut, fromJSON, note string
	fs.StringVar(&note, "note", "", "a `TEXT` to add to the report's notes (what --alt-broker is, for instance)")
	fs.StringVar(&fromJSON, "from-json", "", "only write the report again from the JSON of an earlier run (--json-out)")
	fs.StringVar(&jsonOut, "json-out", "", "also write the raw report as JSON to `FILE`")
	fs.BoolVar(&quick, "quick", false, "small counts, for trying the suite out (not for BENCHMARKS.md)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fromJSON != "" {
		b, err := os.ReadFile(fromJSON)
		if err != nil {
			return err
		}
		var rep bench.Report
		if err := json.Unmarshal(b, &rep); err != nil {
			return fmt.Errorf("%s: %v", fromJSON, err)
		}
		if note != "" {
			rep.Notes = append(rep.Notes, note)
		}
		return writeReport(&rep, out, "")
	}
	if cfg.BrokerBin == "" || cfg.LoadBin == "" {
		return fmt.Errorf("--broker and --brokerload are required")
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "brkb-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	cfg.Dir = filepath.Join(dir, "r")
	cfg.Log = os.Stderr
	cfg.Skip = map[string]bool{}
	for _, s := range strings.Split(skip, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Skip[s] = true
		}
	}
	if quick {
		cfg.ServeRequests, cfg.ServeRounds, cfg.ServeTenants = 2000, 1, 4
		cfg.FallbackCalls, cfg.HelperCalls, cfg.KDFIterations = 1, 1, 5000
		cfg.StormTenants, cfg.MemTenants, cfg.MemRequests = 10, 20, 2000
		cfg.BenchTime, cfg.BenchCount = "20ms", 1
	}
	rep, err := bench.RunSuite(ctx, cfg)
	if err != nil {
		return err
	}
	if note != "" {
		rep.Notes = append(rep.Notes, note)
	}
	return writeReport(rep, out, jsonOut)
}

// writeReport writes the markdown report to out and, when jsonOut is set,
// the raw report as JSON.
func writeReport(rep *bench.Report, out, jsonOut string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := rep.WriteMarkdown(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	for _, h := range rep.Headline() {
		fmt.Fprintf(os.Stderr, "benchsuite: %s\n", h)
	}
	fmt.Fprintf(os.Stderr, "benchsuite: wrote %s\n", out)
	return nil
}
