package bwcli

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hostd/broker/internal/fetch"
)

func writeExecutable(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestFindBW(t *testing.T) {
	dir := t.TempDir()
	withBW := filepath.Join(dir, "with")
	os.Mkdir(withBW, 0o755)
	writeExecutable(t, filepath.Join(withBW, "bw"))
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	custom := filepath.Join(dir, "custom-bw")
	writeExecutable(t, custom)
	notExec := filepath.Join(dir, "not-exec")
	os.WriteFile(notExec, []byte("x"), 0o644)

	tests := []struct {
		name, brokerBW, path string
		want                 string // "" = not found
	}{
		{"BROKER_BW wins", custom, withBW, custom},
		{"PATH", "", withBW, filepath.Join(withBW, "bw")},
		{"nowhere", "", empty, ""},
		{"BROKER_BW missing", filepath.Join(dir, "nope"), withBW, ""},
		{"BROKER_BW not executable", notExec, withBW, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("BROKER_BW", tt.brokerBW)
			t.Setenv("PATH", tt.path)
			got, err := FindBW()
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Fatalf("FindBW() = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			var nf *NotFoundError
			if !errors.As(err, &nf) {
				t.Fatalf("FindBW() error = %v, want *NotFoundError", err)
			}
			if !errors.Is(err, exec.ErrNotFound) {
				t.Errorf("FindBW() error does not unwrap to exec.ErrNotFound")
			}
			for _, hint := range []string{"make tools", "npm install -g @bitwarden/cli@2026.9.0", "BROKER_BW"} {
				if !strings.Contains(err.Error(), hint) {
					t.Errorf("error %q does not say %q", err, hint)
				}
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	dir := t.TempDir()
	bw := filepath.Join(dir, "bw")
	writeExecutable(t, bw)
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, []byte("x"), 0o600)
	good := Config{ServerURL: "https://vault.example.org", StateDir: dir, BW: bw, CAFile: ca}
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"good", func(*Config) {}, true},
		{"exec mode", func(c *Config) { c.Mode = ModeExec }, true},
		{"http", func(c *Config) { c.ServerURL = "http://vault.example.org" }, false},
		{"no host", func(c *Config) { c.ServerURL = "https://" }, false},
		{"credentials in URL", func(c *Config) { c.ServerURL = "https://u:p@vault.example.org" }, false},
		{"control char", func(c *Config) { c.ServerURL = "https://vault.example.org/\n" }, false},
		{"bad mode", func(c *Config) { c.Mode = "daemon" }, false},
		{"relative state dir", func(c *Config) { c.StateDir = "state" }, false},
		{"missing CA", func(c *Config) { c.CAFile = filepath.Join(dir, "none.pem") }, false},
		{"bw not executable", func(c *Config) { c.BW = ca }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mod(&cfg)
			b, err := New(cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("New() error = %v, want ok=%v", err, tt.ok)
			}
			if err == nil {
				defer b.Close()
				if b.cfg.StepTimeout != DefaultStepTimeout || b.cfg.LockTimeout != DefaultLockTimeout || b.cfg.MaxProcs != DefaultMaxProcs {
					t.Errorf("defaults not applied: %v %v %d", b.cfg.StepTimeout, b.cfg.LockTimeout, b.cfg.MaxProcs)
				}
				if tt.name == "good" && b.cfg.Mode != ModeServe {
					t.Errorf("default mode = %q, want %q", b.cfg.Mode, ModeServe)
				}
			}
		})
	}
}

func TestCheckArg(t *testing.T) {
	tests := []struct {
		arg string
		ok  bool
	}{
		{"https://localhost:8443", true},
		{"0b6d8a8e-1f55-4a9e-9a57-3c8a9c1d2e3f", true},
		{"", false},
		{"-x", false},
		{"--session", false},
		{"a\nb", false},
		{"a\x00b", false},
		{"a\x7fb", false},
		{strings.Repeat("a", maxArgLen), true},
		{strings.Repeat("a", maxArgLen+1), false},
	}
	for _, tt := range tests {
		if err := checkArg(tt.arg); (err == nil) != tt.ok {
			t.Errorf("checkArg(%.20q) = %v, want ok=%v", tt.arg, err, tt.ok)
		}
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		msg  string
		want reason
	}{
		{"Cryptography error, The decryption operation failed", reasonWrongPassword},
		{"Master password is required. Try again in interactive mode or provide a password file or environment variable.", reasonWrongPassword},
		{"client_id or client_secret is incorrect. Try again.", reasonBadAPIKey},
		{"You are already logged in as a@example.org.", reasonLoggedIn},
		{"Logout required before server config update.", reasonLoggedIn},
		{"You are not logged in.", reasonNotLoggedIn},
		{"No active account found", reasonNotLoggedIn},
		{"Vault is locked.", reasonLocked},
		{"FetchError: request to https://localhost:1/identity/connect/token failed, reason: connect ECONNREFUSED 127.0.0.1:1", reasonUnreachable},
		{"Syncing failed: FetchError: request to https://localhost:1/api/accounts/revision-date failed, reason: connect ECONNREFUSED", reasonUnreachable},
		{"Syncing failed: Internal error", reasonServerError},
		{"FetchError: request to https://localhost:1/ failed, reason: self-signed certificate in certificate chain", reasonTLS},
		{"Cryptography error, Insufficient KDF parameters", reasonKDF},
		{"Too Many Requests", reasonRateLimited},
		{"something else entirely", reasonUnknown},
	}
	for _, tt := range tests {
		if got := classify(tt.msg); got != tt.want {
			t.Errorf("classify(%q) = %v, want %v", tt.msg, got, tt.want)
		}
	}
}

func TestToFetchError(t *testing.T) {
	tests := []struct {
		r    reason
		want fetch.Kind
	}{
		{reasonWrongPassword, fetch.KindCredentials},
		{reasonBadAPIKey, fetch.KindCredentials},
		{reasonUnreachable, fetch.KindUnavailable},
		{reasonRateLimited, fetch.KindUnavailable},
		{reasonTLS, fetch.KindConfig},
		{reasonStart, fetch.KindConfig},
		{reasonStepTimeout, fetch.KindTimeout},
		{reasonCanceled, fetch.KindCanceled},
		{reasonServerError, fetch.KindUpstream},
		{reasonUnknown, fetch.KindUpstream},
	}
	for _, tt := range tests {
		err := toFetchError("acme", &stepError{step: "unlock", reason: tt.r, exit: 1})
		if got := fetch.KindOf(err); got != tt.want {
			t.Errorf("reason %v: kind = %v, want %v", tt.r, got, tt.want)
		}
		var fe *fetch.Error
		if !errors.As(err, &fe) || fe.Tenant != "acme" || fe.Msg == "" {
			t.Errorf("reason %v: error %#v lacks tenant or message", tt.r, err)
		}
	}
	if toFetchError("acme", nil) != nil {
		t.Error("toFetchError(nil) != nil")
	}
}

func TestParseResponse(t *testing.T) {
	tests := []struct {
		name, out   string
		wantOK      bool
		wantSuccess bool
		wantMsg     string
	}{
		{"success", `{"success":true,"data":{"object":"list","data":[]}}` + "\n", true, true, ""},
		{"error", `{"success":false,"message":"Vault is locked."}`, true, false, "Vault is locked."},
		{"noise before", "some log line\n{not json\n" + `{"success":false,"message":"x"}` + "\n\n", true, false, "x"},
		{"last wins", `{"success":true}` + "\n" + `{"success":false,"message":"y"}`, true, false, "y"},
		{"no success member", `{"data":1}`, false, false, ""},
		{"empty", "", false, false, ""},
		{"truncated", `{"success":tr`, false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := parseResponse([]byte(tt.out))
			if (r != nil) != tt.wantOK {
				t.Fatalf("parseResponse() = %v, want ok=%v", r, tt.wantOK)
			}
			if r != nil && (r.Success != tt.wantSuccess || r.Message != tt.wantMsg) {
				t.Errorf("got success=%v message=%q, want %v %q", r.Success, r.Message, tt.wantSuccess, tt.wantMsg)
			}
		})
	}
	r := parseResponse([]byte(`{"success":true,"data":{"object":"message","title":"Your vault is now unlocked!","raw":"abc"}}`))
	if got := r.raw(); got != "abc" {
		t.Errorf("raw() = %q, want %q", got, "abc")
	}
	var st bwStatus
	r = parseResponse([]byte(`{"success":true,"data":{"object":"template","template":{"serverUrl":"https://x","status":"locked"}}}`))
	if err := r.template(&st); err != nil || st.Status != "locked" || st.ServerURL != "https://x" {
		t.Errorf("template() = %+v, %v", st, err)
	}
	var items []bwItem
	r = parseResponse([]byte(`{"success":true,"data":{"object":"list","data":[{"id":"i","type":1,"name":"K","login":{"password":"v"}}]}}`))
	if err := r.list(&items); err != nil || len(items) != 1 || *items[0].Login.Password != "v" {
		t.Errorf("list() = %+v, %v", items, err)
	}
}

