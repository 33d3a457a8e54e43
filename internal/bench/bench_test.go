package bench

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(xs ...int) []time.Duration {
		out := make([]time.Duration, len(xs))
		for i, x := range xs {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"p50 of 1..100", ms(hundred...), 50, 50 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p100 of 1..100", ms(hundred...), 100, 100 * time.Millisecond},
		{"p50 of 4", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.in, tc.p); got != tc.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tc.in, tc.p, got, tc.want)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		in := append([]float64(nil), tc.in...)
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Errorf("Median modified its input: %v, was %v", tc.in, in)
			}
		}
	}
}

func TestSummarize(t *testing.T) {
	got := Summarize([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond})
	want := Latency{N: 3, Min: 1, P50: 2, P90: 3, P99: 3, Max: 3, Mean: 2}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 12
broker_requests_total{outcome="ok",source="cache"} 1.5e+06

broker_sm_live_clients 64
`
	got, err := ParseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"go_goroutines": 12, `broker_requests_total{outcome="ok",source="cache"}`: 1.5e6, "broker_sm_live_clients": 64}
	if len(got) != len(want) {
		t.Errorf("got %d samples, want %d: %v", len(got), len(want), got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("sample %s = %v, want %v", k, got[k], v)
		}
	}
	for _, bad := range []string{"novalue", "x notanumber"} {
		if _, err := ParseMetrics(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseMetrics(%q): no error", bad)
		}
	}
}

func FuzzParseMetrics(f *testing.F) {
	f.Add("go_goroutines 12\n")
	f.Add("# c\nx{a=\"b c\"} 1\n")
	f.Add("x NaN\ny +Inf\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMetrics(strings.NewReader(s))
		if err == nil && m == nil {
			t.Error("nil map without an error")
		}
	})
}

func TestParseStatus(t *testing.T) {
	in := "Name:\tbroker\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nThreads:\t42\n"
	got, err := parseStatus(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Mem{RSSKiB: 30720, HWMKiB: 40960, Threads: 42}); got != want {
		t.Errorf("parseStatus = %+v, want %+v", got, want)
	}
	if _, err := parseStatus(strings.NewReader("Name:\tx\n")); err == nil {
		t.Error("parseStatus without VmRSS: no error")
	}
}

func FuzzParseStatus(f *testing.F) {
	f.Add("VmRSS:\t1 kB\n")
	f.Add("VmRSS:\n:\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseStatus(strings.NewReader(s))
		if err == nil && m.RSSKiB == 0 {
			t.Error("no error but no RSS")
		}
	})
}

// TestDriveCeiling drives the ceiling server over a real Unix socket.
func TestDriveCeiling(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := filepath.Join(t.TempDir(), "c.sock")
	errc := make(chan error, 1)
	go func() { errc <- ServeCeiling(ctx, sock, 300) }()
	c := NewHTTPClient("unix", sock, 1)
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c.Get("http://localhost/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ceiling never answered: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.CloseIdleConnections()
	res, err := Drive(ctx, LoadConfig{Address: sock, Tenants: []string{"a", "b"}, Callers: 4, Requests: 200, Warmup: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 200 || res.Errors != 0 || res.NotRun != 0 || res.Requests != 200 {
		t.Errorf("ok=%d errors=%d not_run=%d requests=%d, want 200 ok of 200", res.OK, res.Errors, res.NotRun, res.Requests)
	}
	if res.BodyBytes != 300 {
		t.Errorf("body = %d bytes, want 300", res.BodyBytes)
	}
	if res.Latency.N != 200 || res.Latency.P50 > res.Latency.P99 || res.Latency.P99 > res.Latency.Max {
		t.Errorf("latency summary inconsistent: %+v", res.Latency)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("ServeCeiling: %v", err)
	}
}

// TestDriveCountsErrors checks that non-200 answers are errors, and that
// 503s are retried as asked.
func TestDriveCountsErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "e.sock")
	srv, calls := errorServer(t, sock)
	defer srv.Close()
	res, err := Drive(context.Background(), LoadConfig{Address: sock, Tenants: []string{"x"}, Callers: 2, Requests: 10, Retries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 0 || res.Errors != 10 || res.ByStatus["503"] != 10 {
		t.Errorf("ok=%d errors=%d by status %v, want 10 errors, all 503", res.OK, res.Errors, res.ByStatus)
	}
	if res.Retried != 20 || calls() != 30 {
		t.Errorf("retried=%d calls=%d, want 20 retries and 30 calls", res.Retried, calls())
	}
	if _, err := Drive(context.Background(), LoadConfig{Address: sock, Tenants: []string{"x"}, Warmup: true}); err == nil {
		t.Error("a warm-up answered 503: no error")
	}
}

func errorServer(t *testing.T, sock string) (*http.Server, func() int) {
	t.Helper()
	n := make(chan int, 1)
	n <- 0
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n <- <-n + 1
		http.Error(w, "busy", http.StatusServiceUnavailable)
	})}
	ln, err := listenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	return srv, func() int { v := <-n; n <- v; return v }
}

func TestSamplerPeak(t *testing.T) {
	var n int64
	sp := &sampler{stop: make(chan struct{}), done: make(chan struct{}), sample: func() int64 { return n }}
	base := time.Unix(0, 0)
	// 0 at t=0, 5 by 0.5 s, 12 by 1.0 s, 13 by 2.0 s.
	for _, s := range []struct {
		ms int
		n  int64
	}{{0, 0}, {500, 5}, {1000, 12}, {2000, 13}} {
		sp.t = append(sp.t, base.Add(time.Duration(s.ms)*time.Millisecond))
		sp.n = append(sp.n, s.n)
	}
	n = 13
	close(sp.done)
	got := sp.finish(time.Second, 3*time.Second)
	if len(got) != 2 || got[0] != 12 || got[1] != 13 {
		t.Errorf("peaks = %v, want [12 13]", got)
	}
}

func TestBenchLine(t *testing.T) {
	for _, tc := range []struct{ in, name, ns, b, allocs string }{
		{"BenchmarkRender/dotenv-2         	    6975	      8684 ns/op	 131.73 MB/s	    1408 B/op	       1 allocs/op",
			"BenchmarkRender/dotenv", "8684", "1408", "1"},
		{"BenchmarkDecide/scope1/allow-2 1000000 26.01 ns/op 0 B/op 0 allocs/op", "BenchmarkDecide/scope1/allow", "26.01", "0", "0"},
		{"BenchmarkX 10 5 ns/op", "BenchmarkX", "5", "", ""},
	} {
		m := benchLine.FindStringSubmatch(tc.in)
		if m == nil {
			t.Errorf("%q: no match", tc.in)
			continue
		}
		if m[1] != tc.name || m[2] != tc.ns || m[3] != tc.b || m[4] != tc.allocs {
			t.Errorf("%q: got %q, want name %q ns %q B %q allocs %q", tc.in, m[1:], tc.name, tc.ns, tc.b, tc.allocs)
		}
	}
}

func TestPprofLine(t *testing.T) {
	for _, tc := range []struct{ in, cum, unit, fn string }{
		{"         0     0%     0%      2.04s 46.15%  net/http.(*conn).serve", "2.04", "s", "net/http.(*conn).serve"},
		{"     0.01s  0.21%  0.21%      0.83s 17.70%  github.com/hostd/broker/internal/server.(*Server).serveTenantEnv",
			"0.83", "s", "github.com/hostd/broker/internal/server.(*Server).serveTenantEnv"},
		{"      10ms  0.21%  0.21%       30ms  0.64%  fmt.Fprintf", "30", "ms", "fmt.Fprintf"},
	} {
		m := pprofLine.FindStringSubmatch(tc.in)
		if m == nil || m[1] != tc.cum || m[2] != tc.unit || m[3] != tc.fn {
			t.Errorf("%q: got %q, want cum %s%s of %s", tc.in, m, tc.cum, tc.unit, tc.fn)
		}
	}
	if pprofLine.MatchString("      flat  flat%   sum%        cum   cum%") {
		t.Error("the header line matched")
	}
}
