package main

// End-to-end tests of the broker command. The scripts in testdata/*.txtar run
// the real `broker` binary (this test binary, copied into $PATH by
// testscript) as subprocesses against the in-repo upstreams, which run in
// this test process and are driven by the custom commands below.
//
// Everything the subprocesses write is also copied into a capture directory,
// and after every test has run, TestMain scans it for the seeded secret
// values and credentials (see leak_test.go).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/hostd/broker/internal/testutil"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/joho/godotenv"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/hostd/broker/internal/demo"
	"github.com/hostd/broker/internal/server"
	"github.com/hostd/broker/internal/upstream/smserver"
)

// Environment variables the harness passes to the broker subprocesses.
const (
	// captureEnv names the directory where every subprocess copies its
	// stdout and stderr for the leak scan.
	captureEnv = "BROKER_TEST_CAPTURE"
	// exitFileEnv names the file where a broker subprocess records its exit
	// code, for the exitcode command.
	exitFileEnv = "BROKER_TEST_EXIT"
)

// tokenRE matches a whole caller token.
var tokenRE = regexp.MustCompile(`brk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}`)

func TestMain(m *testing.M) {
	testscript.Main(&leakScanM{m: m}, map[string]func(){
		"broker":  brokerMain,
		"envdump": envdumpMain,
	})
}

// brokerMain is the broker command as the scripts run it: main, plus a copy
// of its output for the leak scan and its exit code for exitcode.
func brokerMain() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	args := os.Args[1:]
	label := commandLabel(args)
	var stdout, stderr io.Writer = os.Stdout, os.Stderr
	if dir := os.Getenv(captureEnv); dir != "" {
		if f, err := createCapture(dir, label, "stdout"); err == nil {
			defer f.Close()
			stdout = io.MultiWriter(os.Stdout, f)
		}
		if f, err := createCapture(dir, label, "stderr"); err == nil {
			defer f.Close()
			stderr = io.MultiWriter(os.Stderr, f)
		}
	}
	exitFile := os.Getenv(exitFileEnv)
	if exitFile != "" {
		// A broker exec that succeeds replaces this process and never
		// records a code: "running" then tells exitcode so.
		os.WriteFile(exitFile, []byte("running"), 0o600)
	}
	code := run(ctx, args, os.Stdin, stdout, stderr)
	stop()
	if exitFile != "" {
		os.WriteFile(exitFile, []byte(strconv.Itoa(code)), 0o600)
	}
	os.Exit(code)
}

// envdumpMain writes its environment to the file named by its argument as
// NUL-terminated KEY=VALUE records (binary-safe, unlike env(1)).
func envdumpMain() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: envdump FILE")
		os.Exit(2)
	}
	var b bytes.Buffer
	for _, kv := range os.Environ() {
		b.WriteString(kv)
		b.WriteByte(0)
	}
	if err := os.WriteFile(os.Args[1], b.Bytes(), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "envdump:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// commandLabel names a broker invocation for capture files: "fetch",
// "token-mint", ...
func commandLabel(args []string) string {
	if len(args) == 0 {
		return "none"
	}
	l := args[0]
	if l == "token" && len(args) > 1 {
		l += "-" + args[1]
	}
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r == '-' {
			return r
		}
		return '_'
	}, l)
}

var captureSeq struct {
	sync.Mutex
	n int
}

// createCapture creates a fresh capture file LABEL.STREAM.UNIQUE in dir.
func createCapture(dir, label, stream string) (*os.File, error) {
	captureSeq.Lock()
	captureSeq.n++
	n := captureSeq.n
	captureSeq.Unlock()
	name := fmt.Sprintf("%s.%s.%d-%d-%d", label, stream, os.Getpid(), n, time.Now().UnixNano())
	return os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}

// brokerBinary is the broker command testscript put in $PATH.
func brokerBinary() (string, error) {
	return exec.LookPath("broker")
}

// scriptState is what the custom commands keep per script.
type scriptState struct {
	mu   sync.Mutex
	demo *demo.Demo
	bg   map[string]*bgProc
}

type bgProc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

