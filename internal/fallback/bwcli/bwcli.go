// Package bwcli is the Vaultwarden fallback backend of the broker: it drives
// the real Bitwarden CLI (bw) with unlock-per-call and always leaves the
// vault locked.
//
// # Flow
//
// Each credential set (server URL + client id) gets its own bw data dir
// (BITWARDENCLI_APPDATA_DIR) under StateDir/bw, mode 0700. bw is logged in
// once per data dir with the API key; a call then runs unlock → sync (a
// revision check, never a forced sync, which would be a login at the
// upstream) → list the tenant's collection → lock. Calls on one data dir are
// serialized; different data dirs run in parallel, and a global semaphore
// bounds how many calls drive bw at once.
//
// bw serve can list an empty or partial collection after a sync that
// downloaded changes, and after a login or a serve start (their first
// unlock runs syncs of bw's own): the collection is then read after a fresh
// lock → unlock. Every list is also checked against the number of items bw
// stores for the collection (data.json, counted without decrypting); a
// short list is read once more after a fresh unlock, and a call never
// serves an incomplete one (KindUnavailable instead).
//
// In "serve" mode (the default) each data dir gets one supervised
// `bw serve` listening on a Unix socket inside the data dir, driven with
// net/http; a call costs one unlock plus a few local requests. In "exec"
// mode each step is its own bw process (1.5–3 s each).
//
// # Security
//
//   - The lock runs on every path (success, refused credentials, upstream
//     down, step timeout, caller cancel, shutdown) under its own deadline,
//     independent of the caller. The lock is then verified; a vault still
//     unlocked is logged at error level and counted in [Stats].
//   - Secrets reach bw only through the child's environment (exec) or the
//     request body on the private socket (serve): never argv. The child's
//     environment is minimal (PATH, HOME, BITWARDENCLI_APPDATA_DIR,
//     NODE_EXTRA_CA_CERTS, BW_NOINTERACTION and the one secret it needs).
//   - bw's output is bounded, parsed and never logged; errors carry a fixed
//     public message and a classified reason, never bw's output, a password
//     or a session key.
//   - A step that times out is killed with its whole process group; a serve
//     process whose request was abandoned is killed (its unlocked state dies
//     with it) and a one-shot `bw lock` clears the data dir.
package bwcli

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hostd/broker/internal/fetch"
)

// Modes of driving bw.
const (
	ModeServe = "serve"
	ModeExec  = "exec"
)

// Defaults for Config.
const (
	DefaultStepTimeout = 30 * time.Second
	DefaultLockTimeout = 10 * time.Second
	DefaultMaxProcs    = 4
)

// loginRetryDelay is how long a refused API key is remembered: calls with
// the same refused credentials fail fast instead of logging in again
// (Vaultwarden allows about one login a minute).
const loginRetryDelay = time.Minute

// Config configures a Backend.
type Config struct {
	// ServerURL is the Vaultwarden base URL (https), policy
	// upstream.bw.server_url.
	ServerURL string
	// CAFile is a PEM file of extra CAs for the server (policy
	// upstream.bw.ca_file), passed to bw as NODE_EXTRA_CA_CERTS; "" means
	// the system roots only.
	CAFile string
	// Mode is ModeServe (default) or ModeExec.
	Mode string
	// StateDir is the broker's owner-only state dir; data dirs live in
	// StateDir/bw/<16 hex digits>, mode 0700.
	StateDir string
	// BW is the path of the bw binary; "" means FindBW.
	BW string
	// StepTimeout bounds each step (a bw process or a serve request);
	// default DefaultStepTimeout.
	StepTimeout time.Duration
	// LockTimeout is the lock's own deadline, independent of the caller;
	// default DefaultLockTimeout.
	LockTimeout time.Duration
	// MaxProcs caps how many calls drive bw at the same time (each call
	// runs at most one bw process or serve request at a time); default
	// DefaultMaxProcs. Idle serve processes are not counted.
	MaxProcs int
	// Logger receives operational logs (never bw output or secrets);
	// nil means slog.Default().
	Logger *slog.Logger
}

// Stats counts what the backend did since New.
type Stats struct {
	Logins            int64 // bw login --apikey runs
	Processes         int64 // bw processes started (one-shot steps and serve)
	Calls             int64 // Fetch and Check calls
	UnlockedAfterLock int64 // vaults found unlocked after a lock (must stay 0)
	ServeRestarts     int64 // serve processes started after a dir's first (after a death, a kill or a new login)
	Refreshes         int64 // extra lock → unlock cycles to read a collection whole (after a changed sync, a login, a serve start or a suspicious list)
	Rereads           int64 // lists that looked incomplete (empty or fewer items than bw stores) and were read again after a fresh unlock
	Incomplete        int64 // calls failed because bw kept returning an incomplete collection
}

