package vwserver

// End-to-end tests with the real Bitwarden CLI from tools/bw. They never
// print secret values: failures name the item, not its value.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/hostd/broker/internal/testutil"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bwStepTimeout bounds one bw process.
const bwStepTimeout = 60 * time.Second

// bwDir is one private bw app-data dir ("device") against a server.
type bwDir struct {
	t        *testing.T
	bin, dir string
	baseEnv  []string
}

func newBWDir(t *testing.T, s *Server, bin string) *bwDir {
	t.Helper()
	root := t.TempDir()
	ca := filepath.Join(root, "ca.pem")
	if err := s.WriteCA(ca); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(root, "home")
	data := filepath.Join(root, "appdata")
	for _, d := range []string{home, data} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return &bwDir{t: t, bin: bin, dir: root, baseEnv: []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"BITWARDENCLI_APPDATA_DIR=" + data,
		"NODE_EXTRA_CA_CERTS=" + ca,
		"BW_NOINTERACTION=true",
	}}
}

// run runs one bw command with extra environment (secrets go only there)
// and returns stdout, stderr and the exit code.
func (b *bwDir) run(env []string, args ...string) (stdout, stderr string, code int) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bwStepTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.bin, args...)
	cmd.Env = append(append([]string(nil), b.baseEnv...), env...)
	cmd.Dir = b.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	b.t.Logf("bw %s: %.2fs", args[0], time.Since(start).Seconds())
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		b.t.Fatalf("bw %s: %v", args[0], err)
	}
	return out.String(), errb.String(), code
}

// mustRun is run that fails the test on a non-zero exit. stderr of bw holds
// messages, not secrets, so it is shown.
func (b *bwDir) mustRun(env []string, args ...string) string {
	b.t.Helper()
	out, errOut, code := b.run(env, args...)
	if code != 0 {
		b.t.Fatalf("bw %s: exit %d: %s", args[0], code, strings.TrimSpace(errOut))
	}
	return out
}

func (b *bwDir) status(env []string) string {
	b.t.Helper()
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(b.mustRun(env, "status")), &st); err != nil {
		b.t.Fatalf("bw status: %v", err)
	}
	return st.Status
}

// testValues are the values that must come back byte-exact, by item name.
var testValues = []struct {
	name, value string
	note        bool
}{
	{"MULTILINE", "line1\nline2", false},
	{"QUOTED", `he said "hi"`, true},
	{"DOLLARS", "$HOME ${X}", false},
	{"BACKSLASH", `back\slash`, true},
	{"LEADING_ZERO", "007", false},
	{"UNICODE", "ünïcødé 😀", true},
	{"EMPTY_NOTE", "", true},
	{"SPACES", "  padded\t", false},
}

type vault struct {
	s               *Server
	user            User
	orgID, collID   string
	otherID, cardID string
	ids             map[string]string // item name → id
}

func seedVault(t *testing.T) *vault {
	t.Helper()
	s := newTestServer(t)
	v := &vault{s: s, user: s.AddUser("tenant.admin@example.com", testPassword), ids: map[string]string{}}
	v.orgID = s.AddOrganization("Tenants Org")
	s.AddMember(v.orgID, v.user.ID, MemberUser)
	v.collID = s.AddCollection(v.orgID, "acme")
	other := s.AddCollection(v.orgID, "globex")
	for _, tv := range testValues {
		if tv.note {
			v.ids[tv.name] = s.AddNote(v.orgID, v.collID, tv.name, tv.value)
		} else {
			v.ids[tv.name] = s.AddLogin(v.orgID, v.collID, tv.name, "user-"+strings.ToLower(tv.name), tv.value)
		}
	}
	v.cardID = s.AddCard(v.orgID, v.collID, "A_CARD")
	v.otherID = s.AddLogin(v.orgID, other, "GLOBEX_ONLY", "", "x")
	return v
}

// bwItem is the part of a `bw list items` entry the broker reads.
type bwItem struct {
	ID            string   `json:"id"`
	Type          int      `json:"type"`
	Name          string   `json:"name"`
	Notes         *string  `json:"notes"`
	CollectionIDs []string `json:"collectionIds"`
	Login         *struct {
		Username *string `json:"username"`
		Password *string `json:"password"`
	} `json:"login"`
}

func (it bwItem) value() string {
	var p *string
	if it.Type == cipherLogin && it.Login != nil {
		p = it.Login.Password
	} else if it.Type == cipherNote {
		p = it.Notes
	}
	if p == nil {
		return ""
	}
	return *p
}

