package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/hostd/broker/internal/bench"
)

// Limits on what brokerload reads.
const (
	maxTokenFile   = 4 << 10
	maxTenantsFile = 1 << 20
)

// usageError is a bad command line (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func exitCode(err error) int {
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// run is brokerload's whole behaviour: it parses args, then either serves
// the ceiling until ctx is done, or drives the socket and prints the result.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("brokerload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		socket, tokenFile, tenants, tenantsFile, format string
		callers, requests, retries, bodySize            int
		warmup, asJSON, ceiling                         bool
		timeout, maxTime                                time.Duration
	)
	fs.StringVar(&socket, "socket", getenv("BROKER_SOCKET"), "the Unix socket `PATH` to drive or serve on (env BROKER_SOCKET)")
	fs.StringVar(&tokenFile, "token-file", "", "read the caller token from `FILE` (default: env BROKER_TOKEN)")
	fs.StringVar(&tenants, "tenants", "", "comma-separated tenant `NAMES`, requested round robin")
	fs.StringVar(&tenantsFile, "tenants-file", "", "read tenant names from `FILE`, one per line")
	fs.StringVar(&format, "format", "dotenv", "response `FORMAT`: dotenv, shell or json")
	fs.IntVar(&callers, "callers", 1, "concurrent callers")
	fs.IntVar(&requests, "requests", 1000, "measured requests in all")
	fs.IntVar(&retries, "retries", 0, "repeat a request answered 503/504 up to `N` times")
	fs.BoolVar(&warmup, "warmup", true, "request every tenant once, unmeasured, before measuring")
	fs.DurationVar(&timeout, "timeout", bench.DefaultRequestTimeout, "bound on one request")
	fs.DurationVar(&maxTime, "max-time", bench.DefaultMaxTime, "bound on the measured run")
	fs.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	fs.BoolVar(&ceiling, "serve-ceiling", false, "serve the ceiling (a bare handler) on --socket until interrupted, instead of driving")
	fs.IntVar(&bodySize, "body-size", 512, "with --serve-ceiling: the body size in `BYTES`")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: brokerload --socket PATH --tenants T1,T2 [--callers N] [--requests N] [--json]\n"+
			"       brokerload --serve-ceiling --socket PATH --body-size BYTES\n"+
			"The caller token comes from BROKER_TOKEN or --token-file.\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if socket == "" {
		return &usageError{"--socket is required (or set BROKER_SOCKET)"}
	}
	if ceiling {
		fmt.Fprintf(stderr, "brokerload: serving the ceiling (%d-byte body) on %s\n", bodySize, socket)
		return bench.ServeCeiling(ctx, socket, bodySize)
	}
	names, err := tenantNames(tenants, tenantsFile)
	if err != nil {
		return err
	}
	token, err := callerToken(getenv, tokenFile)
	if err != nil {
		return err
	}
	res, err := bench.Drive(ctx, bench.LoadConfig{
		Network: "unix", Address: socket, Token: token, Tenants: names, Format: format,
		Callers: callers, Requests: requests, Warmup: warmup, Retries: retries,
		RequestTimeout: timeout, MaxTime: maxTime,
	})
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	fmt.Fprintf(stdout, "callers=%d requests=%d ok=%d errors=%d not_run=%d retried=%d elapsed=%.0fms req/s=%.0f "+
		"p50=%.3fms p90=%.3fms p99=%.3fms max=%.3fms body=%dB\n",
		res.Callers, res.Requests, res.OK, res.Errors, res.NotRun, res.Retried, res.ElapsedMS, res.ReqPerSec,
		res.Latency.P50, res.Latency.P90, res.Latency.P99, res.Latency.Max, res.BodyBytes)
	for s, n := range res.ByStatus {
		fmt.Fprintf(stdout, "  errors %s: %d\n", s, n)
	}
	return nil
}

func tenantNames(list, file string) ([]string, error) {
	var names []string
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("tenants file: %v", err)
		}
		defer f.Close()
		sc := bufio.NewScanner(io.LimitReader(f, maxTenantsFile))
		for sc.Scan() {
			if n := strings.TrimSpace(sc.Text()); n != "" {
				names = append(names, n)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("tenants file: %v", err)
		}
	}
	if len(names) == 0 {
		return nil, &usageError{"name at least one tenant with --tenants or --tenants-file"}
	}
	return names, nil
}

// callerToken reads the token from BROKER_TOKEN or --token-file (never a
// flag value, which would show in ps).
func callerToken(getenv func(string) string, file string) (string, error) {
	env := getenv("BROKER_TOKEN")
	switch {
	case env != "" && file != "":
		return "", &usageError{"set either BROKER_TOKEN or --token-file, not both"}
	case env != "":
		return env, nil
	case file != "":
		f, err := os.Open(file)
		if err != nil {
			return "", fmt.Errorf("token file: %v", err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
		if err != nil {
			return "", fmt.Errorf("token file: %v", err)
		}
		if len(b) > maxTokenFile {
			return "", fmt.Errorf("token file: larger than %d bytes", maxTokenFile)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", &usageError{"set BROKER_TOKEN or pass --token-file"}
}