// NotFoundError is returned by FindBW and New when the bw CLI cannot be
// found. It unwraps to exec.ErrNotFound.
type NotFoundError struct {
	// Path is the path that was tried ("" when PATH was searched).
	Path string
}

func (e *NotFoundError) Error() string {
	where := `"bw" in PATH`
	if e.Path != "" {
		where = fmt.Sprintf("%q (BROKER_BW)", e.Path)
	}
	return fmt.Sprintf("bw CLI not found: no executable %s; install it with `make tools` "+
		"(tools/bw) or `npm install -g @bitwarden/cli@2026.9.0`, or set BROKER_BW to its path", where)
}

// Unwrap returns exec.ErrNotFound.
func (e *NotFoundError) Unwrap() error { return exec.ErrNotFound }

// FindBW returns the bw binary to use: $BROKER_BW if set, else "bw" in PATH.
// It returns a *NotFoundError that says how to install bw.
func FindBW() (string, error) {
	if p := os.Getenv("BROKER_BW"); p != "" {
		if !isExecutable(p) {
			return "", &NotFoundError{Path: p}
		}
		return filepath.Abs(p)
	}
	p, err := exec.LookPath("bw")
	if err != nil {
		return "", &NotFoundError{}
	}
	return filepath.Abs(p)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Backend is the bw CLI fallback; it implements fetch.Backend. It is safe
// for concurrent use. Close it to lock and stop every bw process.
type Backend struct {
	cfg   Config
	log   *slog.Logger
	sem   chan struct{}
	fpKey []byte // keys credential fingerprints; memory only

	shutdown context.Context // canceled by Close
	stop     context.CancelCauseFunc

	mu     sync.Mutex
	dirs   map[string]*dataDir
	closed bool
	calls  sync.WaitGroup

	nLogins, nProcs, nCalls, nUnlocked, nRestarts atomic.Int64
	nRefreshes, nRereads, nIncomplete             atomic.Int64
}

var _ fetch.Backend = (*Backend)(nil)

// errShutdown is the cancel cause of calls interrupted by Close.
var errShutdown = errors.New("broker is shutting down")

// New validates cfg and returns a Backend. It starts no process.
func New(cfg Config) (*Backend, error) {
	u, err := url.Parse(cfg.ServerURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("bwcli: server URL %q: want https://host[:port][/path]", cfg.ServerURL)
	}
	if err := checkArg(cfg.ServerURL); err != nil {
		return nil, fmt.Errorf("bwcli: server URL: %v", err)
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = ModeServe
	case ModeServe, ModeExec:
	default:
		return nil, fmt.Errorf("bwcli: mode %q: want %q or %q", cfg.Mode, ModeServe, ModeExec)
	}
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("bwcli: state dir %q: want an absolute path", cfg.StateDir)
	}
	if cfg.CAFile != "" {
		if !filepath.IsAbs(cfg.CAFile) {
			return nil, fmt.Errorf("bwcli: ca file %q: want an absolute path", cfg.CAFile)
		}
		if _, err := os.Stat(cfg.CAFile); err != nil {
			return nil, fmt.Errorf("bwcli: ca file: %v", err)
		}
	}
	if cfg.BW == "" {
		if cfg.BW, err = FindBW(); err != nil {
			return nil, err
		}
	} else if !isExecutable(cfg.BW) {
		return nil, &NotFoundError{Path: cfg.BW}
	}
	if cfg.StepTimeout <= 0 {
		cfg.StepTimeout = DefaultStepTimeout
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = DefaultLockTimeout
	}
	if cfg.MaxProcs <= 0 {
		cfg.MaxProcs = DefaultMaxProcs
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	key := make([]byte, 32)
	rand.Read(key)
	ctx, stop := context.WithCancelCause(context.Background())
	return &Backend{
		cfg:      cfg,
		log:      cfg.Logger.With("backend", fetch.BackendBWCLI, "mode", cfg.Mode),
		sem:      make(chan struct{}, cfg.MaxProcs),
		fpKey:    key,
		shutdown: ctx,
		stop:     stop,
		dirs:     make(map[string]*dataDir),
	}, nil
}

// Stats returns the counters.
func (b *Backend) Stats() Stats {
	return Stats{
		Logins:            b.nLogins.Load(),
		Processes:         b.nProcs.Load(),
		Calls:             b.nCalls.Load(),
		UnlockedAfterLock: b.nUnlocked.Load(),
		ServeRestarts:     b.nRestarts.Load(),
		Refreshes:         b.nRefreshes.Load(),
		Rereads:           b.nRereads.Load(),
		Incomplete:        b.nIncomplete.Load(),
	}
}

// Fetch returns the tenant's env: every Login (its password) and Secure Note
// (its notes) in the tenant's collection of its organization, keyed by item
// name. Other item types are ignored. The vault is locked before Fetch
// returns, on every path.
func (b *Backend) Fetch(ctx context.Context, t fetch.Tenant) (fetch.Env, error) {
	var env fetch.Env
	err := b.call(ctx, t, func(ctx context.Context, v vault, d *dataDir) error {
		var err error
		env, err = b.readCollection(ctx, v, d, t)
		return err
	})
	if err != nil {
		return nil, err
	}
	return env, nil
}

// Check logs in if needed, unlocks, syncs, resolves the tenant's collection
// by name (listing collections, no items) and locks again without reading
// any value: it proves that the tenant's credentials work and that its
// collection resolves (broker status). A collection that is missing or not
// visible is the KindConfig error Fetch gives for it.
func (b *Backend) Check(ctx context.Context, t fetch.Tenant) error {
	return b.call(ctx, t, func(ctx context.Context, v vault, _ *dataDir) error {
		_, err := b.resolveCollection(ctx, v, t, collectionName(t))
		return err
	})
}

// Close interrupts calls in flight (each still locks), then locks and stops
// every bw serve and waits for every child. No bw process is left when it
// returns. Later calls fail with KindUnavailable.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.stop(errShutdown)
	b.calls.Wait()

	b.mu.Lock()
	dirs := make([]*dataDir, 0, len(b.dirs))
	for _, d := range b.dirs {
		dirs = append(dirs, d)
	}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, d := range dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.stopServe(d)
		}()
	}
	wg.Wait()
	return nil
}