// checkItems compares a decoded item list with the seed; want overrides
// some values.
func (v *vault) checkItems(t *testing.T, raw []byte, override map[string]string) {
	t.Helper()
	var items []bwItem
	if err := json.Unmarshal(raw, &items); err != nil {
		t.Fatalf("item list: %v", err)
	}
	got := map[string]bwItem{}
	for _, it := range items {
		got[it.Name] = it
	}
	if len(items) != len(testValues)+1 {
		t.Errorf("item list: %d items, want %d", len(items), len(testValues)+1)
	}
	for _, tv := range testValues {
		it, ok := got[tv.name]
		if !ok {
			t.Errorf("item %s missing", tv.name)
			continue
		}
		want := tv.value
		if o, ok := override[tv.name]; ok {
			want = o
		}
		if it.value() != want {
			t.Errorf("item %s: value differs from the seed (got %d bytes, want %d)", tv.name, len(it.value()), len(want))
		}
		if it.ID != v.ids[tv.name] || len(it.CollectionIDs) != 1 || it.CollectionIDs[0] != v.collID {
			t.Errorf("item %s: id or collectionIds differ", tv.name)
		}
	}
	if tv := testValues[0]; got[tv.name].Login == nil || got[tv.name].Login.Username == nil ||
		*got[tv.name].Login.Username != "user-"+strings.ToLower(tv.name) {
		t.Errorf("item %s: username differs", tv.name)
	}
	if it, ok := got["EMPTY_NOTE"]; ok {
		t.Logf("an empty note comes back with notes null: %v", it.Notes == nil)
	}
	if card, ok := got["A_CARD"]; !ok || card.Type != cipherCard {
		t.Errorf("card item: present %v, type %d; want type %d", ok, card.Type, cipherCard)
	}
	if _, ok := got["GLOBEX_ONLY"]; ok {
		t.Error("an item of another collection was listed")
	}
}

