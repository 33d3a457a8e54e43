// Package bench measures the broker: a load driver for its Unix socket, a
// bare net/http "ceiling" server to compare it with, helpers that seed the
// in-repo upstreams with many tenants and run `broker serve` as a child
// process, and the scenarios behind `make bench`, which writes
// BENCHMARKS.md.
//
// Every figure is measured side by side in one run on a shared, noisy
// machine, so results are medians and ratios. Nothing here asserts a time.
// The caller token travels in the environment (BROKER_TOKEN), never argv,
// and no secret value is printed: the driver only counts body bytes.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of the driver.
const (
	// MaxBodyBytes bounds one response body the driver reads.
	MaxBodyBytes = 1 << 20
	// MaxRequests bounds one run.
	MaxRequests = 10_000_000
	// MaxCallers bounds the concurrent callers of one run.
	MaxCallers = 4096
	// DefaultRequestTimeout bounds one request (a little over the broker's
	// own 30 s request timeout, so the broker answers 504 first).
	DefaultRequestTimeout = 35 * time.Second
	// DefaultMaxTime bounds a whole run.
	DefaultMaxTime = 5 * time.Minute
)

// LoadConfig configures Drive.
type LoadConfig struct {
	// Network and Address say where to connect: "unix" and a socket path.
	Network, Address string
	// Token is the caller token sent as a bearer token ("" sends none; the
	// ceiling server ignores it).
	Token string
	// Tenants are requested round robin: request i asks for
	// Tenants[i%len(Tenants)].
	Tenants []string
	// Format is the format query parameter ("" sends none).
	Format string
	// Callers is the number of concurrent callers (default 1).
	Callers int
	// Requests is the number of measured requests (default 1000).
	Requests int
	// Warmup, when set, first requests every tenant once, one at a time,
	// unmeasured (so that the measured requests hit a warm cache).
	Warmup bool
	// Retries is how many times a request answered 503 or 504 is repeated
	// before it counts as an error; its latency then runs from the first
	// attempt to the last answer.
	Retries int
	// RequestTimeout bounds one attempt (default DefaultRequestTimeout).
	RequestTimeout time.Duration
	// MaxTime bounds the measured part (default DefaultMaxTime); requests
	// not started by then are reported as not run.
	MaxTime time.Duration
}

// LoadResult is what one Drive run measured. Latencies are of successful
// requests only.
type LoadResult struct {
	Callers   int            `json:"callers"`
	Requests  int            `json:"requests"`  // requests finished (ok or error)
	NotRun    int            `json:"not_run"`   // requests never started (MaxTime passed)
	OK        int            `json:"ok"`        // 200 answers
	Errors    int            `json:"errors"`    // anything else, after retries
	ByStatus  map[string]int `json:"by_status"` // errors by status code or "transport"
	Retried   int            `json:"retried"`   // attempts repeated after a 503 or 504
	ElapsedMS float64        `json:"elapsed_ms"`
	ReqPerSec float64        `json:"req_per_sec"` // finished requests per second
	Latency   Latency        `json:"latency"`
	BodyBytes int            `json:"body_bytes"` // size of the first 200 body
	WarmupMS  float64        `json:"warmup_ms,omitempty"`
	// FirstAttemptErrors counts requests whose first attempt was not a 200.
	FirstAttemptErrors int `json:"first_attempt_errors"`
}