type stateKey struct{}

func stateOf(ts *testscript.TestScript) *scriptState {
	return ts.Value(stateKey{}).(*scriptState)
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			env.Values[stateKey{}] = &scriptState{bg: map[string]*bgProc{}}
			env.Setenv(captureEnv, captureDir())
			env.Setenv(exitFileEnv, filepath.Join(env.WorkDir, ".broker-exit"))
			// The scripts pass paths explicitly unless they test these.
			for _, k := range []string{"BROKER_POLICY", "BROKER_ENV_FILE", "BROKER_STATE_DIR", "BROKER_SOCKET", "BROKER_TOKEN"} {
				env.Setenv(k, "")
			}
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"demo":          cmdDemo,
			"policy":        cmdPolicy,
			"serve-bg":      cmdServeBG,
			"wait-socket":   cmdWaitSocket,
			"kill-bg":       cmdKillBG,
			"wait-bg":       cmdWaitBG,
			"wait-log":      cmdWaitLog,
			"proc-env":      cmdProcEnv,
			"upstream":      cmdUpstream,
			"envcmp":        cmdEnvcmp,
			"childenv":      cmdChildEnv,
			"valcmp":        cmdValcmp,
			"mint":          cmdMint,
			"tamper":        cmdTamper,
			"exitcode":      cmdExitcode,
			"api":           cmdAPI,
			"poll":          cmdPoll,
			"perm":          cmdPerm,
			"ls":            cmdLs,
			"sleep":         cmdSleep,
			"metrics":       cmdMetrics,
			"scan-argv":     cmdScanArgv,
			"no-token-file": cmdNoTokenFile,
		},
	})
}

// subprocEnv is the environment of a broker subprocess started by a custom
// command: the script's values of the variables the broker and the harness
// read.
func subprocEnv(ts *testscript.TestScript) []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "GORACE", "GOCOVERDIR", "GOTRACEBACK",
		"BROKER_POLICY", "BROKER_ENV_FILE", "BROKER_STATE_DIR", "BROKER_SOCKET", "BROKER_BW", "BROKER_TOKEN",
		captureEnv} {
		if v := ts.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// ---- demo and policy ----

// demo [-fallback] [-ttl DUR] [-bwmode MODE]
//
// Starts the demo upstreams in $WORK/demo and exports POLICY, ENVFILE,
// STATEDIR and SOCK (and BROKER_BW with -fallback).
func cmdDemo(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! demo")
	}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fallback := fs.Bool("fallback", false, "")
	ttl := fs.String("ttl", "", "")
	bwMode := fs.String("bwmode", "", "")
	ts.Check(fs.Parse(args))
	st := stateOf(ts)
	if st.demo != nil {
		ts.Fatalf("demo already started")
	}
	opts := demo.Options{Dir: ts.MkAbs("demo"), Fallback: *fallback, BWMode: *bwMode, KDFIterations: 5000}
	if *fallback {
		bw, err := testutil.FindBW()
		if err != nil {
			ts.Fatalf("%v", err)
		}
		ts.Setenv("BROKER_BW", bw) // bwcli.FindBW in the broker looks here
	}
	d, err := demo.Start(opts)
	ts.Check(err)
	ts.Defer(d.Close)
	st.demo = d
	registerDemoSecrets(d)
	if *ttl != "" {
		editPolicy(ts, func(p map[string]any) { p["cache"].(map[string]any)["ttl"] = *ttl })
	}
	ts.Setenv("POLICY", d.PolicyPath)
	ts.Setenv("ENVFILE", d.EnvFile)
	ts.Setenv("STATEDIR", d.StateDir)
	ts.Setenv("SOCK", ts.MkAbs("b.sock"))
}

func demoOf(ts *testscript.TestScript) *demo.Demo {
	d := stateOf(ts).demo
	if d == nil {
		ts.Fatalf("no demo started")
	}
	return d
}