func FuzzParseResponse(f *testing.F) {
	f.Add([]byte(`{"success":true,"data":{"object":"list","data":[]}}`))
	f.Add([]byte("noise\n{\"success\":false,\"message\":\"Vault is locked.\"}\n"))
	f.Add([]byte(`{"success":true,"data":{"object":"template","template":{}}}`))
	f.Fuzz(func(t *testing.T, out []byte) {
		r := parseResponse(out)
		if r == nil {
			return
		}
		// Whatever was found decodes further without panicking.
		var st bwStatus
		var items []bwItem
		r.template(&st)
		r.list(&items)
		r.raw()
		classify(r.Message)
	})
}

func strp(s string) *string { return &s }

func TestBuildEnv(t *testing.T) {
	const org, coll, other = "org", "coll", "other"
	login := func(name, pw string) bwItem {
		it := bwItem{OrganizationID: org, CollectionIDs: []string{coll}, Type: itemLogin, Name: name}
		it.Login = &struct {
			Password *string `json:"password"`
		}{Password: strp(pw)}
		return it
	}
	note := func(name string, notes *string) bwItem {
		return bwItem{OrganizationID: org, CollectionIDs: []string{other, coll}, Type: itemSecureNote, Name: name, Notes: notes}
	}
	noPassword := login("NO_PW", "")
	noPassword.Login.Password = nil
	wrongOrg := login("WRONG_ORG", "x")
	wrongOrg.OrganizationID = "org2"
	wrongColl := login("WRONG_COLL", "x")
	wrongColl.CollectionIDs = []string{other}
	trashed := login("TRASHED", "x")
	trashed.DeletedDate = strp("2026-01-01T00:00:00Z")
	card := bwItem{OrganizationID: org, CollectionIDs: []string{coll}, Type: 3, Name: "CARD"}

	tests := []struct {
		name        string
		items       []bwItem
		want        map[string]string
		wantIgnored int
		wantErrKey  string // a KindData error naming this key
	}{
		{"types", []bwItem{login("A", "pw\n"), note("B", strp("n")), note("C", nil), noPassword, card},
			map[string]string{"A": "pw\n", "B": "n", "C": "", "NO_PW": ""}, 1, ""},
		{"filters", []bwItem{login("A", "1"), wrongOrg, wrongColl, trashed}, map[string]string{"A": "1"}, 0, ""},
		{"empty", nil, map[string]string{}, 0, ""},
		{"duplicate", []bwItem{login("A", "1"), note("A", strp("2"))}, nil, 0, `"A"`},
		{"invalid key", []bwItem{login("BAD-KEY", "1")}, nil, 0, `"BAD-KEY"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, ignored, err := buildEnv("acme", org, coll, tt.items)
			if tt.wantErrKey != "" {
				if fetch.KindOf(err) != fetch.KindData || !strings.Contains(err.Error(), tt.wantErrKey) {
					t.Fatalf("err = %v, want a KindData error naming %s", err, tt.wantErrKey)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(env.Keys(), fetch.Env(tt.want).Keys()) {
				t.Fatalf("keys = %v, want %v", env.Keys(), fetch.Env(tt.want).Keys())
			}
			for k, v := range tt.want {
				if env[k] != v {
					t.Errorf("%s: value differs", k)
				}
			}
			if ignored != tt.wantIgnored {
				t.Errorf("ignored = %d, want %d", ignored, tt.wantIgnored)
			}
		})
	}
}

func TestChildEnv(t *testing.T) {
	t.Setenv("PATH", "/usr/bin:/bin")
	t.Setenv("BROKER_CANARY", "must-not-pass")
	t.Setenv("BW_SESSION", "must-not-pass")
	b := &Backend{cfg: Config{CAFile: "/etc/ca.pem"}}
	d := &dataDir{path: "/state/bw/0123456789abcdef"}
	got := b.childEnv(d, []string{"BW_PASSWORD=pw"})
	want := []string{
		"PATH=/usr/bin:/bin",
		"HOME=/state/bw/0123456789abcdef",
		"BITWARDENCLI_APPDATA_DIR=/state/bw/0123456789abcdef",
		"BW_NOINTERACTION=true",
		"NODE_EXTRA_CA_CERTS=/etc/ca.pem",
		"BW_PASSWORD=pw",
	}
	if !slices.Equal(got, want) {
		t.Errorf("childEnv() = %q, want %q", got, want)
	}
	b.cfg.CAFile = ""
	if got := b.childEnv(d, nil); slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "NODE_EXTRA_CA_CERTS=") }) {
		t.Errorf("childEnv() without a CA file sets NODE_EXTRA_CA_CERTS: %q", got)
	}
}

func TestCheckTenant(t *testing.T) {
	good := fetch.Tenant{Name: "acme", OrganizationID: "0b6d8a8e-1f55-4a9e-9a57-3c8a9c1d2e3f",
		ClientID: "user.x", ClientSecret: "s", Password: "p"}
	tests := []struct {
		name string
		mod  func(*fetch.Tenant)
		ok   bool
	}{
		{"good", func(*fetch.Tenant) {}, true},
		{"no org", func(t *fetch.Tenant) { t.OrganizationID = "" }, false},
		{"org not uuid", func(t *fetch.Tenant) { t.OrganizationID = "--organizationid" }, false},
		{"no password", func(t *fetch.Tenant) { t.Password = "" }, false},
		{"no client secret", func(t *fetch.Tenant) { t.ClientSecret = "" }, false},
		{"client id option", func(t *fetch.Tenant) { t.ClientID = "-x" }, false},
		{"collection control char", func(t *fetch.Tenant) { t.Collection = "a\nb" }, false},
	}
	for _, tt := range tests {
		ten := good
		tt.mod(&ten)
		err := checkTenant(ten)
		if (err == nil) != tt.ok {
			t.Errorf("%s: checkTenant() = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && err.Kind != fetch.KindConfig {
			t.Errorf("%s: kind = %v, want config", tt.name, err.Kind)
		}
	}
}

func TestStateFingerprint(t *testing.T) {
	dir := t.TempDir()
	d := &dataDir{path: dir}
	write := func(s string) string {
		if err := os.WriteFile(filepath.Join(dir, "data.json"), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return stateFingerprint(d)
	}
	base := write(`{"user_1_ciphers_ciphers":{"a":1},"user_1_sync_lastSync":"2026-01-01"}`)
	if base == "" {
		t.Fatal("fingerprint of valid state is empty")
	}
	if got := write(`{"user_1_sync_lastSync":"2026-02-02","user_1_ciphers_ciphers":{"a":1}}`); got != base {
		t.Error("a new last-sync time changed the fingerprint")
	}
	if got := write(`{"user_1_ciphers_ciphers":{"a":2},"user_1_sync_lastSync":"2026-01-01"}`); got == base {
		t.Error("changed ciphers kept the fingerprint")
	}
	if got := write(`{"user_1_ciphers`); got != "" {
		t.Error("fingerprint of a torn file is not empty")
	}
	os.Remove(filepath.Join(dir, "data.json"))
	if got := stateFingerprint(d); got != "" {
		t.Error("fingerprint of a missing file is not empty")
	}
}

func TestCapBuffer(t *testing.T) {
	c := &capBuffer{max: 5}
	for _, p := range []string{"abc", "defg", "h"} {
		if n, err := c.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if got := c.buf.String(); got != "abcde" || !c.truncated {
		t.Errorf("buffer = %q truncated=%v, want %q true", got, c.truncated, "abcde")
	}
}

// TestRunKillsProcessGroup runs a step that starts a grandchild and hangs:
// the step timeout kills the whole group.
func TestRunKillsProcessGroup(t *testing.T) {
	dir := shortTempDir(t)
	script := filepath.Join(dir, "bw")
	marker := filepath.Join(dir, "grandchild-alive")
	body := "#!/bin/sh\n(while :; do touch " + marker + "; sleep 0.05; done) &\nsleep 60\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{ServerURL: "https://localhost:1", StateDir: dir, BW: script, Mode: ModeExec, StepTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	d := &dataDir{path: dir, name: "test"}
	start := time.Now()
	_, err = b.run(context.Background(), d, "sync", nil, "sync")
	if reasonOf(err) != reasonStepTimeout {
		t.Fatalf("run() error = %v, want a step timeout", err)
	}
	t.Logf("killed after %v", time.Since(start))
	time.Sleep(200 * time.Millisecond)
	os.Remove(marker)
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Error("the step's grandchild survived the kill")
	}
	if left := bwProcesses(dir); len(left) > 0 {
		t.Errorf("processes left: %v", left)
	}
}

func TestHasProtectedKey(t *testing.T) {
	for _, tt := range []struct {
		keys []string
		want bool
	}{
		{nil, false},
		{[]string{"global_account_activeAccountId", "user_x_ciphers_ciphers"}, false},
		{[]string{"user_x_ciphers_ciphers", "__PROTECTED__user_x_user_auto"}, true},
	} {
		m := map[string]json.RawMessage{}
		for _, k := range tt.keys {
			m[k] = json.RawMessage(`"v"`)
		}
		if got := hasProtectedKey(m); got != tt.want {
			t.Errorf("hasProtectedKey(%v) = %v, want %v", tt.keys, got, tt.want)
		}
	}
}