// Latency summarizes durations in milliseconds.
type Latency struct {
	N    int     `json:"n"`
	Min  float64 `json:"min_ms"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

// Summarize returns the summary of ds (which it sorts). Percentiles use the
// nearest-rank method.
func Summarize(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return Latency{
		N:    len(ds),
		Min:  ms(ds[0]),
		P50:  ms(Percentile(ds, 50)),
		P90:  ms(Percentile(ds, 90)),
		P99:  ms(Percentile(ds, 99)),
		Max:  ms(ds[len(ds)-1]),
		Mean: ms(sum / time.Duration(len(ds))),
	}
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted ds by the
// nearest-rank method, or 0 for an empty slice.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100 + 0.999999999)
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Median returns the median of xs (the mean of the middle two for an even
// count), or 0 for none. It does not modify xs.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// NewHTTPClient returns a client whose every connection goes to address on
// network, keeping up to idle idle connections.
func NewHTTPClient(network, address string, idle int) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, address)
		},
		Proxy:               nil,
		DisableCompression:  true,
		MaxIdleConns:        idle,
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr}
}

type attempt struct {
	status int // 0: transport error
	body   int
}

// Drive runs the load described by cfg and reports what it measured. It
// fails only on a bad configuration or a failed warm-up; errors during the
// measured part are counted in the result.
func Drive(ctx context.Context, cfg LoadConfig) (LoadResult, error) {
	if cfg.Network == "" {
		cfg.Network = "unix"
	}
	if cfg.Address == "" {
		return LoadResult{}, errors.New("load: a socket address is required")
	}
	if len(cfg.Tenants) == 0 {
		return LoadResult{}, errors.New("load: at least one tenant is required")
	}
	if cfg.Callers <= 0 {
		cfg.Callers = 1
	}
	if cfg.Requests <= 0 {
		cfg.Requests = 1000
	}
	if cfg.Callers > MaxCallers || cfg.Requests > MaxRequests {
		return LoadResult{}, fmt.Errorf("load: at most %d callers and %d requests", MaxCallers, MaxRequests)
	}
	if cfg.Retries < 0 || cfg.Retries > 10 {
		return LoadResult{}, errors.New("load: retries must be between 0 and 10")
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxTime <= 0 {
		cfg.MaxTime = DefaultMaxTime
	}
	client := NewHTTPClient(cfg.Network, cfg.Address, cfg.Callers)
	defer client.CloseIdleConnections()
	urls := make([]string, len(cfg.Tenants))
	for i, t := range cfg.Tenants {
		u := url.URL{Scheme: "http", Host: "localhost", Path: "/v1/tenants/" + t + "/env"}
		if cfg.Format != "" {
			u.RawQuery = url.Values{"format": {cfg.Format}}.Encode()
		}
		urls[i] = u.String()
	}
	one := func(ctx context.Context, u string) attempt {
		actx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(actx, http.MethodGet, u, nil)
		if err != nil {
			return attempt{}
		}
		if cfg.Token != "" {
			req.Header.Set("Authorization", "Bearer "+cfg.Token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return attempt{}
		}
		n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, MaxBodyBytes))
		resp.Body.Close()
		if err != nil {
			return attempt{}
		}
		return attempt{status: resp.StatusCode, body: int(n)}
	}

	res := LoadResult{Callers: cfg.Callers, ByStatus: map[string]int{}}
	if cfg.Warmup {
		start := time.Now()
		for i, u := range urls {
			var a attempt
			for try := 0; try <= cfg.Retries; try++ {
				if a = one(ctx, u); !retryable(a.status) {
					break
				}
			}
			if a.status != http.StatusOK {
				return res, fmt.Errorf("load: warm-up request for tenant %q answered %s", cfg.Tenants[i], statusName(a.status))
			}
			if res.BodyBytes == 0 {
				res.BodyBytes = a.body
			}
		}
		res.WarmupMS = msSince(start)
	}

	mctx, cancel := context.WithTimeout(ctx, cfg.MaxTime)
	defer cancel()
	lat := make([]time.Duration, cfg.Requests)
	okAt := make([]bool, cfg.Requests)
	var (
		next                          atomic.Int64
		mu                            sync.Mutex
		finished, retried, firstError int
		bodyBytes                     int
	)
	byStatus := map[string]int{}
	var wg sync.WaitGroup
	start := time.Now()
	for range cfg.Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= cfg.Requests || mctx.Err() != nil {
					return
				}
				u := urls[i%len(urls)]
				t0 := time.Now()
				a := one(mctx, u)
				first := a.status != http.StatusOK
				tries := 0
				for tries < cfg.Retries && retryable(a.status) && mctx.Err() == nil {
					tries++
					a = one(mctx, u)
				}
				d := time.Since(t0)
				mu.Lock()
				finished++
				retried += tries
				if first {
					firstError++
				}
				if a.status == http.StatusOK {
					lat[i], okAt[i] = d, true
					if bodyBytes == 0 {
						bodyBytes = a.body
					}
				} else {
					byStatus[statusName(a.status)]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var oks []time.Duration
	for i, ok := range okAt {
		if ok {
			oks = append(oks, lat[i])
		}
	}
	res.Requests = finished
	res.NotRun = cfg.Requests - finished
	res.OK = len(oks)
	res.Errors = finished - len(oks)
	res.ByStatus = byStatus
	res.Retried = retried
	res.FirstAttemptErrors = firstError
	res.ElapsedMS = float64(elapsed) / float64(time.Millisecond)
	if elapsed > 0 {
		res.ReqPerSec = float64(finished) / elapsed.Seconds()
	}
	res.Latency = Summarize(oks)
	if res.BodyBytes == 0 {
		res.BodyBytes = bodyBytes
	}
	return res, nil
}

func retryable(status int) bool {
	return status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

func statusName(status int) string {
	if status == 0 {
		return "transport"
	}
	return fmt.Sprint(status)
}

func msSince(t time.Time) float64 { return float64(time.Since(t)) / float64(time.Millisecond) }