// editPolicy rewrites the demo policy atomically (a watcher never sees a
// half-written file).
func editPolicy(ts *testscript.TestScript, edit func(map[string]any)) {
	d := demoOf(ts)
	b, err := os.ReadFile(d.PolicyPath)
	ts.Check(err)
	var p map[string]any
	ts.Check(json.Unmarshal(b, &p))
	edit(p)
	out, err := json.MarshalIndent(p, "", "  ")
	ts.Check(err)
	writeAtomic(ts, d.PolicyPath, out)
}

func writeAtomic(ts *testscript.TestScript, name string, data []byte) {
	tmp := name + ".new"
	ts.Check(os.WriteFile(tmp, data, 0o600))
	ts.Check(os.Rename(tmp, name))
}

// policy add-tenant NEW FROM | policy break | policy restore
//
// add-tenant adds tenant NEW with FROM's settings; break replaces the policy
// with one that does not load (keeping the old one for restore).
func cmdPolicy(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: policy add-tenant NEW FROM | policy break")
	}
	switch {
	case args[0] == "add-tenant" && len(args) == 3:
		editPolicy(ts, func(p map[string]any) {
			tenants := p["tenants"].(map[string]any)
			from, ok := tenants[args[2]]
			if !ok {
				ts.Fatalf("no tenant %q in the policy", args[2])
			}
			tenants[args[1]] = from
		})
		// The new tenant serves the same values as FROM.
		d := demoOf(ts)
		d.Tenants[args[1]] = d.Tenants[args[2]]
	case args[0] == "break" && len(args) == 1:
		p := demoOf(ts).PolicyPath
		good, err := os.ReadFile(p)
		ts.Check(err)
		ts.Check(os.WriteFile(p+".good", good, 0o600))
		writeAtomic(ts, p, []byte(`{"version": 1, "tenants": {"Bad Name": {}}, "surprise": true}`))
	case args[0] == "sm-base" && len(args) == 2:
		editPolicy(ts, func(p map[string]any) {
			sm := p["upstream"].(map[string]any)["sm"].(map[string]any)
			sm["api_url"], sm["identity_url"] = args[1]+"/api", args[1]+"/identity"
		})
	case args[0] == "restore" && len(args) == 1:
		p := demoOf(ts).PolicyPath
		good, err := os.ReadFile(p + ".good")
		ts.Check(err)
		writeAtomic(ts, p, good)
	default:
		ts.Fatalf("usage: policy add-tenant NEW FROM | policy break | policy restore | policy sm-base URL")
	}
}

// ---- background broker serve ----

// serve-bg NAME [ARGS...]
//
// Starts `broker serve ARGS...` in the background; its stderr (the log)
// goes to $WORK/NAME.log.
func cmdServeBG(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 {
		ts.Fatalf("usage: serve-bg NAME [ARGS...]")
	}
	name := args[0]
	st := stateOf(ts)
	if _, ok := st.bg[name]; ok {
		ts.Fatalf("background process %q already exists", name)
	}
	bin, err := brokerBinary()
	ts.Check(err)
	logPath := ts.MkAbs(name + ".log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	ts.Check(err)
	cmd := exec.Command(bin, append([]string{"serve"}, args[1:]...)...)
	cmd.Dir = ts.MkAbs(".")
	cmd.Env = subprocEnv(ts)
	cmd.Stdout = logf
	cmd.Stderr = logf
	ts.Check(cmd.Start())
	logf.Close()
	p := &bgProc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	st.bg[name] = p
	ts.Defer(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				<-p.done
			}
		}
		// Keep the log for the leak scan.
		if b, err := os.ReadFile(logPath); err == nil {
			if f, err := createCapture(captureDir(), "serve", "log"); err == nil {
				f.Write(b)
				f.Close()
			}
		}
	})
}

func bgOf(ts *testscript.TestScript, name string) *bgProc {
	p := stateOf(ts).bg[name]
	if p == nil {
		ts.Fatalf("no background process %q", name)
	}
	return p
}