// TestBWCLI drives the real bw, one process per step, through the whole
// flow the fallback uses, with the failure cases.
func TestBWCLI(t *testing.T) {
	bin := testutil.BW(t)
	v := seedVault(t)
	s := v.s
	b := newBWDir(t, s, bin)
	if out := strings.TrimSpace(b.mustRun(nil, "--version")); out != "2026.9.0" {
		t.Fatalf("bw --version = %q, want 2026.9.0", out)
	}
	b.mustRun(nil, "config", "server", s.URL())
	s.ResetStats()

	// A wrong client secret is refused, and counts as a login attempt.
	wrong := []string{"BW_CLIENTID=" + v.user.ClientID, "BW_CLIENTSECRET=" + strings.Repeat("x", clientSecretLen)}
	_, errOut, code := b.run(wrong, "login", "--apikey")
	if code != 1 || !strings.Contains(errOut, "client_id or client_secret is incorrect") {
		t.Fatalf("login with a wrong secret: exit %d, stderr %q; want exit 1 and the invalid-client message", code, strings.TrimSpace(errOut))
	}
	if got := s.Stats().Logins; got != 1 {
		t.Errorf("logins after a refused login: %d, want 1", got)
	}
	if st := b.status(nil); st != "unauthenticated" {
		t.Errorf("status after a refused login: %q, want unauthenticated", st)
	}

	s.ResetStats()
	b.mustRun([]string{"BW_CLIENTID=" + v.user.ClientID, "BW_CLIENTSECRET=" + v.user.ClientSecret}, "login", "--apikey")
	st := s.Stats()
	t.Logf("login --apikey: %d token requests, routes %v", st.Logins, st.ByRoute)
	if st.Logins != 1 || st.ByRoute["GET /api/sync"] != 1 {
		t.Errorf("login --apikey: %d logins and %d syncs, want 1 and 1", st.Logins, st.ByRoute["GET /api/sync"])
	}

	// A wrong master password: exit 1, still locked.
	_, errOut, code = b.run([]string{"BW_PASSWORD=not the password"}, "unlock", "--raw", "--passwordenv", "BW_PASSWORD")
	if code != 1 {
		t.Fatalf("unlock with a wrong password: exit %d, want 1 (stderr %q)", code, strings.TrimSpace(errOut))
	}
	if st := b.status(nil); st != "locked" {
		t.Errorf("status after a wrong password: %q, want locked", st)
	}

	s.ResetStats()
	key := strings.TrimSpace(b.mustRun([]string{"BW_PASSWORD=" + testPassword}, "unlock", "--raw", "--passwordenv", "BW_PASSWORD"))
	if key == "" {
		t.Fatal("unlock --raw printed no session key")
	}
	st = s.Stats()
	t.Logf("first unlock: %d token requests, routes %v", st.Logins, st.ByRoute)
	if st.ByRoute["POST /api/accounts/key-management/user-key-id"] != 1 {
		t.Errorf("first unlock: %d key-id backfills, want 1", st.ByRoute["POST /api/accounts/key-management/user-key-id"])
	}
	session := []string{"BW_SESSION=" + key}
	if got := b.status(session); got != "unlocked" {
		t.Errorf("status with the session key: %q, want unlocked", got)
	}

	// A change upstream reaches the client through a plain sync (the
	// revision date moved).
	if err := s.UpdateItem(v.ids["DOLLARS"], "changed $VALUE"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteItem(v.otherID); err != nil {
		t.Fatal(err)
	}
	s.ResetStats()
	b.mustRun(session, "sync")
	// The CLI refreshes its token before every sync that downloads (a
	// forced one, or the revision date moved): that is a login upstream.
	if st := s.Stats(); st.ByRoute["GET /api/sync"] != 1 || st.Logins != 1 {
		t.Errorf("bw sync after a change: %d syncs, %d logins; want 1 and 1", st.ByRoute["GET /api/sync"], st.Logins)
	}
	out := b.mustRun(session, "list", "items", "--collectionid", v.collID)
	v.checkItems(t, []byte(out), map[string]string{"DOLLARS": "changed $VALUE"})

	b.mustRun(session, "lock")
	if got := b.status(session); got != "locked" {
		t.Errorf("status after lock with the old session key: %q, want locked", got)
	}
	if _, _, code := b.run(session, "list", "items", "--collectionid", v.collID); code != 1 {
		t.Errorf("list with the old session key after lock: exit %d, want 1", code)
	}
}

// TestBWServe drives `bw serve` on a Unix socket, the fallback's default
// mode, and records the shape of its /status answers.
func TestBWServe(t *testing.T) {
	bin := testutil.BW(t)
	v := seedVault(t)
	s := v.s
	b := newBWDir(t, s, bin)
	b.mustRun(nil, "config", "server", s.URL())
	s.ResetStats()
	b.mustRun([]string{"BW_CLIENTID=" + v.user.ClientID, "BW_CLIENTSECRET=" + v.user.ClientSecret}, "login", "--apikey")
	if got := s.Stats().Logins; got != 1 {
		t.Errorf("login --apikey: %d token requests, want 1", got)
	}

	sock := filepath.Join(b.dir, "bw.sock")
	cmd := exec.Command(bin, "serve", "--hostname", "unix://"+sock)
	cmd.Env = b.baseEnv
	cmd.Dir = b.dir
	var serveErr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &serveErr
	started := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})

	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	type serveResp struct {
		Success bool            `json:"success"`
		Message string          `json:"message"`
		Data    json.RawMessage `json:"data"`
	}
	call := func(method, path string, body any, hdr map[string]string) (int, serveResp, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		// bw serve checks Host against localhost:PORT, 127.0.0.1:PORT and
		// [::1]:PORT; on a Unix socket PORT is still --port (default 8087).
		req, err := http.NewRequest(method, "http://localhost:8087"+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		t.Logf("serve %s %s: %d in %dms", method, strings.SplitN(path, "?", 2)[0], resp.StatusCode, time.Since(start).Milliseconds())
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		var sr serveResp
		json.Unmarshal(raw, &sr)
		return resp.StatusCode, sr, raw
	}

	// Wait for the socket to answer /status.
	var firstStatus time.Duration
	for {
		if conn, err := net.Dial("unix", sock); err == nil {
			conn.Close()
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("bw serve exited early: %v: %s", err, strings.TrimSpace(serveErr.String()))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Since(started) > 30*time.Second {
			t.Fatal("bw serve did not open its socket within 30s")
		}
	}
	code, _, raw := call("GET", "/status", nil, nil)
	firstStatus = time.Since(started)
	t.Logf("bw serve: first /status answered %.2fs after start", firstStatus.Seconds())
	if code != 200 {
		t.Fatalf("GET /status: %d", code)
	}
	t.Logf("bw serve /status while locked: %s", redactStatus(raw))
	if st := serveStatus(t, raw); st != "locked" {
		t.Fatalf("status before unlock: %q, want locked", st)
	}

	// bw serve refuses a request that carries Origin (P14).
	if code, _, _ := call("GET", "/status", nil, map[string]string{"Origin": "http://evil.example"}); code == 200 {
		t.Errorf("request with Origin: status %d, want a refusal", code)
	}

	if code, sr, _ := call("POST", "/unlock", map[string]string{"password": "not the password"}, nil); code != 400 || sr.Success {
		t.Errorf("unlock with a wrong password: %d success=%v, want 400 false", code, sr.Success)
	}
	unlock := func() {
		t.Helper()
		if code, sr, _ := call("POST", "/unlock", map[string]string{"password": testPassword}, nil); code != 200 || !sr.Success {
			t.Fatalf("POST /unlock: %d success=%v message %q", code, sr.Success, sr.Message)
		}
	}
	sync := func() {
		t.Helper()
		if code, sr, _ := call("POST", "/sync", nil, nil); code != 200 || !sr.Success {
			t.Fatalf("POST /sync: %d success=%v message %q", code, sr.Success, sr.Message)
		}
	}
	list := func(override map[string]string) {
		t.Helper()
		code, sr, _ := call("GET", "/list/object/items?collectionId="+v.collID, nil, nil)
		if code != 200 || !sr.Success {
			t.Fatalf("GET /list/object/items: %d success=%v", code, sr.Success)
		}
		var d struct {
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(sr.Data, &d); err != nil {
			t.Fatalf("list data: %v", err)
		}
		v.checkItems(t, d.Data, override)
	}
	lock := func() {
		t.Helper()
		if code, sr, _ := call("POST", "/lock", nil, nil); code != 200 || !sr.Success {
			t.Fatalf("POST /lock: %d success=%v", code, sr.Success)
		}
	}

	s.ResetStats()
	unlock()
	logins := func(phase string, want int64) {
		t.Helper()
		st := s.Stats()
		t.Logf("%s: %d token requests, routes %v", phase, st.Logins, st.ByRoute)
		if st.Logins != want {
			t.Errorf("%s: %d token requests, want %d", phase, st.Logins, want)
		}
		s.ResetStats()
	}
	logins("first unlock (key-id backfill)", 1)
	_, _, raw = call("GET", "/status", nil, nil)
	t.Logf("bw serve /status while unlocked: %s", redactStatus(raw))
	if st := serveStatus(t, raw); st != "unlocked" {
		t.Fatalf("status after unlock: %q, want unlocked", st)
	}
	sync()
	list(nil)
	lock()
	logins("unlock, sync without a change, list, lock", 0)

	// A change upstream: sync, then lock and unlock again before listing
	// (protocol §10: a list right after a downloading sync can be empty).
	if err := s.UpdateItem(v.ids["QUOTED"], "new\nnote"); err != nil {
		t.Fatal(err)
	}
	unlock()
	sync()
	lock()
	unlock()
	list(map[string]string{"QUOTED": "new\nnote"})
	lock()

	_, _, raw = call("GET", "/status", nil, nil)
	if st := serveStatus(t, raw); st != "locked" {
		t.Fatalf("status after lock: %q, want locked", st)
	}
	if code, _, _ := call("GET", "/list/object/items?collectionId="+v.collID, nil, nil); code == 200 {
		t.Errorf("list while locked: status %d, want a refusal", code)
	}
	logins("sync that downloads a change, lock, unlock, list, lock", 1)
}

// serveStatus returns data.template.status of a bw serve /status answer.
func serveStatus(t *testing.T, raw []byte) string {
	t.Helper()
	var r struct {
		Data struct {
			Template struct {
				Status string `json:"status"`
			} `json:"template"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("status answer: %v", err)
	}
	return r.Data.Template.Status
}

// redactStatus returns the /status answer's JSON shape: key names, with
// every string value replaced by its type, so ids and emails stay out of
// the log.
func redactStatus(raw []byte) string {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return "(not JSON)"
	}
	var walk func(any) any
	walk = func(x any) any {
		switch x := x.(type) {
		case map[string]any:
			for k, e := range x {
				if k == "status" || k == "object" {
					continue
				}
				x[k] = walk(e)
			}
			return x
		case string:
			return "<string>"
		default:
			return x
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.Encode(walk(v))
	return strings.TrimSpace(buf.String())
}
