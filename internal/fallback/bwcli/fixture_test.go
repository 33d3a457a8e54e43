package bwcli

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/hostd/broker/internal/testutil"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hostd/broker/internal/fetch"
	"github.com/hostd/broker/internal/upstream/vwserver"
)

// hardValues are the values seeded in the main collection: each must come
// back byte-exact.
var hardValues = map[string]string{
	"DB_PASSWORD":  "p@ss w0rd \"quoted\" 'single' $HOME `tick` \\ back",
	"MULTILINE":    "line one\nline two\r\n\ttabbed\n",
	"UNICODE":      "ü € 😀 ключ 日本語",
	"LEADING_ZERO": "007",
	"EQUALS":       "a=b=c; x==",
	"SPACES":       "  padded  ",
	"NOTE_KEY":     "a secure note\nwith lines\n", // a Secure Note
	"EMPTY_NOTE":   "",                            // a Secure Note without text
	"DOLLAR":       "${NOT_EXPANDED} $(not run) !bang",
}

// noteKeys are the hardValues keys seeded as Secure Notes.
var noteKeys = map[string]bool{"NOTE_KEY": true, "EMPTY_NOTE": true}

// world is one test's upstream and its seed.
type world struct {
	srv    *vwserver.Server
	addr   string
	caFile string
	bw     string
	org    string

	alice, bob     vwserver.User
	alicePW, bobPW string
	acme, globex   string // collection ids
	changing       string // item id of CHANGING in acme
	acmeItems      map[string]string
}

// newWorld starts an upstream of the test's own (tests that stop it or
// inject faults run in parallel with others), seeded with two users of one
// organization and two collections.
func newWorld(t *testing.T) *world {
	t.Helper()
	bw := testutil.BW(t)
	srv, err := vwserver.New(vwserver.Options{KDFIterations: vwserver.MinKDFIterations})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	w := &world{srv: srv, addr: srv.Addr(), bw: bw, caFile: filepath.Join(t.TempDir(), "ca.pem"),
		alicePW: "alice master 🔑 pw", bobPW: "bob-master-pw", acmeItems: map[string]string{}}
	if err := srv.WriteCA(w.caFile); err != nil {
		t.Fatal(err)
	}
	w.alice = srv.AddUser("Alice@Example.org", w.alicePW)
	w.bob = srv.AddUser("bob@example.org", w.bobPW)
	w.org = srv.AddOrganization("Tenants Org")
	srv.AddMember(w.org, w.alice.ID, vwserver.MemberUser)
	srv.AddMember(w.org, w.bob.ID, vwserver.MemberUser)
	w.acme = srv.AddCollection(w.org, "acme")
	w.globex = srv.AddCollection(w.org, "globex")
	for k, v := range hardValues {
		if noteKeys[k] {
			srv.AddNote(w.org, w.acme, k, v)
		} else {
			srv.AddLogin(w.org, w.acme, k, "user-"+k, v)
		}
		w.acmeItems[k] = v
	}
	w.changing = srv.AddLogin(w.org, w.acme, "CHANGING", "", "version-1")
	w.acmeItems["CHANGING"] = "version-1"
	srv.AddCard(w.org, w.acme, "A_CARD") // a type the backend ignores
	srv.AddLogin(w.org, w.globex, "GLOBEX_TOKEN", "", "globex-secret")
	return w
}

func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == fakeHangName {
		os.Exit(fakeHangMain())
	}
	os.Exit(m.Run())
}

// tenant returns a fetch.Tenant for alice's acme collection.
func (w *world) aliceTenant() fetch.Tenant {
	return fetch.Tenant{
		Name: "acme", Backend: fetch.BackendBWCLI, OrganizationID: w.org, Collection: "acme",
		ClientID: fetch.Secret(w.alice.ClientID), ClientSecret: fetch.Secret(w.alice.ClientSecret),
		Password: fetch.Secret(w.alicePW),
	}
}

func (w *world) bobTenant() fetch.Tenant {
	return fetch.Tenant{
		Name: "globex", Backend: fetch.BackendBWCLI, OrganizationID: w.org,
		ClientID: fetch.Secret(w.bob.ClientID), ClientSecret: fetch.Secret(w.bob.ClientSecret),
		Password: fetch.Secret(w.bobPW),
	}
}

// testLogger logs to the test log; the backend never logs secrets, and
// the tests check that too (see logSink).
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// newBackend returns a backend on a fresh state dir.
func (w *world) newBackend(t *testing.T, mode string, sink *logSink, mod func(*Config)) *Backend {
	t.Helper()
	state := shortTempDir(t)
	var out io.Writer = io.Discard
	if sink != nil {
		out = sink
	}
	cfg := Config{
		ServerURL: w.srv.URL(), CAFile: w.caFile, Mode: mode, StateDir: state, BW: w.bw,
		Logger: slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// shortTempDir is a temp dir with a short path (serve's socket path is
// bounded), removed at the end of the test.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "bwc")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// dataDirOf returns the data dir the backend uses for t.
func dataDirOf(b *Backend, t fetch.Tenant) string {
	return filepath.Join(b.cfg.StateDir, "bw", dirName(b.cfg.ServerURL, t.ClientID.Reveal()))
}

// serveStatus asks the dir's running bw serve for its status over the socket.
func serveStatus(t *testing.T, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "serve.sock")
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + serveHost + "/status")
	if err != nil {
		return "no-serve"
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Template struct {
				Status string `json:"status"`
			} `json:"template"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("serve status: %v", err)
	}
	return r.Data.Template.Status
}

// cliStatus runs the real `bw status` in dir, with the session key in the
// environment when given.
func cliStatus(t *testing.T, w *world, dir, session string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.bw, "status")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "BITWARDENCLI_APPDATA_DIR=" + dir,
		"BW_NOINTERACTION=true", "NODE_EXTRA_CA_CERTS=" + w.caFile}
	if session != "" {
		cmd.Env = append(cmd.Env, "BW_SESSION="+session)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bw status: %v", err)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &st); err != nil {
		t.Fatalf("bw status: malformed output")
	}
	return st.Status
}

// protectedKeys lists data.json entries that hold a session-wrapped user key.
func protectedKeys(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "data.json"))
	if err != nil {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("data.json: %v", err)
	}
	var out []string
	for k := range m {
		if strings.HasPrefix(k, "__PROTECTED__") {
			out = append(out, k)
		}
	}
	return out
}