// wait-socket PATH
//
// Waits until something accepts connections on the Unix socket PATH; fails
// early when a background broker exits.
func cmdWaitSocket(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: wait-socket PATH")
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("unix", args[0], time.Second); err == nil {
			c.Close()
			return
		}
		for name, p := range stateOf(ts).bg {
			select {
			case <-p.done:
				if p.cmd.ProcessState != nil && p.cmd.ProcessState.Exited() {
					ts.Fatalf("background broker %q exited (%v) before serving; see %s", name, p.err, p.log)
				}
			default:
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	ts.Fatalf("nothing listens on %s after 30s", args[0])
}

// kill-bg NAME TERM|HUP|INT|KILL
func cmdKillBG(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: kill-bg NAME TERM|HUP|INT|KILL")
	}
	sigs := map[string]os.Signal{"TERM": syscall.SIGTERM, "HUP": syscall.SIGHUP, "INT": os.Interrupt, "KILL": os.Kill}
	sig, ok := sigs[args[1]]
	if !ok {
		ts.Fatalf("unknown signal %q", args[1])
	}
	ts.Check(bgOf(ts, args[0]).cmd.Process.Signal(sig))
}

// wait-bg NAME CODE
//
// Waits (up to 20s) for a background broker to exit with CODE (-1: killed
// by a signal).
func cmdWaitBG(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: wait-bg NAME CODE")
	}
	want, err := strconv.Atoi(args[1])
	ts.Check(err)
	p := bgOf(ts, args[0])
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		ts.Fatalf("background broker %q still running after 20s", args[0])
	}
	if got := p.cmd.ProcessState.ExitCode(); got != want {
		ts.Fatalf("background broker %q exited with %d, want %d", args[0], got, want)
	}
}

// wait-log NAME [-n N] [-t DUR] REGEXP
//
// Waits until the log of background broker NAME has at least N (default 1)
// lines matching REGEXP.
func cmdWaitLog(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: wait-log NAME [-n N] [-t DUR] REGEXP")
	}
	p := bgOf(ts, args[0])
	fs := flag.NewFlagSet("wait-log", flag.ContinueOnError)
	n := fs.Int("n", 1, "")
	timeout := fs.Duration("t", 10*time.Second, "")
	ts.Check(fs.Parse(args[1:]))
	if fs.NArg() != 1 {
		ts.Fatalf("usage: wait-log NAME [-n N] [-t DUR] REGEXP")
	}
	re, err := regexp.Compile(fs.Arg(0))
	ts.Check(err)
	deadline := time.Now().Add(*timeout)
	for {
		b, _ := os.ReadFile(p.log)
		got := 0
		for _, line := range strings.Split(string(b), "\n") {
			if re.MatchString(line) {
				got++
			}
		}
		if got >= *n {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("log of %q has %d lines matching %q after %v, want %d", args[0], got, fs.Arg(0), *timeout, *n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// proc-env NAME
//
// Prints the names (never the values) of the environment variables of
// background process NAME, one a line, from /proc.
func cmdProcEnv(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: proc-env NAME")
	}
	if runtime.GOOS != "linux" {
		ts.Fatalf("proc-env needs /proc (linux)")
	}
	p := bgOf(ts, args[0])
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.cmd.Process.Pid))
	ts.Check(err)
	var names []string
	for _, kv := range bytes.Split(b, []byte{0}) {
		if k, _, ok := bytes.Cut(kv, []byte("=")); ok {
			names = append(names, string(k))
		}
	}
	sort.Strings(names)
	fmt.Fprintln(ts.Stdout(), strings.Join(names, "\n"))
}

// scan-argv
//
// Fails if the argv of any process on the host holds a seeded secret or
// credential (DESIGN 2.4: nothing secret in any argv).
func cmdScanArgv(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: scan-argv")
	}
	n, findings := scanProcArgv()
	if len(findings) > 0 {
		ts.Fatalf("secrets in argv: %s", strings.Join(findings, "; "))
	}
	fmt.Fprintf(ts.Stdout(), "scanned %d argv\n", n)
}

// ---- the upstream ----