// uuidRE matches the ids bw uses for organizations and collections.
var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// maxCollectionName bounds a collection name from the policy.
const maxCollectionName = 1024

// checkTenant validates what a call needs from t.
func checkTenant(t fetch.Tenant) *fetch.Error {
	bad := func(msg string) *fetch.Error { return fetch.NewError(fetch.KindConfig, t.Name, msg, nil) }
	switch {
	case t.Name == "":
		return bad("tenant has no name")
	case !uuidRE.MatchString(t.OrganizationID):
		return bad("organization_id is not a UUID; fix the policy")
	case len(collectionName(t)) > maxCollectionName || hasControl(collectionName(t)):
		return bad("collection name is too long or has control characters; fix the policy")
	case t.ClientID == "" || t.ClientSecret == "" || t.Password == "":
		return bad("BW_CLIENTID, BW_CLIENTSECRET or BW_PASSWORD is missing for this tenant; add it to the provider env file")
	case checkArg(t.ClientID.Reveal()) != nil:
		return bad("BW_CLIENTID is malformed; copy it again from the account's API key settings")
	}
	return nil
}

// collectionName is the tenant's collection; it defaults to the tenant name.
func collectionName(t fetch.Tenant) string {
	if t.Collection != "" {
		return t.Collection
	}
	return t.Name
}

// fingerprint identifies a tenant's API key without keeping it: an HMAC
// under a per-process random key.
func (b *Backend) fingerprint(t fetch.Tenant) string {
	m := hmac.New(sha256.New, b.fpKey)
	m.Write([]byte(t.ClientID.Reveal()))
	m.Write([]byte{0})
	m.Write([]byte(t.ClientSecret.Reveal()))
	return string(m.Sum(nil))
}

// dirName is the data dir name of a credential set.
func dirName(serverURL, clientID string) string {
	sum := sha256.Sum256([]byte(serverURL + clientID))
	return hex.EncodeToString(sum[:])[:16]
}

// dir returns the data dir of t's credential set, creating it (0700).
func (b *Backend) dir(t fetch.Tenant) (*dataDir, error) {
	name := dirName(b.cfg.ServerURL, t.ClientID.Reveal())
	b.mu.Lock()
	defer b.mu.Unlock()
	if d, ok := b.dirs[name]; ok {
		return d, nil
	}
	path := filepath.Join(b.cfg.StateDir, "bw", name)
	if err := mkPrivateDir(filepath.Join(b.cfg.StateDir, "bw")); err != nil {
		return nil, err
	}
	if err := mkPrivateDir(path); err != nil {
		return nil, err
	}
	// needsLock starts true: an earlier broker may have died mid-call.
	d := &dataDir{path: path, name: name, lock: make(chan struct{}, 1), colls: make(map[string]string), needsLock: true}
	b.dirs[name] = d
	return d, nil
}

// mkPrivateDir creates dir with mode 0700, or makes an existing one 0700.
func mkPrivateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("bwcli: create data dir: %v", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("bwcli: data dir: %v", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("bwcli: data dir %s: not a directory", dir)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("bwcli: data dir: %v", err)
		}
	}
	return nil
}
