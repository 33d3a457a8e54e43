package main

// End-to-end tests that a script cannot express well: many concurrent
// callers, and measurements of the real broker subprocess.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/joho/godotenv"

	"github.com/hostd/broker/internal/demo"
	"github.com/hostd/broker/internal/server"
	"github.com/hostd/broker/internal/upstream/smserver"
)

// e2eBroker is a demo and a `broker serve` subprocess serving it.
type e2eBroker struct {
	demo  *demo.Demo
	sock  string
	token string
	cmd   *exec.Cmd
	log   string
}

// startE2E starts the demo upstreams, mints a token for tenants and starts
// `broker serve` (this test binary, run as the broker).
func startE2E(t *testing.T, tenants ...string) *e2eBroker {
	t.Helper()
	bin := brokerForGoTests(t)
	dir := t.TempDir()
	d, err := demo.Start(demo.Options{Dir: filepath.Join(dir, "demo")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	registerDemoSecrets(d)
	b := &e2eBroker{demo: d, sock: filepath.Join(dir, "b.sock"), log: filepath.Join(dir, "serve.log")}

	args := []string{"token", "mint", "--state-dir", d.StateDir, "--note", t.Name()}
	for _, tn := range tenants {
		args = append(args, "--tenant", tn)
	}
	mint := exec.Command(bin, args...)
	mint.Env = goTestEnv()
	var out, errb bytes.Buffer
	mint.Stdout, mint.Stderr = &out, &errb
	if err := mint.Run(); err != nil {
		t.Fatalf("token mint: %v: %s", err, errb.String())
	}
	b.token = strings.TrimSpace(out.String())
	if !tokenRE.MatchString(b.token) {
		t.Fatalf("token mint did not print a token")
	}

	logf, err := os.Create(b.log)
	if err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.Command(bin, "serve", "--policy", d.PolicyPath, "--env-file", d.EnvFile,
		"--state-dir", d.StateDir, "--listen", "unix:"+b.sock)
	b.cmd.Env = goTestEnv()
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	done := make(chan error, 1)
	go func() { done <- b.cmd.Wait() }()
	t.Cleanup(func() {
		b.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			b.cmd.Process.Kill()
			<-done
		}
		if data, err := os.ReadFile(b.log); err == nil {
			if f, err := createCapture(captureDir(), "serve", "log"); err == nil {
				f.Write(data)
				f.Close()
			}
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", b.sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-done:
			t.Fatalf("broker serve exited before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker serve does not listen after 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return b
}

// brokerForGoTests returns the broker binary testscript put in $PATH.
func brokerForGoTests(t *testing.T) string {
	t.Helper()
	bin, err := brokerBinary()
	if err != nil {
		t.Fatalf("the broker command is not in $PATH (TestMain sets it up): %v", err)
	}
	return bin
}

// goTestEnv is the environment of broker subprocesses started by Go tests.
func goTestEnv() []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir(), captureEnv + "=" + captureDir()}
	for _, k := range []string{"TMPDIR", "GORACE", "GOCOVERDIR"} {
		if v := os.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// metric reads one counter of the broker's /metrics.
func (b *e2eBroker) metric(t *testing.T, name string) float64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://localhost/metrics", nil)
	resp, body, err := doAPI(b.sock, req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %v", err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("metric %s not exported", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatalf("metric %s: %v", name, err)
	}
	return v
}

// TestConcurrentColdFetches: twenty callers asking at once for one tenant
// nobody fetched yet cost one upstream fetch (one login, one sync, counted
// at the upstream), and every caller gets the same, exact env.
func TestConcurrentColdFetches(t *testing.T) {
	b := startE2E(t, "acme")
	sm := b.demo.SM
	sm.ResetStats()
	// Hold the sync long enough for every caller to join the fetch in flight.
	sm.InjectFault(smserver.Fault{Route: "/api/organizations/", Delay: 2 * time.Second})

	const callers = 20
	cl := server.NewClient(server.ListenSpec{Network: "unix", Address: b.sock})
	defer cl.CloseIdle()
	var wg sync.WaitGroup
	bodies := make([][]byte, callers)
	errs := make([]error, callers)
	start := make(chan struct{})
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			bodies[i], _, errs[i] = cl.Env(ctx, b.token, "acme", "json")
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)

	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	want := bodies[0]
	for i, body := range bodies {
		if !bytes.Equal(body, want) {
			t.Errorf("caller %d got a different body (%d bytes, want %d)", i, len(body), len(want))
		}
	}
	got, err := parseEnvBytes("json", want)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffEnv(got, b.demo.Tenants["acme"].Env); d != "" {
		t.Errorf("acme's env: %s", d)
	}
	st := sm.Stats()
	syncs := st.ByRoute["GET /api/organizations/{org}/secrets/sync"]
	if st.Logins != 1 || st.Requests != 1 || syncs != 1 {
		t.Errorf("upstream saw logins=%d requests=%d syncs=%d for %d concurrent cold callers, want 1, 1, 1",
			st.Logins, st.Requests, syncs, callers)
	}
	// Each caller was a miss that joined the one flight (none came late
	// enough to be a cache hit while the upstream was held).
	if misses := b.metric(t, "broker_cache_misses_total"); misses != callers {
		t.Errorf("broker_cache_misses_total = %v, want %d (every caller cold)", misses, callers)
	}
	t.Logf("%d concurrent cold callers answered in %v with one upstream fetch (upstream held 2s)", callers, elapsed.Round(time.Millisecond))

	// Then, warm: all from the cache, nothing upstream.
	sm.ResetStats()
	for range 5 {
		if _, hdr, err := cl.Env(context.Background(), b.token, "acme", "dotenv"); err != nil {
			t.Fatal(err)
		} else if src := hdr.Get(server.HeaderSource); src != "cache" {
			t.Errorf("warm request: source %q, want cache", src)
		}
	}
	if st := sm.Stats(); st.Logins+st.Requests != 0 {
		t.Errorf("warm requests reached the upstream: logins=%d requests=%d", st.Logins, st.Requests)
	}
}

// parseEnvBytes is parseEnvFile for bytes in memory.
func parseEnvBytes(format string, b []byte) (map[string]string, error) {
	f, err := os.CreateTemp("", "env-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	return parseEnvFile(format, f.Name())
}

// TestServeArgvAndEnviron checks a running broker from the outside through
// /proc: no secret in its argv (DESIGN 2.4), no master password in its
// environment (DESIGN 2.1), and the access tokens reach it only through the
// provider env file.
func TestServeArgvAndEnviron(t *testing.T) {
	b := startE2E(t, "acme", "initech")
	cl := server.NewClient(server.ListenSpec{Network: "unix", Address: b.sock})
	defer cl.CloseIdle()
	for _, tn := range []string{"acme", "initech"} {
		if _, _, err := cl.Env(context.Background(), b.token, tn, "dotenv"); err != nil {
			t.Fatalf("tenant %s: %v", tn, err)
		}
	}
	pid := b.cmd.Process.Pid
	argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	provider, err := godotenv.Read(b.demo.EnvFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range provider {
		if bytes.Contains(argv, []byte(v)) {
			t.Errorf("the broker's argv holds %s", name)
		}
		if bytes.Contains(environ, []byte(v)) {
			t.Errorf("the broker's environment holds %s", name)
		}
	}
	for _, kv := range bytes.Split(environ, []byte{0}) {
		if k, _, _ := bytes.Cut(kv, []byte("=")); bytes.HasPrefix(k, []byte("BW_")) || bytes.Contains(k, []byte("PASSWORD")) {
			t.Errorf("the broker's environment has %s", k)
		}
	}
	if n, findings := scanProcArgv(); len(findings) > 0 {
		t.Errorf("secrets in argv (%d processes scanned): %v", n, findings)
	}
}