// upstream stop | start | stats | reset-stats | revoke TENANT | clear |
// pending | wait-sync N | fault [-route R] [-times N] [-status S] [-retry-after D] [-delay D]
//
// Drives the demo's Secrets Manager upstream: stop and start it (same port,
// state kept), print its request counters, revoke a tenant's access token,
// queue faults, drop them, or print how many fault uses are left.
func cmdUpstream(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: upstream stop|start|stats|reset-stats|revoke|update|fault ...")
	}
	sm := demoOf(ts).SM
	switch args[0] {
	case "stop":
		sm.Stop()
	case "start":
		ts.Check(sm.StartAt(sm.Addr()))
	case "move":
		// Serve on a new port (the old one is closed) and export its base
		// URL as SMURL.
		sm.Stop()
		ts.Check(sm.Start())
		ts.Setenv("SMURL", sm.URL())
	case "stats":
		s := sm.Stats()
		sync := s.ByRoute[syncRoute]
		fmt.Fprintf(ts.Stdout(), "logins=%d requests=%d sync=%d\n", s.Logins, s.Requests, sync)
	case "reset-stats":
		sm.ResetStats()
	case "revoke":
		if len(args) != 2 {
			ts.Fatalf("usage: upstream revoke TENANT")
		}
		sm.RevokeAccessToken(accessTokenID(ts, args[1]))
	case "fault":
		fs := flag.NewFlagSet("fault", flag.ContinueOnError)
		var f smserver.Fault
		fs.StringVar(&f.Route, "route", "api", "")
		fs.IntVar(&f.Times, "times", 1, "")
		fs.IntVar(&f.Status, "status", 0, "")
		fs.DurationVar(&f.RetryAfter, "retry-after", 0, "")
		fs.DurationVar(&f.Delay, "delay", 0, "")
		ts.Check(fs.Parse(args[1:]))
		sm.InjectFault(f)
	case "clear":
		sm.ClearFaults()
	case "wait-sync":
		// wait-sync N: until N syncs have reached the upstream (20s at most).
		if len(args) != 2 {
			ts.Fatalf("usage: upstream wait-sync N")
		}
		n, err := strconv.ParseInt(args[1], 10, 64)
		ts.Check(err)
		deadline := time.Now().Add(20 * time.Second)
		for sm.Stats().ByRoute[syncRoute] < n {
			if time.Now().After(deadline) {
				ts.Fatalf("fewer than %d syncs reached the upstream in 20s", n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	case "pending":
		fmt.Fprintf(ts.Stdout(), "pending=%d\n", sm.PendingFaults())
	default:
		ts.Fatalf("unknown upstream command %q", args[0])
	}
}

// syncRoute is the upstream route of a Secrets Manager sync.
const syncRoute = "GET /api/organizations/{org}/secrets/sync"

// accessTokenID returns the upstream id of a demo tenant's access token
// (the token is "0.<id>.<secret>:<key>"), read from the provider env file.
func accessTokenID(ts *testscript.TestScript, tenant string) string {
	d := demoOf(ts)
	t, ok := d.Tenants[tenant]
	if !ok || t.TokenEnv == "" {
		ts.Fatalf("no Secrets Manager demo tenant %q", tenant)
	}
	env, err := godotenv.Read(d.EnvFile)
	ts.Check(err)
	parts := strings.SplitN(env[t.TokenEnv], ".", 3)
	if len(parts) != 3 {
		ts.Fatalf("access token of %q is not in the expected format", tenant)
	}
	return parts[1]
}

// ---- comparing envs ----

// envcmp [-keys GLOB,GLOB] dotenv|shell|json FILE TENANT
//
// Parses FILE in the given format (godotenv, /bin/sh, encoding/json) and
// compares it with the demo tenant's env byte for byte (restricted to the
// keys matching a glob, if given). Reports key names only.
func cmdEnvcmp(ts *testscript.TestScript, neg bool, args []string) {
	fs := flag.NewFlagSet("envcmp", flag.ContinueOnError)
	keys := fs.String("keys", "", "")
	ts.Check(fs.Parse(args))
	if fs.NArg() != 3 {
		ts.Fatalf("usage: envcmp [-keys GLOBS] dotenv|shell|json FILE TENANT")
	}
	format, file, tenant := fs.Arg(0), ts.MkAbs(fs.Arg(1)), fs.Arg(2)
	want := expectedEnv(ts, tenant, *keys)
	got, err := parseEnvFile(format, file)
	ts.Check(err)
	diff := diffEnv(got, want)
	switch {
	case neg && diff == "":
		ts.Fatalf("%s is exactly tenant %s's env", fs.Arg(1), tenant)
	case !neg && diff != "":
		ts.Fatalf("%s differs from tenant %s's env: %s", fs.Arg(1), tenant, diff)
	}
}

func expectedEnv(ts *testscript.TestScript, tenant, globs string) map[string]string {
	t, ok := demoOf(ts).Tenants[tenant]
	if !ok {
		ts.Fatalf("no demo tenant %q", tenant)
	}
	want := map[string]string{}
	for k, v := range t.Env {
		if globs == "" || matchAny(strings.Split(globs, ","), k) {
			want[k] = v
		}
	}
	return want
}

func matchAny(globs []string, k string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, k); ok {
			return true
		}
	}
	return false
}

