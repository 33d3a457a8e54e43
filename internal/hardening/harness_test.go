package hardening

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hostd/broker/internal/testutil"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// brokerBin is the broker binary TestMain builds.
var brokerBin string

// moduleRoot is the directory holding go.mod.
var moduleRoot string

func TestMain(m *testing.M) {
	code, err := setupAndRun(m)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hardening: %v\n", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setupAndRun(m *testing.M) (int, error) {
	root, err := testutil.ModuleRoot()
	if err != nil {
		return 0, err
	}
	moduleRoot = root
	// The binary lives in a 0755 directory so that the hygiene test can run
	// it as another uid.
	dir, err := os.MkdirTemp("", "broker-hardening-bin-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return 0, err
	}
	brokerBin = filepath.Join(dir, "broker")
	args := []string{"build", "-trimpath", "-o", brokerBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/broker")
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("go build ./cmd/broker: %v\n%s", err, out)
	}
	code := m.Run()
	// The leak check across the whole suite: every capture, every secret.
	hits, summary := leaks.scan()
	fmt.Println("hardening: leak scan:", summary)
	for _, h := range hits {
		fmt.Println("hardening: LEAK:", h)
	}
	if len(hits) > 0 && code == 0 {
		code = 1
	}
	return code, nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// ---- leak recorder ----

// leaks collects every seeded secret and every captured output of the
// suite; TestMain scans them all at the end.
var leaks = &leakRecorder{}

type seeded struct {
	name  string // printable label, never the value
	owner string // the tenant whose env legitimately holds it; "" for credentials
	value string
}

type capture struct {
	name  string
	data  []byte
	allow map[string]bool // owners whose values may appear (a tenant's own env on stdout)
}

type leakRecorder struct {
	mu         sync.Mutex
	secrets    []seeded
	captures   []capture
	streams    int
	streamed   int64
	streamHits []string
}

// secret registers a value that must never appear in a capture (except in
// the stdout of a successful fetch of owner).
func (l *leakRecorder) secret(name, owner, value string) {
	if len(value) < 8 {
		panic("leak scan: secret " + name + " is too short to scan for without false hits")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.secrets = append(l.secrets, seeded{name, owner, value})
}

// capture records output for the final scan.
func (l *leakRecorder) capture(name string, data []byte, allowOwners ...string) {
	c := capture{name: name, data: append([]byte(nil), data...), allow: map[string]bool{}}
	for _, o := range allowOwners {
		c.allow[o] = true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.captures = append(l.captures, c)
}

// scan reports every (capture, secret) hit by name, and a summary.
func (l *leakRecorder) scan() (hits []string, summary string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	idx := newSecretIndex(l.secrets)
	var bytesScanned int64
	for _, c := range l.captures {
		bytesScanned += int64(len(c.data))
		for _, i := range idx.find(c.data) {
			if s := l.secrets[i]; s.owner == "" || !c.allow[s.owner] {
				hits = append(hits, fmt.Sprintf("capture %q holds secret %s", c.name, s.name))
			}
		}
	}
	bytesScanned += l.streamed
	hits = append(hits, l.streamHits...)
	return hits, fmt.Sprintf("%d seeded secrets searched in %d captures (%d bytes): %d hits",
		len(l.secrets), len(l.captures)+l.streams, bytesScanned, len(hits))
}

// streamWriter scans what is written to it at once, instead of keeping
// it, for captures too large to hold (the soak's log). A secret split
// across two writes is not seen: slog writes one line per call.
type streamWriter struct {
	l    *leakRecorder
	name string
	idx  *secretIndex
}

func (l *leakRecorder) stream(name string) *streamWriter {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.streams++
	return &streamWriter{l: l, name: name, idx: newSecretIndex(l.secrets)}
}

func (w *streamWriter) Write(p []byte) (int, error) {
	found := w.idx.find(p)
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	w.l.streamed += int64(len(p))
	for _, i := range found {
		w.l.streamHits = append(w.l.streamHits, fmt.Sprintf("capture %q holds secret %s", w.name, w.idx.secrets[i].name))
	}
	return len(p), nil
}

// secretIndex finds every secret in a text in one pass: secrets are
// indexed by their first 8 bytes, and each candidate is then compared whole.
type secretIndex struct {
	secrets []seeded
	first   map[string][]int
}

func newSecretIndex(secrets []seeded) *secretIndex {
	idx := &secretIndex{secrets: append([]seeded(nil), secrets...), first: map[string][]int{}}
	for i, s := range idx.secrets {
		idx.first[s.value[:8]] = append(idx.first[s.value[:8]], i)
	}
	return idx
}

// find returns the indexes of the secrets found in data (each once).
func (x *secretIndex) find(data []byte) []int {
	var out []int
	seen := map[int]bool{}
	for p := 0; p+8 <= len(data); p++ {
		cands, ok := x.first[string(data[p:p+8])]
		if !ok {
			continue
		}
		for _, i := range cands {
			if !seen[i] && bytes.HasPrefix(data[p:], []byte(x.secrets[i].value)) {
				seen[i] = true
				out = append(out, i)
			}
		}
	}
	return out
}

// ---- random values ----

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ---- the broker as a subprocess ----

// site is the files one broker serves from.
type site struct {
	dir, policy, envFile, stateDir, sock string
}

// newSite makes a private directory for a broker. The socket lives in a
// short directory of its own (Unix socket paths are limited to 108 bytes).
func newSite(t *testing.T) *site {
	t.Helper()
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "hbs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	s := &site{
		dir:      dir,
		policy:   filepath.Join(dir, "policy.json"),
		envFile:  filepath.Join(dir, "provider.env"),
		stateDir: filepath.Join(dir, "state"),
		sock:     filepath.Join(sockDir, "b.sock"),
	}
	if err := os.Mkdir(s.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return s
}

// policySpec is what writePolicy writes.
type policySpec struct {
	smAPI, smIdentity string
	bwURL, bwCA       string
	bwMode            string
	ttl, stale        string
	tenants           map[string]map[string]any
}

func (s *site) writePolicy(t *testing.T, p policySpec) {
	t.Helper()
	up := map[string]any{}
	if p.smAPI != "" {
		up["sm"] = map[string]any{"api_url": p.smAPI, "identity_url": p.smIdentity}
	}
	if p.bwURL != "" {
		mode := p.bwMode
		if mode == "" {
			mode = "serve"
		}
		up["bw"] = map[string]any{"server_url": p.bwURL, "ca_file": p.bwCA, "mode": mode}
	}
	if p.ttl == "" {
		p.ttl = "60s"
	}
	if p.stale == "" {
		p.stale = "0s"
	}
	doc := map[string]any{
		"version":  1,
		"upstream": up,
		"cache":    map[string]any{"ttl": p.ttl, "max_tenants": 4096, "stale_if_error": p.stale},
		"tenants":  p.tenants,
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.policy, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeEnv writes the provider env file (values double-quoted; the tokens
// and passwords used here hold no '$' or '\').
func (s *site) writeEnv(t *testing.T, env map[string]string) {
	t.Helper()
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, env[k])
	}
	if err := os.WriteFile(s.envFile, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// run is the outcome of one CLI run.
type run struct {
	code           int
	stdout, stderr []byte
}

// cli runs the broker binary with args and a minimal environment plus env,
// records its stderr (and its stdout, allowing allowOwner's values), and
// returns the outcome.
func cli(t *testing.T, env []string, allowOwner string, args ...string) run {
	t.Helper()
	return runCmd(t, brokerBin, env, allowOwner, args...)
}

// runCmd runs bin like cli does.
func runCmd(t *testing.T, bin string, env []string, allowOwner string, args ...string) run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(baseEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := run{code: exitCode(err), stdout: stdout.Bytes(), stderr: stderr.Bytes()}
	name := t.Name() + ": " + filepath.Base(bin) + " " + args[0]
	leaks.capture(name+" stderr", r.stderr)
	if allowOwner == "" {
		leaks.capture(name+" stdout", r.stdout)
	} else {
		leaks.capture(name+" stdout", r.stdout, allowOwner)
	}
	return r
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}

// baseEnv is the environment every broker subprocess starts from: no
// inherited secrets, no BROKER_* variables of the developer's shell.
func baseEnv() []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir(), "LANG=C"}
	if raceEnabled {
		env = append(env, "GORACE=halt_on_error=1")
	}
	return env
}

// mint mints a caller token with the real CLI and registers it as a secret.
func mint(t *testing.T, s *site, tenants ...string) string {
	t.Helper()
	args := []string{"token", "mint", "--state-dir", s.stateDir}
	for _, tn := range tenants {
		args = append(args, "--tenant", tn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, brokerBin, args...)
	cmd.Env = baseEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("broker token mint: %v: %s", err, stderr.Bytes())
	}
	leaks.capture(t.Name()+": broker token mint stderr", stderr.Bytes())
	tok := strings.TrimSpace(stdout.String())
	if !strings.HasPrefix(tok, "brk_") {
		t.Fatalf("token mint printed no brk_ token (%d bytes)", len(tok))
	}
	leaks.secret("caller token for "+strings.Join(tenants, ","), "", tok)
	return tok
}

// brokerProc is a running `broker serve`.
type brokerProc struct {
	t      *testing.T
	site   *site
	cmd    *exec.Cmd
	stderr *testutil.SyncBuffer
	stdout *testutil.SyncBuffer
	done   chan struct{}
	hc     *http.Client
	once   sync.Once
}

// startBroker starts `broker serve` on s and waits until it answers.
func startBroker(t *testing.T, s *site, extraEnv []string, attr *syscall.SysProcAttr) *brokerProc {
	t.Helper()
	cmd := exec.Command(brokerBin, "serve", "--policy", s.policy, "--env-file", s.envFile,
		"--state-dir", s.stateDir, "--listen", "unix:"+s.sock, "--log-format", "json")
	cmd.Env = append(baseEnv(), extraEnv...)
	if bw, err := testutil.FindBW(); err == nil {
		cmd.Env = append(cmd.Env, "BROKER_BW="+bw)
	}
	cmd.SysProcAttr = attr
	b := &brokerProc{t: t, site: s, cmd: cmd, stderr: &testutil.SyncBuffer{}, stdout: &testutil.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = b.stdout, b.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start broker serve: %v", err)
	}
	go func() { cmd.Wait(); close(b.done) }()
	b.hc = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", s.sock)
		},
		DisableCompression: true,
		// One connection per request: an idle keep-alive connection would
		// hold a server goroutine and skew the goroutine counts.
		DisableKeepAlives: true,
	}, Timeout: time.Minute}
	t.Cleanup(func() { b.stop(t) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-b.done:
			b.record()
			t.Fatalf("broker serve exited at start (exit %d); stderr:\n%s", cmd.ProcessState.ExitCode(), b.stderr.Bytes())
		default:
		}
		if st, _, _ := b.get("/v1/health", nil); st == 200 {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker serve did not answer within 30s; stderr:\n%s", b.stderr.Bytes())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *brokerProc) pid() int { return b.cmd.Process.Pid }

// get sends a GET over the socket; hdr may set Host and any header (several
// values are sent as several header lines).
func (b *brokerProc) get(path string, hdr http.Header) (int, []byte, http.Header) {
	req, err := http.NewRequest("GET", "http://localhost"+path, nil)
	if err != nil {
		// A path the client library refuses is sent raw instead.
		return b.rawGet(path, hdr)
	}
	for k, vs := range hdr {
		if k == "Host" {
			req.Host = vs[0]
			continue
		}
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return 0, nil, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, body, resp.Header
}

// rawGet writes the request line by hand, for paths net/http will not send
// (raw NUL, spaces, invalid escapes).
func (b *brokerProc) rawGet(path string, hdr http.Header) (int, []byte, http.Header) {
	c, err := net.DialTimeout("unix", b.site.sock, 5*time.Second)
	if err != nil {
		return 0, nil, nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	host := "localhost"
	if h := hdr.Get("Host"); h != "" {
		host = h
	}
	var w strings.Builder
	fmt.Fprintf(&w, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", path, host)
	for k, vs := range hdr {
		if k == "Host" {
			continue
		}
		for _, v := range vs {
			fmt.Fprintf(&w, "%s: %s\r\n", k, v)
		}
	}
	w.WriteString("\r\n")
	if _, err := io.WriteString(c, w.String()); err != nil {
		return 0, nil, nil
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, nil, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, body, resp.Header
}

// metrics scrapes /metrics and returns the unlabelled samples by name.
func (b *brokerProc) metrics() map[string]float64 {
	b.t.Helper()
	st, body, _ := b.get("/metrics", nil)
	if st != 200 {
		b.t.Fatalf("GET /metrics: %d", st)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			m[name] = f
		}
	}
	return m
}

// settle waits until the broker's goroutines and open files are back to at
// most base + slack, and returns the last readings.
func (b *brokerProc) settle(baseG, baseFD float64, slack float64, within time.Duration) (g, fd float64) {
	deadline := time.Now().Add(within)
	for {
		m := b.metrics()
		g, fd = m["go_goroutines"], m["process_open_fds"]
		if (g <= baseG+slack && fd <= baseFD+slack) || time.Now().After(deadline) {
			return g, fd
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fetch runs `broker fetch` against this broker with token.
func (b *brokerProc) fetch(t *testing.T, token, tenant string, args ...string) run {
	t.Helper()
	full := append([]string{"fetch", "--socket", b.site.sock, "--tenant", tenant}, args...)
	return cli(t, []string{"BROKER_TOKEN=" + token}, tenant, full...)
}

// record hands the broker's output to the leak scan.
func (b *brokerProc) record() {
	b.once.Do(func() {
		leaks.capture(b.t.Name()+": broker serve stderr (log and audit)", b.stderr.Bytes())
		leaks.capture(b.t.Name()+": broker serve stdout", b.stdout.Bytes())
	})
}

// stop sends SIGTERM, waits, and checks a clean exit with no panic.
func (b *brokerProc) stop(t *testing.T) {
	select {
	case <-b.done:
	default:
		b.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(30 * time.Second):
			b.cmd.Process.Kill()
			<-b.done
			t.Errorf("broker serve did not stop within 30s of SIGTERM")
		}
	}
	b.hc.CloseIdleConnections()
	b.record()
	checkNoCrash(t, "broker serve", b.stderr.Bytes())
	if code := b.cmd.ProcessState.ExitCode(); code != 0 && !t.Failed() {
		t.Errorf("broker serve exited %d after SIGTERM, want 0", code)
	}
}

// auditLines returns the audit lines logged so far.
func (b *brokerProc) auditLines() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.stderr.Bytes()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == "audit" {
			out = append(out, m)
		}
	}
	return out
}

// checkNoCrash fails t when output shows a panic, a fatal runtime error or
// a data race.
func checkNoCrash(t *testing.T, what string, out []byte) {
	t.Helper()
	for _, bad := range []string{"panic:", "fatal error:", "DATA RACE", "goroutine 1 ["} {
		if bytes.Contains(out, []byte(bad)) {
			t.Errorf("%s output shows %q", what, bad)
		}
	}
}

// checkCleanFailure checks a failed CLI run: the wanted exit code, nothing
// on stdout, one "broker: error:" line naming want, no crash.
func checkCleanFailure(t *testing.T, r run, wantCode int, want string) {
	t.Helper()
	if r.code != wantCode {
		t.Errorf("exit %d, want %d; stderr: %s", r.code, wantCode, r.stderr)
	}
	if len(r.stdout) != 0 {
		t.Errorf("a failed fetch wrote %d bytes to stdout", len(r.stdout))
	}
	if !bytes.HasPrefix(r.stderr, []byte("broker: error: ")) {
		t.Errorf("stderr does not start with 'broker: error: ': %s", r.stderr)
	}
	if want != "" && !bytes.Contains(r.stderr, []byte(want)) {
		t.Errorf("stderr %q does not say %q", r.stderr, want)
	}
	checkNoCrash(t, "broker fetch", r.stderr)
}

// dirNames lists dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range es {
		n = append(n, e.Name())
	}
	return n
}

// fdKinds counts pid's open files by kind (socket, pipe, anon_inode:…, file).
func fdKinds(pid int) map[string]int {
	m := map[string]int{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	es, err := os.ReadDir(dir)
	if err != nil {
		return m
	}
	for _, e := range es {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(l, "socket:"):
			l = "socket"
		case strings.HasPrefix(l, "pipe:"):
			l = "pipe"
		case strings.HasPrefix(l, "anon_inode:"):
		default:
			l = "file"
		}
		m[l]++
	}
	return m
}
