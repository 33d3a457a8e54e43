package main

// The leak scan (DESIGN 2.4): every stdout, stderr, log and audit line that
// the broker subprocesses of this test run wrote is copied into a capture
// directory; after the last test, TestMain looks there for every seeded
// secret value and credential and for caller tokens. Values may appear only
// in the stdout of fetch and exec (where they are the point), caller tokens
// only in the stdout of token mint. Findings name the stream and the
// secret's label, never the secret.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/hostd/broker/internal/demo"
)

// minSecretLen is the shortest value the scan looks for. Shorter seeded
// values ("007", "", "!bang" is 5 and kept) are too common to tell a leak
// from chance, and every tenant also has a long distinctive one.
const minSecretLen = 5

// secretKind says where a secret may legitimately appear.
type secretKind int

const (
	kindValue      secretKind = iota // a served value: allowed in fetch/exec stdout
	kindNeverShown                   // credentials and unservable values: nowhere
)

type secretEntry struct {
	label string
	kind  secretKind
}

var secrets = struct {
	sync.Mutex
	m map[string]secretEntry // value -> entry
}{m: map[string]secretEntry{}}

func registerSecret(label, value string, kind secretKind) {
	if len(value) < minSecretLen {
		return
	}
	secrets.Lock()
	defer secrets.Unlock()
	if old, ok := secrets.m[value]; ok && old.kind >= kind {
		return
	}
	secrets.m[value] = secretEntry{label, kind}
}

// registerDemoSecrets records what a demo seeded: every tenant value, the
// value no tenant may be served, and the upstream credentials (and, for
// Secrets Manager access tokens, their secret and key parts on their own).
func registerDemoSecrets(d *demo.Demo) {
	for name, t := range d.Tenants {
		for k, v := range t.Env {
			registerSecret(name+":"+k, v, kindValue)
		}
	}
	registerSecret("demo.Leak", d.Leak, kindNeverShown)
	for i, c := range d.Credentials {
		label := fmt.Sprintf("credential[%d]", i)
		registerSecret(label, c, kindNeverShown)
		if parts := strings.SplitN(c, ".", 3); len(parts) == 3 && parts[0] == "0" {
			secret, key, _ := strings.Cut(parts[2], ":")
			registerSecret(label+".client_secret", secret, kindNeverShown)
			registerSecret(label+".key", key, kindNeverShown)
		}
	}
}

func snapshotSecrets() map[string]secretEntry {
	secrets.Lock()
	defer secrets.Unlock()
	m := make(map[string]secretEntry, len(secrets.m))
	for k, v := range secrets.m {
		m[k] = v
	}
	return m
}

// encodings returns the forms in which value could show up in a text or
// JSON log line or a quoted error message.
func encodings(value string) map[string]string {
	forms := map[string]string{"raw": value}
	if b, err := json.Marshal(value); err == nil {
		forms["json"] = string(b[1 : len(b)-1])
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if enc.Encode(value) == nil {
		s := strings.TrimSpace(buf.String())
		forms["json-nohtml"] = s[1 : len(s)-1]
	}
	q := strconv.Quote(value)
	forms["quoted"] = q[1 : len(q)-1]
	return forms
}

// scanCaptures scans every capture file in dir and returns the findings
// (stream: label (form)) and the number of files and bytes scanned.
func scanCaptures(dir string, known map[string]secretEntry) (findings []string, files int, size int64) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return []string{fmt.Sprintf("capture dir: %v", err)}, 0, 0
	}
	serveLogs, audits, callers := 0, 0, 0
	type form struct {
		label, name, text string
		kind              secretKind
	}
	var forms []form
	for v, e := range known {
		for name, text := range encodings(v) {
			forms = append(forms, form{e.label, name, text, e.kind})
		}
	}
	sort.Slice(forms, func(i, j int) bool { return forms[i].label+forms[i].name < forms[j].label+forms[j].name })
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			findings = append(findings, fmt.Sprintf("%s: unreadable: %v", ent.Name(), err))
			continue
		}
		files++
		size += int64(len(b))
		label, stream := captureName(ent.Name())
		switch {
		case label == "serve" && stream == "log":
			serveLogs++
			audits += bytes.Count(b, []byte(`"msg":"audit"`))
		case label == "fetch" || label == "exec":
			callers++
		}
		valuesOK := stream == "stdout" && (label == "fetch" || label == "exec")
		tokensOK := stream == "stdout" && label == "token-mint"
		seen := map[string]bool{}
		for _, f := range forms {
			if valuesOK && f.kind == kindValue || seen[f.label] {
				continue
			}
			if bytes.Contains(b, []byte(f.text)) {
				seen[f.label] = true
				findings = append(findings, fmt.Sprintf("%s: %s (%s form)", ent.Name(), f.label, f.name))
			}
		}
		if !tokensOK && tokenRE.Match(b) {
			findings = append(findings, fmt.Sprintf("%s: a caller token", ent.Name()))
		}
	}
	if serveLogs > 0 && callers > 0 && audits == 0 {
		// Brokers served callers, yet no audit line was captured: the
		// capture is broken and the scan would pass for nothing.
		findings = append(findings, fmt.Sprintf("%d serve logs and %d caller streams captured without a single audit line", serveLogs, callers))
	}
	return findings, files, size
}