// diffEnv describes how got differs from want, by key name only.
func diffEnv(got, want map[string]string) string {
	var missing, extra, differ []string
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case g != v:
			differ = append(differ, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(missing)+len(extra)+len(differ) == 0 {
		return ""
	}
	sort.Strings(missing)
	sort.Strings(extra)
	sort.Strings(differ)
	return fmt.Sprintf("missing keys %v, unexpected keys %v, different values for %v", missing, extra, differ)
}

// parseEnvFile reads an env in one of the output formats.
func parseEnvFile(format, file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	switch format {
	case "dotenv":
		return godotenv.UnmarshalBytes(b)
	case "json":
		var m map[string]string
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&m); err != nil {
			return nil, err
		}
		if dec.More() {
			return nil, errors.New("json: more than one value")
		}
		return m, nil
	case "shell":
		return sourceShell(file)
	}
	return nil, fmt.Errorf("unknown format %q", format)
}

// shellOwnVars are variables /bin/sh sets by itself.
var shellOwnVars = map[string]bool{"PWD": true, "OLDPWD": true, "SHLVL": true, "_": true, "PATH": true}

// sourceShell sources file with `set -a` in /bin/sh and returns what the
// shell then exports (minus its own variables), read back through envdump.
func sourceShell(file string) (map[string]string, error) {
	dump, err := os.CreateTemp("", "envdump-")
	if err != nil {
		return nil, err
	}
	dump.Close()
	defer os.Remove(dump.Name())
	envdump, err := exec.LookPath("envdump")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("/bin/sh", "-c", `set -a; . "$1" || exit 3; exec "$2" "$3"`, "sh", file, envdump, dump.Name())
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("sh: %v (%d bytes of output)", err, len(out))
	}
	m, err := readEnvdump(dump.Name())
	if err != nil {
		return nil, err
	}
	for k := range shellOwnVars {
		delete(m, k)
	}
	return m, nil
}

func readEnvdump(file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, rec := range bytes.Split(b, []byte{0}) {
		if len(rec) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(rec, []byte("="))
		if !ok {
			return nil, errors.New("envdump: record without '='")
		}
		m[string(k)] = string(v)
	}
	return m, nil
}

// childenv FILE TENANT
//
// FILE is an envdump of a `broker exec` child: every key of the tenant must
// be there with its exact value, and BROKER_TOKEN must not.
func cmdChildEnv(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: childenv FILE TENANT")
	}
	got, err := readEnvdump(ts.MkAbs(args[0]))
	ts.Check(err)
	if _, ok := got["BROKER_TOKEN"]; ok {
		ts.Fatalf("the child's environment has BROKER_TOKEN")
	}
	var bad []string
	for k, v := range expectedEnv(ts, args[1], "") {
		if g, ok := got[k]; !ok || g != v {
			bad = append(bad, k)
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		ts.Fatalf("the child's environment lacks or alters %v", bad)
	}
}

// valcmp FILE TENANT KEY: FILE holds exactly the tenant's value of KEY.
func cmdValcmp(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: valcmp FILE TENANT KEY")
	}
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	want, ok := expectedEnv(ts, args[1], "")[args[2]]
	if !ok {
		ts.Fatalf("tenant %s has no key %s", args[1], args[2])
	}
	if string(b) != want {
		ts.Fatalf("%s: value of %s differs (%d bytes, want %d)", args[0], args[2], len(b), len(want))
	}
}

// ---- caller tokens ----

// mint TOKVAR IDVAR [ARGS...]
//
// Runs `broker token mint ARGS...`, checks that it printed exactly one line,
// a caller token, and stores the token in $TOKVAR and its id (from the
// stderr note) in $IDVAR, so the token never shows in the test log.
func cmdMint(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: mint TOKVAR IDVAR [ARGS...]")
	}
	bin, err := brokerBinary()
	ts.Check(err)
	cmd := exec.Command(bin, append([]string{"token", "mint"}, args[2:]...)...)
	cmd.Dir = ts.MkAbs(".")
	cmd.Env = subprocEnv(ts)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		ts.Fatalf("token mint: %v\n%s", err, stderr.String())
	}
	fmt.Fprint(ts.Stderr(), stderr.String())
	out := stdout.String()
	if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		ts.Fatalf("token mint printed %d lines (%d bytes), want exactly one line", strings.Count(out, "\n"), len(out))
	}
	tok := strings.TrimSuffix(out, "\n")
	if !tokenRE.MatchString(tok) || tokenRE.FindString(tok) != tok {
		ts.Fatalf("token mint printed a line that is not a caller token (%d bytes)", len(tok))
	}
	if strings.Contains(stderr.String(), tok) {
		ts.Fatalf("token mint wrote the token to stderr")
	}
	m := regexp.MustCompile(`minted token ([a-z2-7]{12}) `).FindStringSubmatch(stderr.String())
	if m == nil || !strings.HasPrefix(tok, "brk_"+m[1]+"_") {
		ts.Fatalf("token mint did not name the token's id on stderr")
	}
	ts.Setenv(args[0], tok)
	ts.Setenv(args[1], m[1])
}

// tamper TOKVAR NEWVAR: NEWVAR is TOKVAR with one character of the secret
// changed (still well-formed).
func cmdTamper(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: tamper TOKVAR NEWVAR")
	}
	tok := []byte(ts.Getenv(args[0]))
	if len(tok) == 0 {
		ts.Fatalf("$%s is empty", args[0])
	}
	i := len(tok) - 2 // not the last: its low bits must stay zero
	if tok[i] == 'A' {
		tok[i] = 'B'
	} else {
		tok[i] = 'A'
	}
	ts.Setenv(args[1], string(tok))
}

// no-token-file FILE: FILE (the token store) holds no caller token.
func cmdNoTokenFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: no-token-file FILE")
	}
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	if tokenRE.Match(b) || bytes.Contains(b, []byte("brk_")) {
		ts.Fatalf("%s holds a caller token", args[0])
	}
}

// exitcode N: the previous broker command exited with N.
func cmdExitcode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: exitcode N")
	}
	f := ts.Getenv(exitFileEnv)
	b, err := os.ReadFile(f)
	if err != nil {
		ts.Fatalf("no exit code recorded: was the previous command a broker command?")
	}
	os.Remove(f)
	if got := string(b); got != args[0] {
		ts.Fatalf("broker exited with %s, want %s", got, args[0])
	}
}

// ---- the HTTP API ----

// api [-token VAR] [-auth RAW] [-host H] [-origin O] [-format F] STATUS TENANT
//
// GETs /v1/tenants/TENANT/env over $SOCK and checks the status. On a non-200
// answer it prints the body (an error, never a value); on 200 it prints the
// Content-Type, Cache-Control and X-Broker-Source headers and the body's size.
func cmdAPI(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! api")
	}
	req, want := apiRequest(ts, args)
	resp, body, err := doAPI(ts.Getenv("SOCK"), req)
	ts.Check(err)
	if resp.StatusCode != want {
		ts.Fatalf("status %d, want %d", resp.StatusCode, want)
	}
	if resp.StatusCode != http.StatusOK {
		ts.Stdout().Write(body)
		return
	}
	fmt.Fprintf(ts.Stdout(), "content-type: %s\ncache-control: %s\nsource: %s\nbytes: %d\n",
		resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"), resp.Header.Get(server.HeaderSource), len(body))
}