// captureName splits LABEL.STREAM.UNIQUE.
func captureName(name string) (label, stream string) {
	parts := strings.SplitN(name, ".", 3)
	if len(parts) < 2 {
		return name, ""
	}
	return parts[0], parts[1]
}

var capture struct {
	sync.Mutex
	dir string
}

// captureDir is where this test run's subprocess output is collected.
func captureDir() string {
	capture.Lock()
	defer capture.Unlock()
	if capture.dir == "" {
		d, err := os.MkdirTemp("", "broker-capture-")
		if err != nil {
			panic(err)
		}
		capture.dir = d
	}
	return capture.dir
}

// leakScanM runs the tests, then the leak scan over everything captured.
type leakScanM struct{ m *testing.M }

func (l *leakScanM) Run() int {
	dir := captureDir()
	os.Setenv(captureEnv, dir)
	if os.Getenv("GORACE") == "" {
		// A -race subprocess otherwise sleeps 1s at exit.
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	code := l.m.Run()
	findings, files, size := scanCaptures(dir, snapshotSecrets())
	os.RemoveAll(dir)
	if len(findings) > 0 {
		fmt.Fprintf(os.Stderr, "--- FAIL: leak scan: %d findings in %d captured streams:\n", len(findings), files)
		for _, f := range findings {
			fmt.Fprintf(os.Stderr, "    %s\n", f)
		}
		return 1
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "leak scan: %d captured streams, %d bytes, %d secrets, no findings\n",
			files, size, len(snapshotSecrets()))
	}
	return code
}

// scanProcArgv reads the argv of every process and reports the registered
// secrets found in one (by label, never the value).
func scanProcArgv() (n int, findings []string) {
	known := snapshotSecrets()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		n++
		for v, s := range known {
			if bytes.Contains(b, []byte(v)) {
				findings = append(findings, fmt.Sprintf("pid %d: %s", pid, s.label))
			}
		}
	}
	return n, findings
}

// TestLeakScanFinds checks that the scan finds a seeded value in each of its
// encodings where it is not allowed, finds caller tokens outside token
// mint's stdout, and allows values in fetch output.
func TestLeakScanFinds(t *testing.T) {
	const value = `he said "hi" <&> line1\nline2`
	const never = "credential-xyz-123"
	const tok = "brk_abcdefghijkl_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq"
	known := map[string]secretEntry{value: {"t:QUOTES", kindValue}, never: {"cred", kindNeverShown}}
	tests := []struct {
		file, content string
		want          int
	}{
		{"serve.log.1", `{"msg":"audit","tenant":"t"}` + "\n", 0},
		{"serve.log.2", `{"msg":"audit"} raw ` + value, 1},
		{"serve.log.3", `{"msg":"audit","v":"` + encodings(value)["json"] + `"}`, 1},
		{"serve.log.4", `{"msg":"audit","v":"` + encodings(value)["json-nohtml"] + `"}`, 1},
		{"fetch.stderr.5", "broker: error: " + strconv.Quote(value), 1},
		{"fetch.stdout.6", "QUOTES=" + strconv.Quote(value), 0},
		{"fetch.stdout.7", never, 1},
		{"token-mint.stdout.8", tok + "\n", 0},
		{"token-mint.stderr.9", tok + "\n", 1},
		{"exec.stdout.10", value, 0},
		{"serve.log.11", `{"msg":"serving"}`, 0}, // a broker nobody called
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, tt.file), []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, files, _ := scanCaptures(dir, known)
			if files != 1 {
				t.Fatalf("scanned %d files, want 1", files)
			}
			if len(got) != tt.want {
				t.Errorf("scanCaptures found %d (%q), want %d", len(got), got, tt.want)
			}
		})
	}
}

// TestLeakScanVacuous checks that captured callers without a single audit
// line in the captured serve logs fail the scan: the capture is broken.
func TestLeakScanVacuous(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"serve.log.1":    `{"msg":"serving"}` + "\n",
		"fetch.stderr.2": "",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got, _, _ := scanCaptures(dir, nil); len(got) != 1 {
		t.Errorf("scanCaptures found %q, want one finding about the missing audit lines", got)
	}
}