// poll DUR [api flags] STATUS TENANT
//
// Repeats the api request until it answers STATUS, failing if that has not
// happened within DUR.
func cmdPoll(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 3 {
		ts.Fatalf("usage: poll DUR [api flags] STATUS TENANT")
	}
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	deadline := time.Now().Add(d)
	tries, last := 0, 0
	for {
		req, want := apiRequest(ts, args[1:])
		resp, _, err := doAPI(ts.Getenv("SOCK"), req)
		tries++
		if err == nil {
			last = resp.StatusCode
			if last == want {
				fmt.Fprintf(ts.Stdout(), "status %d after %d requests\n", want, tries)
				return
			}
		}
		if time.Now().After(deadline) {
			ts.Fatalf("no %d within %v (%d requests, last status %d)", want, d, tries, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func apiRequest(ts *testscript.TestScript, args []string) (*http.Request, int) {
	fs := flag.NewFlagSet("api", flag.ContinueOnError)
	tokVar := fs.String("token", "", "")
	auth := fs.String("auth", "", "")
	host := fs.String("host", "", "")
	origin := fs.String("origin", "", "")
	format := fs.String("format", "", "")
	ts.Check(fs.Parse(args))
	if fs.NArg() != 2 {
		ts.Fatalf("usage: api [-token VAR] [-auth RAW] [-host H] [-origin O] [-format F] STATUS TENANT")
	}
	want, err := strconv.Atoi(fs.Arg(0))
	ts.Check(err)
	u := "http://localhost/v1/tenants/" + fs.Arg(1) + "/env"
	if *format != "" {
		u += "?format=" + *format
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	ts.Check(err)
	switch {
	case *tokVar != "":
		req.Header.Set("Authorization", "Bearer "+ts.Getenv(*tokVar))
	case *auth != "":
		req.Header.Set("Authorization", *auth)
	}
	if *host != "" {
		req.Host = *host
	}
	if *origin != "" {
		req.Header.Set("Origin", *origin)
	}
	return req, want
}

// doAPI sends req to the broker on the Unix socket sock.
func doAPI(sock string, req *http.Request) (*http.Response, []byte, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := (&http.Client{Transport: tr}).Do(req.WithContext(ctx))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, server.MaxResponseSize))
	return resp, body, err
}

// ---- small helpers ----

// perm FILE MODE: FILE has exactly permission bits MODE (octal).
func cmdPerm(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: perm FILE MODE")
	}
	want, err := strconv.ParseUint(args[1], 8, 32)
	ts.Check(err)
	fi, err := os.Stat(ts.MkAbs(args[0]))
	ts.Check(err)
	if got := fi.Mode().Perm(); uint64(got) != want {
		ts.Fatalf("%s has mode %04o, want %04o", args[0], got, want)
	}
}

// ls DIR: prints the names in DIR, one a line.
func cmdLs(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: ls DIR")
	}
	ents, err := os.ReadDir(ts.MkAbs(args[0]))
	ts.Check(err)
	w := bufio.NewWriter(ts.Stdout())
	for _, e := range ents {
		fmt.Fprintln(w, e.Name())
	}
	w.Flush()
}

// sleep DUR
func cmdSleep(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: sleep DUR")
	}
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	time.Sleep(d)
}

// metrics: prints the broker_* lines of GET /metrics on $SOCK.
func cmdMetrics(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: metrics")
	}
	req, err := http.NewRequest(http.MethodGet, "http://localhost/metrics", nil)
	ts.Check(err)
	resp, body, err := doAPI(ts.Getenv("SOCK"), req)
	ts.Check(err)
	if resp.StatusCode != http.StatusOK {
		ts.Fatalf("GET /metrics: status %d", resp.StatusCode)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "broker_") {
			fmt.Fprintln(ts.Stdout(), line)
		}
	}
}
